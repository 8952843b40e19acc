"""coco-vitb reproduces the release's COCO schedule iteration by iteration (issue 12 item 2).

The table is read off the release's train_final_coco.py (SPEC §8, docs/method.md §8): its total
loss is ``cls`` for n_iter <= 8000; ``cls + 0.2 seg + 0.05 dis`` for n_iter <= 12000, the seg
labels then coming from the aux CAM at a fixed 0.65; ``+ 0.2 ptc`` after 12000 with labels from the
CAM and the DTA ``cosine_descent(0.65, 0.55, n_iter - 12000, 80000 - 12000)``; and from
n_iter = gmm_iters = 32000 on the GMM filter and ``+ 0.05 reg`` (weighted in its first iteration).
"""

from __future__ import annotations

import math

import pytest

from dupl_cli.config.method_params import step_config
from dupl_cli.config.sources import load_settings
from dupl_cli.core.errors import UserError
from dupl_cli.method.schedule import phase_at
from dupl_cli.method.step import class_thresholds

# t: (w_ptc, w_dis, w_seg, w_reg, refined labels, from the aux CAM, noise filter)
RELEASE_COCO = {
    0: (0.0, 0.0, 0.0, 0.0, False, False, False),
    8000: (0.0, 0.0, 0.0, 0.0, False, False, False),
    8001: (0.0, 0.05, 0.2, 0.0, True, True, False),
    12000: (0.0, 0.05, 0.2, 0.0, True, True, False),
    12001: (0.2, 0.05, 0.2, 0.0, True, False, False),
    32000: (0.2, 0.05, 0.2, 0.05, True, False, True),
    32001: (0.2, 0.05, 0.2, 0.05, True, False, True),
}


def _release_tau(t: int) -> float:
    """The release's cosine_descent(0.65, 0.55, t - 12000, 68000)."""
    step, steps = t - 12000, 80000 - 12000
    if step < 0:
        return 0.65
    if step >= steps:
        return 0.55
    return 0.65 + (0.55 - 0.65) * (1 - math.cos(math.pi * step / (steps - 1))) / 2


def _coco():
    return load_settings("coco-vitb", environ={}).settings


@pytest.mark.parametrize("t", sorted(RELEASE_COCO))
def test_coco_vitb_weights_match_the_release_table(t):
    config = step_config(_coco(), num_classes=80)
    p = phase_at(t, config.schedule, config.weights)
    got = (p.w_ptc, p.w_dis, p.w_seg, p.w_reg, p.seg_labels, p.aux_labels and p.seg_labels, p.anf)
    assert p.w_cls == 1.0
    assert got == RELEASE_COCO[t]
    if t > 12000:  # DTA threshold of the CAM labels (the aux stage uses aux_tau)
        assert class_thresholds(t, config.thresholds, config.schedule) == pytest.approx(
            _release_tau(t), abs=1e-12
        )
    else:
        assert config.thresholds.aux_tau == 0.65


def test_coco_vitb_validates_like_the_release():
    s = _coco()
    assert (s.train.val_every, s.data.val_split, s.eval.cam_threshold) == (4000, "val_part", 0.45)
    assert (s.train.max_iters, s.train.batch_size) == (80000, 8)


def test_voc_vitb_keeps_its_schedule():
    config = step_config(load_settings("voc-vitb", environ={}).settings, num_classes=20)
    at = {t: phase_at(t, config.schedule, config.weights) for t in (0, 1999, 2000, 7999, 8000)}
    assert [(p.w_ptc, p.w_dis, p.w_seg, p.w_reg) for p in at.values()] == [
        (0.2, 0.1, 0.0, 0.0),
        (0.2, 0.1, 0.0, 0.0),
        (0.2, 0.1, 0.2, 0.0),
        (0.2, 0.1, 0.2, 0.0),
        (0.2, 0.1, 0.2, 0.05),
    ]
    assert at[8000].anf and not at[7999].anf and not at[1999].seg_labels and at[2000].seg_labels


def test_a_term_cannot_start_before_its_labels():
    with pytest.raises(UserError, match=r"method.reg_start \(10\) must be >= method.t_seg \(2000\)"):
        load_settings("voc-vitb", assignments=["method.reg_start=10"], environ={})
