"""The backbone contract and shared weight loading.

A backbone maps images B×3×H×W to ``BackboneFeatures(final, aux)``: ``final`` (B×D×h×w) feeds
the classifier, CAM and segmentation head; ``aux`` (B×D'×h'×w', an intermediate map) feeds
the auxiliary classifier. Factories registered under the ``dupl.backbones`` entry-point group
have the signature ``build(arch, *, pretrained, img_size, aux_layer) -> Backbone``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

from dupl_cli.errors import UserError


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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file: safetensors, or a PyTorch checkpoint read without pickle code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file formats raise many types
        raise UserError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    for nest in ("state_dict", "model", "module"):
        if isinstance(state, Mapping) and nest in state and isinstance(state[nest], Mapping):
            state = state[nest]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return dict(state)


def load_weights(
    module: nn.Module,
    path: Path,
    *,
    key_map: Callable[[str], str | None] | None = None,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load a local weights file strictly; mismatches give one line naming the file and the keys."""
    state = read_state_dict(path)
    if key_map is not None:
        state = {new: v for k, v in state.items() if (new := key_map(k)) is not None}
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own and not k.startswith(ignore_prefixes))
    wrong = [
        f"{k} (file {list(state[k].shape)}, model {list(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    problems = []
    if missing:
        problems.append(f"missing keys {few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {few(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {few(wrong)}")
    if problems:
        raise UserError(f"{path}: weights do not fit the backbone: {'; '.join(problems)}")
    module.load_state_dict({k: state[k] for k in own}, strict=True)


def create_timm_model(arch: str, pretrained: str, **kwargs) -> nn.Module:
    """timm model by name; ``pretrained == "timm"`` downloads (an offline failure is one clear line)."""
    import timm

    if arch not in timm.list_models() and arch not in timm.list_models(pretrained=True):
        raise UserError(f"timm has no model named {arch!r}")
    if pretrained != "timm":
        return timm.create_model(arch, pretrained=False, **kwargs)
    try:
        return timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as exc:  # hub/network errors come in many types
        raise UserError(
            f"cannot download timm weights for {arch} ({type(exc).__name__}); offline? "
            "Set model.pretrained to a local .safetensors/.pth file or 'none'"
        ) from None
