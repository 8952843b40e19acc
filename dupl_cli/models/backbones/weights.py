"""Backbone weights: local files, timm's pretrained tags and Hugging Face hub repositories.

``model.pretrained`` is one of

* ``"none"``: random initialisation;
* ``"timm"``: timm's pretrained weights for the name (its tag, e.g. ``vit_base_patch16_clip_224.openai``),
  downloaded from the hub; needs the network (or timm's cache);
* ``"hf-hub:org/name"``: timm-format weights (``model.safetensors`` or ``pytorch_model.bin``) of a hub
  repository, for the architecture in ``model.arch``;
* a local ``.safetensors`` / ``.pth`` file (read without pickle code), in timm's format or in a format
  timm converts (original DINOv2, OpenAI CLIP, EVA releases);
* a dupl student exported with ``dupl export --format hf``: ``hf-hub:org/name`` of such a repository
  (its ``model.safetensors``: keys ``backbone.*``, ``head.*``, ...), its local folder, or a safetensors
  export; the backbone starts from the student's backbone (``exported_backbone``).

Local and hub files load **strictly**: every backbone tensor must be in the file with its shape (the
classifier head is skipped), else one line names the file and the keys. Offline, the error names
the file to download and where to put it.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from dupl_cli.core.errors import UserError, load_reason
from dupl_cli.models.hub import is_hub_name, require_hub

HUB_PREFIX = "hf-hub:"
# What timm itself looks for in a hub repository, in its order (safetensors first).
HUB_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)


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
        raise UserError(f"{path}: cannot read weights ({load_reason(exc)})") from None
    for nest in ("state_dict", "model", "module"):
        if isinstance(state, Mapping) and nest in state and isinstance(state[nest], Mapping):
            state = state[nest]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return dict(state)


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def load_state_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: object,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load ``state`` into ``module``; missing, unexpected or misshapen keys: one line naming ``source``."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own and not k.startswith(ignore_prefixes))
    wrong = [
        f"{k} (file {list(state[k].shape)}, model {list(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {_few(wrong)}")
    if problems:
        raise UserError(f"{source}: weights do not fit the backbone: {'; '.join(problems)}")
    module.load_state_dict({k: state[k] for k in own}, strict=True)


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
    load_state_strict(module, state, path, ignore_prefixes)


def _timm_name_exists(arch: str) -> bool:
    import timm

    base = arch.split(".", 1)[0]
    return bool(timm.is_model(base)) and (base == arch or arch in timm.list_pretrained(arch))


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Keys of the classification head(s) named by the model's pretrained config (skipped when loading)."""
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or ("head", "fc", "classifier")
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names) + ("head_dist.",)


def _timm_filter(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's own converter for the model's module (original releases -> timm keys), without antialiasing."""
    convert = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if convert is None:
        return state
    kwargs = {"antialias": False} if "antialias" in inspect.signature(convert).parameters else {}
    try:
        return convert(dict(state), model, **kwargs)  # a copy: converters pop keys
    except Exception:  # a file the converter does not understand: the strict load names its keys
        return state


def load_timm_checkpoint(model: nn.Module, path: Path, source: object | None = None) -> None:
    """A local file into a timm model (no head): converted by timm's filter, then loaded strictly."""
    source = source or path
    state = _timm_filter(read_state_dict(path), model)
    load_state_strict(model, state, source, ignore_prefixes=_classifier_prefixes(model))


def _hub_download_hint(arch: str) -> tuple[str, str]:
    """(URL of the weights file timm would fetch for ``arch``, a local file name for it)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    if cfg.get("hf_hub_id"):
        remote = cfg.get("hf_hub_filename") or HUB_FILES[0]
        url = f"https://huggingface.co/{cfg['hf_hub_id']}/resolve/main/{remote}"
    elif cfg.get("url"):
        url = remote = cfg["url"]
    else:
        return f"(timm has no pretrained weights for {arch})", f"{arch}.safetensors"
    return url, arch + Path(remote).suffix


def _offline_error(what: str, url: str, filename: str, exc: Exception) -> UserError:
    local = f"weights/{filename}"
    return UserError(
        f"cannot download {what} ({type(exc).__name__}); offline? Download {url} to {local} "
        f"and set model.pretrained={local} (or 'none' for random weights)"
    )


def download_hub_weights(repo: str) -> Path:
    """Local path of a hub repository's weights file: from the hub cache when it is there, else downloaded."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    if not re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", repo):
        raise UserError(f"model.pretrained: {HUB_PREFIX}{repo!r} is not a hub repository (hf-hub:org/name)")
    repo_id, _, revision = repo.partition("@")
    for filename in HUB_FILES:  # the cache first: no request at all when the weights are there
        cached = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(cached, str):
            return Path(cached)
    failure: Exception | None = None
    for filename in HUB_FILES:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision or None))
        except LocalEntryNotFoundError as exc:  # offline and not cached; the cache may hold another name
            failure = failure or exc
        except EntryNotFoundError:  # online: the repository holds another file name
            continue
        except Exception as exc:  # unknown repository, network errors come in many types
            failure = failure or exc
            break
    if failure is None:
        raise UserError(f"model.pretrained: {HUB_PREFIX}{repo} holds none of {', '.join(HUB_FILES)}")
    url = f"https://huggingface.co/{repo_id}/resolve/{revision or 'main'}/{HUB_FILES[0]}"
    local = f"{repo_id.replace('/', '--')}.safetensors"
    raise _offline_error(f"weights from {HUB_PREFIX}{repo}", url, local, failure)


STUDENT_PREFIXES = ("backbone.", "head.", "classifier.", "aux_classifier.")  # a dupl Student's state dict
EXPORT_WEIGHTS = "model.safetensors"  # the weights file of a ``dupl export --format hf`` folder


def _student_file(path: Path) -> bool:
    """Whether a safetensors file holds a dupl student (every key under a Student's modules, a backbone)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception:  # not safetensors, or corrupt: the factory's own loader names the problem
        return False
    return any(k.startswith("backbone.") for k in keys) and all(k.startswith(STUDENT_PREFIXES) for k in keys)


def _exported_file(pretrained: str) -> Path | None:
    """The weights file ``pretrained`` names when it is a dupl student export, else None."""
    if pretrained in ("none", "timm"):
        return None
    if is_hub_name(pretrained):
        require_hub(f"model.pretrained = {pretrained}")
        try:
            path = download_hub_weights(pretrained[len(HUB_PREFIX) :])
        except UserError:  # not in the cache nor on the hub: the timm loader says so, and what to do
            return None
    else:
        path = Path(pretrained).expanduser()
        path = path / EXPORT_WEIGHTS if path.is_dir() else path
    return path if path.suffix == ".safetensors" and path.is_file() and _student_file(path) else None


def exported_backbone(pretrained: str) -> tuple[dict[str, torch.Tensor], str] | None:
    """(backbone tensors, source) when ``model.pretrained`` names a dupl student export, else None:
    build the backbone without weights, then ``load_state_strict`` these into it."""
    path = _exported_file(str(pretrained))
    if path is None:
        return None
    state = read_state_dict(path)
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return backbone, f"model.pretrained = {pretrained} (the backbone of a dupl export, {path})"


def create_timm_model(arch: str, pretrained: str, **kwargs) -> nn.Module:
    """timm model ``arch`` (a name, optionally with its pretrained tag) with the weights of ``pretrained``.

    ``kwargs`` go to ``timm.create_model``; pass ``num_classes=0`` so no head is built.
    """
    import timm

    if not _timm_name_exists(arch):
        raise UserError(f"timm has no model named {arch!r} (see timm.list_models / timm.list_pretrained)")
    if pretrained == "timm":
        try:
            return timm.create_model(arch, pretrained=True, **kwargs)
        except TypeError:  # an argument the architecture does not take: the caller's to handle
            raise
        except Exception as exc:  # hub/network errors come in many types
            url, filename = _hub_download_hint(arch)
            raise _offline_error(f"timm weights for {arch}", url, filename, exc) from None
    model = timm.create_model(arch, pretrained=False, **kwargs)
    if pretrained == "none":
        return model
    if pretrained.startswith(HUB_PREFIX):
        repo = pretrained[len(HUB_PREFIX) :]
        load_timm_checkpoint(model, download_hub_weights(repo), source=f"{pretrained} ({arch})")
    else:
        load_timm_checkpoint(model, Path(pretrained))
    return model
