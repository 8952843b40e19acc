"""Confusion-matrix metrics against hand-computed values and scikit-learn."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion

from dupl_cli.evaluation.metrics import ConfusionMeter, confusion_matrix, metrics_from_confusion

NAMES = ["background", "cat", "dog", "bird"]


def test_hand_computed_matrix_with_ignore_and_absent_class():
    # K = 4; class 3 (bird) never occurs in the GT; one GT pixel is 255 (ignored).
    gt = torch.tensor([[0, 0, 1, 1], [1, 2, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 3, 0]])
    cm = confusion_matrix(pred, gt, 4)
    expected = torch.zeros(4, 5, dtype=torch.int64)
    expected[0, 0] = 1
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[1, 2] = 1
    expected[2, 2] = 1
    expected[2, 3] = 1
    assert torch.equal(cm, expected)

    m = metrics_from_confusion(cm, NAMES)
    # background: TP 1, FP 0, FN 1 -> 1/2; cat: TP 2, FP 1, FN 1 -> 2/4; dog: TP 1, FP 1, FN 1 -> 1/3
    assert m.iou[:3] == pytest.approx([0.5, 0.5, 1 / 3])
    assert m.iou[3] == 0.0  # predicted but absent: IoU 0, yet excluded from the mean
    assert m.present == [True, True, True, False]
    assert m.miou == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert m.pixel_accuracy == pytest.approx(4 / 7)
    assert m.precision[:3] == pytest.approx([1.0, 2 / 3, 0.5])
    assert m.recall[:3] == pytest.approx([0.5, 2 / 3, 0.5])
    assert m.over_activation[:4] == pytest.approx([0.0, 1 / 3, 0.5, 1.0])
    assert math.isnan(m.recall[3])
    assert m.to_json()["per_class"]["bird"]["recall"] is None


def test_uncertain_predictions_count_as_misses_not_false_positives():
    gt = torch.tensor([1, 1, 1, 0])
    pred = torch.tensor([1, 255, 255, 0])
    m = metrics_from_confusion(confusion_matrix(pred, gt, 2), ["bg", "cat"])
    assert m.iou == pytest.approx([1.0, 1 / 3])
    assert m.precision == pytest.approx([1.0, 1.0])
    assert m.uncertain_share == pytest.approx(0.5)


def test_matches_sklearn_on_random_maps_and_accumulates():
    rng = np.random.default_rng(0)
    meter = ConfusionMeter(6)
    all_gt, all_pred = [], []
    for _ in range(3):
        gt = rng.integers(0, 6, size=(17, 23))
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = rng.integers(0, 6, size=(17, 23))
        meter.update(torch.from_numpy(pred), torch.from_numpy(gt))
        all_gt.append(gt.ravel())
        all_pred.append(pred.ravel())
    gt, pred = np.concatenate(all_gt), np.concatenate(all_pred)
    keep = gt != 255
    oracle = sk_confusion(gt[keep], pred[keep], labels=list(range(6)))
    assert np.array_equal(meter.reduced()[:, :6].numpy(), oracle)
    assert int(meter.reduced()[:, 6].sum()) == 0
    m = metrics_from_confusion(meter.reduced(), [str(i) for i in range(6)])
    from sklearn.metrics import jaccard_score

    assert m.iou == pytest.approx(
        list(jaccard_score(gt[keep], pred[keep], labels=list(range(6)), average=None))
    )
