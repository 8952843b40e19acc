"""Helpers for backbone factories: weight loading (re-exported from ``weights`` for plugins) and the
input normalisation pretrained weights expect.

The contract itself (``Backbone``, ``BackboneFeatures``) is ``dupl_cli.plugins.backbone``. dupl pads
every input to a multiple of the backbone's ``stride`` before it calls it (``models.geometry`` maps the
maps back onto the image exactly), so a plugin only has to handle multiples. Factories registered
under ``dupl.backbones`` have the signature ``build(arch, *, pretrained, img_size, aux_layer) -> Backbone``.
"""

from __future__ import annotations

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
