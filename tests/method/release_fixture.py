"""Tensors recorded from one training step of the DuPL release (a fixture set; see its README).

One way to find a set: ``DUPL_RELEASE_FIXTURES`` when set (an invalid path stops the test run,
see ``conftest.py``), else ``../shared/fixtures/release-b21990f`` beside the repository root;
without either, parity tests skip. Everything a test expects (batch, crop, classes, seeds,
hyper-parameters, counts, flags) is read from the set's ``meta.json``: any set recorded the same
way must pass unchanged.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import torch

ENV = "DUPL_RELEASE_FIXTURES"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT = REPO_ROOT.parent / "shared" / "fixtures" / "release-b21990f"
STUDENTS = (1, 2)


def configured_dir() -> Path:
    value = os.environ.get(ENV)
    return Path(value) if value else DEFAULT


def invalid_env_reason() -> str | None:
    """Why ``DUPL_RELEASE_FIXTURES`` is unusable, or None when it is unset or valid."""
    value = os.environ.get(ENV)
    if not value:
        return None
    if not (Path(value) / "meta.json").is_file():
        return f"{ENV}={value}: not a release fixture folder (no meta.json there)"
    return None


def require() -> Path:
    folder = configured_dir()
    if not (folder / "meta.json").is_file():
        pytest.skip(f"release fixtures not found at {folder} (set {ENV})")
    return folder


@functools.cache
def meta() -> dict:
    return json.loads((require() / "meta.json").read_text(encoding="utf-8"))


@functools.cache
def _tensors(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(require() / name))


def tensors(file: str) -> dict[str, torch.Tensor]:
    """A fixture file by name ('common', 'units', 'phase_C' or 'phase_C.safetensors'); cached, do not edit."""
    return _tensors(file if file.endswith(".safetensors") else f"{file}.safetensors")


def phases() -> list[str]:
    return sorted(meta()["phases"])


def phase_params() -> list[str]:
    """Phases to parametrize over at collection (placeholders when the set is absent: they skip)."""
    return phases() if (configured_dir() / "meta.json").is_file() else ["A", "B", "C"]


def batch_size() -> int:
    return int(meta()["config"]["batch"])


def crop() -> int:
    return int(meta()["config"]["crop"])


def token_grid() -> tuple[int, int]:
    h, w = meta()["config"]["token_grid"]
    return int(h), int(w)


def num_classes() -> int:
    """Foreground classes (the release's num_classes counts background too)."""
    return int(meta()["config"]["num_classes"]) - 1


def backbone_name() -> str:
    return meta()["config"]["backbone"].split()[0]


def hyper() -> dict:
    return meta()["hyper_parameters"]


def noise_filter_config():
    """The release's noise filter (two-sided, as it ran) from the recorded hyper-parameters."""
    from dupl_cli.method.params import NoiseFilterConfig

    gmm = hyper()["gmm"]
    return NoiseFilterConfig(
        gamma=gmm["gamma"],
        eta=gmm["valid_abs_mean_diff"],
        min_pixels=gmm["min_pixels"],
        loss_floor=gmm["min_loss"],
        iters=gmm["max_iter"],
        tol=gmm["tol"],
        reg=gmm["reg_covar"],
        one_sided=False,
    )


def present(b: int) -> torch.Tensor:
    return tensors("common")[f"cam.present.b{b}"].long()


def full_cam(key: str, student: int) -> torch.Tensor:
    """The stored present-class CAM channels of every image placed into B×C×H×W (absent channels 0)."""
    common = tensors("common")
    cams = []
    for b in range(batch_size()):
        part = common[f"{key}.s{student}.b{b}"]
        full = torch.zeros(num_classes(), *part.shape[-2:])
        full[present(b)] = part
        cams.append(full)
    return torch.stack(cams)


def state0() -> dict[str, torch.Tensor]:
    """The release's initial weights, dequantised exactly: q · 2**e."""
    from safetensors import safe_open

    with safe_open(str(require() / "state0.safetensors"), "pt") as f:
        exps = json.loads(f.metadata()["exponents_json"])
        return {k: f.get_tensor(k).float() * 2.0 ** exps[k] for k in f.keys()}


RENAMES = {"encoder.": "backbone.vit.", "decoder.": "head."}


def our_name(release_key: str) -> tuple[int, str]:
    """'branch1.encoder.norm.weight' -> (1, 'backbone.vit.norm.weight')."""
    branch, rest = release_key.split(".", 1)
    for old, new in RENAMES.items():
        if rest.startswith(old):
            rest = new + rest[len(old) :]
    return int(branch.removeprefix("branch")), rest


def _student_state(state: dict[str, torch.Tensor], branch: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        k, name = our_name(key)
        if k == branch and not name.startswith("backbone.vit.head."):  # timm's unused ImageNet head
            out[name] = value
    return out


def load_students():
    """Two Students with the fixture's state0 (student 1 = branch1), in eval mode, fp32."""
    from dupl_cli.models.backbones.vit import build
    from dupl_cli.models.student import Student

    state = state0()
    cfg = meta()["config"]
    students = []
    for branch in STUDENTS:
        backbone = build(backbone_name(), pretrained="none", img_size=crop(), aux_layer=int(cfg["aux_layer"]))
        student = Student(backbone, num_classes())
        student.load_state_dict(_student_state(state, branch), strict=True)
        students.append(student.eval())
    return students
