"""AdamW parameter groups and the warm-up + poly LR of the engine's optimiser set-up."""

import math

import pytest
import torch
from torch import nn

from dupl_cli.config.schema import ModelSettings, TrainSettings
from dupl_cli.models.dual import build_dual_student
from dupl_cli.train import optim


def test_lr_warmup_and_poly_points():
    f = optim.lr_lambda(TrainSettings())
    assert f(0) == pytest.approx(1e-6)
    assert f(750) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert f(1500) == pytest.approx((1 - 1500 / 20000) ** 0.9)
    assert f(10000) == pytest.approx(0.5**0.9)
    assert f(19999) == pytest.approx((1 / 20000) ** 0.9)
    assert f(20000) == 0.0


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 3)
        self.frozen = nn.Parameter(torch.zeros(2), requires_grad=False)
        self.head = nn.Linear(3, 2)

    def param_groups(self):
        return [self.body.weight, self.body.bias, self.frozen], list(self.head.parameters())


def test_optimizer_groups_and_scheduler():
    s = TrainSettings()
    model = _Toy()
    opt = optim.build_optimizer(model, s)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(6e-5), pytest.approx(6e-4)]
    assert all(g["weight_decay"] == 0.01 for g in opt.param_groups)
    assert all(p.requires_grad for g in opt.param_groups for p in g["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == 4
    sched = optim.build_scheduler(opt, s)
    assert opt.param_groups[0]["lr"] == pytest.approx(6e-5 * 1e-6)
    for _ in range(1500):
        opt.step()
        sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(6e-4 * (1 - 1500 / 20000) ** 0.9)
    assert math.isclose(opt.param_groups[0]["lr"] * 10, opt.param_groups[1]["lr"], rel_tol=1e-9)


def test_optimizer_on_dual_student_groups_and_frozen_pos_embed():
    torch.manual_seed(0)
    model_settings = ModelSettings(arch="test_vit", pretrained="none", head_channels=16)
    model = build_dual_student(model_settings, 5, img_size=64)
    opt = optim.build_optimizer(model, TrainSettings())
    backbone, heads = opt.param_groups
    assert heads["lr"] == pytest.approx(10 * backbone["lr"])
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    frozen = [p for n, p in model.named_parameters() if "pos_embed" in n]
    assert frozen and all(id(p) not in ids for p in frozen)
    head_ids = {id(p) for n, p in model.named_parameters() if ".head." in n or "classifier" in n}
    assert {id(p) for p in heads["params"]} == head_ids
