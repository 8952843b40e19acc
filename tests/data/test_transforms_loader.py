"""Weak view: the box marks exactly the real-image part of the crop; reproducible under a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dataset_builders import make_folder, settings_for

from dupl_cli.data.demo import write_demo
from dupl_cli.data.loader import eval_loader, train_loader
from dupl_cli.data.transforms import WeakView


def _geometry_only(crop, scale=(0.5, 2.0), hflip=True):
    s = settings_for(
        "/x",
        "folder",
        f"data.crop_size={crop}",
        f"data.scale_range=[{scale[0]}, {scale[1]}]",
        f"data.hflip={'true' if hflip else 'false'}",
        "data.color_jitter_p=0",
        "data.grayscale_p=0",
        "data.blur_radius=[0.0, 0.0]",
    )
    return WeakView(s.data), s.data


@pytest.mark.parametrize("seed", range(12))
def test_box_marks_exactly_the_non_padded_area(seed):
    view, d = _geometry_only(48)
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(10, 90)), int(rng.integers(10, 90))
    image = rng.integers(1, 256, (h, w, 3), dtype=np.uint8)  # no zero pixels: padding is recognisable
    x, box = view(image, torch.Generator().manual_seed(seed))
    assert x.shape == (3, 48, 48) and box.dtype == torch.int64
    y0, y1, x0, x1 = box.tolist()
    pad_value = (-torch.tensor(d.mean) / torch.tensor(d.std)).view(3, 1, 1)
    is_pad = torch.isclose(x, pad_value.expand_as(x), atol=1e-5).all(0)
    inside = torch.zeros(48, 48, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    assert (is_pad == ~inside).all()


def test_flip_and_scale_one_keep_pixels_exact():
    view, d = _geometry_only(64, scale=(1.0, 1.0))
    image = np.random.default_rng(0).integers(1, 256, (20, 30, 3), dtype=np.uint8)
    seen_flip = seen_plain = False
    for seed in range(20):
        x, box = view(image, torch.Generator().manual_seed(seed))
        y0, y1, x0, x1 = box.tolist()
        assert (y1 - y0, x1 - x0) == (20, 30)
        real = x[:, y0:y1, x0:x1] * torch.tensor(d.std).view(3, 1, 1) + torch.tensor(d.mean).view(3, 1, 1)
        real = (real * 255).round().permute(1, 2, 0).numpy().astype(np.uint8)
        if (real == image).all():
            seen_plain = True
        elif (real == image[:, ::-1]).all():
            seen_flip = True
        else:
            raise AssertionError("crop content is neither the image nor its mirror")
    assert seen_flip and seen_plain


def test_large_image_is_cropped_without_padding():
    view, _ = _geometry_only(32, scale=(1.0, 1.0))
    x, box = view(np.full((50, 60, 3), 7, np.uint8), torch.Generator().manual_seed(0))
    assert box.tolist() == [0, 32, 0, 32]


def test_full_view_reproducible_and_varied():
    d = settings_for("/x", "folder", "data.crop_size=32").data
    view = WeakView(d)
    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    a = view(image, torch.Generator().manual_seed(5))
    b = view(image, torch.Generator().manual_seed(5))
    c = view(image, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_train_loader_batches_reproducible_across_worker_counts(tmp_path):
    root = make_folder(tmp_path / "f", n=8)
    d = settings_for(root, "folder", "data.crop_size=32").data
    from dupl_cli.data.folder import build

    ad = build(d, "train")
    batches = []
    for workers in (0, 2):
        loader = train_loader(ad, d, 2, seed=3, num_workers=workers)
        epoch1, epoch2 = list(loader), list(loader)
        batches.append((epoch1, epoch2))
        b = epoch1[0]
        assert (
            b["image"].shape == (2, 3, 32, 32)
            and b["labels"].shape == (2, 3)
            and b["img_box"].shape == (2, 4)
        )
        assert isinstance(b["id"], list) and len(epoch1) == 3
    (a1, a2), (b1, b2) = batches
    for x, y in zip(a1 + a2, b1 + b2, strict=True):
        assert (
            x["id"] == y["id"]
            and torch.equal(x["image"], y["image"])
            and torch.equal(x["img_box"], y["img_box"])
        )
    assert not all(torch.equal(x["image"], y["image"]) for x, y in zip(a1, a2, strict=True))


def test_train_loader_restricts_to_given_indices(tmp_path):
    root = make_folder(tmp_path / "f", n=8)
    d = settings_for(root, "folder", "data.crop_size=32").data
    from dupl_cli.data.folder import build

    ad = build(d, "train")
    ids = {i for b in train_loader(ad, d, 1, seed=0, num_workers=0, indices=[1, 3]) for i in b["id"]}
    assert ids == {"img1", "img3"}


def test_eval_loader_native_and_resized(tmp_path):
    root = write_demo(tmp_path / "d", size=48, n_train=2, n_val=3)
    d = settings_for(root, "demo").data
    from dupl_cli.data.demo import build

    va = build(d, "val")
    native = next(iter(eval_loader(va, d, size=None, num_workers=0)))
    assert native["image"].shape == (1, 3, 48, 48) and native["mask"].dtype == torch.int64
    assert native["orig_size"].tolist() == [[48, 48]]
    np.testing.assert_array_equal(native["mask"][0].numpy(), va[0].mask)
    resized = next(iter(eval_loader(va, d, size=64, batch_size=3, num_workers=0)))
    assert resized["image"].shape == (3, 3, 64, 64) and resized["mask"].shape == (3, 48, 48)


def test_second_view_leaves_the_first_as_it_was(tmp_path):
    """method.diff_aug's loader: view 1 is today's view, view 2 another draw of the same image."""
    root = make_folder(tmp_path / "f", n=6)
    d = settings_for(root, "folder", "data.crop_size=32").data
    from dupl_cli.data.folder import build

    ad = build(d, "train")
    one = list(train_loader(ad, d, 2, seed=3, num_workers=0))
    two = list(train_loader(ad, d, 2, seed=3, num_workers=0, views=2))
    assert set(one[0]) == {"image", "labels", "img_box", "id", "max_present"}
    assert set(two[0]) == set(one[0]) | {"image2", "img_box2", "affine", "affine2"}
    for a, b in zip(one, two, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("image", "labels", "img_box"))
        assert a["id"] == b["id"] and a["max_present"] == b["max_present"]
        assert b["image2"].shape == b["image"].shape and b["affine"].shape == b["affine2"].shape == (2, 4)
        assert not torch.equal(b["image2"], b["image"]) and not torch.equal(b["affine2"], b["affine"])
    # each affine belongs to its own view: the box is where the affine puts the image, cut to the crop
    batch = two[0]
    h, w = ad[ad.ids.index(batch["id"][0])].image.shape[:2]
    for key, box_key in (("affine", "img_box"), ("affine2", "img_box2")):
        sy, oy, sx, ox = batch[key][0].tolist()
        (y0, y1), (x0, x1) = sorted((oy, sy * h + oy)), sorted((ox, sx * w + ox))
        expected = [max(0, round(y0)), min(32, round(y1)), max(0, round(x0)), min(32, round(x1))]
        assert batch[box_key][0].tolist() == expected


def test_ground_truth_rides_the_same_view(tmp_path):
    """train.label_quality's loader: each view's mask goes through the view's own rescale, flip and
    crop (255 outside the image), and the views are the ones the loader gives without it."""
    from PIL import Image

    from dupl_cli.data.folder import build

    root = make_folder(tmp_path / "f", n=6)
    for path in sorted((root / "masks").glob("*.png")):  # each image shows its mask: grey level 60 * id
        mask = np.array(Image.open(path))
        grey = np.where(mask == 255, 250, mask.astype(np.int64) * 60).astype(np.uint8)
        Image.fromarray(np.stack([grey] * 3, -1)).save(root / "images" / path.name)
    d = settings_for(root, "folder", "data.crop_size=48").data
    ad = build(d, "train")
    plain = list(train_loader(ad, d, 2, seed=5, num_workers=0, views=2))
    measured = list(train_loader(ad, d, 2, seed=5, num_workers=0, views=2, gt_masks=True))
    for a, b in zip(plain, measured, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("image", "image2", "img_box", "affine2"))
        assert b["gt_mask"].shape == b["gt_mask2"].shape == (2, 48, 48) and b["gt_mask"].dtype == torch.uint8
    geometry_only = ("data.scale_range=[1.0, 1.0]", "data.color_jitter_p=0", "data.grayscale_p=0")
    d_exact = settings_for(
        root, "folder", "data.crop_size=48", *geometry_only, "data.blur_radius=[0.0, 0.0]"
    ).data
    exact = list(train_loader(build(d_exact, "train"), d_exact, 2, seed=5, num_workers=0, gt_masks=True))
    mean, std = torch.tensor(d_exact.mean)[:, None, None], torch.tensor(d_exact.std)[:, None, None]
    for batch in exact:
        for image, truth, (y0, y1, x0, x1) in zip(
            batch["image"], batch["gt_mask"], batch["img_box"].tolist(), strict=True
        ):
            grey = ((image * std + mean) * 255).round()[0]
            inside = torch.zeros_like(truth, dtype=torch.bool)
            inside[y0:y1, x0:x1] = True
            shown = torch.where(truth == 255, 250, truth.long() * 60)
            assert torch.equal(grey[inside].long(), shown[inside]) and (truth[~inside] == 255).all()
