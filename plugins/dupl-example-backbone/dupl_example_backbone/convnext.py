"""timm ConvNeXt as a dupl backbone (``--set model.backbone=convnext --set model.arch=convnext_tiny``).

The pattern for a plugin that specialises dupl's generic timm CNN family
(``dupl_cli.models.backbones.timm_cnn``): check the names the plugin accepts, build the timm model
with dupl's weight handling (``none``, ``timm``, ``hf-hub:org/name`` or a local file), and wrap it in
``TimmCNNBackbone``, which reads the last two feature levels (``final`` = the last stage, ``aux`` =
the stage before) at output stride 16 (the last stage dilated, like dupl's ResNet). dupl's own
``model.backbone=timm`` does the same for any timm CNN; a plugin adds a name, its own checks, or
its own feature choice by overriding ``forward``. Any timm ConvNeXt name works (``convnext_*``,
``convnextv2_*``, ``test_convnext``).
"""

from __future__ import annotations

from dupl_cli.core.errors import UserError
from dupl_cli.models.backbones.timm_cnn import TimmCNNBackbone, create_cnn


class ConvNeXtBackbone(TimmCNNBackbone):
    """The dupl backbone protocol: ``out_channels``, ``aux_channels``, ``stride`` and
    ``forward(x) -> BackboneFeatures(final, aux)``, all from ``TimmCNNBackbone``."""


def build(
    arch: str, *, pretrained: str = "none", img_size: int = 448, aux_layer: int = -3, **_: object
) -> ConvNeXtBackbone:
    """Factory registered in the ``dupl.backbones`` group; ``aux_layer`` (a ViT setting) is ignored."""
    if not arch.startswith(("convnext", "test_convnext")):
        raise UserError(f"backbone arch {arch!r} is not a timm ConvNeXt name (convnext_*, test_convnext)")
    # A local timm ConvNeXt checkpoint (classifier head included) loads strictly; the head is skipped.
    return ConvNeXtBackbone(create_cnn(arch, pretrained), arch)
