"""The backbone contract.

A backbone maps images B×3×H×W to ``BackboneFeatures(final, aux)``: ``final`` (B×D×h×w) feeds
the classifier, CAM and segmentation head; ``aux`` (B×D'×h'×w', an intermediate map) feeds
the auxiliary classifier. ``stride`` is the input pixels per cell of ``final``: inputs of any size
are zero-padded at the bottom and right to a multiple of it, and ``h = ceil(H / stride)``
(``dupl_cli.models.geometry`` maps such maps back onto the image exactly). dupl pads every input to a
multiple of ``stride`` before it calls a backbone, so a plugin only has to handle multiples.

Factories registered under the ``dupl.backbones`` entry-point group have the signature
``build(arch, *, pretrained, img_size, aux_layer) -> Backbone``. Weight loading helpers live in
``weights`` and are re-exported here for plugins.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch

from dupl_cli.models.backbones.weights import (  # noqa: F401  (re-exported for plugins)
    create_timm_model,
    load_state_strict,
    load_weights,
    read_state_dict,
)


def pretrained_normalisation(model) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) a timm model's pretrained weights expect (its pretrained config), if it names them."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        return None
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def normalisation_mismatch(backbone, arch: str, pretrained: str, mean, std) -> str | None:
    """A warning when pretrained weights expect other mean/std than ``data.mean``/``data.std``, else None.

    Backbones may expose ``input_normalisation = (mean, std)``; random weights expect nothing.
    """
    expected = getattr(backbone, "input_normalisation", None)
    if pretrained == "none" or expected is None:
        return None
    close = all(abs(a - b) <= 1e-4 for a, b in zip((*expected[0], *expected[1]), (*mean, *std), strict=True))
    if close:
        return None
    return (
        f"{arch} weights expect inputs normalised with mean {_fmt(expected[0])} std {_fmt(expected[1])}, "
        f"but data.mean={_fmt(mean)} data.std={_fmt(std)}; set them to match (as the voc-clipb preset does)"
    )


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


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
