"""Any timm vision transformer as a DuPL backbone (docs/method.md §2), by name in ``model.arch``.

Covers timm's ``VisionTransformer`` family (DeiT and distilled DeiT, DeiT-III, ViT in1k / in21k /
augreg, CLIP, SigLIP, DINOv2 with and without registers, hybrid ResNet-ViTs) and its ``Eva`` family
(EVA-02, DINOv3, the ``vit_*_rope_*`` models), patch 14 or 16 or any other.

* Inputs of any size are zero-padded at the bottom and right to a multiple of the patch size
  (``stride``); the maps cover the padded input (``dupl_cli.models.geometry`` maps them back).
* Prefix tokens (class, registers, distillation token: timm's ``num_prefix_tokens``) are dropped
  from the maps; they stay in every block, as in pretraining.
* The absolute position embedding, if any, is resampled bicubically to the token grid of every
  input *without* antialiasing (timm's dynamic-size path antialiases, which shifts the 0.5-scale CAM),
  prefix positions kept, and is frozen. Rotary embeddings (EVA-02, DINOv3) come from timm's own RoPE
  module, computed for the actual (possibly non-square) grid.
* ``final`` is the last block's output after the model's final norm (``norm``, or, for models that
  normalise after pooling such as EVA-02, ``fc_norm`` applied per token); ``aux`` is block
  ``aux_layer``'s output without norm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dupl_cli.core.errors import UserError
from dupl_cli.models.backbones.base import create_timm_model, pretrained_normalisation
from dupl_cli.models.geometry import _tracing, pad_to_multiple
from dupl_cli.plugins.backbone import BackboneFeatures

# timm modules whose models this family runs (checked before anything is built or downloaded).
TIMM_MODULES = ("vision_transformer", "vision_transformer_hybrid", "deit", "eva")


def resample_patch_pos_embed(
    pos: torch.Tensor, grid: tuple[int, int], source: tuple[int, int] | None = None
) -> torch.Tensor:
    """1×N×D patch embedding on the ``source`` grid (default square) → 1×(h·w)×D, bicubic, no antialias."""
    n, dim = pos.shape[1], pos.shape[2]
    if source is None:
        side = math.isqrt(n)
        source = (side, side)
    if source[0] * source[1] != n:
        raise ValueError(f"positional embedding of {n} tokens is not a {source[0]}x{source[1]} grid")
    # The shortcut is skipped while tracing/exporting: a traced graph must resample at every size.
    if not _tracing() and tuple(source) == tuple(grid):
        return pos
    square = pos.reshape(1, source[0], source[1], dim).permute(0, 3, 1, 2)
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
        self.out_channels = self.aux_channels = vit.embed_dim
        self.stride = int(vit.patch_embed.feat_ratio())
        self.num_prefix = vit.num_prefix_tokens
        self.input_normalisation = pretrained_normalisation(vit)
        self.has_rope = getattr(vit, "rope", None) is not None  # Eva family; built for dynamic grids
        self.source_grid = tuple(vit.patch_embed.grid_size)
        vit.patch_embed.strict_img_size = False
        pos = getattr(vit, "pos_embed", None)
        self.pos_prefix = 0 if pos is None else pos.shape[1] - self.source_grid[0] * self.source_grid[1]
        if pos is not None:
            pos.requires_grad_(False)
            if self.pos_prefix not in (0, self.num_prefix):
                raise UserError(
                    f"ViT position embedding of {pos.shape[1]} tokens does not fit its {self.source_grid} "
                    "grid"
                )
        # Models that pool before normalising (EVA-02, avg-pool ViTs) keep their last norm in fc_norm.
        self.norm_name = "norm" if not isinstance(vit.norm, nn.Identity) else "fc_norm"
        # Unused classifier parts stay out of the optimiser.
        for unused in ("head", "head_drop", "attn_pool", "fc_norm" if self.norm_name == "norm" else ""):
            if unused and isinstance(getattr(vit, unused, None), nn.Module):
                setattr(vit, unused, nn.Identity())

    def _prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        # timm's order: class, then registers (VisionTransformer, Eva) or the distillation token (DeiT).
        names = ("cls_token", "reg_token", "dist_token")
        found = [t for name in names if (t := getattr(self.vit, name, None)) is not None]
        return [t.expand(batch, -1, -1) for t in found]

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Padded image → (tokens B×(P+N)×D with positions, token grid)."""
        vit = self.vit
        b, _, height, width = x.shape
        tokens = vit.patch_embed(x)
        if tokens.ndim == 4:  # NHWC output of dynamic-size patch embeddings
            grid = (tokens.shape[1], tokens.shape[2])
            tokens = tokens.flatten(1, 2)
        else:
            grid = (height // self.stride, width // self.stride)
        prefix = self._prefix_tokens(b)
        pos = getattr(vit, "pos_embed", None)
        if pos is not None:
            tokens = tokens + resample_patch_pos_embed(pos[:, self.pos_prefix :], grid, self.source_grid)
            if self.pos_prefix:
                prefix = [torch.cat(prefix, 1) + pos[:, : self.pos_prefix]]
        if prefix:
            tokens = torch.cat([*prefix, tokens], dim=1)
        # Patch dropout is off (timm's default rate 0): an identity, so it is not called.
        tokens = vit.pos_drop(tokens)
        return vit.norm_pre(tokens), grid

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        return self._run(x, aux_only=False)

    def forward_aux(self, x: torch.Tensor) -> torch.Tensor:
        """The aux map alone: the blocks after ``aux_layer`` and the final norm are not run."""
        return self._run(x, aux_only=True).aux

    def _run(self, x: torch.Tensor, aux_only: bool) -> BackboneFeatures:
        tokens, grid = self._embed(pad_to_multiple(x, self.stride))
        rope = self.vit.rope.get_embed(shape=list(grid)) if self.has_rope else None
        mixed = getattr(self.vit, "rope_mixed", False)  # depth-dependent RoPE: one embedding per block
        aux = tokens
        for index, block in enumerate(self.vit.blocks):
            if rope is None:
                tokens = block(tokens)
            else:
                tokens = block(tokens, rope=rope[index] if mixed else rope)
            if index == self.aux_index:
                aux = tokens
                if aux_only:
                    return BackboneFeatures(None, self._to_map(aux, grid))
        tokens = getattr(self.vit, self.norm_name)(tokens)
        return BackboneFeatures(self._to_map(tokens, grid), self._to_map(aux, grid))

    def _to_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        patch = tokens[:, self.num_prefix :]
        return patch.transpose(1, 2).reshape(patch.shape[0], patch.shape[2], *grid).contiguous()


def _check_name(arch: str) -> None:
    import timm
    from timm.models import get_arch_name, is_model_in_modules

    base = get_arch_name(arch)
    if timm.is_model(base) and not is_model_in_modules(base, TIMM_MODULES):
        raise UserError(
            f"backbone arch {arch!r} is not a timm vision transformer this family runs (timm modules "
            f"{', '.join(TIMM_MODULES)}); for a CNN set model.backbone=timm"
        )


def build(
    arch: str, *, pretrained: str = "none", img_size: int = 448, aux_layer: int = -3, **_: object
) -> ViTBackbone:
    """``arch``: any timm ViT name, optionally with its weights tag (``vit_base_patch16_clip_224.openai``)."""
    from timm.models import get_arch_name, is_model_in_modules

    _check_name(arch)
    kwargs = dict(num_classes=0, drop_rate=0.0, drop_path_rate=0.0)
    if is_model_in_modules(get_arch_name(arch), ("eva",)):
        kwargs["dynamic_img_size"] = True  # RoPE built per grid instead of cached for the pretraining size
    vit = create_timm_model(arch, pretrained, **kwargs)
    return ViTBackbone(vit, aux_layer=aux_layer)
