"""Tensors recorded from one training step of the DuPL release (a fixture set; see its README).

The sets: every folder with a ``meta.json`` under ``tests/fixtures/``, plus each folder named in
``DUPL_RELEASE_FIXTURES`` (``os.pathsep``-separated; an invalid one stops the test run, see
``tests/conftest.py``). Parity tests run once per set (the ``release_set`` fixture makes one active).
Everything a test expects (batch, crop, classes, seeds, hyper-parameters, counts, flags) is read from
the active set's ``meta.json``: any set recorded the same way must pass unchanged.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

ENV = "DUPL_RELEASE_FIXTURES"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
STUDENTS = (1, 2)


def _env_dirs() -> list[Path]:
    value = os.environ.get(ENV, "")
    return [Path(part) for part in value.split(os.pathsep) if part]


def set_dirs() -> list[Path]:
    """The one-step sets: the repository's, then the ones ``DUPL_RELEASE_FIXTURES`` adds."""
    own = sorted(p.parent for p in FIXTURES.glob("*/meta.json"))
    return own + [p for p in _env_dirs() if p not in own]


def invalid_env_reason() -> str | None:
    """Why ``DUPL_RELEASE_FIXTURES`` is unusable, or None when it is unset or valid."""
    for folder in _env_dirs():
        if not (folder / "meta.json").is_file():
            return f"{ENV}: {folder} is not a release fixture folder (no meta.json there)"
    return None


_active: list[Path] = []


def use(folder: Path) -> None:
    """Make ``folder`` the set the functions below read."""
    _active[:] = [Path(folder)]


def require() -> Path:
    """The active set (the first one when none was chosen)."""
    return _active[0] if _active else set_dirs()[0]


@functools.cache
def _meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text(encoding="utf-8"))


def meta() -> dict:
    return _meta(require())


@functools.cache
def _tensors(folder: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / name))


def tensors(file: str) -> dict[str, torch.Tensor]:
    """A fixture file by name ('common', 'units', 'phase_C' or 'phase_C.safetensors'); cached, do not edit."""
    return _tensors(require(), file if file.endswith(".safetensors") else f"{file}.safetensors")


def phases() -> list[str]:
    return sorted(meta()["phases"])


def phase_params() -> list[str]:
    """Phases to parametrize over at collection: those of every set (a set without one skips it)."""
    return sorted({phase for folder in set_dirs() for phase in _meta(folder)["phases"]})


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
