"""Three-phase loss schedule, AdamW parameter groups and the warm-up + poly LR (SPEC.md §8)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Phase:
    """What runs at one iteration. A term with weight 0 is not computed at all."""

    w_cls: float
    w_ptc: float
    w_dis: float
    w_seg: float
    w_reg: float
    seg_labels: bool  # PAR-refined pseudo-labels are needed (seg loss, or ANF feeding it)
    anf: bool  # adaptive noise filtering on the refined labels
    aux_labels: bool  # COCO release stage: seg labels from the auxiliary CAM at a fixed tau

    @property
    def name(self) -> str:
        return "C" if self.anf else ("B" if self.seg_labels else "A")


def phase_at(t: int, method, compat) -> Phase:
    """Loss weights and active stages at iteration ``t``.

    With ``compat.delayed_weights`` a new term is computed from its first iteration but weighted
    only one iteration later, as the release does; the zero-weight term is then skipped.
    """
    delay = 1 if compat.delayed_weights else 0
    seg_on = t >= method.t_seg
    anf_on = t >= method.t_anf
    w_seg = method.w_seg if t >= method.t_seg + delay else 0.0
    w_reg = method.w_reg if t >= method.t_anf + delay else 0.0
    return Phase(
        w_cls=1.0,
        w_ptc=method.w_ptc,
        w_dis=method.w_dis,
        w_seg=w_seg,
        w_reg=w_reg,
        seg_labels=seg_on and (w_seg > 0 or (anf_on and w_reg > 0)),
        anf=anf_on and (w_seg > 0 or w_reg > 0),
        aux_labels=seg_on and t < method.aux_seg_until,
    )


def dta_window(method, max_iters: int) -> tuple[int, int]:
    """Iterations over which the dynamic threshold decays (after the COCO aux stage when set)."""
    return max(method.t_seg, method.aux_seg_until), max_iters


def lr_factor(t: int, *, max_iters: int, warmup_iters: int, warmup_ratio: float, power: float) -> float:
    """LR multiplier: linear from ``warmup_ratio`` to 1 over warm-up, then ``(1 - t/T)^power`` from t = 0."""
    if t < warmup_iters:
        return warmup_ratio + (1.0 - warmup_ratio) * t / warmup_iters
    if t >= max_iters:
        return 0.0
    return math.pow(1.0 - t / max_iters, power)


def lr_lambda(train_settings):
    """A ``LambdaLR`` callable for the settings' warm-up + poly schedule."""
    s = train_settings

    def factor(t: int) -> float:
        return lr_factor(
            t,
            max_iters=s.max_iters,
            warmup_iters=s.warmup_iters,
            warmup_ratio=s.warmup_ratio,
            power=s.poly_power,
        )

    return factor


def build_optimizer(model, train_settings) -> torch.optim.AdamW:
    """AdamW with the backbone group at ``lr`` and classifiers + heads at ``lr * head_lr_mult``.

    Weight decay applies to every group (as the release); frozen parameters are left out.
    """
    backbone, heads = model.param_groups()
    s = train_settings
    groups = [
        {"params": [p for p in backbone if p.requires_grad], "lr": s.lr, "name": "backbone"},
        {"params": [p for p in heads if p.requires_grad], "lr": s.lr * s.head_lr_mult, "name": "heads"},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=s.lr, betas=tuple(s.betas), eps=s.eps, weight_decay=s.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, train_settings) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train_settings))
