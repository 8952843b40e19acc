"""Backbones: the contract in ``base``; built-in families (vit, timm, resnet, mit) register as plugins."""

from __future__ import annotations

from dupl_cli.plugins import BACKBONES, load
from dupl_cli.plugins.backbone import Backbone, BackboneFeatures

__all__ = ["Backbone", "BackboneFeatures", "build_backbone"]


def build_backbone(model_settings, img_size: int) -> Backbone:
    """Build the backbone named by ``model.backbone`` (entry point) and ``model.arch``."""
    factory = load(BACKBONES, model_settings.backbone)
    return factory(
        model_settings.arch,
        pretrained=model_settings.pretrained,
        img_size=img_size,
        aux_layer=model_settings.aux_layer,
    )
