"""One DuPL student: backbone, max-pooled bias-free classifiers and a LargeFOV head (docs/method.md §2)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dupl_cli.models.heads import LargeFOV


class StudentOutput(NamedTuple):
    logits: torch.Tensor  # B×C, classifier on the global max-pooled final map
    aux_logits: torch.Tensor  # B×C, auxiliary classifier on the pooled intermediate map
    seg: torch.Tensor  # B×(C+1)×h×w at token resolution
    features: torch.Tensor  # B×D×h×w final feature map
    aux_features: torch.Tensor | None = None  # B×D'×h'×w' intermediate map (the aux CAM's input)


class Student(nn.Module):
    def __init__(
        self, backbone: nn.Module, num_classes: int, *, head_channels: int = 512, head_dilation: int = 5
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=False)
        self.aux_classifier = nn.Conv2d(backbone.aux_channels, num_classes, 1, bias=False)
        self.head = LargeFOV(backbone.out_channels, num_classes + 1, head_channels, head_dilation)

    @staticmethod
    def _pooled_logits(classifier: nn.Conv2d, fmap: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_max_pool2d(fmap, 1)
        return classifier(pooled).flatten(1)

    def forward(self, x: torch.Tensor) -> StudentOutput:
        final, aux = self.backbone(x)
        return StudentOutput(
            logits=self._pooled_logits(self.classifier, final),
            aux_logits=self._pooled_logits(self.aux_classifier, aux),
            seg=self.head(final),
            features=final,
            aux_features=aux,
        )

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Inference path: segmentation logits at token resolution (backbone + head only)."""
        return self.head(self.backbone(x).final)

    def cams(self, x: torch.Tensor, *, final: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Raw CAMs (classifier weights as 1x1 convs, no ReLU): final-map CAM and auxiliary CAM.

        ``final=False`` returns (None, aux CAM) and stops a backbone with ``forward_aux`` at the
        auxiliary layer (the blocks after it would be computed for nothing).
        """
        if not final and hasattr(self.backbone, "forward_aux"):
            return self.raw_cams(None, self.backbone.forward_aux(x))
        fmap, aux = self.backbone(x)
        return self.raw_cams(fmap if final else None, aux)

    def raw_cams(self, fmap: torch.Tensor | None, aux: torch.Tensor | None):
        """The raw CAMs (final, aux) of given feature maps, e.g. a training forward's ``features`` and
        ``aux_features``; None for a map not given."""
        cam = None if fmap is None else F.conv2d(fmap, self.classifier.weight)
        return cam, (None if aux is None else F.conv2d(aux, self.aux_classifier.weight))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, classifier + head parameters); frozen ones left out."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        heads = [
            p
            for module in (self.classifier, self.aux_classifier, self.head)
            for p in module.parameters()
            if p.requires_grad
        ]
        return backbone, heads
