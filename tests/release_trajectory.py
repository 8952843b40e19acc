"""Multi-step recordings of the DuPL release (``trajectory.json`` sets; see each set's README), the
settings that describe them in dupl's terms, and the comparison of dupl's steps with them.

The sets: every folder with a ``trajectory.json`` under ``tests/fixtures/``, plus each folder named in
``DUPL_RELEASE_TRAJECTORIES`` (``os.pathsep``-separated). A set's starting weights are the
``state0.safetensors`` of the one-step set it names, found beside it (or in ``tests/fixtures/``).

Tolerances come from the release's own 1-vs-2-thread spread at each step (``thread_spread_1_vs_2``),
times a margin measured on dupl's fused-AdamW trainer path over both shipped sets (at most 4.5x the
spread for losses, 3.1x for parameter norms), and scale with the quantity compared.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import release_fixture
import torch

ENV = "DUPL_RELEASE_TRAJECTORIES"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
NUM_CLASSES = 20  # foreground classes; the release's num_classes counts background too

# release loss name -> dupl term name (None: the per-classifier terms, captured one by one)
LOSS_NAMES = {"sim": "dis", "sim_1": "dis_1", "sim_2": "dis_2", "total": "total"}
PER_CLASSIFIER = ("cls_fmap_1", "cls_aux_1", "cls_fmap_2", "cls_aux_2")
# the release's four parameter groups -> dupl's two (build_optimizer: backbone, heads)
GROUP_MAP = {0: 0, 1: 0, 2: 1, 3: 1}

# Margins over the release's thread spread, and floors, measured on both shipped sets (fused AdamW).
LOSS_MARGIN, LOSS_FLOOR_REL, LOSS_FLOOR_ABS = 10.0, 2e-6, 1e-6
NORM_MARGIN, NORM_FLOOR = 10.0, 2e-7
GRAD_MARGIN, GRAD_FLOOR = 10.0, 1e-6
# After t_seg the ×48-sharpened head turns one ReLU unit or pixel on a threshold into a jump in
# the encoder's gradient norms (measured up to 1.0e-3 relative; the release's own spread 9.9e-4).
GRAD_AFTER_SEG = 2e-3
SUM_PER_L1 = 1e-5  # |Δ sum| / Σ|p| (measured at most 3.9e-6)
DELTA_REL, DELTA_ULPS = 5e-3, 4  # largest change from state0 (measured 1.9e-3; one ulp floors it)
FULL_SHARE = 0.1  # of the update since state0 (measured at most 0.029)
ANF_PIXELS, REG_PIXELS = 8, 10  # pixels on γ or the 0.9 confidence (measured 2 and 3)


def trajectory_dirs() -> list[Path]:
    own = sorted(p.parent for p in FIXTURES.glob("*/trajectory.json"))
    extra = [Path(p) for p in os.environ.get(ENV, "").split(os.pathsep) if p]
    return own + [p for p in extra if p not in own]


def invalid_env_reason() -> str | None:
    for folder in (Path(p) for p in os.environ.get(ENV, "").split(os.pathsep) if p):
        if not (folder / "trajectory.json").is_file():
            return f"{ENV}: {folder} is not a release trajectory folder (no trajectory.json there)"
    return None


@functools.cache
def load(folder: Path) -> dict:
    return json.loads((folder / "trajectory.json").read_text(encoding="utf-8"))


def state0_dir(folder: Path) -> Path:
    """The one-step set whose state0 the trajectory starts from, checked by its sha256."""
    named = load(folder)["state0"]
    for base in (folder.parent, FIXTURES):
        candidate = base / named["set"]
        path = candidate / "state0.safetensors"
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert digest == named["sha256"], f"{path}: sha256 {digest[:12]}… is not the recording's"
            return candidate
    raise AssertionError(f"{folder}: its start set {named['set']} is neither beside it nor in {FIXTURES}")


def assignments(traj: dict, *, release: bool = True) -> list[str]:
    """``--set`` lines (over the voc-vitb preset) that describe the recorded run; ``release``: every
    ``compat.*`` switch at the release's behaviour."""
    sched, hyper, config = traj["schedule"], traj["hyper_parameters"], traj["config"]
    lines = [
        f"model.arch={config['backbone'].split()[0]}",
        "model.pretrained=none",
        f"model.aux_layer={config['aux_layer']}",
        f"data.crop_size={config['crop']}",
        f"train.lr={hyper['lr']}",
        "train.head_lr_mult=10.0",
        f"train.weight_decay={hyper['wt_decay']}",
        f"train.betas=[{hyper['betas'][0]}, {hyper['betas'][1]}]",
        f"train.max_iters={sched['max_iters']}",
        f"train.warmup_iters={sched['warmup_iters']}",
        f"train.warmup_ratio={sched['warmup_lr']}",  # the release's warmup_lr is a ratio
        f"train.poly_power={sched['power']}",
        f"train.batch_size={config['batch']}",
        "train.precision=no",  # the release trains in float32
        f"method.t_seg={sched['cam_iters']}",
        f"method.t_anf={sched['gmm_iters']}",
        f"method.cam_scales={json.dumps(hyper['cam_scales'])}",
        f"method.tau_low={hyper['low_thre']}",
        f"method.tau_high_start={hyper['high_thre']}",
        f"method.w_ptc={hyper['w_ptc']}",
        f"method.w_seg={hyper['w_seg']}",
        f"method.anf.gamma={hyper['gamma']}",
        f"method.anf.eta={hyper['gmm_valid_thre']}",
    ]
    if release:
        lines += [f"compat.{name}=true" for name in COMPAT_SWITCHES]
    return lines


COMPAT_SWITCHES = (
    "ptc_pixel_box",
    "reg_include_padding",
    "anf_two_sided",
    "delayed_weights",
    "eval_gt_student",
)


def our_param(release_key: str) -> str | None:
    """'branch1.encoder.blocks.0.norm1.weight' -> 'students.0.backbone.vit.blocks.0.norm1.weight';
    None for timm's ImageNet head, which dupl's backbone does not hold."""
    student, name = release_fixture.our_name(release_key)
    return None if name.startswith("backbone.vit.head.") else f"students.{student - 1}.{name}"


def load_state0(model: torch.nn.Module, folder: Path) -> None:
    release_fixture.use(state0_dir(folder))
    state = {our_param(k): v for k, v in release_fixture.state0().items() if our_param(k) is not None}
    model.load_state_dict(state, strict=True)


@dataclass
class Observed:
    """What dupl did in one step, in the recording's terms."""

    terms: dict[str, float]
    weights: dict[str, float]
    lrs: list[float]  # per dupl group, as used by the update
    grads: dict[str, float | None]  # our parameter name -> gradient L2 norm (None: no gradient)
    after: dict[str, dict[str, float]]  # our parameter name -> norm, sum, l1, delta from state0
    full: dict[str, torch.Tensor] = field(default_factory=dict)  # release name -> values after
    tau: list[float] | None = None
    anf: dict[tuple[int, int], dict] | None = None  # (image, student) -> fitted, valid, pixels
    reg_mask: list[int] | None = None


def _rel(value: float, ref: float) -> float:
    return 0.0 if value == ref else abs(value - ref) / max(abs(ref), 1e-30)


def spread_at(traj: dict, step: int) -> dict:
    return next(s for s in traj["thread_spread_1_vs_2"]["steps"] if s["step"] == step)


def compare_schedule(rec: dict, seen: Observed) -> list[str]:
    """Loss weights (exact), the LR of every group (relative 1e-9) and τ_h per image (1e-6)."""
    bad = [
        f"weight of {name}: dupl {seen.weights[name]} release {want}"
        for name, want in rec["loss_weights_used"].items()
        if abs(seen.weights[name] - want) > 1e-12
    ]
    for group, want in enumerate(rec["lr_per_group"]):
        got = seen.lrs[GROUP_MAP[group]]
        if _rel(got, want) > 1e-9:
            bad.append(f"LR of release group {group}: dupl {got:.6e} release {want:.6e}")
    if rec["tau_h_per_image"] is not None:
        got = seen.tau or []
        if len(got) != len(rec["tau_h_per_image"]) or any(
            abs(a - b) > 1e-6 for a, b in zip(got, rec["tau_h_per_image"], strict=False)
        ):
            bad.append(f"tau_h per image: dupl {got} release {rec['tau_h_per_image']}")
    return bad


def compare_losses(rec: dict, seen: Observed, spread: dict) -> list[str]:
    """Every loss term the release weighted (weight-0 terms it computed and phase-A placeholders are
    not dupl's: it skips them), within the margin over the thread spread at this step."""
    rel_tol = max(LOSS_MARGIN * spread["loss_max_rel"], LOSS_FLOOR_REL)
    abs_tol = max(LOSS_MARGIN * spread["loss_max_abs"], LOSS_FLOOR_ABS)
    bad = []
    for name, want in rec["losses"].items():
        base = name.split("_")[0]
        if base in ("seg", "reg") and rec["loss_weights_used"][base] == 0:
            continue
        got = seen.terms.get(LOSS_NAMES.get(name, name))
        if got is None:
            bad.append(f"loss {name}: dupl did not compute it (release {want:.7g})")
        elif abs(got - want) > abs_tol and _rel(got, want) > rel_tol:
            bad.append(
                f"loss {name}: dupl {got:.7g} release {want:.7g} (rel {_rel(got, want):.1e} > {rel_tol:.1e})"
            )
    return bad


def compare_filter(rec: dict, seen: Observed) -> list[str]:
    """The noise filter's fit decisions (exact) and pixels set to 255, and the consistency mask's pixels."""
    bad = []
    for entry in rec["anf"] or []:
        key = (entry["img"], entry["student"])
        got = (seen.anf or {}).get(key)
        if got is None:
            bad.append(f"noise filter {key}: dupl ran none")
            continue
        if (got["fitted"], got["valid"]) != (entry["fitted"], entry["valid"]):
            bad.append(f"noise filter {key}: fitted/valid dupl {got['fitted']}/{got['valid']} "
                       f"release {entry['fitted']}/{entry['valid']}")  # fmt: skip
        elif abs(got["pixels"] - entry["pixels_set_255"]) > ANF_PIXELS:
            bad.append(
                f"noise filter {key}: {got['pixels']} pixels set to 255, release {entry['pixels_set_255']}"
            )
    if rec["reg_mask_pixels"] is not None and rec["loss_weights_used"]["reg"] > 0:
        got = seen.reg_mask or []
        want = rec["reg_mask_pixels"]
        if len(got) != len(want) or any(abs(a - b) > REG_PIXELS for a, b in zip(got, want, strict=False)):
            bad.append(f"consistency mask pixels per student: dupl {got} release {want}")
    return bad


def compare_parameters(rec: dict, seen: Observed, spread: dict, after_seg: bool) -> list[str]:
    """Per parameter: which have a gradient (exact), gradient norms, and after the step L2 norm, sum
    and largest change from state0."""
    grad_tol = GRAD_AFTER_SEG if after_seg else max(GRAD_MARGIN * spread["grad_norm_max_rel"], GRAD_FLOOR)
    norm_tol = max(NORM_MARGIN * spread["param_norm_max_rel"], NORM_FLOOR)
    bad = []
    for release_name, want in rec["params_after"].items():
        name = our_param(release_name)
        if name is None:
            continue
        grad, got = seen.grads[name], seen.after[name]
        if (grad is None) != (want["grad_norm"] is None):
            bad.append(
                f"{release_name}: gradient {'none' if grad is None else grad} release {want['grad_norm']}"
            )
        elif grad is not None and want["grad_norm"] > 0 and _rel(grad, want["grad_norm"]) > grad_tol:
            bad.append(f"{release_name}: gradient norm {grad:.6e} release {want['grad_norm']:.6e}")
        if _rel(got["norm"], want["norm"]) > norm_tol:
            bad.append(f"{release_name}: norm after {got['norm']:.8e} release {want['norm']:.8e}")
        if abs(got["sum"] - want["sum"]) > SUM_PER_L1 * got["l1"]:
            bad.append(f"{release_name}: sum after {got['sum']:.8e} release {want['sum']:.8e}")
        delta, want_delta = got["delta"], want["max_abs_delta_from_state0"]
        ulp = DELTA_ULPS * math.ulp(got["max_abs"])
        if abs(delta - want_delta) > max(DELTA_REL * want_delta, ulp):
            bad.append(f"{release_name}: largest change from state0 {delta:.6e} release {want_delta:.6e}")
    return bad


def compare_full(
    full_ref: dict[str, torch.Tensor], seen: Observed, start: dict[str, torch.Tensor]
) -> list[str]:
    """Recorded tensors in full: off by at most a share of their update since state0."""
    bad = []
    for release_name, want in full_ref.items():
        got = seen.full[release_name]
        update = float((want - start[release_name]).abs().max())
        error = float((got - want).abs().max())
        if error > FULL_SHARE * update + 1e-8:
            bad.append(f"{release_name}: off by {error:.3e}, its update since state0 is {update:.3e}")
    return bad
