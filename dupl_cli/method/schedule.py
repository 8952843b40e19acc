"""The three-phase loss schedule, phase names and the warm-up + poly LR factor (docs/method.md §8).

Building the optimiser and the scheduler is the engine's job (``train.optim``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dupl_cli.method.params import LossWeights, PhaseSchedule


@dataclass(frozen=True)
class Phase:
    """What runs at one iteration. A term with weight 0 is not computed at all."""

    name: str  # "A", "B" or "C": see phase_name
    w_cls: float
    w_ptc: float
    w_dis: float
    w_seg: float
    w_reg: float
    seg_labels: bool  # PAR-refined pseudo-labels are needed (seg loss, or ANF feeding it)
    anf: bool  # adaptive noise filtering on the refined labels
    aux_labels: bool  # COCO release stage: seg labels from the auxiliary CAM at a fixed tau
    # The release computes the seg term with weight 0 from t_seg until its weight applies: the seg
    # path's parameters get zero gradients, so AdamW decays them and counts a step (delayed_weights).
    seg_zero_grad: bool = False


def phase_name(t: int, schedule: PhaseSchedule) -> str:
    """The stage iteration ``t`` is in, by the schedule alone: A before t_seg, B before t_anf, else C.

    Zero loss weights switch work off (see :func:`phase_at`) but do not rename the stage.
    """
    return "A" if t < schedule.t_seg else ("B" if t < schedule.t_anf else "C")


def term_starts(schedule: PhaseSchedule) -> dict[str, int]:
    """First iteration each loss term is weighted (and computed): the schedule's own or the stage's."""
    delay = 1 if schedule.delayed_weights else 0
    seg = schedule.seg_start if schedule.seg_start is not None else schedule.t_seg + delay
    reg = schedule.reg_start if schedule.reg_start is not None else schedule.t_anf + delay
    return {"ptc": schedule.ptc_start, "dis": schedule.dis_start, "seg": seg, "reg": reg}


def phase_at(t: int, schedule: PhaseSchedule, weights: LossWeights) -> Phase:
    """Loss weights and active stages at iteration ``t``.

    Each term is weighted from its start (:func:`term_starts`); with ``schedule.delayed_weights``
    the seg and reg terms default to one iteration after their stage starts, as the release does,
    and the seg path gets the zero gradients of the release's weight-0 seg term in between.
    A zero-weight term is skipped, and so is every label stage no weighted term needs.
    """
    starts = term_starts(schedule)
    w = {name: getattr(weights, name) if t >= start else 0.0 for name, start in starts.items()}
    seg_on = t >= schedule.t_seg
    needs_labels = w["seg"] > 0 or w["reg"] > 0  # reg's discarded pixels come from the labels
    return Phase(
        name=phase_name(t, schedule),
        w_cls=1.0,
        w_ptc=w["ptc"],
        w_dis=w["dis"],
        w_seg=w["seg"],
        w_reg=w["reg"],
        seg_labels=seg_on and needs_labels,
        anf=schedule.noise_filter and t >= schedule.t_anf and needs_labels,
        aux_labels=seg_on and t < schedule.aux_seg_until,
        seg_zero_grad=schedule.delayed_weights and schedule.t_seg <= t < starts["seg"],
    )


def dta_window(schedule: PhaseSchedule) -> tuple[int, int]:
    """Iterations over which the dynamic threshold decays (after the COCO aux stage when set)."""
    start = schedule.dta_start
    if start is None:
        start = max(schedule.t_seg, schedule.aux_seg_until)
    return start, schedule.max_iters


def lr_factor(t: int, *, max_iters: int, warmup_iters: int, warmup_ratio: float, power: float) -> float:
    """LR multiplier: linear from ``warmup_ratio`` to 1 over warm-up, then ``(1 - t/T)^power`` from t = 0."""
    if t < warmup_iters:
        return warmup_ratio + (1.0 - warmup_ratio) * t / warmup_iters
    if t >= max_iters:
        return 0.0
    return math.pow(1.0 - t / max_iters, power)
