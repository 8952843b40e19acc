"""The step runs no redundant backbone pass: the scale-1.0 un-flipped CAM view is the training forward,
and a phase runs only the CAM passes its losses use."""

import dataclasses

import pytest
import torch
from test_step import _batch, _config, _model

from dupl_cli.method import step as step_module
from dupl_cli.method.cam import dual_multiscale_cam, forward_is_reusable
from dupl_cli.method.params import CamConfig, LossWeights
from dupl_cli.method.schedule import phase_at

SCALES = (1.0, 0.5, 1.5)


def _record(model, monkeypatch):
    """(student, kind, input shape) of every backbone call."""
    calls = []
    for k, student in enumerate(model.students):
        bb = student.backbone
        for kind in ("forward", "forward_aux"):
            inner = getattr(bb, kind)

            def wrapped(x, _inner=inner, _k=k, _kind=kind):
                calls.append((_k, _kind, tuple(x.shape)))
                return _inner(x)

            monkeypatch.setattr(bb, kind, wrapped)
    return calls


@pytest.mark.parametrize("phase_t", [0, 2, 4])  # A, B, C of test_step's schedule
def test_backbone_calls_per_phase(monkeypatch, phase_t):
    model = _model()
    model.train()
    config = dataclasses.replace(_config(), cam=CamConfig(scales=SCALES))
    calls = _record(model, monkeypatch)
    step_module.training_step(model, _batch(), phase_t, config, generator=torch.Generator().manual_seed(1))
    b = 2
    cam_views = [(b, 3, 64, 64), (2 * b, 3, 32, 32), (2 * b, 3, 96, 96)]  # flip of scale 1, then 0.5, 1.5
    phase = phase_at(phase_t, config.schedule, config.weights)
    cam_kind = "forward" if phase.seg_labels else "forward_aux"  # phase A: token labels need the aux CAM only
    for k in range(2):
        mine = [(kind, shape) for s, kind, shape in calls if s == k]
        assert mine[0] == ("forward", (b, 3, 64, 64))  # the training forward
        assert mine[1:4] == [(cam_kind, v) for v in cam_views]
        # phase C adds the strong view's segmentation pass only
        assert len(mine) == (5 if phase.w_reg > 0 else 4)


def test_no_cam_pass_when_no_loss_uses_one(monkeypatch):
    """Phase A without PTC (an ablation): no CAM pass at all."""
    model = _model()
    config = dataclasses.replace(_config(), weights=LossWeights(ptc=0.0))
    calls = _record(model, monkeypatch)
    result = step_module.training_step(model, _batch(), 0, config, generator=torch.Generator().manual_seed(1))
    assert [kind for _, kind, _ in calls] == ["forward", "forward"]
    assert result.visuals["cam"].shape == (64, 64)


@pytest.mark.parametrize("final", [True, False])
def test_reused_forward_gives_the_cams_of_a_separate_pass(final):
    model = _model(seed=3)
    model.train()
    images = _batch(b=3)["image"]
    outs = [s(images) for s in model.students]
    assert all(forward_is_reusable(s, o) for s, o in zip(model.students, outs, strict=True))
    got = dual_multiscale_cam(model, images, scales=SCALES, flip=True, final=final, forwards=outs)
    ref = dual_multiscale_cam(model, images, scales=SCALES, flip=True)
    for kind in [0, 1] if final else [1]:
        for g, r in zip(got[kind], ref[kind], strict=True):
            # the same ops on a batch of 3 instead of 6: rounding at most (measured 0 on CPU; CAMs in [0, 1])
            torch.testing.assert_close(g, r, rtol=0, atol=1e-5)
    if not final:
        assert got[0] == [None, None]


def test_a_random_or_batch_dependent_forward_is_not_reused():
    model = _model()
    model.train()
    student = model.students[0]
    out = student(_batch()["image"])
    assert forward_is_reusable(student, out)
    student.backbone.vit.blocks[0].drop_path1.drop_prob = 0.1  # timm DropPath: random in training
    assert not forward_is_reusable(student, out)
    student.eval()
    assert forward_is_reusable(student, out)
    student.train()
    student.head.add_module("bn", torch.nn.BatchNorm2d(4))
    student.backbone.vit.blocks[0].drop_path1.drop_prob = 0.0
    assert not forward_is_reusable(student, out)
    assert not forward_is_reusable(student, out._replace(aux_features=None))


def test_phase_a_ptc_labels_match_the_full_pass():
    """Phase A's aux-only passes give the token labels the full passes give."""
    model = _model(seed=1)
    config = dataclasses.replace(_config(), cam=CamConfig(scales=SCALES))
    batch = _batch()
    images = batch["image"]
    outs = [s(images) for s in model.students]
    phase = phase_at(0, config.schedule, config.weights)
    cams, cams_aux = step_module._step_cams(model, [images] * 2, outs, phase, config)
    _, ref_aux = dual_multiscale_cam(model, images, scales=SCALES, flip=True)
    for g, r in zip(cams_aux, ref_aux, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-5)
    assert all(c.shape == (2, 5, 64, 64) for c in cams)  # the visuals' single-view CAM
