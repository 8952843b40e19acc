"""verify/check_split hold any adapter (a third party's too) to the Sample contract."""

from __future__ import annotations

import numpy as np
import pytest

from dupl_cli.core.errors import DataError
from dupl_cli.data.base import Sample
from dupl_cli.data.verify import check_split


class FakeAdapter:
    """A minimal third-party adapter (no image paths), serving given samples."""

    classes = ["cat", "dog"]
    palette = [(0, 0, 0), (128, 0, 0), (0, 128, 0)]
    split = "train"
    has_masks = True

    def __init__(self, samples):
        self.samples = samples
        self.ids = [s.id for s in samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def sample(sid, *, mask_value=1, labels=(1.0, 0.0), image=None, mask_shape=(8, 8)):
    image = np.zeros((8, 8, 3), np.uint8) if image is None else image
    mask = np.full(mask_shape, mask_value, np.uint8)
    return Sample(image=image, labels=np.asarray(labels, np.float32), mask=mask, id=sid)


def test_good_samples_pass():
    good, problems = check_split(FakeAdapter([sample("a"), sample("b", mask_value=255)]))
    assert good == [0, 1] and problems == []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (sample("x", mask_value=7), "sample 'x': mask values [7] out of range (valid: 0..2 and 255 ignore)"),
        (sample("x", labels=(0.0, 0.0)), "sample 'x': image has no class label"),
        (sample("x", labels=(1.0, 0.0, 0.0)), "sample 'x': labels must have 2 entries"),
        (sample("x", image=np.zeros((8, 8), np.uint8)), "sample 'x': image must be uint8 H×W×3"),
        (sample("x", mask_shape=(4, 8)), "sample 'x': mask shape (4, 8) differs from image size (8, 8)"),
    ],
)
def test_contract_violations_are_named(bad, message):
    adapter = FakeAdapter([sample("a"), bad])
    with pytest.raises(DataError, match="1 problem") as info:
        check_split(adapter)
    assert message in str(info.value)
    good, problems = check_split(adapter, on_error="skip")
    assert good == [0] and len(problems) == 1 and message in problems[0].message
