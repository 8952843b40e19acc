"""timm ConvNeXt as a dupl backbone (``--set model.backbone=convnext --set model.arch=convnext_tiny``).

``final`` = the last stage, ``aux`` = the stage before. The last stage is dilated (timm
``output_stride=16``) so the CAM grid stays at 1/16 of the input, like dupl's ResNet, and both
maps share it. Any timm ConvNeXt name works (``convnext_*``, ``convnextv2_*``, ``test_convnext``).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from dupl_cli.errors import UserError
from dupl_cli.models.backbones.base import BackboneFeatures, create_timm_model, load_weights


class ConvNeXtBackbone(nn.Module):
    """The dupl backbone protocol: ``out_channels``, ``aux_channels``, ``stride`` and
    ``forward(x) -> BackboneFeatures(final, aux)``."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.aux_channels, self.out_channels = features.feature_info.channels()[-2:]
        self.stride = features.feature_info.reduction()[-1]

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        aux, final = self.features(x)
        return BackboneFeatures(final=final, aux=aux)


def build(
    arch: str, *, pretrained: str = "none", img_size: int = 448, aux_layer: int = -3, **_: object
) -> ConvNeXtBackbone:
    """Factory registered in the ``dupl.backbones`` group; ``aux_layer`` (a ViT setting) is ignored."""
    if not arch.startswith(("convnext", "test_convnext")):
        raise UserError(f"backbone arch {arch!r} is not a timm ConvNeXt name (convnext_*, test_convnext)")
    net = create_timm_model(arch, pretrained, features_only=True, out_indices=(2, 3), output_stride=16)
    if pretrained not in ("none", "timm"):
        # A plain timm ConvNeXt checkpoint also holds the classifier head, which is skipped.
        load_weights(net, pretrained, key_map=timm_to_features_key, ignore_prefixes=("head.",))
    return ConvNeXtBackbone(net)


def timm_to_features_key(key: str) -> str:
    """``stages.2.blocks.0...`` (timm ConvNeXt) -> ``stages_2.blocks.0...`` (its features_only wrapper)."""
    key = key.removeprefix("module.").removeprefix("backbone.")
    return re.sub(r"^(stem|stages)\.(\d+)", r"\1_\2", key)
