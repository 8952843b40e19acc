"""training_step with diff_aug (Table 6): each student its own real weak view, labels carried across.

The two views are real ``WeakView`` draws of one image (one flipped, one not, different scales and
crops), so the label a student learns must be its partner's label moved into the student's view.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dupl_cli.config.schema import DataSettings, ModelSettings
from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.data.transforms import WeakView
from dupl_cli.method import losses
from dupl_cli.method import step as step_module
from dupl_cli.method.cam import multiscale_cam
from dupl_cli.method.params import CamConfig, NoiseFilterConfig, ParConfig, PhaseSchedule, StepConfig
from dupl_cli.method.strong_aug import denormalize_u8
from dupl_cli.method.thresholds import box_mask
from dupl_cli.method.view_warp import warp_labels
from dupl_cli.models.dual import build_dual_student

T_SEG, T_ANF, S, CLASSES = 2, 4, 64, 5


def _config(diff_aug: bool = True) -> StepConfig:
    return StepConfig(
        cam=CamConfig(scales=(1.0, 0.5)),
        schedule=PhaseSchedule(t_seg=T_SEG, t_anf=T_ANF, max_iters=10),
        par=ParConfig(iters=2),
        noise=NoiseFilterConfig(min_pixels=10, loss_floor=0.0, eta=0.0),
        diff_aug=diff_aug,
    )


def _model(sharpen=1000.0):
    torch.manual_seed(0)
    model = build_dual_student(
        ModelSettings(arch="test_vit", pretrained="none", head_channels=16), CLASSES, img_size=S
    )
    with torch.no_grad():  # a confident head: the consistency mask is not empty
        for student in model.students:
            student.head.conv8.weight.mul_(sharpen)
    return model


def _batch(b=2):
    """Two real weak views of each of b images; view 1 is flipped where view 2 is not."""
    view = WeakView(DataSettings(crop_size=S, scale_range=(0.7, 1.4)))
    rng = np.random.default_rng(0)
    items = []
    for i in range(b):
        image = rng.integers(0, 256, (56, 72, 3), dtype=np.uint8)
        seed = 0
        while True:  # the first seed whose two views differ in flip (deterministic)
            gen = torch.Generator().manual_seed(1000 * i + seed)
            first, second = view.sample(image, gen), view.sample(image, gen)
            if (first.affine[2] < 0) != (second.affine[2] < 0):
                break
            seed += 1
        items.append((first, second))
    labels = torch.zeros(b, CLASSES)
    labels[torch.arange(b), torch.arange(b) % CLASSES] = 1
    stack = {key: torch.stack([getattr(v[k], attr) for v in items]) for key, k, attr in (
        ("image", 0, "image"), ("img_box", 0, "img_box"), ("affine", 0, "affine"),
        ("image2", 1, "image"), ("img_box2", 1, "img_box"), ("affine2", 1, "affine"),
    )}  # fmt: skip
    return {**stack, "labels": labels, "max_present": 1}


def _inputs(model, monkeypatch):
    seen = [[] for _ in model.students]
    for k, student in enumerate(model.students):
        f = student.backbone.forward
        monkeypatch.setattr(student.backbone, "forward", lambda x, f=f, k=k: seen[k].append(x) or f(x))
    return seen


def test_each_student_trains_on_its_own_view(monkeypatch):
    model, batch = _model(), _batch()
    seen = _inputs(model, monkeypatch)
    result = step_module.training_step(model, batch, T_ANF + 1, _config(), generator=torch.Generator())
    assert torch.isfinite(result.loss)
    assert all(float(result.terms[name]) > 0 for name in ("cls", "ptc", "dis", "seg", "reg"))
    assert torch.equal(seen[0][0], batch["image"]) and torch.equal(seen[1][0], batch["image2"])
    result.loss.backward()
    for student in model.students:
        for part in (student.backbone, student.head, student.classifier):
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_the_label_a_student_learns_is_its_partners_in_its_own_view(monkeypatch):
    seg_targets, reg_masks, spy = [], [], {}
    seg_loss, target = losses.seg_loss, losses.consistency_target
    monkeypatch.setattr(losses, "seg_loss", lambda lg, lb: seg_targets.append(lb) or seg_loss(lg, lb))
    monkeypatch.setattr(
        losses, "consistency_target", lambda w, d, **k: reg_masks.append(d) or target(w, d, **k)
    )
    make = step_module.make_pseudo_labels

    def labels(*args, **kwargs):
        spy["args"] = args
        return spy.setdefault("p", make(*args, **kwargs))

    monkeypatch.setattr(step_module, "make_pseudo_labels", labels)
    batch, model, config = _batch(), _model(), _config()
    step_module.training_step(model, batch, T_ANF + 1, config, generator=torch.Generator())
    filtered = spy["p"].filtered
    views = [(batch["affine"], batch["img_box"]), (batch["affine2"], batch["img_box2"])]
    # the labels are made per student from its own view: its CAMs, and the image and box PAR sees
    images01, cams, cams_aux, _, _, boxes = spy["args"][:6]
    for k, key in enumerate(("image", "image2")):
        u8 = denormalize_u8(batch[key], config.mean, config.std)
        assert torch.equal(images01[k], u8.float() / 255.0)
        assert torch.equal(boxes[k], views[k][1])
        cam, cam_aux = multiscale_cam(model.students[k], batch[key], scales=config.cam.scales, flip=True)
        torch.testing.assert_close(cams[k], cam, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cams_aux[k], cam_aux, rtol=1e-4, atol=1e-5)
    for k, j in ((0, 1), (1, 0)):
        expected = warp_labels(filtered[j], views[j][0], views[j][1], views[k][0])
        assert torch.equal(seg_targets[k], expected)
        assert not torch.equal(seg_targets[k], filtered[j])  # the views differ: the label moved
        inside = box_mask(views[k][1], (S, S))
        assert torch.equal(reg_masks[k], (expected == IGNORE_INDEX) & inside)


def test_two_copies_of_one_view_give_the_shared_step():
    """diff_aug with view 2 = view 1 (same pixels, box and affine) is the ordinary step."""
    batch = _batch()
    batch.update(image2=batch["image"].clone(), img_box2=batch["img_box"], affine2=batch["affine"])
    for t in (0, T_SEG + 1):  # stage A and B (the strong view's draws depend on the batch size)
        shared = step_module.training_step(_model(), batch, t, _config(diff_aug=False))
        own = step_module.training_step(_model(), batch, t, _config())
        for name, value in shared.terms.items():
            assert float(own.terms[name]) == pytest.approx(float(value), rel=1e-5, abs=1e-7), name


def test_diff_aug_needs_two_views_and_two_students():
    batch = _batch()
    del batch["affine2"]
    with pytest.raises(ValueError, match="batch lacks affine2"):
        step_module.training_step(_model(), batch, 0, _config())
    with pytest.raises(ValueError, match="needs two students"):
        dataclasses.replace(_config(), students=1, weights=dataclasses.replace(_config().weights, dis=0.0))


def test_noise_filter_and_strong_view_use_each_students_own_view(monkeypatch):
    model, batch, config = _model(), _batch(), _config()
    spy, strong_inputs = {}, [[] for _ in model.students]
    noisy = step_module.noisy_pixels
    monkeypatch.setattr(
        step_module, "noisy_pixels", lambda loss, *a: spy.update(loss=loss) or noisy(loss, *a)
    )
    make = step_module.make_pseudo_labels
    monkeypatch.setattr(step_module, "make_pseudo_labels", lambda *a, **k: spy.setdefault("p", make(*a, **k)))
    for k, student in enumerate(model.students):
        f = student.segment
        monkeypatch.setattr(student, "segment", lambda x, f=f, k=k: strong_inputs[k].append(x) or f(x))
    step_module.training_step(model, batch, T_ANF + 1, config, generator=torch.Generator())
    views = [batch["image"], batch["image2"]]
    # ANF: each student's own seg logits (on its own view) against its own refined label
    with torch.no_grad():
        seg = torch.cat(
            [losses.upsample(s(x).seg, (S, S)) for s, x in zip(model.students, views, strict=True)]
        )
    own = losses.pixel_ce(seg, torch.cat(spy["p"].refined))
    torch.testing.assert_close(spy["loss"], own, rtol=1e-4, atol=1e-5)
    # the strong image a student segments is a photometric change of its own view (flipped, downscaled)
    for k in (0, 1):
        (x,) = strong_inputs[k]
        size = tuple(x.shape[-2:])
        mine, other = (_similarity(x, losses.upsample(w, size).flip(-1)) for w in (views[k], views[1 - k]))
        assert (mine > 0.5).all() and (mine > other + 0.3).all(), (mine, other)


def _similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image: the correlation of two batches' pixels."""
    a, b = (v.sub(v.mean((1, 2, 3), keepdim=True)).flatten(1) for v in (a, b))
    return torch.nn.functional.cosine_similarity(a, b)
