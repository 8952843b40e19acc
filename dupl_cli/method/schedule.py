"""The three-phase loss schedule, phase names and the warm-up + poly LR factor (docs/method.md §8).

Building the optimiser and the scheduler is the engine's job (``engine.optim``).
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


def phase_name(t: int, schedule: PhaseSchedule) -> str:
    """The stage iteration ``t`` is in, by the schedule alone: A before t_seg, B before t_anf, else C.

    Zero loss weights switch work off (see :func:`phase_at`) but do not rename the stage.
    """
    return "A" if t < schedule.t_seg else ("B" if t < schedule.t_anf else "C")


def phase_at(t: int, schedule: PhaseSchedule, weights: LossWeights) -> Phase:
    """Loss weights and active stages at iteration ``t``.

    With ``schedule.delayed_weights`` a new term is computed from its first iteration but weighted
    only one iteration later, as the release does; the zero-weight term is then skipped.
    """
    delay = 1 if schedule.delayed_weights else 0
    seg_on = t >= schedule.t_seg
    anf_on = t >= schedule.t_anf
    w_seg = weights.seg if t >= schedule.t_seg + delay else 0.0
    w_reg = weights.reg if t >= schedule.t_anf + delay else 0.0
    return Phase(
        name=phase_name(t, schedule),
        w_cls=1.0,
        w_ptc=weights.ptc,
        w_dis=weights.dis,
        w_seg=w_seg,
        w_reg=w_reg,
        seg_labels=seg_on and (w_seg > 0 or (anf_on and w_reg > 0)),
        anf=anf_on and (w_seg > 0 or w_reg > 0),
        aux_labels=seg_on and t < schedule.aux_seg_until,
    )


def dta_window(schedule: PhaseSchedule) -> tuple[int, int]:
    """Iterations over which the dynamic threshold decays (after the COCO aux stage when set)."""
    return max(schedule.t_seg, schedule.aux_seg_until), schedule.max_iters


def lr_factor(t: int, *, max_iters: int, warmup_iters: int, warmup_ratio: float, power: float) -> float:
    """LR multiplier: linear from ``warmup_ratio`` to 1 over warm-up, then ``(1 - t/T)^power`` from t = 0."""
    if t < warmup_iters:
        return warmup_ratio + (1.0 - warmup_ratio) * t / warmup_iters
    if t >= max_iters:
        return 0.0
    return math.pow(1.0 - t / max_iters, power)
