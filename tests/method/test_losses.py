"""Losses against brute-force oracles, gradient routing and float32 behaviour under autocast."""

import math

import pytest
import torch
import torch.nn.functional as F
from method_oracles import discrepancy_loss

from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.method import losses as L


def _ptc_double_loop(features, token_labels):
    """Plain-Python PTC: every (image, i, j) pair visited once."""
    b, d, h, w = features.shape
    feats = features.reshape(b, d, h * w)
    labels = token_labels.reshape(b, h * w).tolist()
    pos_sum = neg_sum = 0.0
    n_pos = n_neg = 0
    for n in range(b):
        vecs = [feats[n, :, i] / max(feats[n, :, i].norm().item(), 1e-8) for i in range(h * w)]
        for i in range(h * w):
            for j in range(h * w):
                li, lj = labels[n][i], labels[n][j]
                if i == j or li == IGNORE_INDEX or lj == IGNORE_INDEX:
                    continue
                c = abs(float(vecs[i] @ vecs[j]))
                if li == lj:
                    pos_sum, n_pos = pos_sum + c, n_pos + 1
                else:
                    neg_sum, n_neg = neg_sum + c, n_neg + 1
    return 0.5 * (1 - pos_sum / (n_pos + 1)) + 0.5 * neg_sum / (n_neg + 1)


def test_ptc_matches_double_loop():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 8, 5, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 5, 4), generator=g)
    labels[labels == 3] = IGNORE_INDEX
    labels[2] = IGNORE_INDEX  # a fully ignored image contributes nothing
    got = L.ptc_loss(feats, labels)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_ptc_double_loop(feats, labels), abs=1e-6)


def test_token_affinity_marks_diagonal_and_ignored():
    labels = torch.tensor([[[0, 1], [IGNORE_INDEX, 1]]])
    aff = L.token_affinity(labels)[0]
    assert aff.diagonal().eq(IGNORE_INDEX).all()
    assert aff[2].eq(IGNORE_INDEX).all() and aff[:, 2].eq(IGNORE_INDEX).all()
    assert aff[1, 3] == 1 and aff[0, 1] == 0


def test_classification_loss_is_mlsm_mean():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sig = torch.sigmoid
    expected = -((torch.log(sig(logits)) * labels + torch.log(1 - sig(logits)) * (1 - labels)).mean(1)).mean()
    assert L.classification_loss(logits, labels).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("form", ["release", "paper"])
def test_discrepancy_gradient_reaches_only_the_moving_student(form):
    f1 = torch.randn(2, 6, 4, 4, requires_grad=True)
    f2 = torch.randn(2, 6, 4, 4, requires_grad=True)
    to_2, to_1 = L.discrepancy_terms(f1, f2, form=form)
    g1, g2 = torch.autograd.grad(to_2, (f1, f2), allow_unused=True)
    assert g1 is None and g2.abs().sum() > 0
    h1, h2 = torch.autograd.grad(to_1, (f1, f2), allow_unused=True)
    assert h1.abs().sum() > 0
    assert h2 is None


def test_discrepancy_release_value_by_hand():
    f1 = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    f2 = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    cos = [
        float(f1[b, c].flatten() @ f2[b, c].flatten() / (f1[b, c].norm() * f2[b, c].norm()))
        for b in range(2)
        for c in range(3)
    ]
    expected = 2 * (1 + sum(cos) / len(cos))
    assert discrepancy_loss(f1, f2).item() == pytest.approx(expected, abs=1e-5)
    cos_img = [float(F.cosine_similarity(f1[b].flatten(), f2[b].flatten(), dim=0)) for b in range(2)]
    paper = 2 * sum(-math.log(1 - c) for c in cos_img) / 2
    assert discrepancy_loss(f1, f2, form="paper").item() == pytest.approx(paper, abs=1e-5)


def test_seg_loss_balanced_and_finite_on_one_sided_crops():
    logits = torch.randn(2, 4, 4, 4)
    labels = torch.randint(0, 4, (2, 8, 8))
    labels[0, :2] = IGNORE_INDEX
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    ce = F.cross_entropy(up, labels, ignore_index=IGNORE_INDEX, reduction="none")
    bg, fg = labels == 0, (labels > 0) & (labels < IGNORE_INDEX)
    expected = 0.5 * (ce[bg].mean() + ce[fg].mean())
    assert L.seg_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    for fill in (0, 2, IGNORE_INDEX):
        value = L.seg_loss(logits, torch.full((2, 8, 8), fill))
        assert torch.isfinite(value)
    all_fg = torch.full((2, 8, 8), 2)
    ce_fg = F.cross_entropy(up, all_fg, reduction="none").mean()
    assert L.seg_loss(logits, all_fg).item() == pytest.approx(0.5 * ce_fg.item(), rel=1e-5)


def test_consistency_loss_mean_over_mask_and_zero_when_empty():
    strong = torch.randn(1, 3, 4, 4, requires_grad=True)
    weak = torch.randn(1, 3, 4, 4) * 10
    discarded = torch.zeros(1, 8, 8, dtype=torch.bool)
    discarded[0, 2:6, 1:7] = True
    target, mask, confident = L.consistency_target(weak, discarded, confidence=0.9)
    up_w = F.interpolate(weak, size=(8, 8), mode="bilinear", align_corners=False).softmax(1)
    assert torch.equal(confident, up_w.max(1).values > 0.9)
    assert torch.equal(mask, discarded & confident)
    up_s = F.interpolate(strong, size=(8, 8), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(up_s, target, reduction="none")[mask].mean()
    got = L.consistency_loss(strong, target, mask)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    empty = L.consistency_loss(strong, target, torch.zeros_like(mask))
    assert empty.item() == 0.0
    empty.backward()  # finite, differentiable


def test_every_loss_float32_and_finite_under_bf16_autocast():
    torch.manual_seed(0)
    feats1, feats2 = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    seg = torch.randn(2, 5, 4, 4)
    labels = torch.randint(0, 5, (2, 16, 16))
    tok = torch.randint(0, 3, (2, 4, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        proj = torch.nn.Linear(16, 16)
        f1 = proj(feats1.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(2, 16, 4, 4)
        assert f1.dtype == torch.bfloat16
        values = [
            L.classification_loss(f1.amax((2, 3))[:, :4], torch.ones(2, 4)),
            L.ptc_loss(f1, tok),
            discrepancy_loss(f1, feats2),
            discrepancy_loss(f1, feats2, form="paper"),
            L.seg_loss(seg.bfloat16(), labels),
            L.seg_loss(seg.bfloat16(), torch.zeros_like(labels)),
            L.consistency_loss(seg.bfloat16(), labels, labels > 2),
        ]
    for v in values:
        assert v.dtype == torch.float32 and torch.isfinite(v)
