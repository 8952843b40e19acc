"""Inputs that are not a multiple of the stride: maps cover the padded input and come back exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dupl_cli.config.schema import ModelSettings
from dupl_cli.method.cam import merge_flip, multiscale_cam, raw_cams_at_scales
from dupl_cli.models.dual import build_dual_student
from dupl_cli.models.geometry import pad_to_multiple, padded_size, resample_view
from dupl_cli.predict.tta import padded_forward
from dupl_cli.train.validation import segment_at


def sample_at(maps: torch.Tensor, size, view, padded) -> torch.Tensor:
    """Independent oracle: bilinear samples (grid_sample, float64) at the map coordinates that the
    view's pixel centres fall on, ``(y + 0.5) * view / size`` pixels, ``padded / h`` pixels per cell."""
    h, w = maps.shape[-2:]
    cell = (padded[0] / h, padded[1] / w)
    ys = (torch.arange(size[0], dtype=torch.float64) + 0.5) * view[0] / size[0] / cell[0]  # in cells
    xs = (torch.arange(size[1], dtype=torch.float64) + 0.5) * view[1] / size[1] / cell[1]
    gy, gx = torch.meshgrid(ys / h * 2 - 1, xs / w * 2 - 1, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None].expand(maps.shape[0], -1, -1, -1)
    return F.grid_sample(maps.double(), grid, mode="bilinear", padding_mode="border", align_corners=False)


@pytest.mark.parametrize(
    "view, size, stride",
    [
        ((50, 37), (100, 75), 14),
        ((100, 75), (100, 75), 16),
        ((150, 112), (100, 75), 14),
        ((64, 48), (64, 48), 16),
        ((32, 40), (64, 80), 16),
    ],
)
def test_resample_view_matches_the_sampling_oracle(view, size, stride):
    padded = padded_size(view, stride)
    maps = torch.randn(
        2, 3, padded[0] // stride, padded[1] // stride, generator=torch.Generator().manual_seed(0)
    )
    got = resample_view(maps, size, view=view, padded=padded)
    assert got.shape == (2, 3, *size)
    torch.testing.assert_close(got.double(), sample_at(maps, size, view, padded), atol=1e-5, rtol=0)


def test_a_coarser_aux_map_on_the_same_padded_input_is_placed_by_its_own_cell_size():
    # stride-32 final map, stride-16 aux map (timm CNNs that cannot dilate): both cover the padded input
    view, padded = (70, 90), (96, 96)
    aux = torch.randn(1, 2, 6, 6)
    got = resample_view(aux, (70, 90), view=view, padded=padded)
    torch.testing.assert_close(got.double(), sample_at(aux, (70, 90), view, padded), atol=1e-5, rtol=0)


def test_multiples_of_the_stride_keep_the_plain_resize():
    maps = torch.randn(1, 3, 4, 6)
    plain = F.interpolate(maps, size=(96, 80), mode="bilinear", align_corners=False)
    assert torch.equal(resample_view(maps, (96, 80), view=(64, 96), padded=(64, 96)), plain)
    x = torch.randn(1, 3, 64, 96)
    assert pad_to_multiple(x, 16) is x
    assert pad_to_multiple(x, 14).shape[-2:] == (70, 98)
    assert torch.equal(pad_to_multiple(x, 14)[..., :64, :96], x)


@pytest.fixture(scope="module")
def student14():
    torch.manual_seed(0)
    settings = ModelSettings(
        backbone="vit", arch="vit_small_patch14_reg4_dinov2", pretrained="none", head_channels=16
    )
    return build_dual_student(settings, 3, img_size=64).students[0].eval()


def test_cam_of_an_unpadded_view_equals_the_padded_image_cropped(student14):
    """The CAM of a 61x75 image is the CAM of that image zero-padded to 70x84, cropped: no stretch."""
    x = torch.randn(1, 3, 61, 75)
    big = pad_to_multiple(x, 14)
    (raw,) = [r for r, _ in raw_cams_at_scales(student14, x, (1.0,), flip=False)]
    (raw_big,) = [r for r, _ in raw_cams_at_scales(student14, big, (1.0,), flip=False)]
    torch.testing.assert_close(raw, raw_big)
    cam = merge_flip(raw, (61, 75), 1, False, view=(61, 75), stride=14)
    want = merge_flip(raw_big, (70, 84), 1, False)[..., :61, :75]
    torch.testing.assert_close(cam, want, atol=1e-5, rtol=0)
    # The plain resize that ignores the padding is off by far more than that.
    assert (merge_flip(raw, (61, 75), 1, False) - want).abs().max() > 1e-2


def test_multiscale_cam_places_every_scale_exactly(student14):
    x = torch.randn(2, 3, 61, 75)
    scales = (1.0, 0.5, 1.5)
    cam, cam_aux = multiscale_cam(student14, x, scales=scales, flip=True)
    assert cam.shape == cam_aux.shape == (2, 3, 61, 75)
    total = 0
    for s in scales:
        view = (int(s * 61), int(s * 75))
        xs = F.interpolate(x, size=view, mode="bilinear", align_corners=False)
        padded = padded_size(view, 14)
        raw, _ = student14.cams(pad_to_multiple(torch.cat([xs, xs.flip(-1)]), 14))
        up = sample_at(raw, (61, 75), view, padded)
        total = total + torch.maximum(up[:2], up[2:].flip(-1)).relu()
    total = total - total.amin((-2, -1), keepdim=True)
    want = total / (total.amax((-2, -1), keepdim=True) + 1e-5)
    torch.testing.assert_close(cam.double(), want, atol=1e-4, rtol=0)


def test_validation_tta_and_padded_forward_agree_on_segmentation(student14):
    x = torch.randn(1, 3, 61, 75)
    with torch.no_grad():
        reference = padded_forward(student14.segment, x, 14)  # pad, upsample to the padded size, crop
        ours = segment_at(student14, x, (61, 75))
        # validation maps onto the mask's own size in one resampling
        mask_size = segment_at(student14, x, (122, 150))
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    raw = student14.segment(pad_to_multiple(x, 14))
    torch.testing.assert_close(
        mask_size.double(), sample_at(raw, (122, 150), (61, 75), (70, 84)), atol=1e-4, rtol=0
    )
