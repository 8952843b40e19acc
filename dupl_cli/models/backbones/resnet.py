"""timm ResNet backbone: ``final`` = last stage, ``aux`` = the stage before (output stride 16).

The last stage is dilated (timm ``output_stride=16``) so CAMs keep the resolution WSSS needs;
both maps then share the token grid.
"""

from __future__ import annotations

import torch
from torch import nn

from dupl_cli.errors import UserError
from dupl_cli.models.backbones.base import BackboneFeatures, create_timm_model, load_weights


class ResNetBackbone(nn.Module):
    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.aux_channels, self.out_channels = features.feature_info.channels()[-2:]
        self.stride = features.feature_info.reduction()[-1]

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        aux, final = self.features(x)
        return BackboneFeatures(final, aux)


def build(arch: str, *, pretrained: str = "none", img_size: int = 448, aux_layer: int = -3, **_: object) -> ResNetBackbone:
    if not (arch.startswith(("resnet", "resnext", "seresnet", "wide_resnet")) or arch == "test_resnet"):
        raise UserError(f"backbone arch {arch!r} is not a timm ResNet name (resnet*)")
    net = create_timm_model(arch, pretrained, features_only=True, out_indices=(3, 4), output_stride=16)
    if pretrained not in ("none", "timm"):
        # Plain timm/torchvision ResNet checkpoints name layers without the features_only wrapper.
        load_weights(net, pretrained, ignore_prefixes=("fc.",))
    return ResNetBackbone(net)
