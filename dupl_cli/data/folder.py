"""Folder adapter: a simple format for your own data.

Layout under ``data.root``::

    classes.txt            one foreground class name per line (background is implicit, id 0)
    images/<id>.<ext>      jpg, jpeg, png, bmp, webp, tif
    labels.csv             "<id>,<class names separated by spaces>" (optional header "id,labels")
      or labels.json       {"<id>": ["class", ...]}
    masks/<id>.png         optional, for evaluation: ids 0..C, 255 ignore (or palette-coloured RGB)
    splits/<split>.txt     optional id lists (train.txt, val.txt, ...)

Without split files, the ids of the labels file (or of masks/) are split deterministically by
``data.split_seed``: a share ``data.val_fraction`` becomes "val", the rest "train". The
configured ``data.train_split`` / ``data.val_split`` names map onto those two parts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dupl_cli.core.errors import DataError
from dupl_cli.data.base import (
    IMAGE_EXTS,
    ListAdapter,
    find_with_ext,
    labels_table_lookup,
    list_override,
    missing_root,
    read_classes_file,
    read_id_list,
    read_labels_table,
)
from dupl_cli.data.palette import palette_for

LAYOUT = (
    "<root>/classes.txt, <root>/images/<id>.jpg|png, <root>/labels.csv (id,class names) or labels.json, "
    "optional <root>/masks/<id>.png and <root>/splits/<split>.txt"
)


def deterministic_split(ids: list[str], seed: int, val_fraction: float) -> dict[str, list[str]]:
    ordered = sorted(set(ids))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n_val = min(len(ordered) - 1, max(1, round(val_fraction * len(ordered)))) if len(ordered) > 1 else 0
    val = sorted(ordered[i] for i in perm[:n_val])
    train = sorted(ordered[i] for i in perm[n_val:])
    return {"train": train, "val": val}


def _unlisted_images(folder: Path, listed: set[str]) -> tuple[str, ...]:
    """Ids of the images in ``folder`` that the labels file (or masks/) does not name."""
    exts = {e.lower() for e in IMAGE_EXTS}
    return tuple(
        sorted(p.stem for p in folder.iterdir() if p.suffix.lower() in exts and p.stem not in listed)
    )


class FolderAdapter(ListAdapter):
    layout_hint = LAYOUT

    def __init__(
        self,
        root: Path,
        split: str,
        *,
        roles: dict[str, str] | None = None,
        list_file: Path | None = None,
        labels_file: Path | None = None,
        split_seed: int = 0,
        val_fraction: float = 0.2,
    ):
        self.root = Path(root).expanduser()
        if (
            self.root.is_dir()
            and (self.root / "images").is_dir()
            and not (self.root / "classes.txt").is_file()
        ):
            raise DataError(
                f"{self.root / 'classes.txt'}: class list not found (one foreground class name per line)"
            )
        if not (self.root / "classes.txt").is_file() or not (self.root / "images").is_dir():
            raise missing_root(self.root, "folder", LAYOUT)
        self.split = split
        self.classes = read_classes_file(self.root / "classes.txt")
        self.palette = palette_for(len(self.classes))
        self.mask_dir = self.root / "masks"
        self.has_masks = self.mask_dir.is_dir()
        labels_path = labels_file or next(
            (p for p in (self.root / "labels.csv", self.root / "labels.json") if p.is_file()), None
        )
        table = read_labels_table(labels_path, self.classes) if labels_path else None
        self._table = labels_table_lookup(table, labels_path) if table is not None else None
        if table is None and not self.has_masks:
            raise DataError(
                f"{self.root}: no labels.csv, labels.json or masks/ (image-level labels are required)"
            )
        role = (roles or {}).get(split, split)
        # masks/ may cover only the evaluation images when labels come from the table
        self.masks_required = self.has_masks and (table is None or role == "val")
        split_files = [self.root / "splits" / f"{name}.txt" for name in dict.fromkeys((split, role))]
        if list_file is not None:
            self.source, self.ids = list_file, read_id_list(list_file)
        elif found := next((p for p in split_files if p.is_file()), None):
            self.source, self.ids = found, read_id_list(found)
        elif (self.root / "splits").is_dir():
            raise DataError(f"{split_files[0]}: split list for split {split!r} not found")
        else:
            if role not in ("train", "val"):
                raise DataError(
                    f"{self.root}: no split files and split {split!r} is neither the train nor the val split"
                )
            every = list(table) if table is not None else [p.stem for p in self.mask_dir.glob("*.png")]
            self.source = labels_path or self.mask_dir
            self.ids = deterministic_split(every, split_seed, val_fraction)[role]
            self.left_out = _unlisted_images(self.root / "images", set(every))
            if not self.ids:
                raise DataError(f"{self.source}: no ids for split {split!r}")

    def image_path(self, sample_id: str) -> Path:
        return find_with_ext(self.root / "images", sample_id) or self.root / "images" / f"{sample_id}.jpg"

    def mask_path(self, sample_id: str) -> Path | None:
        return self.mask_dir / f"{sample_id}.png"

    def explicit_labels(self, sample_id: str) -> np.ndarray | None:
        return self._table(sample_id) if self._table is not None else None


def build(data_settings, split: str) -> FolderAdapter:
    roles = {
        data_settings.train_split: "train",
        data_settings.val_split: "val",
        "train": "train",
        "val": "val",
    }
    return FolderAdapter(
        data_settings.root,
        split,
        roles=roles,
        list_file=list_override(data_settings, split),
        labels_file=Path(data_settings.labels_file).expanduser() if data_settings.labels_file else None,
        split_seed=data_settings.split_seed,
        val_fraction=data_settings.val_fraction,
    )
