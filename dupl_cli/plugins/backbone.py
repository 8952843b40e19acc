"""The backbone contract every ``dupl.backbones`` factory keeps (see ``models.backbones.base`` for
the helpers that build one).

A backbone maps images B×3×H×W to ``BackboneFeatures(final, aux)``: ``final`` (B×D×h×w) feeds the
classifier, CAM and segmentation head; ``aux`` (B×D'×h'×w', an intermediate map) feeds the auxiliary
classifier. ``stride`` is the input pixels per cell of ``final``. Torch is imported for type checking
only, so the registry stays importable without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


class BackboneFeatures(NamedTuple):
    final: torch.Tensor
    aux: torch.Tensor


@runtime_checkable
class Backbone(Protocol):
    out_channels: int
    aux_channels: int
    stride: int

    def __call__(self, x: torch.Tensor) -> BackboneFeatures: ...

    def parameters(self, recurse: bool = True): ...
