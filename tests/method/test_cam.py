"""Multi-scale CAM: batched implementation vs a per-image, per-scale loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dupl_cli.config.schema import ModelSettings
from dupl_cli.method.cam import dual_multiscale_cam, multiscale_cam
from dupl_cli.models.dual import build_dual_student


def _model():
    torch.manual_seed(0)
    return build_dual_student(
        ModelSettings(arch="test_vit", pretrained="none", head_channels=8), 4, img_size=64
    ).eval()


def _loop_cam(student, images, scales, use_aux):
    """Per image and per scale: forward the image and its flip separately, combine plainly."""
    out = []
    for img in images:
        total = 0
        for s in scales:
            h, w = img.shape[-2:]
            x = F.interpolate(img[None], size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False)
            maps = []
            for view in (x, x.flip(-1)):
                raw = student.cams(view)[1 if use_aux else 0]
                maps.append(F.interpolate(raw, size=(h, w), mode="bilinear", align_corners=False))
            total = total + torch.relu(torch.maximum(maps[0], maps[1].flip(-1)))
        cam = total[0]
        for c in range(cam.shape[0]):
            m = cam[c] - cam[c].min()
            cam[c] = m / (m.max() + 1e-5)
        out.append(cam)
    return torch.stack(out)


@torch.no_grad()
def test_multiscale_matches_loop():
    model = _model()
    images = torch.randn(3, 3, 64, 64)
    student = model.students[0]
    cam, cam_aux = multiscale_cam(student, images, scales=(1.0, 0.5, 1.5), flip=True)
    assert cam.shape == cam_aux.shape == (3, 4, 64, 64)
    torch.testing.assert_close(cam, _loop_cam(student, images, (1.0, 0.5, 1.5), False), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        cam_aux, _loop_cam(student, images, (1.0, 0.5, 1.5), True), atol=1e-5, rtol=1e-5
    )
    assert cam.min() >= 0 and cam.max() <= 1
    # Per image and class the max is 1 - tiny and the min 0.
    flat = cam.flatten(2)
    assert torch.allclose(flat.amin(2), torch.zeros(3, 4)) and (flat.amax(2) > 0.999).all()


@torch.no_grad()
def test_no_flip_and_dual():
    model = _model()
    images = torch.randn(2, 3, 64, 64)
    cams, cams_aux = dual_multiscale_cam(model, images, scales=(1.0,), flip=True)
    for k, student in enumerate(model.students):
        torch.testing.assert_close(cams[k], multiscale_cam(student, images, scales=(1.0,), flip=True)[0])
    assert not torch.allclose(cams[0], cams[1])  # different heads -> different CAMs
    cam, _ = multiscale_cam(model.students[0], images, scales=(1.0,), flip=False)
    raw = F.interpolate(
        model.students[0].cams(images)[0], size=(64, 64), mode="bilinear", align_corners=False
    ).relu()
    raw = raw - raw.amin((2, 3), keepdim=True)
    torch.testing.assert_close(cam, raw / (raw.amax((2, 3), keepdim=True) + 1e-5), atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_bf16_autocast_normalised_in_fp32():
    model = _model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = torch.randn(1, 3, 64, 64)
        cam, cam_aux = multiscale_cam(model.students[0], images, scales=(1.0, 0.5, 1.5), flip=True)
    assert cam.dtype == torch.float32 and cam_aux.dtype == torch.float32
    assert torch.isfinite(cam).all()
