"""Dataset checks: the same pass serves `dupl data verify` and the trainer's pre-flight check."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from dupl_cli.core.errors import DataError, one_line
from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.data.base import check_id, left_out_note
from dupl_cli.data.images import labels_from_mask, probe_image


@dataclass
class Problem:
    index: int | None
    id: str | None
    message: str  # one line, naming the file

    def __str__(self) -> str:
        return self.message


@dataclass
class SplitReport:
    split: str
    count: int
    problems: list[Problem] = field(default_factory=list)
    sizes: dict = field(default_factory=dict)
    class_counts: dict = field(default_factory=dict)
    has_masks: bool = False
    notes: list[str] = field(default_factory=list)  # worth knowing, not errors
    left_out: list[str] = field(default_factory=list)  # images found but in no split

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["problems"] = [p.message for p in self.problems]
        return d


def _where(adapter, i: int, sample_id: str) -> str:
    try:
        return str(adapter.path_of(i))
    except Exception:  # a third-party adapter without paths: name the id
        return f"sample {sample_id!r}"


def _kind(value) -> str:
    return f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__


def _check_sample_contract(sample, num_classes: int, where: str, sample_id: str | None = None) -> None:
    """What any adapter (also a third party's) must return; the built-ins check this while decoding."""
    missing = [f for f in ("image", "labels", "mask", "id") if not hasattr(sample, f)]
    if missing:
        raise DataError(
            f"{where}: the adapter returned {type(sample).__name__}, not a Sample (no {', '.join(missing)})"
        )
    image, labels, mask = sample.image, sample.labels, sample.mask
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape[2:] == (3,)):
        raise DataError(f"{where}: image must be uint8 H×W×3 (a numpy array), got {_kind(image)}")
    if sample_id is not None and sample.id != sample_id:
        raise DataError(f"{where}: sample id {sample.id!r} differs from the adapter's id {sample_id!r}")
    if not (isinstance(labels, np.ndarray) and labels.dtype == np.float32 and labels.shape == (num_classes,)):
        raise DataError(
            f"{where}: labels must have {num_classes} entries (one per class) in a float32 "
            f"array, got {_kind(labels)}"
        )
    if not np.isin(labels, (0.0, 1.0)).all():
        values = np.unique(labels).tolist()[:5]
        raise DataError(f"{where}: labels must be multi-hot (0 or 1), got values {values}")
    if not (labels > 0).any():
        raise DataError(f"{where}: image has no class label (every training image needs at least one)")
    if mask is None:
        return
    if not (isinstance(mask, np.ndarray) and mask.dtype == np.uint8):
        raise DataError(f"{where}: mask must be uint8 H×W (a numpy array), got {_kind(mask)}")
    if mask.shape != image.shape[:2]:
        raise DataError(f"{where}: mask shape {mask.shape} differs from image size {image.shape[:2]}")
    values = np.unique(mask)
    bad = values[(values > num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise DataError(
            f"{where}: mask values {bad.tolist()[:5]} out of range (valid: "
            f"0..{num_classes} and {IGNORE_INDEX} ignore)"
        )


def _check_one(adapter, i: int, full: bool):
    """Decode one sample (images at reduced JPEG scale unless ``full``); returns (hw, labels) or raises
    DataError."""
    sample_id = adapter.sample_id(i) if hasattr(adapter, "sample_id") else adapter.ids[i]
    if not full and hasattr(adapter, "image_path"):
        hw = probe_image(adapter.image_path(sample_id))
        mask = adapter.load_mask(sample_id)
        if mask is not None and tuple(mask.shape) != hw:
            raise DataError(
                f"{adapter.mask_path(sample_id)}: mask size {mask.shape[1]}x{mask.shape[0]} differs from "
                f"image size {hw[1]}x{hw[0]} (id {sample_id!r})"
            )
        labels = adapter.labels_of(sample_id, mask)
        if not labels.any():
            raise DataError(
                f"{adapter.image_path(sample_id)}: image has no class label "
                "(every training image needs at least one)"
            )
    else:
        sample = adapter[i]
        _check_sample_contract(sample, len(adapter.classes), _where(adapter, i, sample_id), sample_id)
        hw, mask, labels = sample.image.shape[:2], sample.mask, sample.labels
    if mask is not None and hasattr(adapter, "explicit_labels"):
        explicit = adapter.explicit_labels(sample_id)
        if explicit is not None:
            from_mask = labels_from_mask(mask, len(adapter.classes))
            if not np.array_equal(explicit > 0, from_mask > 0):
                names = lambda v: sorted(adapter.classes[k] for k in np.flatnonzero(v))  # noqa: E731
                raise DataError(
                    f"{adapter.mask_path(sample_id)}: labels {names(explicit)} disagree with the mask's "
                    f"classes {names(from_mask)} (id {sample_id!r})"
                )
    return tuple(int(v) for v in hw), labels


def _scan(adapter, *, full: bool = False, workers: int | None = None):
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    candidates = []
    for i, sample_id in enumerate(adapter.ids):
        try:
            check_id(sample_id, getattr(adapter, "source", adapter.split))
        except DataError as exc:
            problems.append(Problem(i, sample_id, str(exc)))
            continue
        if sample_id in seen:
            problems.append(
                Problem(
                    i,
                    sample_id,
                    f"{getattr(adapter, 'source', adapter.split)}: duplicate id "
                    f"{sample_id!r} (entries {seen[sample_id] + 1} and {i + 1})",
                )
            )
            continue
        seen[sample_id] = i
        candidates.append(i)
    results: dict[int, tuple] = {}

    def run(i):
        try:
            return i, _check_one(adapter, i, full), None
        except DataError as exc:
            return i, None, str(exc)
        except Exception as exc:  # an adapter's own failure (a third party's bug): one line naming the sample
            return i, None, f"{_where(adapter, i, adapter.ids[i])}: the adapter raised {one_line(exc)}"

    n_workers = workers or min(16, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:  # PIL decoding releases the GIL
        for i, res, err in pool.map(run, candidates):
            if err is not None:
                problems.append(Problem(i, adapter.ids[i], err))
            else:
                results[i] = res
    problems.sort(key=lambda p: -1 if p.index is None else p.index)
    return results, problems


def check_split(
    adapter, *, on_error: str = "fail", workers: int | None = None
) -> tuple[list[int], list[Problem]]:
    """Pre-flight check before training: fast and parallel.

    Returns (good indices, problems). ``on_error="fail"`` raises one DataError listing every problem.
    """
    results, problems = _scan(adapter, workers=workers)
    if problems and on_error == "fail":
        head = (
            f'{len(problems)} problem(s) in split {adapter.split!r} (set data.on_error="skip" to skip them):'
        )
        raise DataError("\n".join([head, *(f"  {p.message}" for p in problems)]))
    good = sorted(results)
    if not good:
        raise DataError(
            f"{getattr(adapter, 'source', adapter.split)}: no usable image in split {adapter.split!r}"
        )
    return good, problems


def verify(
    adapter, *, workers: int | None = None, full: bool = False, crop_size: int | None = None
) -> SplitReport:
    """Everything `dupl data verify` reports for one split."""
    report = SplitReport(split=adapter.split, count=len(adapter), has_masks=bool(adapter.has_masks))
    report.left_out = list(getattr(adapter, "left_out", ()))
    if note := left_out_note(adapter):
        report.notes.append(note)
    if len(adapter) == 0:
        report.problems.append(
            Problem(None, None, f"{getattr(adapter, 'source', adapter.split)}: split list is empty")
        )
        return report
    results, report.problems = _scan(adapter, full=full, workers=workers)
    if results:
        hw = np.array([r[0] for r in results.values()])
        report.sizes = {
            "height": {
                "min": int(hw[:, 0].min()),
                "median": float(np.median(hw[:, 0])),
                "max": int(hw[:, 0].max()),
            },
            "width": {
                "min": int(hw[:, 1].min()),
                "median": float(np.median(hw[:, 1])),
                "max": int(hw[:, 1].max()),
            },
        }
        counts = np.sum([r[1] > 0 for r in results.values()], axis=0)
        report.class_counts = {c: int(n) for c, n in zip(adapter.classes, counts, strict=False)}
        if crop_size:
            small = int(((hw[:, 0] < crop_size) | (hw[:, 1] < crop_size)).sum())
            if small:
                report.notes.append(
                    f"{small} image(s) smaller than crop_size {crop_size} on a side at scale 1 "
                    "(the weak view pads them with zeros)"
                )
        absent = [c for c, n in report.class_counts.items() if n == 0]
        if absent:
            report.notes.append(f"classes with no image: {', '.join(absent)}")
    return report
