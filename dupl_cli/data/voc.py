"""PASCAL VOC 2012 (+ SBD) adapter.

Layout (``data.root`` may be ``VOCdevkit/``, ``VOCdevkit/VOC2012/`` or any folder laid out like
``VOC2012/``)::

    JPEGImages/<id>.jpg
    SegmentationClassAug/<id>.png   (SBD-augmented masks, preferred when present)
    SegmentationClass/<id>.png      (VOC's own masks: palette PNGs, index = class id, 255 boundary)
    Annotations/<id>.xml            (optional: image-level labels when no mask is available)
    ImageSets/Segmentation/<split>.txt   (train_aug.txt also looked up in ImageSets/SegmentationAug/)

Image-level labels come from ``data.labels_file`` (CSV) when set, else the mask, else the XML.
No file is ever unpickled.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
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
from dupl_cli.data.palette import VOC_CLASSES, palette_for

LAYOUT = (
    "VOCdevkit/VOC2012/ with JPEGImages/<id>.jpg, SegmentationClassAug/ or SegmentationClass/<id>.png, "
    "optional Annotations/<id>.xml, ImageSets/Segmentation/<split>.txt"
)


def resolve_voc_root(root: Path) -> Path:
    """Accept VOCdevkit/, VOCdevkit/VOC2012/, a folder in that layout, or a folder holding VOCdevkit/."""
    root = Path(root).expanduser()
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise missing_root(root, "voc", LAYOUT)


def labels_from_xml(path: Path, classes: list[str]) -> np.ndarray:
    """Multi-hot labels from a VOC annotation XML (every <object><name>)."""
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{path}: cannot parse annotation XML ({exc})") from None
    index = {c: i for i, c in enumerate(classes)}
    vec = np.zeros(len(classes), dtype=np.float32)
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in index:
            raise DataError(f"{path}: unknown class name {name!r} in annotation")
        vec[index[name]] = 1.0
    return vec


class VOCAdapter(ListAdapter):
    layout_hint = LAYOUT

    def __init__(
        self, root: Path, split: str, *, list_file: Path | None = None, labels_file: Path | None = None
    ):
        self.root = resolve_voc_root(root)
        self.split = split
        self.classes = list(VOC_CLASSES)
        self.palette = palette_for(len(self.classes))
        self.source = list_file or self._split_file(split)
        self.ids = read_id_list(self.source)
        self.mask_dirs = [
            d for d in (self.root / "SegmentationClassAug", self.root / "SegmentationClass") if d.is_dir()
        ]
        self.has_masks = bool(self.mask_dirs)
        self.xml_dir = self.root / "Annotations"
        self._table = (
            labels_table_lookup(read_labels_table(labels_file, self.classes), labels_file)
            if labels_file
            else None
        )
        if not self.has_masks and self._table is None and not self.xml_dir.is_dir():
            raise DataError(
                f"{self.root}: no image-level label source (need SegmentationClassAug/, SegmentationClass/, "
                "Annotations/ or data.labels_file)"
            )

    def _split_file(self, split: str) -> Path:
        candidates = [
            self.root / "ImageSets" / "Segmentation" / f"{split}.txt",
            self.root / "ImageSets" / "SegmentationAug" / f"{split}.txt",
            self.root / f"{split}.txt",
        ]
        for c in candidates:
            if c.is_file():
                return c
        raise DataError(
            f"{candidates[0]}: split list for split {split!r} not found "
            "(or set data.train_list / data.val_list)"
        )

    def image_path(self, sample_id: str) -> Path:
        return (
            find_with_ext(self.root / "JPEGImages", sample_id)
            or self.root / "JPEGImages" / f"{sample_id}.jpg"
        )

    def mask_path(self, sample_id: str) -> Path | None:
        for d in self.mask_dirs:  # SegmentationClassAug first, then SegmentationClass
            p = d / f"{sample_id}.png"
            if p.is_file():
                return p
        return self.mask_dirs[0] / f"{sample_id}.png" if self.mask_dirs else None

    def explicit_labels(self, sample_id: str) -> np.ndarray | None:
        if self._table is not None:
            return self._table(sample_id)
        if self.has_masks:
            return None  # from the mask
        return labels_from_xml(self.xml_dir / f"{sample_id}.xml", self.classes)

    def xml_labels(self, sample_id: str) -> np.ndarray | None:
        path = self.xml_dir / f"{sample_id}.xml"
        return labels_from_xml(path, self.classes) if path.is_file() else None


def build(data_settings, split: str) -> VOCAdapter:
    return VOCAdapter(
        data_settings.root,
        split,
        list_file=list_override(data_settings, split),
        labels_file=Path(data_settings.labels_file).expanduser() if data_settings.labels_file else None,
    )
