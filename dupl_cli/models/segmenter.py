"""The second stage's network: one fully supervised segmenter (backbone + ``model.head``).

:class:`SegmenterModel` holds it as the only member of ``students``, the container every prediction
path, export and checkpoint already reads (``len(model.students)`` is 1, as for a one-student DuPL
checkpoint), so ``evaluate``, ``infer``, ``submit`` and ``export`` run a stage-2 checkpoint
unchanged. It has no classifiers: CAMs need a stage-1 run.
"""

from __future__ import annotations

import torch
from torch import nn

from dupl_cli.models.backbones import build_backbone
from dupl_cli.models.seg_heads import backbone_pyramid, build_head, pyramid_channels


class Segmenter(nn.Module):
    """Backbone + segmentation head; ``segment(x)`` (= ``forward``) gives logits B×(C+1)×h×w."""

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segment(x)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits at the head's resolution (input already padded to the stride)."""
        return self.head(backbone_pyramid(self.backbone, x))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, head parameters); frozen ones left out."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return backbone, [p for p in self.head.parameters() if p.requires_grad]


class SegmenterModel(nn.Module):
    """One :class:`Segmenter` in a one-member ``students`` list (see the module docstring)."""

    def __init__(self, segmenter: Segmenter) -> None:
        super().__init__()
        self.students = nn.ModuleList([segmenter])
        self.num_classes = segmenter.num_classes

    @property
    def segmenter(self) -> Segmenter:
        return self.students[0]

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        return self.segmenter.param_groups()


def build_segmenter(model_settings, num_classes: int, img_size: int) -> Segmenter:
    """The backbone of ``model.backbone``/``model.arch`` (``model.output_stride``) with ``model.head``."""
    backbone = build_backbone(model_settings, img_size)
    head = build_head(
        model_settings.head,
        pyramid_channels(backbone),
        num_classes + 1,
        width=model_settings.head_channels,
        dilation=model_settings.head_dilation,
        rates=model_settings.head_rates,
    )
    return Segmenter(backbone, head, num_classes)


def build_segmenter_model(model_settings, num_classes: int, img_size: int) -> SegmenterModel:
    return SegmenterModel(build_segmenter(model_settings, num_classes, img_size))


def is_segmenter(model: nn.Module) -> bool:
    """A stage-2 model (no classifiers, no CAMs)."""
    return isinstance(model, SegmenterModel) or isinstance(model, Segmenter)
