"""Segmentation heads of the second stage (``model.head``), each on any registered backbone.

A head takes the backbone's feature pyramid, finest map first and the backbone's ``final`` map last
(:func:`backbone_pyramid`), and returns logits B×(C+1)×h×w at the resolution it decodes to; callers
resample them onto pixels exactly as they do the LargeFOV head's (``models.geometry``).

* ``largefov``: DuPL's own head (docs/method.md §2) on ``final``.
* ``deeplabv2``: ASPP-L of DeepLab-V2 (Chen et al., TPAMI 2018): four 3×3 convolutions to the
  classes at dilations 6, 12, 18, 24 on ``final``, summed (each with a bias, weights N(0, 0.01)).
* ``deeplabv3plus``: DeepLab-V3+ (Chen et al., ECCV 2018): ASPP (1×1, three 3×3 at dilations 6, 12,
  18, image pooling; ``head_channels`` wide, BN + ReLU) projected and upsampled onto the finest map,
  concatenated with that map reduced to 48 channels, two 3×3 convolutions, a 1×1 classifier.
* ``segformer``: SegFormer's all-MLP decoder (Xie et al., NeurIPS 2021): every level projected to
  ``head_channels`` by a linear layer, upsampled to the finest level, concatenated, fused by a 1×1
  convolution with BN + ReLU, dropout 0.1, a 1×1 classifier.

Backbones that offer a pyramid (``forward_pyramid`` and ``pyramid_channels``: the timm CNNs and MiT)
give the decoders their stride-4 map; the others (ViT, plugins) give ``[aux, final]``. Nothing
branches on input sizes, so every head traces with dynamic height and width (ONNX export).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dupl_cli.core.errors import UserError
from dupl_cli.models.heads import LargeFOV

HEADS = ("largefov", "deeplabv2", "deeplabv3plus", "segformer")
DEFAULT_RATES = {"deeplabv2": (6, 12, 18, 24), "deeplabv3plus": (6, 12, 18)}
LOW_LEVEL_CHANNELS = 48  # DeepLab-V3+'s reduction of the fine map
DROPOUT = 0.1  # DeepLab-V3+ and SegFormer before their classifiers


def pyramid_channels(backbone: nn.Module) -> tuple[int, ...]:
    """Channels of :func:`backbone_pyramid`'s maps."""
    channels = getattr(backbone, "pyramid_channels", None)
    if channels and hasattr(backbone, "forward_pyramid"):
        return tuple(int(c) for c in channels)
    return (int(backbone.aux_channels), int(backbone.out_channels))


def backbone_pyramid(backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The backbone's maps for a head: ``forward_pyramid`` when it has one, else ``[aux, final]``."""
    if getattr(backbone, "pyramid_channels", None) and hasattr(backbone, "forward_pyramid"):
        return list(backbone.forward_pyramid(x))
    final, aux = backbone(x)
    return [aux, final]


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class FinalMapHead(nn.Module):
    """LargeFOV (docs/method.md §2) on the final map."""

    def __init__(self, channels: Sequence[int], num_out: int, width: int = 512, dilation: int = 5) -> None:
        super().__init__()
        self.head = LargeFOV(channels[-1], num_out, width, dilation)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(features[-1])


class DeepLabV2Head(nn.Module):
    """ASPP-L: the sum of one dilated 3×3 convolution to the classes per rate."""

    def __init__(self, channels: Sequence[int], num_out: int, rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(channels[-1], num_out, 3, padding=r, dilation=r, bias=True) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        final = features[-1]
        out = self.branches[0](final)
        for conv in self.branches[1:]:
            out = out + conv(final)
        return out


class ASPP(nn.Module):
    """DeepLab-V3's ASPP: 1×1, one 3×3 per rate and image pooling, concatenated and projected."""

    def __init__(self, cin: int, width: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(cin, width)] + [_conv_bn_relu(cin, width, 3, r) for r in rates]
        )
        # No norm on the pooled 1×1 map: batch norm cannot train on one value per channel (batch 1).
        self.pool = nn.Sequential(nn.Conv2d(cin, width, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(_conv_bn_relu(width * (len(rates) + 2), width), nn.Dropout(DROPOUT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(F.adaptive_avg_pool2d(x, 1)).expand(-1, -1, x.shape[-2], x.shape[-1])
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], 1))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the final map, decoded onto the finest map of the pyramid."""

    def __init__(
        self, channels: Sequence[int], num_out: int, width: int = 256, rates: Sequence[int] = (6, 12, 18)
    ) -> None:
        super().__init__()
        self.aspp = ASPP(channels[-1], width, rates)
        self.reduce = _conv_bn_relu(channels[0], LOW_LEVEL_CHANNELS)
        self.fuse = nn.Sequential(
            _conv_bn_relu(width + LOW_LEVEL_CHANNELS, width, 3),
            _conv_bn_relu(width, width, 3),
            nn.Dropout(DROPOUT),
        )
        self.classifier = nn.Conv2d(width, num_out, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = self.reduce(features[0])
        high = F.interpolate(
            self.aspp(features[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.classifier(self.fuse(torch.cat([high, low], 1)))


class SegFormerHead(nn.Module):
    """All-MLP decoder: per-level linear projections, upsampled to the finest level, fused, classified."""

    def __init__(self, channels: Sequence[int], num_out: int, width: int = 256) -> None:
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = _conv_bn_relu(width * len(channels), width)
        self.dropout = nn.Dropout(DROPOUT)
        self.classifier = nn.Conv2d(width, num_out, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        maps = [
            F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False) if i else proj(f)
            for i, (proj, f) in enumerate(zip(self.project, features, strict=True))
        ]
        # SegFormer concatenates the coarsest level first.
        return self.classifier(self.dropout(self.fuse(torch.cat(maps[::-1], 1))))


def build_head(
    name: str,
    channels: Sequence[int],
    num_out: int,
    *,
    width: int = 512,
    dilation: int = 5,
    rates: Sequence[int] | None = None,
) -> nn.Module:
    """The head ``name`` (``model.head``) for a backbone whose pyramid has ``channels``."""
    if name == "largefov":
        return FinalMapHead(channels, num_out, width, dilation)
    if name == "deeplabv2":
        return DeepLabV2Head(channels, num_out, tuple(rates or DEFAULT_RATES[name]))
    if name == "deeplabv3plus":
        return DeepLabV3PlusHead(channels, num_out, width, tuple(rates or DEFAULT_RATES[name]))
    if name == "segformer":
        return SegFormerHead(channels, num_out, width)
    raise UserError(f"model.head = {name!r} is not a segmentation head (one of {', '.join(HEADS)})")
