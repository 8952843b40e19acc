"""``dupl import release``: a DuPL (or ToCo) release checkpoint as a dupl run directory.

The release saves ``siamese_network.state_dict()`` with ``torch.save``, usually through DDP
(``module.`` prefix): ``branch{1,2}.{encoder,classifier,aux_classifier,decoder}.*``. ToCo saves one
``network``: the same names without ``branchN.``, plus its training-only projection heads. The file
is read with ``torch.load(weights_only=True)``: tensors and plain containers only, nothing executed.
Every key is mapped onto dupl's student names or is on the short list of tensors the release never
uses at inference; anything else stops the import, as does any missing or mis-shaped weight.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dupl_cli.core.errors import UserError
from dupl_cli.data.palette import COCO_CLASSES, VOC_CLASSES, palette_for
from dupl_cli.models.dual import build_dual_student
from dupl_cli.plugins import DATASETS, load
from dupl_cli.runs.card import Card, ImportRecord
from dupl_cli.runs.checkpoint import load_model, save_model
from dupl_cli.runs.run_dir import write_config

RENAMES = (
    ("encoder.", "backbone.vit."),
    ("decoder.", "head."),
    ("classifier.", "classifier."),
    ("aux_classifier.", "aux_classifier."),
)
"""Release module names inside one network -> dupl Student names (timm names below ``encoder.``)."""

UNUSED = {
    "encoder.head.": "the backbone's ImageNet classifier (the release never calls it)",
    "encoder.head_dist.": "the backbone's distillation classifier (never called)",
    "proj_head.": "ToCo's token-contrast projection head (training only)",
    "proj_head_t.": "ToCo's EMA projection head (training only)",
}
"""Release tensors with no role at inference, dropped by name (and listed on the card)."""

_BRANCH = re.compile(r"^branch(\d+)\.(.+)$")
_NESTS = ("state_dict", "model", "network", "module")


@dataclass
class MappedState:
    state: dict[str, torch.Tensor]  # dupl DualStudent names
    students: int
    layout: str  # what the file was recognised as
    dropped: dict[str, str] = field(default_factory=dict)  # release key -> why it is not needed
    prefixed: bool = False  # keys carried DDP's ``module.`` prefix
    origin: dict[str, str] = field(default_factory=dict)  # dupl name -> the file's key


def _refusal(path: Path, exc: Exception) -> UserError:
    """One line for a file weights_only refuses (it would have to run pickled code)."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global:? ([\w.]+)", text, re.IGNORECASE)
    what = f" ({found.group(1)})" if found else ""
    return UserError(
        f"{path}: refused: the file holds pickled Python objects{what}, not only tensors; "
        "a release checkpoint is a plain state dict and is read with torch.load(weights_only=True), "
        "which never runs pickled code"
    )


def _unreadable(path: Path, exc: Exception) -> UserError:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # torch wraps the real cause in advice; keep the line after "WeightsUnpickler error:" when present.
    marker = next((i for i, line in enumerate(lines) if "WeightsUnpickler error" in line), None)
    detail = (
        lines[marker + 1] if marker is not None and marker + 1 < len(lines) else (lines[0] if lines else "")
    )
    return UserError(f"{path}: not a readable torch.save file ({type(exc).__name__}: {detail})")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The top-level object of a torch.save file, read without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():  # a class or function the file wants called
            raise _refusal(path, exc) from None
        raise _unreadable(path, exc) from None
    except Exception as exc:  # zip, pickle and storage errors come in many types
        raise _unreadable(path, exc) from None
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def find_state_dict(obj: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The state dict itself, or the one nested under state_dict / model / network / module."""
    for _ in range(3):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        nested = next((obj[k] for k in _NESTS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    keys = ", ".join(sorted(map(str, obj))[:6])
    raise UserError(f"{path}: no state dict of tensors found (top-level keys: {keys or 'none'})")


def strip_module_prefix(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    prefixed = any(k.startswith("module.") for k in state)
    return {k.removeprefix("module."): v for k, v in state.items()}, prefixed


def _rename(rest: str, pairs=RENAMES) -> str | None:
    for old, new in pairs:
        if rest.startswith(old):
            return new + rest[len(old) :]
    return None


def release_name(key: str, students: int) -> str:
    """dupl name -> the name the release file would give it (for messages about missing weights)."""
    _, index, rest = key.split(".", 2)
    rest = _rename(rest, [(new, old) for old, new in RENAMES]) or rest
    return f"branch{int(index) + 1}.{rest}" if students == 2 else rest


def map_release_keys(state: dict[str, torch.Tensor]) -> tuple[MappedState, list[str]]:
    """Release names -> dupl names; returns the mapping and the keys no rule covers."""
    state, prefixed = strip_module_prefix(state)
    two = any(_BRANCH.match(k) for k in state)
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    dropped: dict[str, str] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        branch = _BRANCH.match(key)
        if (two and branch is None) or (branch is not None and branch.group(1) not in ("1", "2")):
            unmapped.append(key)
            continue
        index, rest = (int(branch.group(1)) - 1, branch.group(2)) if branch else (0, key)
        unused = next((why for prefix, why in UNUSED.items() if rest.startswith(prefix)), None)
        if unused is not None:
            dropped[key] = unused
            continue
        name = _rename(rest)
        if name is None:
            unmapped.append(key)
            continue
        mapped[f"students.{index}.{name}"] = value
        origin[f"students.{index}.{name}"] = key
    layout = "DuPL release (two students, branch1/branch2)" if two else "one network (ToCo layout)"
    result = MappedState(mapped, 2 if two else 1, layout, dict(sorted(dropped.items())), prefixed, origin)
    return result, sorted(unmapped)


def _few(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def check_against(model: torch.nn.Module, mapped: MappedState, unmapped: list[str], path: Path) -> None:
    """Every model weight provided with its shape, every file key used: else one line naming the
    keys (as the file names them)."""
    own, origin = model.state_dict(), mapped.origin
    unmapped = sorted(unmapped + [origin[k] for k in mapped.state if k not in own])
    missing = sorted(release_name(k, mapped.students) for k in own if k not in mapped.state)
    wrong = sorted(
        f"{origin[k]} (file {list(v.shape)}, model {list(own[k].shape)})"
        for k, v in mapped.state.items()
        if k in own and v.shape != own[k].shape
    )
    problems = [
        f"{label} {len(keys)}: {_few(keys)}"
        for label, keys in (
            ("unmapped keys", unmapped),
            ("missing weights", missing),
            ("wrong shapes", wrong),
        )
        if keys
    ]
    if problems:
        raise UserError(f"{path}: does not fit the preset's model ({mapped.layout}): {'; '.join(problems)}")


def class_count(mapped: MappedState, path: Path) -> int:
    weight = mapped.state.get("students.0.classifier.weight")
    if weight is None or weight.ndim != 4:
        raise UserError(f"{path}: no 1x1 classifier weight (branch1.classifier.weight or classifier.weight)")
    return int(weight.shape[0])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ImportResult:
    run_dir: Path
    weights: Path
    students: int
    layout: str
    mapped: int
    dropped: dict[str, str]


def refuse_existing(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists; an import never overwrites a run (choose another --out)")


def import_release(
    path: Path, out: Path, settings, sources: dict[str, str], classes, palette, student: int = 1
) -> ImportResult:
    """Map, check and write ``out/final.safetensors`` + card + config.toml; ``out`` appears whole or
    not at all."""
    path, out = Path(path), Path(out)
    refuse_existing(out)
    mapped, unmapped = map_release_keys(find_state_dict(read_checkpoint(path), path))
    if student > mapped.students:
        raise UserError(f"{path}: holds one student; --student {student} needs two")
    n = class_count(mapped, path)
    if n != len(classes):
        raise UserError(
            f"{path}: the classifier has {n} classes, "
            f"the preset's {settings.data.adapter} data {len(classes)} "
            "(VOC 20: voc-vitb; COCO 80: coco-vitb)"
        )
    model_settings = settings.model.model_copy(update={"pretrained": "none"})
    model = build_dual_student(model_settings, n, img_size=settings.data.crop_size, students=mapped.students)
    check_against(model, mapped, unmapped, path)
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.state.items()}, strict=True)
    tensors = len(mapped.state)
    mapped.state.clear()  # the model holds its own copy now
    card = _card(settings, classes, palette, mapped, path, student, tensors)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a run directory gets plain mkdir permissions
        weights = save_model(staging / "final", model, card)
        write_config(staging, settings.model_dump(mode="json"), sources)
        load_model(weights)  # what evaluate will read: card and weights agree, strictly
        refuse_existing(out)
        if out.is_dir():
            out.rmdir()  # an empty folder given as --out
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ImportResult(
        out, out / "final.safetensors", mapped.students, mapped.layout, tensors, mapped.dropped
    )


def _card(settings, classes, palette, mapped: MappedState, path: Path, student: int, tensors: int) -> Card:
    """The trainer's card fields, plus how many students and where the weights came from."""
    source = ImportRecord(
        file=str(path.resolve()),
        sha256=file_sha256(path),
        layout=mapped.layout,
        module_prefix=mapped.prefixed,
        tensors=tensors,
        dropped=mapped.dropped,
    )
    return Card(
        classes=list(classes),
        palette=[tuple(c) for c in palette],
        settings=settings.model_dump(mode="json"),
        student=student,
        students=mapped.students,
        student_rule=f"named at import with --student {student}: no validation was run",
        imported=source,
    )


def preset_classes(settings) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Class names and palette of the preset's data: built in for voc/coco (no dataset needed)."""
    known = {"voc": VOC_CLASSES, "coco": COCO_CLASSES}
    if settings.data.adapter in known:
        classes = list(known[settings.data.adapter])
        return classes, palette_for(len(classes))

    adapter = load(DATASETS, settings.data.adapter)(settings.data, settings.data.val_split)
    return list(adapter.classes), list(adapter.palette)
