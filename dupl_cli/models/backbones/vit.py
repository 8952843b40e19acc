"""timm ViT / DeiT backbone (docs/method.md §2).

The positional embedding is resampled bicubically to the token grid of every input *without*
antialiasing (timm's dynamic-size path antialiases, which shifts the 0.5-scale CAM) and is frozen.
``final`` is the last block's output after the final norm; ``aux`` is block ``aux_layer``'s output
without norm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dupl_cli.errors import UserError
from dupl_cli.models.backbones.base import BackboneFeatures, create_timm_model, load_weights


def resample_patch_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """1×N×D square-grid patch embedding → 1×(h·w)×D, bicubic, align_corners False, no antialias."""
    n, dim = pos.shape[1], pos.shape[2]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"positional embedding of {n} tokens is not a square grid")
    # The shortcut is skipped while tracing/exporting: a traced graph must resample at every size.
    if not (torch.jit.is_tracing() or torch.compiler.is_exporting()) and (side, side) == grid:
        return pos
    square = pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(square.float(), size=grid, mode="bicubic", align_corners=False)
    return resized.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)


class ViTBackbone(nn.Module):
    def __init__(self, vit: nn.Module, aux_layer: int = -3) -> None:
        super().__init__()
        self.vit = vit
        depth = len(vit.blocks)
        self.aux_index = aux_layer % depth
        if not 0 <= self.aux_index < depth - 1:
            raise UserError(f"model.aux_layer={aux_layer} is outside the {depth} blocks of the ViT")
        self.out_channels = vit.embed_dim
        self.aux_channels = vit.embed_dim
        self.stride = vit.patch_embed.patch_size[0]
        self.num_prefix = vit.num_prefix_tokens
        vit.patch_embed.strict_img_size = False
        vit.pos_embed.requires_grad_(False)
        # Unused classifier parts stay out of the optimiser.
        for unused in ("head", "fc_norm", "head_drop", "attn_pool"):
            if hasattr(vit, unused) and isinstance(getattr(vit, unused), nn.Module):
                setattr(vit, unused, nn.Identity())

    def _positions(self, grid: tuple[int, int]) -> tuple[torch.Tensor | None, torch.Tensor]:
        pos = self.vit.pos_embed
        if self.vit.no_embed_class:
            return None, resample_patch_pos_embed(pos, grid)
        return pos[:, : self.num_prefix], resample_patch_pos_embed(pos[:, self.num_prefix :], grid)

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        vit = self.vit
        b, _, height, width = x.shape
        grid = (height // self.stride, width // self.stride)
        tokens = vit.patch_embed(x)
        if tokens.ndim == 4:  # NHWC output of dynamic patch embeddings
            tokens = tokens.flatten(1, 2)
        prefix_pos, patch_pos = self._positions(grid)
        tokens = tokens + patch_pos
        prefix = [t.expand(b, -1, -1) for t in (getattr(vit, "cls_token", None), getattr(vit, "reg_token", None), getattr(vit, "dist_token", None)) if t is not None]
        if prefix:
            prefix_tokens = torch.cat(prefix, dim=1)
            if prefix_pos is not None:
                prefix_tokens = prefix_tokens + prefix_pos
            tokens = torch.cat([prefix_tokens, tokens], dim=1)
        tokens = vit.norm_pre(vit.pos_drop(tokens))
        aux = tokens
        for index, block in enumerate(vit.blocks):
            tokens = block(tokens)
            if index == self.aux_index:
                aux = tokens
        tokens = vit.norm(tokens)
        return BackboneFeatures(self._to_map(tokens, grid), self._to_map(aux, grid))

    def _to_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        patch = tokens[:, self.num_prefix :]
        return patch.transpose(1, 2).reshape(patch.shape[0], patch.shape[2], *grid).contiguous()


def build(arch: str, *, pretrained: str = "none", img_size: int = 448, aux_layer: int = -3, **_: object) -> ViTBackbone:
    if not (arch.startswith(("vit_", "deit_", "deit3_")) or arch == "test_vit"):
        raise UserError(f"backbone arch {arch!r} is not a timm ViT/DeiT name (vit_*, deit_*)")
    vit = create_timm_model(arch, pretrained, num_classes=0, drop_rate=0.0, drop_path_rate=0.0)
    if pretrained not in ("none", "timm"):
        # timm checkpoints carry the classification head; it is not part of this backbone.
        load_weights(vit, pretrained, ignore_prefixes=("head.", "head_dist.", "fc_norm."))
    return ViTBackbone(vit, aux_layer=aux_layer)
