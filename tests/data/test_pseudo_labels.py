"""A pseudo-label folder as stage-2 training data (issue 25): the folder's record is checked against the
training data (another dataset, class list or split is refused in one line naming what differs), the
labels replace the masks, and a view carries image, label and confidence through one geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dupl_cli.config.sources import load_settings
from dupl_cli.core.errors import UserError
from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.data.base import Sample
from dupl_cli.data.pseudo_labels import (
    CONFIDENCE_DIR,
    LabelledViewDataset,
    dataset_record,
    ids_digest,
    stage2_loader,
    with_pseudo_labels,
    write_index,
    write_meta,
)
from dupl_cli.evaluation.visualize import save_mask
from dupl_cli.plugins import DATASETS, load


def _settings(root: Path, *sets: str):
    return load_settings("tiny-cpu", assignments=[f'data.root="{root}"', *sets], environ={}).settings


def _folder(tmp_path: Path, settings, *, split: str = "train", confidence: bool = False, meta=None) -> Path:
    """A pseudo-label folder for the training split: each label the image's ground truth shifted by one
    class (so it is told apart from the mask), 255 on the top rows; confidence 200 everywhere."""
    adapter = load(DATASETS, "demo")(settings.data, split)
    folder = tmp_path / "pseudo"
    (folder / CONFIDENCE_DIR).mkdir(parents=True, exist_ok=True)
    for i, sample_id in enumerate(adapter.ids):
        mask = adapter[i].mask.copy()
        label = np.where(
            mask == IGNORE_INDEX, IGNORE_INDEX, (mask.astype(int) + 1) % (len(adapter.classes) + 1)
        )
        label = label.astype(np.uint8)
        label[:3] = IGNORE_INDEX
        save_mask(folder / f"{sample_id}.png", label, adapter.palette)
        Image.fromarray(np.full(label.shape, 200, np.uint8), mode="L").save(
            folder / CONFIDENCE_DIR / f"{sample_id}.png"
        )
    record = {"dataset": dataset_record("demo", settings.data.root), "split": split}
    record |= {"classes": list(adapter.classes), "images": len(adapter), "confidence": confidence}
    write_index(folder, adapter.ids, confidence)
    write_meta(folder, {**record, **(meta or {})})
    return folder


@pytest.fixture
def trained_on(tiny_data, tmp_path):
    """(settings with data.pseudo_labels set, the training split's adapter) for a matching folder."""
    base = _settings(tiny_data)
    adapter = load(DATASETS, "demo")(base.data, base.data.train_split)
    folder = _folder(tmp_path, base, split=base.data.train_split, confidence=True)
    return _settings(tiny_data, f'data.pseudo_labels="{folder}"'), adapter


def test_the_pseudo_label_replaces_the_mask_and_keeps_image_and_labels(trained_on):
    settings, adapter = trained_on
    wrapped = with_pseudo_labels(adapter, settings.data, need_confidence=True)
    assert wrapped.ids == adapter.ids and wrapped.classes == adapter.classes and wrapped.has_masks
    sample, truth = wrapped[0], adapter[0]
    assert isinstance(sample, Sample) and np.array_equal(sample.image, truth.image)
    assert np.array_equal(sample.labels, truth.labels)
    assert (sample.mask[:3] == IGNORE_INDEX).all() and not np.array_equal(sample.mask, truth.mask)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"dataset": {"adapter": "voc", "root": "/data/VOCdevkit"}},
            "made from the voc dataset at /data/VOCdevkit",
        ),
        (
            {"classes": ["boat", "car", "tree", "sign", "flower"]},
            "other classes (class 2 is 'car' there, 'balloon'",
        ),
        ({"classes": ["boat"]}, "other classes (1 classes there, 5 here)"),
        (
            {"split": "val", "ids_sha256": "0" * 64},
            "made from split 'val', but data.train_split is 'train_aug'",
        ),
    ],
)
def test_a_folder_made_from_other_data_is_refused_in_one_line_naming_what_differs(
    trained_on, tmp_path, change, message
):
    settings, adapter = trained_on
    folder = _folder(tmp_path / "other", settings, split=adapter.split, meta=change)
    with pytest.raises(UserError) as info:
        with_pseudo_labels(adapter, settings.data.model_copy(update={"pseudo_labels": folder}))
    text = str(info.value)
    assert message in text and str(folder) in text and "\n" not in text


def test_the_same_images_under_another_split_name_are_accepted(trained_on, tmp_path):
    settings, adapter = trained_on
    folder = _folder(tmp_path / "other", settings, split=adapter.split)
    write_meta(folder, {**_record(folder), "split": "train", "ids_sha256": ids_digest(adapter.ids)})
    with_pseudo_labels(adapter, settings.data.model_copy(update={"pseudo_labels": folder}))


def _record(folder: Path) -> dict:
    import json

    meta = json.loads((folder / "pseudo_labels.json").read_text())
    meta.pop("format")
    return meta


def test_missing_labels_a_missing_record_and_missing_confidence_are_refused(trained_on, tmp_path):
    settings, adapter = trained_on
    folder = Path(settings.data.pseudo_labels)
    (folder / f"{adapter.ids[1]}.png").unlink()
    with pytest.raises(
        UserError, match=rf"no pseudo-label for 1 of {len(adapter)} images .*{adapter.ids[1]}"
    ):
        with_pseudo_labels(adapter, settings.data)
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(UserError, match="not a dupl pseudo-label folder"):
        with_pseudo_labels(adapter, settings.data.model_copy(update={"pseudo_labels": bare}))
    plain = _folder(tmp_path / "plain", settings, split=adapter.split, confidence=False)
    with pytest.raises(UserError, match="no confidence maps"):
        data = settings.data.model_copy(update={"pseudo_labels": plain})
        with_pseudo_labels(adapter, data, need_confidence=True)


def test_a_view_carries_image_label_and_confidence_through_one_geometry(trained_on):
    settings, adapter = trained_on
    data = settings.data.model_copy(
        update={"scale_range": (1.0, 1.0), "color_jitter_p": 0.0, "grayscale_p": 0.0}
    )
    data = data.model_copy(update={"blur_radius": (0.0, 0.0), "crop_size": 80})  # larger than the images
    wrapped = with_pseudo_labels(adapter, data, need_confidence=True)
    dataset = LabelledViewDataset(wrapped, data, seed=0, confidence=True)
    for seed in range(6):
        item = dataset[(0, seed)]
        y0, y1, x0, x1 = item["img_box"].tolist()
        label = torch.from_numpy(wrapped[0].mask.astype(np.int64))
        inside = item["mask"][y0:y1, x0:x1].long()
        assert torch.equal(inside, label) or torch.equal(inside, label.flip(-1))
        outside = torch.ones_like(item["mask"], dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        assert (item["mask"][outside] == IGNORE_INDEX).all() and (item["confidence"][outside] == 0).all()
        torch.testing.assert_close(item["confidence"][y0:y1, x0:x1], torch.full(inside.shape, 200 / 255))
        image = item["image"][:, y0:y1, x0:x1]
        raw = torch.from_numpy(wrapped[0].image).permute(2, 0, 1).float() / 255
        expected = (raw - torch.tensor(data.mean).view(3, 1, 1)) / torch.tensor(data.std).view(3, 1, 1)
        flipped = not torch.equal(inside, label)
        torch.testing.assert_close(image, expected.flip(-1) if flipped else expected)


def test_the_loader_batches_views_with_their_labels(trained_on):
    settings, adapter = trained_on
    wrapped = with_pseudo_labels(adapter, settings.data, need_confidence=True)
    loader = stage2_loader(wrapped, settings.data, 2, seed=0, confidence=True, num_workers=0)
    batch = next(iter(loader))
    size = settings.data.crop_size
    assert batch["image"].shape == (2, 3, size, size) and batch["mask"].shape == (2, size, size)
    assert batch["mask"].dtype == torch.uint8 and batch["confidence"].shape == (2, size, size)
    again = next(iter(stage2_loader(wrapped, settings.data, 2, seed=0, confidence=True, num_workers=0)))
    assert torch.equal(batch["mask"], again["mask"]) and torch.equal(batch["image"], again["image"])
