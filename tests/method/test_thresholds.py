"""Thresholds: DTA values, three-way labels, token labels and the box, PAR-refined labels vs a loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from method_oracles import refine

from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.method.thresholds import (
    box_mask,
    cam_to_label,
    high_threshold,
    image_thresholds,
    refine_labels,
    token_labels,
)


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (0, 0.70),
        (2000, 0.70),
        (5000, 0.690),
        (8000, 0.6625),
        (11000, 0.625),
        (14000, 0.5875),
        (20000, 0.55),
        (25000, 0.55),
    ],
)
def test_dta_values(t, expected):
    got = high_threshold(t, tau0=0.70, tau_end=0.55, t_start=2000, t_end=20000)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, abs=1e-4)
    per_class = high_threshold(t, tau0=0.70, tau_end=torch.tensor([0.55, 0.70]), t_start=2000, t_end=20000)
    assert isinstance(per_class, torch.Tensor) and per_class.shape == (2,)
    assert per_class[0].item() == pytest.approx(expected, abs=1e-4)
    assert per_class[1].item() == pytest.approx(0.70, abs=1e-7)


def test_image_threshold_is_max_over_present_classes():
    tau = torch.tensor([0.70, 0.60, 0.55])
    labels = torch.tensor([[0.0, 1, 1], [1, 0, 1], [0, 0, 1]])
    torch.testing.assert_close(image_thresholds(tau, labels), torch.tensor([0.60, 0.70, 0.55]))
    torch.testing.assert_close(image_thresholds(0.65, labels), torch.full((3,), 0.65))


def test_cam_to_label_two_way_rule_without_tau_low():
    cam = torch.zeros(1, 3, 1, 5)
    cam[0, 0, 0] = torch.tensor([0.9, 0.5, 0.2, 0.95, 0.7])
    cam[0, 1, 0] = torch.tensor([0.1, 0.8, 0.1, 0.99, 0.3])  # class 1 absent
    cam[0, 2, 0] = torch.tensor([0.0, 0.1, 0.3, 0.10, 0.71])
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    assert cam_to_label(cam, labels, tau_high=0.7).tolist() == [[[1, 0, 0, 1, 3]]]  # no ignore band
    # The evaluation formulation: argmax over [tau, y·M], with one tau per image.
    g = torch.Generator().manual_seed(0)
    cam, labels = torch.rand(3, 5, 9, 11, generator=g), (torch.rand(3, 5, generator=g) > 0.5).float()
    tau = torch.tensor([0.3, 0.5, 0.9])
    stacked = torch.cat([tau.view(3, 1, 1, 1).expand(3, 1, 9, 11), cam * labels[:, :, None, None]], 1)
    assert torch.equal(cam_to_label(cam, labels, tau_high=tau), stacked.argmax(1))


def test_cam_to_label_by_hand():
    cam = torch.zeros(1, 3, 1, 5)
    cam[0, 0, 0] = torch.tensor([0.9, 0.5, 0.2, 0.95, 0.7])
    cam[0, 1, 0] = torch.tensor([0.1, 0.8, 0.1, 0.99, 0.3])  # class 1 absent: 0.99 must not count
    cam[0, 2, 0] = torch.tensor([0.0, 0.1, 0.3, 0.10, 0.71])
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    out = cam_to_label(cam, labels, tau_high=0.7, tau_low=0.25)
    assert out.tolist() == [[[1, IGNORE_INDEX, IGNORE_INDEX, 1, 3]]]  # 0.7 is not > 0.7; 0.71 > 0.7
    out = cam_to_label(cam, labels, tau_high=torch.tensor([0.92]), tau_low=0.4)
    assert out.tolist() == [[[IGNORE_INDEX, IGNORE_INDEX, 0, 1, IGNORE_INDEX]]]


def test_box_on_pixels_and_tokens():
    box = torch.tensor([[0, 64, 20, 50]])
    m = box_mask(box, (64, 64))
    assert m[0, :, 20:50].all() and not m[0, :, :20].any() and not m[0, :, 50:].any()
    tok = box_mask(box, (4, 4), stride=16)  # token centres 8, 24, 40, 56 -> columns 1, 2 inside
    assert tok[0, 0].tolist() == [False, True, True, False]
    quirk = box_mask(box, (4, 4), pixel_coords=True)  # slices 20:50 of a width-4 grid: nothing
    assert not quirk.any()


def test_token_labels_default_maps_box_quirk_blanks():
    cam = torch.rand(1, 2, 64, 64)
    cam[:, 0] = 1.0
    labels = torch.tensor([[1.0, 0.0]])
    box = torch.tensor([[0, 64, 20, 64]])
    default = token_labels(cam, labels, grid=(4, 4), tau_high=0.7, tau_low=0.25, img_box=box)
    assert (default[0, :, 1:] == 1).all() and (default[0, :, 0] == IGNORE_INDEX).all()
    quirk = token_labels(cam, labels, grid=(4, 4), tau_high=0.7, tau_low=0.25, img_box=box, pixel_box=True)
    assert (quirk == IGNORE_INDEX).all()


def _loop_refine(images01, cam, labels, tau_h, tau_l, box):
    """Per image: [tau; present CAMs] stacks, half-size PAR via refine(), argmax, combine, box."""
    b, _, h, w = cam.shape
    outs = []
    for i in range(b):
        keys = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(labels[i])[:, 0] + 1])
        img = F.interpolate(images01[i : i + 1], size=(h // 2, w // 2), mode="bilinear", align_corners=False)
        results = []
        for tau in (float(tau_h[i]), tau_l):
            stack = torch.cat(
                [torch.full((1, 1, h, w), tau), (cam[i : i + 1] * labels[i].view(1, -1, 1, 1))], 1
            )
            stack = F.interpolate(stack, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
            probs = stack[:, keys].softmax(1)
            ref = F.interpolate(refine(img, probs), size=(h, w), mode="bilinear", align_corners=False)
            results.append(keys[ref.argmax(1)[0]])
        lh, ll = results
        out = torch.where(lh == 0, torch.full_like(lh, IGNORE_INDEX), lh)
        out[(lh + ll) == 0] = 0
        final = torch.full_like(out, IGNORE_INDEX)
        y0, y1, x0, x1 = box[i].tolist()
        final[y0:y1, x0:x1] = out[y0:y1, x0:x1]
        outs.append(final)
    return torch.stack(outs)


@pytest.mark.parametrize("slots", [3, 6, None])  # the largest class count; all classes; counted here
def test_refine_labels_matches_loop(slots):
    g = torch.Generator().manual_seed(0)
    b, c, h, w = 3, 6, 48, 40
    images01 = torch.rand(b, 3, h, w, generator=g)
    cam = F.interpolate(
        torch.rand(b, c, 6, 5, generator=g), size=(h, w), mode="bilinear", align_corners=False
    )
    cam = (cam - cam.amin((2, 3), keepdim=True)) / (
        cam.amax((2, 3), keepdim=True) - cam.amin((2, 3), keepdim=True)
    )
    labels = torch.tensor([[1.0, 0, 0, 1, 0, 1], [0, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    tau_h = torch.tensor([0.7, 0.6, 0.55])
    box = torch.tensor([[0, 48, 0, 40], [4, 40, 6, 30], [0, 48, 10, 40]])
    got = refine_labels(images01, cam, labels, tau_high=tau_h, tau_low=0.25, img_box=box, slots=slots)
    ref = _loop_refine(images01, cam, labels, tau_h, 0.25, box)
    assert torch.equal(got, ref)
    assert set(got.unique().tolist()) <= {0, 1, 2, 4, 6, IGNORE_INDEX}
