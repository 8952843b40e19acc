"""The tracker image grid shows the training image as it is: uint8 from the step, or float in [0, 1]."""

import numpy as np
import torch

from dupl_cli.evaluation.visual_grid import training_grid

PALETTE = [(0, 0, 0), (128, 0, 0), (0, 128, 0)]


def test_the_steps_uint8_image_is_shown_unchanged_beside_its_panels():
    image = torch.randint(0, 256, (3, 8, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[0, 1, 2, 255] * 3] * 8, dtype=torch.uint8)
    grid = training_grid({"image": image, "cam": torch.rand(4, 6), "pseudo_label": labels}, PALETTE)
    assert grid.shape == (8, 36, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:, :12], image.permute(1, 2, 0).numpy())
    assert tuple(grid[0, 25]) == (128, 0, 0) and tuple(grid[0, 27]) == (255, 255, 255)  # class 1, ignore


def test_a_float_image_in_unit_range_is_scaled():
    image = torch.full((3, 4, 4), 0.5)
    assert (training_grid({"image": image}, PALETTE) == 128).all()
