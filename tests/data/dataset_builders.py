"""Builders of small datasets in tmp_path: VOC (as VOC ships it), COCO-style, folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dupl_cli.config.sources import load_settings
from dupl_cli.data.palette import VOC_CLASSES, flat_palette


def scene(seed: int, h: int = 40, w: int = 56, classes=(1,)) -> tuple[np.ndarray, np.ndarray]:
    """A random RGB image with one rectangle per class id and its mask (255 on the rectangle border)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    for k, c in enumerate(classes):
        y0, x0 = 2 + 3 * k, 4 + 10 * k
        mask[y0 : y0 + 12, x0 : x0 + 14] = c
        mask[y0, x0 : x0 + 14] = 255
    return image, mask


def save_palette_png(mask: np.ndarray, path: Path) -> None:
    img = Image.new("P", (mask.shape[1], mask.shape[0]))
    img.frombytes(np.ascontiguousarray(mask).tobytes())
    img.putpalette(flat_palette())
    img.save(path)


def voc_xml(classes: list[str]) -> str:
    objs = "".join(f"<object><name>{c}</name><difficult>0</difficult></object>" for c in classes)
    return f"<annotation><folder>VOC2012</folder>{objs}</annotation>"


def make_voc(base: Path, *, aug: bool = False, n_train: int = 3, n_val: int = 2) -> Path:
    """VOCdevkit/VOC2012 as VOC ships it: JPEGs, palette-PNG masks, XML, ImageSets/Segmentation."""
    voc = base / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    if aug:
        (voc / "SegmentationClassAug").mkdir()
    splits = {
        "train": [f"2007_{i:06d}" for i in range(n_train)],
        "val": [f"2008_{i:06d}" for i in range(n_val)],
    }
    for s, ids in splits.items():
        for k, sample_id in enumerate(ids):
            cls = (k % 20 + 1, (k + 5) % 20 + 1) if k % 2 else (k % 20 + 1,)
            image, mask = scene(k + 17 * len(s), classes=cls)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{sample_id}.jpg", quality=95)
            save_palette_png(
                mask, voc / ("SegmentationClassAug" if aug else "SegmentationClass") / f"{sample_id}.png"
            )
            (voc / "Annotations" / f"{sample_id}.xml").write_text(voc_xml([VOC_CLASSES[c - 1] for c in cls]))
        (voc / "ImageSets/Segmentation" / f"{s}.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc


def make_folder(
    root: Path, *, n: int = 6, classes=("cat", "dog", "boat"), masks: bool = True, splits: bool = True
) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    if masks:
        (root / "masks").mkdir()
    rows, ids = [], [f"img{i}" for i in range(n)]
    for i, sample_id in enumerate(ids):
        cls = (i % len(classes) + 1,)
        image, mask = scene(i, classes=cls)
        Image.fromarray(image).save(root / "images" / f"{sample_id}.png")
        if masks:
            Image.fromarray(mask).save(root / "masks" / f"{sample_id}.png")
        rows.append(f"{sample_id},{classes[cls[0] - 1]}\n")
    (root / "labels.csv").write_text("id,labels\n" + "".join(rows))
    if splits:
        (root / "splits").mkdir()
        (root / "splits" / "train.txt").write_text("".join(f"{i}\n" for i in ids[: n - 2]))
        (root / "splits" / "val.txt").write_text("".join(f"{i}\n" for i in ids[n - 2 :]))
    return root


def settings_for(root: Path, adapter: str, *sets: str):
    return load_settings(
        None, assignments=[f'data.adapter="{adapter}"', f'data.root="{root}"', *sets], environ={}
    ).settings


@pytest.fixture
def data_settings():
    return settings_for
