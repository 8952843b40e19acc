"""AdamW (or SGD, ``train.optimizer``) over the model's two parameter groups and the warm-up + poly LR
schedule (docs/method.md §8; SGD for the DeepLab stage-2 presets, §12)."""

from __future__ import annotations

import torch

from dupl_cli.method.schedule import lr_factor


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


def build_optimizer(model, train_settings) -> torch.optim.Optimizer:
    """AdamW (``train.optimizer = sgd``: SGD with ``train.momentum``) with the backbone group at ``lr``
    and classifiers + heads at ``lr * head_lr_mult``.

    Weight decay applies to every group (as the release); frozen parameters are left out.
    """
    backbone, heads = model.param_groups()
    s = train_settings
    groups = [
        {"params": [p for p in backbone if p.requires_grad], "lr": s.lr, "name": "backbone"},
        {"params": [p for p in heads if p.requires_grad], "lr": s.lr * s.head_lr_mult, "name": "heads"},
    ]
    groups = [g for g in groups if g["params"]]
    if getattr(s, "optimizer", "adamw") == "sgd":
        kind, kwargs = torch.optim.SGD, dict(lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    else:
        kind = torch.optim.AdamW
        kwargs = dict(lr=s.lr, betas=tuple(s.betas), eps=s.eps, weight_decay=s.weight_decay)
    try:
        # Fused: one kernel per step, and it can skip a non-finite step on the device (train.step_guard).
        return kind(groups, fused=True, **kwargs)
    except RuntimeError:  # parameters on a device without the fused kernel
        return kind(groups, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, train_settings) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train_settings))
