"""dupl's trainer path follows the release over many optimiser steps (issue 27): every recorded set
(crops 224 and 320, padded and smaller-than-crop images, a schedule that crosses the warm-up and every
phase boundary) is fed through the optimiser, parameter groups, schedules and step function `dupl
train` runs, and every recorded quantity is compared at every step.

Each break a re-implementation commonly makes (LR warm-up, the head LR multiplier, weight decay on
norms and biases, a term's start iteration) is injected once and must be caught.
"""

from __future__ import annotations

import pytest
import release_trajectory as rt
import torch
from safetensors import safe_open

from dupl_cli.config.method_params import step_config
from dupl_cli.config.sources import load_settings
from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.method import losses as method_losses
from dupl_cli.method import step as step_module
from dupl_cli.method.schedule import phase_at
from dupl_cli.models.dual import build_dual_student
from dupl_cli.train import optim
from dupl_cli.train.accel import make_accelerator
from dupl_cli.train.loop import TrainingModule, TrainParts, optimizer_step
from dupl_cli.train.step_guard import NonFiniteGuard

SETS = rt.trajectory_dirs()


class Capture:
    """Quantities the step computes but does not return, taken from the functions it calls."""

    def __init__(self, monkeypatch, strong: list[torch.Tensor | None]):
        self.cls: list[float] = []
        self.tau: list[float] | None = None
        self.anf: dict | None = None
        self.reg_mask: list[int] = []
        classification, pseudo, noisy = (
            method_losses.classification_loss, step_module.make_pseudo_labels, step_module.noisy_pixels,
        )  # fmt: skip
        target = method_losses.consistency_target

        def classification_loss(logits, labels):
            value = classification(logits, labels)
            self.cls.append(float(value.detach()))
            return value

        def make_pseudo_labels(*args, **kwargs):
            out = pseudo(*args, **kwargs)
            self.tau = [float(x) for x in out.tau_image]
            return out

        def noisy_pixels(losses, labels, config, **kwargs):
            noise, fit = noisy(losses, labels, config, return_fit=True)
            changed = (noise & (labels != IGNORE_INDEX)).flatten(1).sum(1)
            half = changed.numel() // 2  # rows: student 1's images, then student 2's
            rows = {(i, k): (k - 1) * half + i for i in range(half) for k in (1, 2)}
            self.anf = {
                key: {
                    "fitted": bool(fit.fitted[row]),
                    "valid": bool(fit.valid[row]),
                    "pixels": int(changed[row]),
                }
                for key, row in rows.items()
            }
            return noise

        def consistency_target(weak_logits, discarded, *, confidence):
            out = target(weak_logits, discarded, confidence=confidence)
            self.reg_mask.append(int(out[1].sum()))
            return out

        def strong_view(images_u8, view, *, mean, std, generator=None):  # the recorded view, as used
            return strong[0].to(images_u8.device), None

        monkeypatch.setattr(method_losses, "classification_loss", classification_loss)
        monkeypatch.setattr(step_module, "make_pseudo_labels", make_pseudo_labels)
        monkeypatch.setattr(step_module, "noisy_pixels", noisy_pixels)
        monkeypatch.setattr(method_losses, "consistency_target", consistency_target)
        monkeypatch.setattr(step_module, "strong_view", strong_view)

    def reset(self) -> None:
        self.cls, self.tau, self.anf, self.reg_mask = [], None, None, []


def _settings(folder, extra=()):
    traj = rt.load(folder)
    return load_settings("voc-vitb", assignments=[*rt.assignments(traj), *extra], environ={}).settings


def _observe(result, capture, lrs, weights, grads) -> rt.Observed:
    terms = {name: float(value) for name, value in result.terms.items()}
    terms["total"] = float(result.loss.detach())
    terms.update(zip(rt.PER_CLASSIFIER, capture.cls, strict=False))
    return rt.Observed(terms=terms, weights=weights, lrs=lrs, grads=grads, after={}, tau=capture.tau,
                       anf=capture.anf, reg_mask=capture.reg_mask or None)  # fmt: skip


def _after(seen: rt.Observed, named, start, full_names) -> None:
    for name, param in named.items():
        value = param.detach().double()
        seen.after[name] = {
            "norm": float(value.norm()), "sum": float(value.sum()), "l1": float(value.abs().sum()),
            "delta": float((param.detach() - start[name]).abs().max()), "max_abs": float(value.abs().max()),
        }  # fmt: skip
    seen.full = {r: named[rt.our_param(r)].detach().clone() for r in full_names}


def _parts(model, config, settings, optimizer) -> TrainParts:
    """The trainer's optimiser-step parts (train.trainer's _prepare without the loader)."""
    train = settings.train
    accelerator = make_accelerator(train.precision, train.grad_accum, None, "none")
    scheduler = optim.build_scheduler(optimizer, train)
    module, optimizer, scheduler = accelerator.prepare(TrainingModule(model, config), optimizer, scheduler)
    guard = NonFiniteGuard(optimizer, accelerator.device)
    return TrainParts(accelerator, module, optimizer, scheduler, guard, seed=train.seed)


def _weights(step: int, config) -> dict[str, float]:
    phase = phase_at(step, config.schedule, config.weights)
    return {
        "cls": phase.w_cls,
        "ptc": phase.w_ptc,
        "sim": phase.w_dis,
        "seg": phase.w_seg,
        "reg": phase.w_reg,
    }


def run_trajectory(folder, monkeypatch, *, extra=(), steps=None, optimizer_builder=None):
    """Feed the recorded batches through dupl's optimiser step; yield (record, observed, full
    tensors recorded after the step, their values at state0)."""
    traj = rt.load(folder)
    settings = _settings(folder, extra)
    config = step_config(settings, num_classes=rt.NUM_CLASSES)
    model = build_dual_student(settings.model, num_classes=rt.NUM_CLASSES, img_size=settings.data.crop_size)
    rt.load_state0(model, folder)
    named = dict(model.named_parameters())
    start = {n: p.detach().clone() for n, p in named.items()}
    optimizer = (optimizer_builder or optim.build_optimizer)(model, settings.train)
    grads: dict[str, float | None] = {}

    def read_gradients(*_) -> None:  # before the update, after every micro-batch's backward
        grads.update({n: None if p.grad is None else float(p.grad.double().norm()) for n, p in named.items()})

    optimizer.register_step_pre_hook(read_gradients)
    parts = _parts(model, config, settings, optimizer)
    strong: list[torch.Tensor | None] = [None]
    capture = Capture(monkeypatch, strong)
    with safe_open(str(folder / "trajectory.safetensors"), "pt") as tensors:
        for record in traj["steps"][:steps]:
            step, prefix = record["n_iter"], f"step{record['step']:02d}."
            batch = {
                "image": tensors.get_tensor(prefix + "inputs"),
                "labels": tensors.get_tensor(prefix + "cls_label"),
                "img_box": tensors.get_tensor(prefix + "img_box").long(),
            }
            strong[0] = tensors.get_tensor(prefix + "inputs_aug")
            capture.reset()
            grads.clear()
            lrs = [group["lr"] for group in parts.optimizer.param_groups]  # set before the update
            outcome = optimizer_step(parts, iter([batch]), step)
            seen = _observe(outcome.result, capture, lrs, _weights(step, config), dict(grads))
            after = {k[len(prefix + "after.") :]: tensors.get_tensor(k) for k in tensors.keys()
                     if k.startswith(prefix + "after.")}  # fmt: skip
            _after(seen, named, start, after)
            yield record, seen, after, {name: start[rt.our_param(name)] for name in after}


def mismatches(folder, monkeypatch, **kwargs) -> list[str]:
    """Every recorded quantity at every step that dupl does not reproduce, as lines."""
    traj = rt.load(folder)
    t_seg = traj["schedule"]["cam_iters"]
    found = []
    for record, seen, full_ref, start in run_trajectory(folder, monkeypatch, **kwargs):
        spread = rt.spread_at(traj, record["step"])
        lines = rt.compare_schedule(record, seen) + rt.compare_losses(record, seen, spread)
        lines += rt.compare_filter(record, seen)
        lines += rt.compare_parameters(record, seen, spread, after_seg=record["n_iter"] > t_seg)
        lines += rt.compare_full(full_ref, seen, start)
        found += [f"step {record['step']} ({record['phase']}): {line}" for line in lines]
    return found


def test_every_set_is_found_and_complete():
    assert len(SETS) >= 2  # the repository's 224 and 320 sets at least
    crops = set()
    for folder in SETS:
        traj = rt.load(folder)
        rt.state0_dir(folder)  # present and the recording's own weights
        assert {s["phase"] for s in traj["steps"]} == {"A", "B", "C"}
        crops.add(traj["config"]["crop"])
    assert {224, 320} <= crops


@pytest.mark.parametrize("folder", SETS, ids=[f.name for f in SETS])
def test_the_first_step_matches_at_every_crop(folder, monkeypatch):
    """Step 0 alone (the fast suite's check): token grid, box slicing and the optimiser's first update
    at the set's crop (224, 320: padded and smaller-than-crop images)."""
    found = mismatches(folder, monkeypatch, steps=1)
    assert not found, "\n".join(found[:25])


@pytest.mark.slow  # a whole recorded trajectory per set (about 30 s each on one idle thread)
@pytest.mark.parametrize("folder", SETS, ids=[f.name for f in SETS])
def test_dupl_follows_the_release_step_by_step(folder, monkeypatch):
    found = mismatches(folder, monkeypatch)
    assert not found, f"{len(found)} differences, first ones:\n" + "\n".join(found[:25])


def _no_decay_everywhere_flat(model, train_settings):
    """The most common AdamW set-up in other code: no weight decay on norms and biases."""
    optimizer = optim.build_optimizer(model, train_settings)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        flat = [p for p in group["params"] if p.ndim <= 1 or names[id(p)].endswith(".bias")]
        rest = [p for p in group["params"] if not any(p is q for q in flat)]
        base = {k: v for k, v in group.items() if k != "params"}
        groups += [{**base, "params": rest}, {**base, "params": flat, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], fused=True)


def _warmup_skipped(monkeypatch):
    real = optim.lr_factor

    def no_warmup(t, *, max_iters, warmup_iters, warmup_ratio, power):
        return real(t, max_iters=max_iters, warmup_iters=0, warmup_ratio=warmup_ratio, power=power)

    monkeypatch.setattr(optim, "lr_factor", no_warmup)
    return {}


BREAKS = {  # name -> (the break, how many recorded steps it needs to show: t_seg + this)
    "lr-warmup": (lambda mp, traj: _warmup_skipped(mp), -1),
    "head-lr-mult": (lambda mp, traj: {"extra": ["train.head_lr_mult=1.0"]}, -1),
    "no-decay-on-norms-and-biases": (lambda mp, traj: {"optimizer_builder": _no_decay_everywhere_flat}, 1),
    "seg-term-one-step-late": (
        lambda mp, traj: {"extra": [f"method.seg_start={traj['schedule']['cam_iters'] + 2}"]}, 2,
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("folder", SETS[:1], ids=[f.name for f in SETS[:1]])
@pytest.mark.parametrize("name", sorted(BREAKS))
def test_each_injected_break_is_caught(folder, name, monkeypatch):
    traj = rt.load(folder)
    inject, after_seg = BREAKS[name]
    steps = max(1, traj["schedule"]["cam_iters"] + after_seg)  # the first steps are enough to show it
    found = mismatches(folder, monkeypatch, steps=steps, **inject(monkeypatch, traj))
    assert found, f"{name}: the comparison did not see it"


OWN_SETS = [f for f in SETS if f.parent == rt.FIXTURES]  # the shipped sets hold padded crops
# Each training-side fix of docs/method.md §10, and the quantity it must change on the shipped sets
# (anf_two_sided changes nothing in their windows; benchmarks/trajectory_fixes.py prints it all).
FIX_SHOWS_IN = {
    "ptc_pixel_box": "loss ptc",
    "reg_include_padding": "loss reg",
    "delayed_weights": "weight of seg",
}


@pytest.mark.slow
@pytest.mark.parametrize("folder", OWN_SETS, ids=[f.name for f in OWN_SETS])
@pytest.mark.parametrize("switch", sorted(FIX_SHOWS_IN))
def test_each_fix_changes_what_it_should(folder, switch, monkeypatch):
    sched = rt.load(folder)["schedule"]
    # the first steps that can show it: PTC from step 0, the seg weight at t_seg, L_reg's padding late
    steps = {"ptc_pixel_box": 1, "delayed_weights": sched["cam_iters"] + 1}.get(switch)
    found = mismatches(folder, monkeypatch, steps=steps, extra=[f"compat.{switch}=false"])
    assert any(FIX_SHOWS_IN[switch] in line for line in found), found[:5]
