"""timm ResNet family (``model.backbone = "resnet"``): the generic timm CNN family restricted to ResNets.

``final`` = last stage, ``aux`` = the stage before, both at output stride 16 (the last stage
dilated; ``model.output_stride = 8`` dilates the last two, as DeepLab-V2); see ``timm_cnn``. Kept
as its own name for the ``voc-r50`` preset and older configs.
"""

from __future__ import annotations

from dupl_cli.core.errors import UserError
from dupl_cli.models.backbones.timm_cnn import OUTPUT_STRIDE, TimmCNNBackbone, create_cnn

PREFIXES = ("resnet", "resnext", "seresnet", "wide_resnet", "resnest", "test_resnet")


def build(
    arch: str,
    *,
    pretrained: str = "none",
    img_size: int = 448,
    aux_layer: int = -3,
    output_stride: int = OUTPUT_STRIDE,
    **_: object,
) -> TimmCNNBackbone:
    if not arch.startswith(PREFIXES):
        raise UserError(
            f"backbone arch {arch!r} is not a timm ResNet name (resnet*); any timm CNN: model.backbone=timm"
        )
    return TimmCNNBackbone(create_cnn(arch, pretrained, output_stride), arch)
