"""Loading the DuPL release parity fixtures (../shared/fixtures/release-b21990f, README there).

``FIXTURES`` is the folder; tests call ``require()`` to skip when it is absent. ``load_students()``
builds two ``Student``s on timm ``deit_tiny_patch16_224`` (20 classes) with the release's
initial weights, ``tensors(file)`` reads one safetensors file, ``meta()`` the JSON.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(os.environ.get("DUPL_RELEASE_FIXTURES", Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "release-b21990f"))
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures/release-b21990f")


def require() -> Path:
    if not (FIXTURES / "meta.json").is_file():
        pytest.skip(f"release fixtures not found at {FIXTURES}")
    return FIXTURES


@functools.cache
def meta() -> dict:
    return json.loads((require() / "meta.json").read_text())


@functools.cache
def _tensors(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(require() / name))


def tensors(file: str) -> dict[str, torch.Tensor]:
    """A fixture file by name ('common', 'units', 'phase_C' or 'phase_C.safetensors'); cached, do not edit."""
    return _tensors(file if file.endswith(".safetensors") else f"{file}.safetensors")


def state0() -> dict[str, torch.Tensor]:
    """The release's initial weights, dequantised exactly: q · 2**e."""
    from safetensors import safe_open

    with safe_open(str(require() / "state0.safetensors"), "pt") as f:
        exps = json.loads(f.metadata()["exponents_json"])
        return {k: f.get_tensor(k).float() * 2.0 ** exps[k] for k in f.keys()}


def _student_state(state: dict[str, torch.Tensor], branch: int) -> dict[str, torch.Tensor]:
    prefix = f"branch{branch}."
    renames = {"encoder.": "backbone.vit.", "decoder.": "head.", "classifier.": "classifier.", "aux_classifier.": "aux_classifier."}
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        if key.startswith("encoder.head."):  # timm's ImageNet head, unused by the release
            continue
        for old, new in renames.items():
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
    return out


def load_students():
    """Two Students with the fixture's state0 (student 1 = branch1), in eval mode, fp32."""
    from dupl_cli.models.backbones.vit import build
    from dupl_cli.models.student import Student

    state = state0()
    students = []
    for branch in (1, 2):
        student = Student(build("deit_tiny_patch16_224", pretrained="none", img_size=224, aux_layer=-3), 20)
        student.load_state_dict(_student_state(state, branch), strict=True)
        students.append(student.eval())
    return students
