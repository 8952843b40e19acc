"""training_step on test_vit at 64 px: the right parameters learn in each phase, no per-image work."""

import dataclasses

import pytest
import torch

from dupl_cli.config.schema import ModelSettings
from dupl_cli.method import schedule
from dupl_cli.method.params import CamConfig, NoiseFilterConfig, ParConfig, PhaseSchedule, StepConfig
from dupl_cli.method.step import training_step
from dupl_cli.models.dual import build_dual_student

T_SEG, T_ANF = 2, 4


def _config(delayed_weights: bool = False) -> StepConfig:
    return StepConfig(
        cam=CamConfig(scales=(1.0, 0.5)),
        schedule=PhaseSchedule(t_seg=T_SEG, t_anf=T_ANF, max_iters=10, delayed_weights=delayed_weights),
        par=ParConfig(iters=2),
        noise=NoiseFilterConfig(min_pixels=10),
    )


def _model(seed=0, sharpen=1.0):
    torch.manual_seed(seed)
    model_settings = ModelSettings(arch="test_vit", pretrained="none", head_channels=16)
    model = build_dual_student(model_settings, 5, img_size=64)
    with torch.no_grad():  # a confident head gives pixels above the 0.9 confidence
        for student in model.students:
            student.head.conv8.weight.mul_(sharpen)
    return model


def _batch(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(b, 5)
    labels[torch.arange(b), torch.arange(b) % 5] = 1
    labels[0, 3] = 1
    box = torch.tensor([[0, 64, 0, 64]] * b)
    box[-1] = torch.tensor([0, 64, 8, 56])
    return {"image": torch.randn(b, 3, 64, 64, generator=g), "labels": labels, "img_box": box}


def _grads(model, t, config, batch=None):
    model.zero_grad(set_to_none=True)
    result = training_step(model, batch or _batch(), t, config, generator=torch.Generator().manual_seed(1))
    assert result.loss.dtype == torch.float32 and torch.isfinite(result.loss)
    result.loss.backward()
    has = {}
    for name, p in model.named_parameters():
        has[name] = p.grad is not None and bool(p.grad.abs().sum() > 0)
    return result, has


def _any(has, part):
    return any(v for k, v in has.items() if k.startswith(f"{part}."))


def test_phase_a_trains_backbone_and_classifiers_not_the_head():
    model = _model()
    result, has = _grads(model, 0, _config())
    for k in (0, 1):
        assert _any(has, f"students.{k}.backbone") and has[f"students.{k}.classifier.weight"]
        assert has[f"students.{k}.aux_classifier.weight"]
        assert not _any(has, f"students.{k}.head")
    assert not any(v for k, v in has.items() if "pos_embed" in k)
    assert set(result.terms) >= {"cls", "ptc", "dis", "seg", "reg"}
    assert result.terms["seg"] == 0 and result.terms["reg"] == 0
    assert all(not t.requires_grad for t in result.terms.values())
    assert result.stats["tau_h"].item() == pytest.approx(0.70)
    assert result.stats["noise_share"] == 0
    assert result.visuals["pseudo_label"].shape == (64, 64) and result.visuals["cam"].shape == (64, 64)


@pytest.mark.parametrize("t", [T_SEG, T_ANF + 1])
def test_later_phases_train_the_heads(t):
    model = _model()
    result, has = _grads(model, t, _config())
    for k in (0, 1):
        assert _any(has, f"students.{k}.head")
    assert result.terms["seg"] > 0
    assert result.stats["tau_h"] < 0.70 or t == T_SEG
    weights = schedule.phase_at(t, _config().schedule, _config().weights)
    expected = (
        result.terms["cls"]
        + weights.w_ptc * result.terms["ptc"]
        + weights.w_dis * result.terms["dis"]
        + weights.w_seg * result.terms["seg"]
        + weights.w_reg * result.terms["reg"]
    )
    assert result.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    if t > T_ANF:
        assert 0 <= result.stats["noise_share"] <= 1


def test_consistency_learns_confident_discarded_pixels():
    model, s = _model(sharpen=1000.0), _config()
    result, has = _grads(model, T_ANF + 1, s)
    assert result.terms["reg_1"] > 0 and result.terms["reg_2"] > 0  # non-empty masks on both students
    assert result.terms["reg"] == result.terms["reg_1"] + result.terms["reg_2"]
    # The consistency term's gradient reaches the heads: without it they learn something else.
    model_b = _model(sharpen=1000.0)
    s_b = dataclasses.replace(s, weights=dataclasses.replace(s.weights, reg=0.0))
    _grads(model_b, T_ANF + 1, s_b)
    grads = [p.grad for p in model.students[0].head.parameters()]
    grads_b = [p.grad for p in model_b.students[0].head.parameters()]
    assert any(not torch.allclose(a, b) for a, b in zip(grads, grads_b, strict=True))


def test_delayed_weights_skip_the_seg_term_on_its_first_iteration():
    model = _model()
    result, has = _grads(model, T_SEG, _config(delayed_weights=True))
    assert not _any(has, "students.0.head") and not _any(has, "students.1.head")
    # As the release's seg loss times 0: every head parameter has a gradient, all zeros (AdamW then
    # decays it and counts a step), and the loss is the weighted terms alone.
    heads = [p.grad for k in (0, 1) for p in model.students[k].head.parameters()]
    assert heads and all(g is not None and not g.any() for g in heads)
    assert result.terms["seg"] == 0
    # dupl's own late start (seg_start, no compat switch) leaves the heads out of the step entirely
    late = _config()
    late = dataclasses.replace(late, schedule=dataclasses.replace(late.schedule, seg_start=T_SEG + 1))
    model_b = _model()
    _grads(model_b, T_SEG, late)
    assert all(p.grad is None for k in (0, 1) for p in model_b.students[k].head.parameters())


def test_strong_view_is_reproducible_with_a_generator():
    model, s = _model(), _config()
    a = training_step(model, _batch(), T_ANF, s, generator=torch.Generator().manual_seed(7)).terms
    b = training_step(model, _batch(), T_ANF, s, generator=torch.Generator().manual_seed(7)).terms
    assert torch.equal(a["reg"], b["reg"])


def test_number_of_forwards_does_not_grow_with_the_batch(monkeypatch):
    model, s = _model(), _config()
    calls = []
    for student in model.students:
        original = student.backbone.forward
        monkeypatch.setattr(
            student.backbone, "forward", lambda x, f=original: calls.append(x.shape[0]) or f(x)
        )
    counts = []
    for b in (1, 3):
        calls.clear()
        training_step(model, _batch(b), T_ANF + 1, s, generator=torch.Generator().manual_seed(0))
        counts.append(len(calls))
    assert counts[0] == counts[1]
