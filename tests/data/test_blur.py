"""The weak view's separable blur equals torchvision's k×k Gaussian blur (which it replaced)."""

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from dupl_cli.data.blur import gaussian_blur, kernel_size
from dupl_cli.data.demo import generate_image


@pytest.mark.parametrize("sigma", [0.1, 0.45, 1.0, 1.7, 2.0])
@pytest.mark.parametrize("batched", [False, True])
def test_matches_torchvision_gaussian_blur(sigma, batched):
    scene = generate_image(0, 0, 3, 96)[0]  # a real textured scene, edges included
    x = torch.from_numpy(np.ascontiguousarray(scene)).permute(2, 0, 1).float() / 255.0
    x = torch.stack([x, x.flip(-1)]) if batched else x
    k = kernel_size(sigma)
    expected = F.gaussian_blur(x, [k, k], [sigma, sigma])
    got = gaussian_blur(x, sigma)
    assert got.shape == x.shape and got.dtype == x.dtype
    # float32 sums in another order: measured <= 8e-7 on [0, 1] images
    assert (got - expected).abs().max().item() < 1e-5
    assert not torch.equal(got, x) or sigma < 0.2  # it does blur


def test_input_untouched():
    x = torch.rand(3, 40, 50)
    before = x.clone()
    gaussian_blur(x, 1.5)
    assert torch.equal(x, before)
