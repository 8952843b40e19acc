"""Label-quality counts: hand-made maps with known answers, and training_step's counts from a batch's
ground truth (the counts never touch the loss)."""

import torch

from dupl_cli.core.labels import IGNORE_INDEX as IGN
from dupl_cli.method.label_quality import (
    ConsistencyPixels,
    consistency_counts,
    label_counts,
    reg_target_counts,
)
from dupl_cli.method.step import training_step
from tests.method.test_step import T_ANF, _batch, _config, _model


def ratio(pair: torch.Tensor) -> float:
    hits, pixels = pair.tolist()
    return hits / pixels


def test_label_counts_on_a_known_map():
    truth = torch.tensor([[[1, 1, 0, 2, IGN, 0]]])
    refined = torch.tensor([[[1, 2, 0, 2, 1, IGN]]])  # one wrong (2 for 1), one over ignore, one unset
    noise = torch.tensor([[[False, True, False, True, True, False]]])  # flags the wrong one and a right one
    learned = refined.masked_fill(noise, IGN)
    counts = label_counts(refined, learned, noise, truth)
    assert counts["label_acc"].tolist() == [3.0, 4.0]  # the labelled pixels with known truth
    assert counts["learned_acc"].tolist() == [2.0, 2.0]  # the filter left two, both right
    assert counts["noise_precision"].tolist() == [1.0, 2.0]  # flagged foreground with truth: 1 of 2 wrong
    assert counts["noise_recall"].tolist() == [1.0, 1.0]  # the one wrong foreground pixel was flagged
    assert counts["label_fg_iou"].tolist() == [2.0, 3.0]  # classes 1 and 2 agree; 2 for 1 is a miss
    assert counts["learned_fg_iou"].tolist() == [1.0, 1.0]


def test_label_counts_before_the_noise_filter_have_no_filter_figures():
    truth = torch.zeros(1, 2, 2, dtype=torch.long)
    counts = label_counts(truth.clone(), truth.clone(), None, truth)
    assert set(counts) == {"label_acc", "label_fg_iou", "learned_acc", "learned_fg_iou"}
    assert ratio(counts["label_acc"]) == 1.0


def test_consistency_counts_share_agreement_and_target_accuracy():
    target = torch.tensor([[[1, 1, 2, 0]]])
    mask = torch.tensor([[[True, True, False, True]]])
    strong = torch.tensor([[[1, 2, 2, 0]]])
    region = torch.tensor([[[True, True, True, False]]])  # the last pixel is padding
    parts = [ConsistencyPixels(target, mask, strong, region)] * 2
    counts = consistency_counts(parts)
    assert counts["reg_share"].tolist() == [6.0, 6.0]  # 3 masked of 3 region pixels, both students
    assert counts["strong_agree"].tolist() == [4.0, 6.0]  # 2 of 3 masked pixels agree, twice
    truth = torch.tensor([[[1, 0, 2, IGN]]])
    acc = reg_target_counts(parts, [truth, truth])["reg_target_acc"]
    assert acc.tolist() == [2.0, 4.0]  # per student: first right, second wrong, fourth unknown
    iou = reg_target_counts(parts, [truth, truth])["reg_target_fg_iou"]
    assert iou.tolist() == [2.0, 4.0]  # class 1 right, class 1 where the truth is background


def test_training_step_counts_from_the_batch_ground_truth():
    """With ``gt_mask`` the step counts the labels against it; the loss and terms are unchanged,
    and a ground truth equal to the step's own refined labels scores 100 %."""
    batch = _batch()
    plain = training_step(
        _model(sharpen=1000.0), batch, T_ANF + 1, _config(), generator=torch.Generator().manual_seed(1)
    )
    assert set(plain.counts) == {"reg_share", "strong_agree"}  # no ground truth: the mask's own figures
    truth = torch.randint(0, 6, (2, 64, 64), generator=torch.Generator().manual_seed(3))
    truth[:, :8] = IGN
    measured = training_step(
        _model(sharpen=1000.0), batch | {"gt_mask": truth}, T_ANF + 1, _config(),
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    assert measured.loss.item() == plain.loss.item()
    assert {"label_acc", "learned_acc", "noise_precision", "noise_recall", "reg_target_acc"} <= set(
        measured.counts
    )
    for name, (hits, pixels) in measured.counts.items():
        assert 0 <= hits <= pixels, name
    known = (truth != IGN).sum().item()
    assert measured.counts["label_acc"][1] <= 2 * known  # both students' labels, only where truth is known
    before = training_step(
        _model(sharpen=1000.0), batch | {"gt_mask": truth}, T_ANF - 1, _config(),
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    assert "noise_precision" not in before.counts and "label_acc" in before.counts


def test_padded_views_pad_the_ground_truth_with_ignore():
    """A 60 px batch is padded to the stride (64): the ground truth too, and it counts only inside."""
    batch = _batch()
    batch["image"] = batch["image"][..., :60, :60]
    batch["img_box"] = torch.tensor([[0, 60, 0, 60]] * 2)
    truth = torch.zeros(2, 60, 60, dtype=torch.long)
    result = training_step(
        _model(), batch | {"gt_mask": truth}, T_ANF - 1, _config(), generator=torch.Generator().manual_seed(1)
    )
    assert 0 < result.counts["label_acc"][1] <= 2 * 60 * 60
