"""COCO 2014 adapter (images + VOC-style PNG masks).

Layout under ``data.root``::

    train2014/<id>.jpg          e.g. COCO_train2014_000000000009.jpg
    val2014/<id>.jpg
    SegmentationClass/train2014/<id>.png   uint8 ids: 0 background, 1..80 in the standard class
    SegmentationClass/val2014/<id>.png     order (palette.COCO_CLASSES), 255 ignore (crowd)
    ImageSets/<split>.txt       optional id lists (train, val, val_part, ...)

``dupl data coco-masks`` writes the masks from ``instances_{train,val}2014.json``.
Without a list file a split holds every mask of its folder (train* -> train2014, else val2014).
Greyscale COCO images are returned as RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dupl_cli.core.errors import DataError
from dupl_cli.data.base import (
    ListAdapter,
    find_with_ext,
    labels_table_lookup,
    list_override,
    missing_root,
    read_id_list,
    read_labels_table,
)
from dupl_cli.data.palette import COCO_CLASSES, palette_for

LAYOUT = (
    "<root>/train2014/, <root>/val2014/ (images) and <root>/SegmentationClass/{train2014,val2014}/<id>.png "
    "(masks, build them with `dupl data coco-masks`), optional <root>/ImageSets/<split>.txt"
)


def image_folder_for(sample_id: str, split: str) -> str:
    """train2014 or val2014: from the id's COCO prefix when it has one, else from the split name."""
    if sample_id.startswith("COCO_train2014_"):
        return "train2014"
    if sample_id.startswith("COCO_val2014_"):
        return "val2014"
    return "train2014" if split.startswith("train") else "val2014"


class COCOAdapter(ListAdapter):
    layout_hint = LAYOUT

    def __init__(
        self, root: Path, split: str, *, list_file: Path | None = None, labels_file: Path | None = None
    ):
        self.root = Path(root).expanduser()
        if not ((self.root / "train2014").is_dir() or (self.root / "val2014").is_dir()):
            raise missing_root(self.root, "coco", LAYOUT)
        self.split = split
        self.classes = list(COCO_CLASSES)
        self.palette = palette_for(len(self.classes))
        self.mask_root = self.root / "SegmentationClass"
        self.has_masks = self.mask_root.is_dir()
        listed = list_file or self.root / "ImageSets" / f"{split}.txt"
        if listed.is_file() or list_file is not None:
            self.source = listed
            self.ids = read_id_list(listed)
        else:
            folder = self.mask_root / image_folder_for("", split)
            if not folder.is_dir():
                raise DataError(
                    f"{listed}: no split list for {split!r} and no mask folder {folder} to list ids from"
                )
            self.source = folder
            self.ids = sorted(p.stem for p in folder.glob("*.png"))
            if not self.ids:
                raise DataError(f"{folder}: mask folder is empty (run `dupl data coco-masks`)")
        self._table = (
            labels_table_lookup(read_labels_table(labels_file, self.classes), labels_file)
            if labels_file
            else None
        )
        if not self.has_masks and self._table is None:
            raise DataError(
                f"{self.mask_root}: no masks and no data.labels_file; build masks with `dupl data coco-masks`"
            )

    def image_path(self, sample_id: str) -> Path:
        folder = self.root / image_folder_for(sample_id, self.split)
        return find_with_ext(folder, sample_id) or folder / f"{sample_id}.jpg"

    def mask_path(self, sample_id: str) -> Path | None:
        return self.mask_root / image_folder_for(sample_id, self.split) / f"{sample_id}.png"

    def explicit_labels(self, sample_id: str) -> np.ndarray | None:
        return self._table(sample_id) if self._table is not None else None


def build(data_settings, split: str) -> COCOAdapter:
    return COCOAdapter(
        data_settings.root,
        split,
        list_file=list_override(data_settings, split),
        labels_file=Path(data_settings.labels_file).expanduser() if data_settings.labels_file else None,
    )
