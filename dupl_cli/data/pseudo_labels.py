"""A ``dupl pseudo-label`` folder as stage-2 training data (``data.pseudo_labels``).

The folder holds ``<id>.png`` (palette PNG, 0 background, 1..C, 255 uncertain), with
``--confidence`` also ``confidence/<id>.png`` (8-bit grey: 255 · the confidence of the label written),
``index.csv`` (id, label file, confidence file) and ``pseudo_labels.json``: what the labels were made
from (dataset adapter and root, split, classes, source, CRF, checkpoint) and, with ``--evaluate``,
their scores. Training reads the folder only when that record matches the training data: another
dataset, class list or split is refused in one line naming what differs, and so is a split with
images the folder has no label for.

:class:`PseudoLabelAdapter` wraps the training split's adapter: the same images, ids and image-level
labels, with the pseudo-label as the mask. :class:`LabelledViewDataset` draws the weak view's
geometry (rescale, flip, crop) once and applies it to the image (bilinear), the label (nearest, 255
outside the image) and the confidence (nearest, 0 outside), then the photometric part to the image.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dupl_cli.core.atomic import atomic_write_text
from dupl_cli.core.errors import DataError, UserError
from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.core.textfile import read_text
from dupl_cli.data.base import Sample
from dupl_cli.data.images import read_mask
from dupl_cli.data.loader import WeakViewDataset, seeded_loader

META_FILE = "pseudo_labels.json"
INDEX_FILE = "index.csv"
CONFIDENCE_DIR = "confidence"
FORMAT = "dupl-pseudo-labels/1"


def dataset_record(adapter_name: str, root: Path | str) -> dict[str, str]:
    """How a pseudo-label folder names the dataset it labels: the adapter and its absolute root."""
    return {"adapter": str(adapter_name), "root": str(Path(root).expanduser().resolve())}


def ids_digest(ids: Sequence[str]) -> str:
    """sha256 of the ids, sorted, one per line: the same images under another split name compare equal."""
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()


def write_meta(folder: Path, meta: dict[str, Any]) -> Path:
    path = Path(folder) / META_FILE
    atomic_write_text(path, json.dumps({"format": FORMAT, **meta}, indent=2))
    return path


def write_index(folder: Path, ids: Sequence[str], confidence: bool) -> Path:
    """``index.csv``: one row per image, ``id,label,confidence`` (file names inside the folder)."""
    rows = ["id,label,confidence"]
    for sample_id in ids:
        conf = f"{CONFIDENCE_DIR}/{sample_id}.png" if confidence else ""
        rows.append(f"{sample_id},{sample_id}.png,{conf}")
    path = Path(folder) / INDEX_FILE
    atomic_write_text(path, "\n".join(rows) + "\n")
    return path


def read_meta(folder: Path) -> dict[str, Any]:
    """``pseudo_labels.json`` of ``folder``; one-line errors for a missing folder, file or format."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(
            f"data.pseudo_labels: {folder} is not a folder (write one with dupl pseudo-label --out)"
        )
    path = folder / META_FILE
    if not path.is_file():
        raise UserError(
            f"{folder}: not a dupl pseudo-label folder (no {META_FILE}); write it with "
            f"dupl pseudo-label --out {folder} (labels written by an older dupl: run it again, it resumes)"
        )
    try:
        meta = json.loads(read_text(path, "pseudo-label record"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise UserError(f"{path}: not a dupl pseudo-label record (format {found!r}, expected {FORMAT!r})")
    return meta


def _first_difference(made: list[str], wanted: list[str]) -> str:
    for k, (a, b) in enumerate(zip(made, wanted, strict=False), start=1):
        if a != b:
            return f"class {k} is {a!r} there, {b!r} here"
    return f"{len(made)} classes there, {len(wanted)} here"


def mismatch(
    meta: dict[str, Any], dataset: dict[str, str], split: str, classes: list[str], ids
) -> str | None:
    """What differs between a folder's record and the training data (None when nothing does). A split
    of another name holding the same images (``ids_sha256``) is the same split."""
    made = meta.get("dataset") or {}
    if made.get("adapter") != dataset["adapter"] or made.get("root") != dataset["root"]:
        return (
            f"made from the {made.get('adapter')} dataset at {made.get('root')}, but training reads the "
            f"{dataset['adapter']} dataset at {dataset['root']}"
        )
    if list(meta.get("classes") or []) != list(classes):
        return f"made for other classes ({_first_difference(list(meta.get('classes') or []), classes)})"
    if meta.get("split") != split and meta.get("ids_sha256") != ids_digest(ids):
        return f"made from split {meta.get('split')!r}, but data.train_split is {split!r}"
    return None


class PseudoLabelAdapter:
    """The training split with each image's pseudo-label as its mask (and its confidence on request)."""

    def __init__(self, adapter, folder: Path, meta: dict[str, Any]) -> None:
        self.adapter, self.folder, self.meta = adapter, Path(folder), meta
        self.classes, self.palette, self.split = adapter.classes, adapter.palette, adapter.split
        self.ids = list(adapter.ids)
        self.has_masks = True
        self.source = self.folder
        self.has_confidence = bool(meta.get("confidence"))

    def __len__(self) -> int:
        return len(self.ids)

    def path_of(self, i: int) -> Path:
        return self.adapter.path_of(i)

    def label_path(self, sample_id: str) -> Path:
        return self.folder / f"{sample_id}.png"

    def confidence_path(self, sample_id: str) -> Path:
        return self.folder / CONFIDENCE_DIR / f"{sample_id}.png"

    def __getitem__(self, i: int) -> Sample:
        sample = self.adapter[i]
        path = self.label_path(sample.id)
        mask = read_mask(path, len(self.classes))
        if mask.shape != sample.image.shape[:2]:
            raise DataError(
                f"{path}: pseudo-label size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                f"{sample.image.shape[1]}x{sample.image.shape[0]} (id {sample.id!r})"
            )
        return Sample(image=sample.image, labels=sample.labels, mask=mask, id=sample.id)

    def confidence(self, sample_id: str, shape: tuple[int, int]) -> np.ndarray:
        """The confidence PNG of ``sample_id`` as uint8 H×W (255 = 1.0)."""
        from PIL import Image

        path = self.confidence_path(sample_id)
        if not path.is_file():
            raise DataError(f"{path}: missing confidence map (write it with dupl pseudo-label --confidence)")
        try:
            with Image.open(path) as img:
                conf = np.array(img.convert("L"), dtype=np.uint8)
        except OSError as exc:
            raise DataError(f"{path}: cannot read confidence map ({exc})") from None
        if conf.shape != tuple(shape):
            raise DataError(f"{path}: confidence map size {conf.shape[::-1]} differs from its label")
        return conf


def with_pseudo_labels(adapter, data_settings, *, need_confidence: bool = False) -> PseudoLabelAdapter:
    """``adapter`` (the training split) read with the masks of ``data_settings.pseudo_labels``, after
    checking that the folder was made from this dataset, class list and split and covers every image."""
    folder = Path(data_settings.pseudo_labels).expanduser()
    meta = read_meta(folder)
    wanted = dataset_record(data_settings.adapter, data_settings.root)
    problem = mismatch(meta, wanted, adapter.split, list(adapter.classes), adapter.ids)
    if problem:
        raise UserError(f"data.pseudo_labels {folder}: {problem}")
    if need_confidence and not meta.get("confidence"):
        raise UserError(
            f"data.pseudo_labels {folder}: has no confidence maps, which method.stage2_weights = confidence "
            "needs; write them with dupl pseudo-label --confidence (into a new --out)"
        )
    missing = [i for i in adapter.ids if not (folder / f"{i}.png").is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise UserError(
            f"data.pseudo_labels {folder}: no pseudo-label for {len(missing)} of {len(adapter.ids)} images "
            f"of split {adapter.split!r} ({shown}); label them with dupl pseudo-label (it resumes)"
        )
    return PseudoLabelAdapter(adapter, folder, meta)


class LabelledViewDataset(WeakViewDataset):
    """Weak views with their pseudo-label (and confidence) carried through the same geometry."""

    def __init__(self, adapter, data_settings, seed: int, indices=None, *, confidence: bool = False):
        super().__init__(adapter, data_settings, seed, indices)
        self.with_confidence = confidence

    def __getitem__(self, key) -> dict:
        index, gen = self._generator(key)
        sample = self.adapter[index]
        maps = [(sample.mask, IGNORE_INDEX)]
        if self.with_confidence:
            maps.append((self.adapter.confidence(sample.id, sample.mask.shape), 0))
        view, carried = self.view.sample_with_maps(sample.image, gen, *maps)
        item = {"image": view.image, "mask": carried[0], "img_box": view.img_box, "id": sample.id}
        item["labels"] = torch.from_numpy(sample.labels)
        if self.with_confidence:
            item["confidence"] = carried[1].float().div_(255.0)
        return item


def stage2_loader(
    adapter, data_settings, batch_size: int, *, seed: int, confidence: bool = False, num_workers=None
) -> DataLoader:
    """Batches {image B×3×S×S, mask B×S×S uint8 (255 uncertain), labels, img_box, id[, confidence B×S×S]}
    of a :class:`PseudoLabelAdapter`, seeded like the stage-1 loader (``data.loader.SeededSampler``)."""
    dataset = LabelledViewDataset(adapter, data_settings, seed, confidence=confidence)
    return seeded_loader(dataset, adapter, data_settings, batch_size, seed=seed, num_workers=num_workers)
