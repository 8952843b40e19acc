"""Backbones: the contract in ``base``; built-in families (vit, timm, resnet, mit) register as plugins."""

from __future__ import annotations

from dupl_cli.core.errors import UserError
from dupl_cli.models.backbones.weights import exported_backbone, load_state_strict
from dupl_cli.plugins import BACKBONES, load
from dupl_cli.plugins.backbone import Backbone, BackboneFeatures

__all__ = ["Backbone", "BackboneFeatures", "build_backbone"]


def build_backbone(model_settings, img_size: int) -> Backbone:
    """Build the backbone named by ``model.backbone`` (entry point) and ``model.arch``.

    ``model.output_stride``, when set, is passed as the factory's ``output_stride`` keyword (factories
    that do not take it are called as before) and the built backbone must have that stride.
    """
    exported = exported_backbone(model_settings.pretrained)  # model.pretrained names a dupl export
    if exported is not None:  # its backbone: built without weights, then loaded strictly
        backbone = build_backbone(model_settings.model_copy(update={"pretrained": "none"}), img_size)
        load_state_strict(backbone, *exported)
        return backbone
    factory = load(BACKBONES, model_settings.backbone)
    kwargs = dict(pretrained=model_settings.pretrained, img_size=img_size, aux_layer=model_settings.aux_layer)
    output_stride = getattr(model_settings, "output_stride", None)
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    backbone = factory(model_settings.arch, **kwargs)
    if output_stride is not None and int(backbone.stride) != int(output_stride):
        raise UserError(
            f"model.output_stride = {output_stride}, but {model_settings.backbone}:{model_settings.arch} "
            f"has stride {backbone.stride} (a ViT's stride is its patch size; MiT takes 16 or 32)"
        )
    return backbone
