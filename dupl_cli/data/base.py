"""The adapter contract and the shared machinery of list-based datasets."""

from __future__ import annotations

import csv
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dupl_cli.core.errors import DataError, UserError, clip
from dupl_cli.core.textfile import read_text
from dupl_cli.data.images import IMAGE_EXTS, labels_from_mask, read_image, read_mask


@dataclass
class Sample:
    image: np.ndarray  # uint8 H×W×3 RGB
    labels: np.ndarray  # float32 C multi-hot
    mask: np.ndarray | None  # uint8 H×W (0 bg, 1..C, 255 ignore) or None
    id: str


@runtime_checkable
class DatasetAdapter(Protocol):
    classes: list[str]
    palette: list[tuple[int, int, int]]
    split: str
    ids: list[str]
    has_masks: bool

    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> Sample: ...
    def path_of(self, i: int) -> Path: ...


def check_id(sample_id: str, source: Path | str) -> str:
    """Reject ids that could escape the dataset folder."""
    if (
        not sample_id
        or "/" in sample_id
        or "\\" in sample_id
        or sample_id in (".", "..")
        or ".." in sample_id
    ):
        raise DataError(
            f"{source}: invalid id {sample_id!r} (ids must be plain file names without path separators or "
            "'..')"
        )
    if sample_id.strip() != sample_id or "\x00" in sample_id:
        raise DataError(f"{source}: invalid id {sample_id!r} (leading/trailing whitespace or NUL)")
    return sample_id


def read_id_list(path: Path) -> list[str]:
    """Ids of a split list, one per line (first whitespace-separated field; VOC lists may carry a second)."""
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    text = read_text(path, "split list", DataError)
    ids = [
        line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    if not ids:
        raise DataError(f"{path}: split list is empty")
    return ids


def read_classes_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: class list not found")
    names = [line.strip() for line in read_text(path, "class list", DataError).splitlines() if line.strip()]
    names = [n for n in names if not n.startswith("#")]
    if names and names[0].lower() in ("background", "__background__", "_background_"):
        names = names[1:]  # background is implicit (id 0)
    if not names:
        raise DataError(f"{path}: class list is empty")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{path}: duplicate class names {dup}")
    return names


def _names_to_vector(names: list[str], classes: list[str], where: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    vec = np.zeros(len(classes), dtype=np.float32)
    for name in names:
        if name not in index:
            raise DataError(
                f"{where}: unknown class name {name!r} (known: "
                f"{', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})"
            )
        vec[index[name]] = 1.0
    return vec


def read_labels_table(path: Path, classes: list[str]) -> dict[str, np.ndarray | DataError]:
    """Image-level labels from CSV (``id,class names separated by spaces``) or JSON (``{id: [names]}``).

    A row with an unknown class name maps to the DataError it causes, so one bad row is reported for
    that image rather than hiding every other label.
    """
    if not path.is_file():
        raise DataError(f"{path}: labels file not found")
    out: dict[str, np.ndarray | DataError] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(read_text(path, "labels file", DataError))
        except ValueError as exc:
            raise DataError(f"{path}: cannot parse labels JSON ({clip(str(exc))})") from None
        except RecursionError:
            raise DataError(f"{path}: cannot parse labels JSON (nested too deeply)") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}: labels JSON must be an object {{id: [class names]}}")
        rows = [
            (str(k), v if isinstance(v, list) else str(v).split(), f"{path} id {k!r}")
            for k, v in data.items()
        ]
    else:
        rows = []
        text = read_text(path, "labels file", DataError)
        for lineno, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
            if not row or not row[0].strip() or row[0].startswith("#"):
                continue
            if lineno == 1 and row[0].strip().lower() in ("id", "image", "image_id"):
                continue  # header
            names = " ".join(row[1:]).replace(";", " ").split()
            rows.append((row[0].strip(), names, f"{path}:{lineno}"))
    for sample_id, names, where in rows:
        if sample_id in out:
            out[sample_id] = DataError(f"{where}: duplicate labels entry for id {sample_id!r}")
            continue
        try:
            out[sample_id] = _names_to_vector([str(n) for n in names], classes, where)
        except DataError as exc:
            out[sample_id] = exc
    if not out:
        raise DataError(f"{path}: labels file is empty")
    return out


def find_with_ext(folder: Path, sample_id: str, exts=IMAGE_EXTS) -> Path | None:
    for ext in exts:
        p = folder / f"{sample_id}{ext}"
        if p.is_file():
            return p
    for ext in exts:  # upper-case extensions as cameras write them
        p = folder / f"{sample_id}{ext.upper()}"
        if p.is_file():
            return p
    for ext in (*exts, *(e.upper() for e in exts)):  # a folder or dangling link by that name: say so
        p = folder / f"{sample_id}{ext}"
        if p.is_dir() or p.is_symlink():
            return p
    return None


def left_out_note(adapter, shown: int = 10) -> str | None:
    """One line naming the images an adapter found but uses in no split (None when there are none)."""
    left = list(getattr(adapter, "left_out", ()))
    if not left:
        return None
    names = ", ".join(left[:shown]) + (
        f", ... ({len(left) - shown} more; all in --json)" if len(left) > shown else ""
    )
    return (
        f"{len(left)} image(s) under {adapter.root} not listed in {adapter.source}, "
        f"so in no split and not used: {names}"
    )


class ListAdapter(ABC):
    """A split as a list of ids with per-id image/mask paths and a label source.

    Subclasses set ``classes``, ``palette``, ``split``, ``ids``, ``has_masks``, ``source`` (the list
    file or folder the ids came from) and implement ``image_path``, ``mask_path`` and optionally
    ``explicit_labels`` (labels from a CSV/JSON/XML, or None to take them from the mask).
    """

    classes: list[str]
    palette: list[tuple[int, int, int]]
    split: str
    ids: list[str]
    has_masks: bool
    source: Path
    layout_hint: str = ""
    masks_required: bool = True  # False: an id without a mask file is fine (its labels come from elsewhere)
    left_out: tuple[
        str, ...
    ] = ()  # ids of images on disk that no split lists: reported, never dropped silently

    def __len__(self) -> int:
        return len(self.ids)

    def sample_id(self, i: int) -> str:
        return check_id(self.ids[i], self.source)

    @abstractmethod
    def image_path(self, sample_id: str) -> Path: ...

    def mask_path(self, sample_id: str) -> Path | None:
        return None

    def explicit_labels(self, sample_id: str) -> np.ndarray | None:
        return None

    def path_of(self, i: int) -> Path:
        return self.image_path(self.sample_id(i))

    def mask_path_of(self, i: int) -> Path | None:
        return self.mask_path(self.sample_id(i)) if self.has_masks else None

    def load_mask(self, sample_id: str) -> np.ndarray | None:
        if not self.has_masks:
            return None
        path = self.mask_path(sample_id)
        if path is None or not path.is_file():
            if not self.masks_required:
                return None
            raise DataError(f"{path}: missing mask for id {sample_id!r}")
        return read_mask(path, len(self.classes))

    def labels_of(self, sample_id: str, mask: np.ndarray | None) -> np.ndarray:
        labels = self.explicit_labels(sample_id)
        if labels is None:
            if mask is None:
                raise DataError(f"{self.source}: no image-level labels for id {sample_id!r}")
            labels = labels_from_mask(mask, len(self.classes))
        return labels

    def __getitem__(self, i: int) -> Sample:
        sample_id = self.sample_id(i)
        image = read_image(self.image_path(sample_id))
        mask = self.load_mask(sample_id)
        if mask is not None and mask.shape != image.shape[:2]:
            raise DataError(
                f"{self.mask_path(sample_id)}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image "
                f"size {image.shape[1]}x{image.shape[0]} (id {sample_id!r})"
            )
        labels = self.labels_of(sample_id, mask)
        if not labels.any():
            raise DataError(
                f"{self.image_path(sample_id)}: image has no class label "
                "(every training image needs at least one)"
            )
        return Sample(image=image, labels=labels, mask=mask, id=sample_id)


def missing_root(root: Path, adapter: str, layout: str) -> UserError:
    return DataError(
        f"{root}: data root for the '{adapter}' adapter does not exist or lacks its layout; expected "
        f"{layout}. Set it with --set data.root=PATH or the environment variable DUPL_DATA__ROOT=PATH"
    )


def labels_table_lookup(
    table: dict[str, np.ndarray | DataError], source: Path
) -> Callable[[str], np.ndarray]:
    def lookup(sample_id: str) -> np.ndarray:
        entry = table.get(sample_id)
        if entry is None:
            raise DataError(f"{source}: no labels entry for id {sample_id!r}")
        if isinstance(entry, DataError):
            raise entry
        return entry

    return lookup


def list_override(settings, split: str) -> Path | None:
    """The list file given in settings for this split (train_list / val_list), if any."""
    if split == settings.train_split and settings.train_list is not None:
        return Path(settings.train_list).expanduser()
    if split == settings.val_split and settings.val_list is not None:
        return Path(settings.val_list).expanduser()
    return None


class SubsetAdapter:
    """A view of some indices of an adapter (e.g. the good ones after ``verify.check_split``)."""

    def __init__(self, adapter, indices):
        self.adapter, self.indices = adapter, list(indices)
        self.ids = [adapter.ids[i] for i in self.indices]
        self.source = getattr(adapter, "source", None) or getattr(adapter, "split", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        return self.adapter[self.indices[i]]

    def path_of(self, i: int) -> Path:
        return self.adapter.path_of(self.indices[i])

    def __getattr__(self, name: str) -> Any:
        # classes, palette, split, has_masks and anything else an adapter offers are the wrapped one's
        if name == "adapter":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.adapter, name)


def shard(adapter, rank: int, world: int, limit: int = 0) -> SubsetAdapter:
    """Every ``world``-th sample of ``adapter`` from ``rank`` (of the first ``limit``, 0 = all):
    no padding and no duplicates, so the shards of all ranks hold each sample once."""
    total = len(adapter) if limit <= 0 else min(limit, len(adapter))
    return SubsetAdapter(adapter, range(rank, total, world))
