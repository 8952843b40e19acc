"""What a plugin's factory must return; the registry checks it the moment the factory returns.

A backbone is an ``nn.Module`` with positive int ``out_channels``, ``aux_channels`` and ``stride``
whose forward maps B×3×H×W to ``BackboneFeatures(final B×out_channels×H/stride×W/stride,
aux B×aux_channels×h×w)``. A dataset adapter has the attributes of ``data.base.DatasetAdapter``;
its samples are checked by ``data.verify.check_split`` before training (they cost I/O, so not here).
Every failure is one line naming the plugin and what is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dupl_cli.core.errors import UserError, one_line
from dupl_cli.plugins.backbone import BackboneFeatures


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _shape(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return "×".join(map(str, shape)) if shape is not None else type(value).__name__


def _protocol_error(plugin: str, what: str) -> UserError:
    return UserError(f"{plugin} breaks the backbone protocol: {what}")


def _probe_input(backbone: Any, height: int, width: int) -> Any:
    """A 2×3×H×W ramp on the backbone's device and float dtype (no global RNG draw); None when its
    weights are not materialised yet (meta tensors: nothing can run)."""
    import torch

    tensor = next(iter(backbone.parameters()), None)
    if tensor is not None and tensor.is_meta:
        return None
    device = tensor.device if tensor is not None else torch.device("cpu")
    dtype = tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32
    return (
        torch.linspace(-2.0, 2.0, 2 * 3 * height * width, device=device)
        .reshape(2, 3, height, width)
        .to(dtype)
    )


def _forward_once(backbone: Any, x: Any, plugin: str, where: str) -> Any:
    """``backbone(x)`` in eval mode without gradients, its train/eval mode restored afterwards."""
    import torch

    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            return backbone(x)
    except Exception as exc:  # third-party forward code fails in many ways
        raise _protocol_error(plugin, f"forward on {where} raised {one_line(exc)}") from None
    finally:
        backbone.train(was_training)


def _check_features(out: Any, backbone: Any, size: tuple[int, int], plugin: str, where: str) -> None:
    """``out`` is BackboneFeatures with final 2×out_channels×H/stride×W/stride and aux
    2×aux_channels×h×w, both floating-point and finite, for an H×W = ``size`` input."""
    import torch

    if not isinstance(out, BackboneFeatures):
        raise _protocol_error(
            plugin, f"forward must return BackboneFeatures(final, aux), got {type(out).__name__}"
        )
    stride = backbone.stride
    want = (2, backbone.out_channels, size[0] // stride, size[1] // stride)
    if not isinstance(out.final, torch.Tensor) or tuple(out.final.shape) != want:
        raise _protocol_error(
            plugin,
            f"final is {_shape(out.final)} for {where}; expected {'×'.join(map(str, want))} "
            "(batch, out_channels, H/stride, W/stride)",
        )
    aux = out.aux
    if (
        not isinstance(aux, torch.Tensor)
        or aux.ndim != 4
        or tuple(aux.shape[:2]) != (2, backbone.aux_channels)
    ):
        raise _protocol_error(
            plugin,
            f"aux is {_shape(aux)} for {where}; expected 2×{backbone.aux_channels}×h×w "
            "(batch, aux_channels, h, w)",
        )
    for part, value in (("final", out.final), ("aux", aux)):
        if not value.is_floating_point():
            raise _protocol_error(plugin, f"{part} must be floating-point, got {value.dtype}")
        if not bool(torch.isfinite(value).all()):
            raise _protocol_error(plugin, f"{part} holds NaN or inf for {where}")


def check_backbone(backbone: Any, *, plugin: str = "backbone", size: tuple[int, int] | None = None) -> None:
    """Raise a one-line ``UserError`` naming ``plugin`` unless ``backbone`` keeps the protocol.

    Runs one forward in eval mode without gradients on a 2×3×H×W input, by default H = 2·stride and
    W = 3·stride (non-square, so swapped axes show). The input is built without the global RNG and
    the module's train/eval mode is restored, so a check changes nothing a training run sees.
    """
    from torch import nn  # here, not at module level: the registry imports this module without torch

    if not isinstance(backbone, nn.Module):
        raise _protocol_error(
            plugin, f"the factory returned {type(backbone).__name__}, not a torch.nn.Module"
        )
    for attr in ("out_channels", "aux_channels", "stride"):
        if not _positive_int(value := getattr(backbone, attr, None)):
            raise _protocol_error(plugin, f"{attr} must be a positive int attribute, got {value!r}")
    height, width = size or (2 * backbone.stride, 3 * backbone.stride)
    x = _probe_input(backbone, height, width)
    if x is None:
        return
    where = f"a 2×3×{height}×{width} input"
    out = _forward_once(backbone, x, plugin, where)
    _check_features(out, backbone, (height, width), plugin, where)


def _names(value: Any) -> bool:
    """A list-like of str (a numpy array of str counts; a lone str does not)."""
    sized = (
        hasattr(value, "__len__") and hasattr(value, "__getitem__") and not isinstance(value, (str, bytes))
    )
    return sized and all(isinstance(v, str) for v in value)


def check_dataset(adapter: Any, *, plugin: str = "dataset") -> None:
    """Raise a one-line ``UserError`` naming ``plugin`` unless ``adapter`` has the adapter attributes.

    ``classes`` (unique names, background excluded), ``palette`` (an RGB triple for background and
    each class), ``split``, ``ids`` (one per sample), ``has_masks``, ``__len__``, ``__getitem__``
    and ``path_of``.
    """

    def fail(what: str) -> UserError:
        return UserError(f"{plugin} breaks the dataset protocol: {what}")

    missing = [
        a
        for a in ("classes", "palette", "split", "ids", "has_masks", "__len__", "__getitem__", "path_of")
        if not hasattr(adapter, a)
    ]
    if missing:
        raise fail(f"the factory returned {type(adapter).__name__}, which lacks {', '.join(missing)}")
    classes = adapter.classes
    if not _names(classes) or len(classes) == 0 or len(set(classes)) != len(classes):
        raise fail(f"classes must be a non-empty list of unique names, got {classes!r:.80}")
    palette = adapter.palette
    rgb = isinstance(palette, Sequence) and all(
        isinstance(c, Sequence) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in palette
    )
    if not rgb or len(palette) < len(classes) + 1:
        raise fail(
            f"palette must be a list of at least {len(classes) + 1} (r, g, b) tuples of Python ints "
            "0..255 (background and each class)"
        )
    if not isinstance(adapter.split, str):
        raise fail(f"split must be a str, got {type(adapter.split).__name__}")
    if not isinstance(adapter.has_masks, bool):
        raise fail(f"has_masks must be a bool, got {type(adapter.has_masks).__name__}")
    if not _names(adapter.ids):
        raise fail("ids must be a sequence of str")
    if len(adapter) != len(adapter.ids):
        raise fail(f"len() is {len(adapter)} but there are {len(adapter.ids)} ids")
