"""SegFormer's Mix Transformer (MiT-B0..B5), written from the SegFormer paper (Xie et al., 2021).

Four stages, each: an *overlapping* patch embedding (a strided convolution, 7×7/4 for the first
stage, 3×3/2 after, then LayerNorm), transformer blocks with *efficient self-attention* (keys
and values come from a map shrunk by a strided convolution of ratio R = 8, 4, 2, 1) and a
*Mix-FFN* (linear → 3×3 depth-wise convolution → GELU → linear; the convolution leaks position,
so there is no positional embedding and any input size works), and a LayerNorm.

Feature maps for DuPL (docs/method.md §2: one final map for the classifier, CAM and segmentation
head, one intermediate map for the auxiliary CAM):

* ``final`` = stage 4 after its norm, **at output stride 16**. The stock stage 4 runs at stride
  32, which gives 14×14 CAMs on 448 crops: too coarse for pseudo-labels and half the ViT-B/16
  grid. As with dilated ResNets, stage 4's patch embedding runs at stride 1 and stage 4's
  depth-wise convolutions dilate by 2, so on the even positions every convolution sees exactly
  the neighbours it sees in the stride-32 network and ImageNet weights load unchanged. Stage 4 uses
  full attention (R = 1), which is position-free, so only the key set grows (interleaved
  tokens); ``output_stride=32`` restores the stock network.
* ``aux`` = stage 3 after its norm (stride 16, the same grid as ``final``), the MiT analogue
  of the ViT's block 10: semantic but less class-specific than the last stage. ``aux_layer`` is
  a ViT setting and is ignored here.

Weights: local files in the SegFormer release naming (``patch_embed1.proj.weight``,
``block1.0.attn.q.weight``, ``block1.0.attn.kv``, ``attn.sr``, ``mlp.dwconv.dwconv.weight``,
``norm1``...), optionally with the mmseg ``backbone.`` prefix; classification and decode heads
in the file are skipped. The timm hub has no MiT weights.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from dupl_cli.core.errors import UserError
from dupl_cli.models.backbones.base import load_weights
from dupl_cli.models.geometry import pad_to_multiple
from dupl_cli.plugins.backbone import BackboneFeatures

# Stage widths and block counts per variant; heads, reduction ratios and MLP ratio are shared.
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}
NUM_HEADS = (1, 2, 5, 8)
REDUCTION_RATIOS = (8, 4, 2, 1)
MLP_RATIO = 4


class OverlapPatchEmbed(nn.Module):
    """Strided convolution whose kernel overlaps neighbouring patches, then LayerNorm."""

    def __init__(self, in_ch: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[2], x.shape[3]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from the map shrunk ``ratio`` times per side."""

    def __init__(self, dim: int, heads: int, ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ratio = ratio
        if ratio > 1:
            self.reduce = nn.Conv2d(dim, dim, ratio, stride=ratio)
            self.reduce_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, dim = x.shape
        q = self.q(x).reshape(b, n, self.heads, dim // self.heads).transpose(1, 2)
        context = x
        if self.ratio > 1:
            grid = x.transpose(1, 2).reshape(b, dim, height, width)
            context = self.reduce_norm(self.reduce(grid).flatten(2).transpose(1, 2))
        k, v = self.kv(context).reshape(b, -1, 2, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, dim))


class MixFFN(nn.Module):
    """Linear → 3×3 depth-wise conv (positional cue) → GELU → linear."""

    def __init__(self, dim: int, hidden: int, dilation: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.fc1(x)
        b, _, hidden = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, hidden, height, width)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class MixBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ratio: int, dilation: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientSelfAttention(dim, heads, ratio)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = MixFFN(dim, dim * MLP_RATIO, dilation)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), height, width)
        return x + self.ffn(self.norm2(x), height, width)


class MixStage(nn.Module):
    def __init__(self, in_ch: int, dim: int, depth: int, index: int, dilation: int = 1) -> None:
        super().__init__()
        kernel, stride = (7, 4) if index == 0 else (3, 2)
        if dilation > 1:
            stride = 1  # the convolutions after this one dilate instead (see module docstring)
        self.embed = OverlapPatchEmbed(in_ch, dim, kernel, stride)
        self.blocks = nn.ModuleList(
            MixBlock(dim, NUM_HEADS[index], REDUCTION_RATIOS[index], dilation) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, height, width = self.embed(x)
        for block in self.blocks:
            tokens = block(tokens, height, width)
        tokens = self.norm(tokens)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


class MixVisionTransformer(nn.Module):
    """MiT backbone returning ``BackboneFeatures(final=stage 4, aux=stage 3)``."""

    def __init__(self, dims: tuple[int, ...], depths: tuple[int, ...], output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in (16, 32):
            raise UserError(f"MiT output stride must be 16 or 32, not {output_stride}")
        last_dilation = 2 if output_stride == 16 else 1
        in_chs = (3, *dims[:-1])
        self.stages = nn.ModuleList(
            MixStage(in_chs[i], dims[i], depths[i], i, dilation=last_dilation if i == 3 else 1)
            for i in range(4)
        )
        self.out_channels = dims[3]
        self.aux_channels = dims[2]
        self.pyramid_channels = tuple(dims)  # forward_pyramid: strides 4, 8, 16, 16 (or 32)
        self.stride = output_stride
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        # Padded like every family, so the maps cover ceil(H / stride) cells of the padded input.
        x = pad_to_multiple(x, self.stride)
        for stage in self.stages[:3]:
            x = stage(x)
        return BackboneFeatures(final=self.stages[3](x), aux=x)

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stages' maps, finest first (SegFormer's decoder input); the last is ``final``."""
        maps = [pad_to_multiple(x, self.stride)]
        for stage in self.stages:
            maps.append(stage(maps[-1]))
        return maps[1:]


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal linears, fan-out normal convolutions, unit LayerNorms (random-init training)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# SegFormer release name (after the optional mmseg "backbone." prefix) -> this module's name.
_BLOCK_PARTS = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.q": "attn.q",
    "attn.kv": "attn.kv",
    "attn.proj": "attn.proj",
    "attn.sr": "attn.reduce",
    "attn.norm": "attn.reduce_norm",
    "mlp.fc1": "ffn.fc1",
    "mlp.fc2": "ffn.fc2",
    "mlp.dwconv.dwconv": "ffn.dwconv",
}
_SKIPPED_PREFIXES = ("head.", "decode_head.", "auxiliary_head.")
_EMBED = re.compile(r"patch_embed([1-4])\.(proj|norm)\.(weight|bias)")
_BLOCK = re.compile(r"block([1-4])\.(\d+)\.(.+)\.(weight|bias)")
_NORM = re.compile(r"norm([1-4])\.(weight|bias)")


def segformer_key(key: str) -> str | None:
    """Map one SegFormer/mmseg state-dict key to this module's key; ``None`` drops heads.

    Keys that match no rule pass through unchanged, so ``load_weights`` reports them by name.
    """
    key = key.removeprefix("module.").removeprefix("backbone.")
    if key.startswith(_SKIPPED_PREFIXES):
        return None
    if m := _EMBED.fullmatch(key):
        return f"stages.{int(m[1]) - 1}.embed.{m[2]}.{m[3]}"
    if (m := _BLOCK.fullmatch(key)) and m[3] in _BLOCK_PARTS:
        return f"stages.{int(m[1]) - 1}.blocks.{m[2]}.{_BLOCK_PARTS[m[3]]}.{m[4]}"
    if m := _NORM.fullmatch(key):
        return f"stages.{int(m[1]) - 1}.norm.{m[2]}"
    return key


def build(
    arch: str,
    *,
    pretrained: str = "none",
    img_size: int = 448,
    aux_layer: int = -3,
    output_stride: int = 16,
    **_: object,
) -> MixVisionTransformer:
    """MiT backbone ``mit_b0`` .. ``mit_b5``; ``pretrained`` is ``none`` or a local SegFormer weights file."""
    if arch not in VARIANTS:
        raise UserError(f"backbone arch {arch!r} is not a MiT variant (one of {', '.join(VARIANTS)})")
    if pretrained == "timm":
        raise UserError(
            "MiT weights are not on the timm hub; download SegFormer's ImageNet weights "
            f"(e.g. {arch}.pth) and set model.pretrained to that local file, or use 'none'"
        )
    dims, depths = VARIANTS[arch]
    model = MixVisionTransformer(dims, depths, output_stride=output_stride)
    if pretrained != "none":
        load_weights(model, pretrained, key_map=segformer_key)
    return model
