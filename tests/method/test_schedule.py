"""Phase weights, AdamW parameter groups and the warm-up + poly LR."""

import math

import pytest
import torch
from torch import nn

from dupl_cli.config.schema import CompatSettings, MethodSettings, TrainSettings
from dupl_cli.method import schedule


def test_phase_weights_voc():
    m, c = MethodSettings(), CompatSettings()
    a = schedule.phase_at(0, m, c)
    assert (a.w_cls, a.w_ptc, a.w_dis, a.w_seg, a.w_reg) == (1.0, 0.2, 0.1, 0.0, 0.0)
    assert not a.seg_labels and not a.anf and a.name == "A"
    b = schedule.phase_at(2000, m, c)
    assert b.w_seg == 0.2 and b.w_reg == 0.0 and b.seg_labels and not b.anf and b.name == "B"
    assert schedule.phase_at(7999, m, c).name == "B"
    cc = schedule.phase_at(8000, m, c)
    assert cc.w_reg == 0.05 and cc.anf and cc.name == "C"


def test_delayed_weights_switch_on_one_iteration_late():
    m, c = MethodSettings(), CompatSettings(delayed_weights=True)
    assert schedule.phase_at(2000, m, c).w_seg == 0.0
    assert schedule.phase_at(2001, m, c).w_seg == 0.2
    at_anf = schedule.phase_at(8000, m, c)
    assert at_anf.w_reg == 0.0 and at_anf.anf  # ANF still feeds the weighted seg loss
    assert schedule.phase_at(8001, m, c).w_reg == 0.05


def test_zero_weight_terms_switch_work_off():
    m = MethodSettings(w_seg=0.0, w_reg=0.0)
    p = schedule.phase_at(10000, m, CompatSettings())
    assert not p.seg_labels and not p.anf


def test_coco_aux_stage_and_dta_window():
    m = MethodSettings(t_seg=8000, t_anf=32000, aux_seg_until=12000)
    assert schedule.phase_at(9000, m, CompatSettings()).aux_labels
    assert not schedule.phase_at(12000, m, CompatSettings()).aux_labels
    assert schedule.dta_window(m, 80000) == (12000, 80000)
    assert schedule.dta_window(MethodSettings(), 20000) == (2000, 20000)


def test_lr_warmup_and_poly_points():
    s = TrainSettings()
    f = schedule.lr_lambda(s)
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
    opt = schedule.build_optimizer(model, s)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(6e-5), pytest.approx(6e-4)]
    assert all(g["weight_decay"] == 0.01 for g in opt.param_groups)
    assert all(p.requires_grad for g in opt.param_groups for p in g["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == 4
    sched = schedule.build_scheduler(opt, s)
    assert opt.param_groups[0]["lr"] == pytest.approx(6e-5 * 1e-6)
    for _ in range(1500):
        opt.step()
        sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(6e-4 * (1 - 1500 / 20000) ** 0.9)
    assert math.isclose(opt.param_groups[0]["lr"] * 10, opt.param_groups[1]["lr"], rel_tol=1e-9)
