"""train.optimizer = sgd (the DeepLab stage-2 presets, issue 25): the same two LR groups, momentum and
weight decay from the settings, fused, so the non-finite guard still skips a bad step on the device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dupl_cli.config.schema import TrainSettings
from dupl_cli.train import optim
from dupl_cli.train.step_guard import NonFiniteGuard, supports_device_skip


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(3, 3), nn.Linear(3, 2)

    def param_groups(self):
        return list(self.body.parameters()), list(self.head.parameters())


def test_sgd_has_the_groups_momentum_and_decay_of_the_settings():
    settings = TrainSettings(optimizer="sgd", lr=2.5e-4, momentum=0.9, weight_decay=5e-4)
    opt = optim.build_optimizer(_Toy(), settings)
    assert isinstance(opt, torch.optim.SGD) and supports_device_skip(opt)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(2.5e-4), pytest.approx(2.5e-3)]
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 5e-4 for g in opt.param_groups)
    assert isinstance(optim.build_optimizer(_Toy(), TrainSettings()), torch.optim.AdamW)


def test_a_non_finite_sgd_step_is_skipped_on_the_device():
    torch.manual_seed(0)
    model = _Toy()
    opt = optim.build_optimizer(model, TrainSettings(optimizer="sgd"))
    guard = NonFiniteGuard(opt, torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    model.head(model.body(torch.randn(4, 3))).sum().backward()
    guard.step(torch.tensor(True), {"seg": torch.tensor(float("nan"))}, step=0)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    guard.step(torch.tensor(False), {"seg": torch.tensor(1.0)}, step=1)
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
