"""Any timm CNN as a DuPL backbone (``model.backbone = "timm"``, the timm name in ``model.arch``).

ConvNeXt, ResNet / ResNeXt / ResNeSt, EfficientNet, RegNet, NFNet, ByobNet ... : ``final`` is the
last feature level and ``aux`` the one before (timm's ``feature_info``), read with timm's
``forward_intermediates``. The last stage is dilated (timm ``output_stride=16``) so the CAM grid
stays at 1/16 of the input and both maps share it; models timm cannot dilate (MobileNetV3,
DenseNet, ...) keep their native stride (``stride`` then reports 32, ``aux`` is at 16). Parts after
the last level (pooling, head, final norm) are pruned. Inputs are zero-padded at the bottom and
right to a multiple of ``stride`` (so ``h = ceil(H / stride)`` for every architecture).
``aux_layer`` (a ViT setting) is ignored. ``output_stride`` (``model.output_stride``: 8, 16 or 32)
dilates the last stages to that stride where timm can (DeepLab-V2 runs ResNet-101 at 8).

``forward_pyramid`` (for the stage-2 heads, ``models.seg_heads``) returns every level from stride 4
on, finest first, ending with ``final``; ``pyramid_channels`` are their widths.
"""

from __future__ import annotations

import torch
from torch import nn

from dupl_cli.core.errors import UserError
from dupl_cli.models.backbones.base import create_timm_model, pretrained_normalisation
from dupl_cli.models.geometry import pad_to_multiple
from dupl_cli.plugins.backbone import BackboneFeatures

OUTPUT_STRIDE = 16
OUTPUT_STRIDES = (8, 16, 32)
PYRAMID_MIN_STRIDE = 4  # levels finer than this (a stem at stride 2) are not handed to heads
# Transformers have one token grid and their own family (position embeddings, prefix tokens).
VIT_MODULES = ("vision_transformer", "vision_transformer_hybrid", "vision_transformer_relpos", "deit", "eva")


class TimmCNNBackbone(nn.Module):
    """The dupl backbone protocol over a timm CNN: ``out_channels``, ``aux_channels``, ``stride`` and
    ``forward(x) -> BackboneFeatures(final, aux)``."""

    def __init__(self, features: nn.Module, arch: str = "") -> None:
        super().__init__()
        levels = len(features.feature_info)
        if levels < 2:
            raise UserError(f"timm model {arch} has {levels} feature level(s); the timm family needs two")
        self.indices = [levels - 2, levels - 1]
        features.prune_intermediate_layers(self.indices, prune_norm=True, prune_head=True)
        self.features = features
        info = features.feature_info
        self.aux_channels, self.out_channels = (int(info[i]["num_chs"]) for i in self.indices)
        self.stride = int(info[self.indices[-1]]["reduction"])
        fine = [i for i in range(levels) if int(info[i]["reduction"]) >= PYRAMID_MIN_STRIDE]
        self.pyramid_indices = fine if fine and fine[-1] == levels - 1 else self.indices
        self.pyramid_channels = tuple(int(info[i]["num_chs"]) for i in self.pyramid_indices)
        self.input_normalisation = pretrained_normalisation(features)
        self._probe(arch)

    @torch.no_grad()
    def _probe(self, arch: str) -> None:
        """One small forward at a non-square size: architectures that need fixed sizes fail here, once."""
        was_training = self.training
        self.eval()
        try:
            final, aux = self(torch.zeros(1, 3, 2 * self.stride, 3 * self.stride))
        except Exception as exc:  # window sizes, fixed position tables ... raise many types
            raise UserError(
                f"timm model {arch} does not run at other input sizes ({type(exc).__name__}: {exc}); "
                "not usable as model.backbone=timm"
            ) from None
        finally:
            self.train(was_training)
        channels = (final.shape[1], aux.shape[1])
        if channels != (self.out_channels, self.aux_channels) or final.shape[-2:] != (2, 3):
            raise UserError(
                f"timm model {arch}: feature maps {list(aux.shape)} / {list(final.shape)} do not match its "
                f"feature_info (channels {self.aux_channels} / {self.out_channels}, stride {self.stride})"
            )

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        x = pad_to_multiple(x, self.stride)
        aux, final = self.features.forward_intermediates(x, indices=self.indices, intermediates_only=True)
        return BackboneFeatures(final=final, aux=aux)

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every level from stride 4 on (``pyramid_channels``), finest first; the last is ``final``."""
        x = pad_to_multiple(x, self.stride)
        maps = self.features.forward_intermediates(x, indices=self.pyramid_indices, intermediates_only=True)
        return list(maps)


def create_cnn(arch: str, pretrained: str, output_stride: int = OUTPUT_STRIDE) -> nn.Module:
    """The timm model dilated to ``output_stride`` (default 16) where timm supports it, without a
    classifier."""
    from timm.models import get_arch_name, is_model_in_modules

    if output_stride not in OUTPUT_STRIDES:
        raise UserError(f"model.output_stride must be one of 8, 16, 32 for timm CNNs, not {output_stride}")
    if is_model_in_modules(get_arch_name(arch), VIT_MODULES):
        raise UserError(f"backbone arch {arch!r} is a timm vision transformer: set model.backbone=vit")
    try:
        net = create_timm_model(arch, pretrained, num_classes=0, output_stride=output_stride)
    except TypeError as exc:
        if "output_stride" not in str(exc):
            raise
        net = create_timm_model(arch, pretrained, num_classes=0)  # not dilatable: native stride
    if not hasattr(net, "forward_intermediates") or not hasattr(net, "feature_info"):
        raise UserError(
            f"timm model {arch} has no forward_intermediates/feature_info; not usable as model.backbone=timm"
        )
    return net


def build(
    arch: str,
    *,
    pretrained: str = "none",
    img_size: int = 448,
    aux_layer: int = -3,
    output_stride: int = OUTPUT_STRIDE,
    **_: object,
) -> TimmCNNBackbone:
    """``arch`` is any timm CNN name, optionally with its pretrained tag (``convnext_tiny.fb_in22k``)."""
    return TimmCNNBackbone(create_cnn(arch, pretrained, output_stride), arch)
