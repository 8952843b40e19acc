"""Under bf16 autocast, PAR label refinement and the noise filter still compute in fp32 (issue 13 item 5)."""

import torch

from dupl_cli.method.noise_filter import noisy_pixels
from dupl_cli.method.thresholds import refine_labels


def _inputs():
    g = torch.Generator().manual_seed(0)
    low = torch.rand(2, 3, 6, 6, generator=g)
    images01 = torch.nn.functional.interpolate(low, size=(48, 48), mode="bilinear", align_corners=False)
    cam = torch.rand(2, 4, 48, 48, generator=g).to(torch.bfloat16)  # as a bf16 CAM pass returns it
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 1]])
    return images01, cam, labels


def test_refine_labels_under_autocast_equals_fp32():
    images01, cam, labels = _inputs()
    want = refine_labels(images01, cam.float(), labels, tau_high=0.5, tau_low=0.25)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = refine_labels(images01, cam, labels, tau_high=0.5, tau_low=0.25)
    assert torch.equal(got, want)


def test_noise_filter_under_autocast_equals_fp32():
    g = torch.Generator().manual_seed(1)
    losses = torch.cat([torch.rand(2, 32, 32, generator=g) * 0.3, 2 + torch.rand(2, 32, 32, generator=g)], 1)
    labels = torch.randint(1, 4, (2, 64, 32), generator=g)
    want = noisy_pixels(losses, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = noisy_pixels(losses.to(torch.bfloat16), labels)
    assert torch.equal(got, noisy_pixels(losses.to(torch.bfloat16).float(), labels))
    assert want.any() and not want.all()
