"""A checkpoint's classes against a dataset's, compared by name (never by count alone).

The same names in another order are remapped (ground-truth ids and image labels into the
checkpoint's order, and the caller states it); any other difference is an error naming both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dupl_cli.core.errors import UserError
from dupl_cli.core.labels import IGNORE_INDEX


def _key(name: str) -> str:
    return name.strip().casefold()


@dataclass(frozen=True)
class ClassMap:
    """Dataset ids → checkpoint ids; ``order[j]`` is the dataset index of the checkpoint's class j."""

    lut: np.ndarray  # uint8 256: dataset mask value → checkpoint id (IGNORE_INDEX stays IGNORE_INDEX)
    order: np.ndarray  # int64 C

    def note(self) -> str:
        return "dataset classes in another order than the checkpoint's; ground truth remapped by name"


def match_classes(model: list[str], data: list[str], model_where: str, data_where: str) -> ClassMap | None:
    """None when the lists agree; a ClassMap when only the order differs; else UserError."""
    if [_key(n) for n in model] == [_key(n) for n in data]:
        return None
    model_keys, data_keys = [_key(n) for n in model], [_key(n) for n in data]
    if sorted(model_keys) != sorted(data_keys) or len(set(data_keys)) != len(data_keys):
        only_model = [n for n in model if _key(n) not in data_keys]
        only_data = [n for n in data if _key(n) not in model_keys]
        detail = (
            f"only in the checkpoint: {', '.join(only_model) or '-'}; only in the dataset: "
            f"{', '.join(only_data) or '-'}"
        )
        if not only_model and not only_data:
            detail = "a class name is repeated"
        raise UserError(
            f"{model_where} has classes {model} but {data_where} has {data} ({detail}); "
            "evaluate on the dataset the model was trained for"
        )
    order = np.array([data_keys.index(k) for k in model_keys], dtype=np.int64)
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[0] = 0
    lut[order + 1] = np.arange(1, len(order) + 1, dtype=np.uint8)
    valid = np.arange(len(order) + 1, IGNORE_INDEX)
    lut[valid] = valid.astype(np.uint8)  # out-of-range ids stay out of range (the metrics refuse them)
    return ClassMap(lut, order)


class RemappedAdapter:
    """An adapter whose samples are in the checkpoint's class order (masks and image labels)."""

    def __init__(self, adapter, classmap: ClassMap, classes: list[str], palette) -> None:
        self._adapter, self._map = adapter, classmap
        self.classes, self.palette = list(classes), palette

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    def __len__(self) -> int:
        return len(self._adapter)

    def __getitem__(self, i: int):
        sample = self._adapter[i]
        mask = None if sample.mask is None else self._map.lut[sample.mask]
        return replace(sample, mask=mask, labels=sample.labels[self._map.order])


def aligned(adapter, loaded, data_where: str):
    """``adapter`` in the checkpoint's class order, and a note when it had to be remapped."""
    card = loaded.card
    classmap = match_classes(list(card.classes), list(adapter.classes), str(loaded.path), data_where)
    if classmap is None:
        return adapter, None
    return RemappedAdapter(adapter, classmap, card.classes, list(card.palette)), classmap.note()
