"""Strong view: batched ops against per-image Pillow, the release's strong batch, inverse on logits."""

import numpy as np
import pytest
import release_fixture as rf
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from dupl_cli.method import strong_aug as S
from dupl_cli.method.params import STRONG_OPS, StrongViewConfig

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pil_op(img, name, factor):
    if name == "autocontrast":
        return ImageOps.autocontrast(img)
    if name == "equalize":
        return ImageOps.equalize(img)
    if name == "posterize":
        return ImageOps.posterize(img, 2)
    enhancer = {
        "color": ImageEnhance.Color,
        "contrast": ImageEnhance.Contrast,
        "brightness": ImageEnhance.Brightness,
        "sharpness": ImageEnhance.Sharpness,
    }[name]
    return enhancer(img).enhance(factor)


def _pil_batch(batch, names_per_image, factor):
    out = []
    for image, names in zip(batch, names_per_image, strict=True):
        img = Image.fromarray(image.permute(1, 2, 0).numpy())
        for name in names:
            img = _pil_op(img, name, factor)
        out.append(torch.from_numpy(np.array(img)).permute(2, 0, 1))
    return torch.stack(out)


def _images():
    g = torch.Generator().manual_seed(3)
    noise = torch.randint(0, 256, (2, 3, 29, 33), generator=g, dtype=torch.uint8)
    smooth = F.interpolate(torch.rand(2, 3, 5, 6, generator=g), size=(29, 33), mode="bilinear") * 120 + 60
    smooth = smooth.to(torch.uint8)
    smooth[1, 2] = 77  # a constant channel: autocontrast/equalize keep it
    smooth[1, :, :, :10] = 0  # zero padding like a padded crop
    return torch.cat([noise, smooth])


@pytest.mark.parametrize("name", STRONG_OPS)
def test_each_op_matches_pillow_per_image(name):
    images = _images()
    got = S.apply_op(name, images, 10)
    ref = _pil_batch(images, [[name]] * len(images), 0.7)
    assert got.dtype == torch.uint8
    assert torch.equal(got, ref)


def test_mixed_ops_batch_matches_pillow_sequence():
    images = _images()
    g = torch.Generator().manual_seed(11)
    ids = S.draw_ops(len(images), n=5, num_ops=len(STRONG_OPS), generator=g)
    got = S.apply_ops(images, ids, STRONG_OPS, magnitude=10)
    names = [[STRONG_OPS[i] for i in row] for row in ids.tolist()]
    assert torch.equal(got, _pil_batch(images, names, 0.7))


def test_magnitude_ten_is_factor_point_seven():
    assert S.enhance_factor(10) == pytest.approx(0.7)


def test_draws_are_reproducible_and_cover_all_ops():
    a = S.draw_ops(64, n=5, num_ops=7, generator=torch.Generator().manual_seed(5))
    b = S.draw_ops(64, n=5, num_ops=7, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert set(a.flatten().tolist()) == set(range(7))


def test_strong_view_shape_flip_and_downscale():
    images = _images()
    view = StrongViewConfig(ops=("brightness",), n=1)
    strong, ids = S.strong_view(images, view, mean=MEAN, std=STD, generator=torch.Generator().manual_seed(0))
    expected = S.normalize(S.brightness(images, 0.7), MEAN, STD).flip(-1)
    assert torch.allclose(strong, expected) and ids.shape == (4, 1)
    small = S.downscale(torch.zeros(2, 3, 224, 224), 0.75)
    assert small.shape[-2:] == (168, 168)


def test_undo_on_logits_inverts_flip_and_scale():
    g = torch.Generator().manual_seed(0)
    smooth = F.interpolate(
        torch.randn(2, 5, 4, 4, generator=g), size=(32, 32), mode="bilinear", align_corners=False
    )
    # a map flipped and downscaled comes back flipped-back at full size
    strong = S.downscale(smooth.flip(-1), 0.75)
    back = S.undo_on_logits(strong, (32, 32), flip=True)
    assert back.shape == smooth.shape
    assert (back - smooth).abs().mean() < 0.05
    # exact where no resampling happens: undo == flip back
    assert torch.equal(S.undo_on_logits(smooth.flip(-1), (32, 32), flip=True), smooth)
    # flipping commutes with the symmetric bilinear upsampling
    strong = torch.randn(1, 3, 6, 6, generator=g)
    assert torch.allclose(
        S.undo_on_logits(strong, (8, 8), flip=True),
        F.interpolate(strong, size=(8, 8), mode="bilinear", align_corners=False).flip(-1),
        atol=1e-6,
    )


def test_release_strong_batch_reproduced_bit_exactly(release_set):
    common, meta, strong_hp = rf.tensors("common"), rf.meta(), rf.hyper()["strong_aug"]
    u8 = S.denormalize_u8(common["input.weak"], MEAN, STD)
    assert torch.equal(u8, common["input.weak_denorm_u8"])
    phase = next(ph for ph in rf.phases() if "randaugment_ops_per_image" in meta["phases"][ph])
    names = meta["phases"][phase]["randaugment_ops_per_image"]
    ids = torch.tensor([[STRONG_OPS.index(n.lower()) for n in row] for row in names])
    strong = S.normalize(S.apply_ops(u8, ids, STRONG_OPS, magnitude=strong_hp["m"]), MEAN, STD)
    if strong_hp["hflip"]:
        strong = strong.flip(-1)
    assert torch.equal(strong, common["input.strong"])
