"""Parity with the DuPL release (fixtures README): every loss term, the strong view, the
consistency masks/targets, and one full training step per phase (total loss and gradients)."""

import pytest
import release_fixture as rf
import torch

from dupl_cli.config.schema import VOC_TAU_END_PER_CLASS, DuplSettings
from dupl_cli.engine.method_config import step_config
from dupl_cli.method import losses as L
from dupl_cli.method import strong_aug
from dupl_cli.method.params import STRONG_OPS
from dupl_cli.method.step import training_step
from dupl_cli.models.dual import DualStudent

TOL = 1e-4
NAMES = {"dis": "sim", "dis_1": "sim_1", "dis_2": "sim_2"}


@pytest.fixture(scope="module")
def fx():
    rf.require()
    return rf.tensors("common"), rf.meta()


def _close(value, expected, tol=TOL):
    value = float(torch.as_tensor(value).detach())
    assert abs(value - float(expected)) <= tol, (value, float(expected))


@pytest.mark.parametrize("phase", ["A", "B", "C"])
def test_each_loss_term_from_stored_tensors(fx, phase):
    common, meta = fx
    p = rf.tensors(f"phase_{phase}")
    ref = meta["phases"][phase]["losses"]
    y = common["label.cls"]
    for k in (1, 2):
        _close(L.classification_loss(common[f"fwd.cls.s{k}"], y), ref[f"cls_fmap_{k}"])
        _close(L.classification_loss(common[f"fwd.cls_aux.s{k}"], y), ref[f"cls_aux_{k}"])
        tok = p[f"{phase}.ptc.label.s{k}"]
        assert torch.equal(L.token_affinity(tok), p[f"{phase}.ptc.aff.s{k}"])
        _close(L.ptc_loss(common[f"fwd.fmap.s{k}"], tok), ref[f"ptc_{k}"])
    to_2, to_1 = L.discrepancy_terms(common["fwd.fmap.s1"], common["fwd.fmap.s2"], form="release")
    _close(to_2, ref["sim_1"])
    _close(to_1, ref["sim_2"])
    if phase == "A":
        return
    key = "refined_filtered" if phase == "C" else "refined"
    _close(L.seg_loss(common["fwd.seg.s1"], p[f"{phase}.{key}.s2"]), ref["seg_1"])
    _close(L.seg_loss(common["fwd.seg.s2"], p[f"{phase}.{key}.s1"]), ref["seg_2"])


def test_anf_losses_and_consistency_masks_targets_and_terms(fx):
    common, meta = fx
    p = rf.tensors("phase_C")
    ref = meta["phases"]["C"]["losses"]
    for k, other in ((1, 2), (2, 1)):
        own = L.pixel_ce(common[f"fwd.seg.s{k}"], p[f"C.refined.s{k}"])
        assert (own - p[f"C.anf.pix_loss.s{k}"]).abs().max() <= TOL
        discarded = p[f"C.refined_filtered.s{other}"] == 255  # compat.reg_include_padding: no box
        target, mask, confident = L.consistency_target(common[f"fwd.seg.s{k}"], discarded, confidence=0.9)
        assert torch.equal(confident, p[f"C.reg.conf_gt_0.9.s{k}"])
        assert torch.equal(mask, p[f"C.reg.mask.s{k}"])
        assert torch.equal(torch.where(mask, target, 255).to(torch.uint8), p[f"C.reg.target.s{k}"])
        strong = strong_aug.undo_on_logits(p[f"C.fwd.seg_strong.s{k}"], (224, 224), flip=True)
        _close(L.consistency_loss(strong, target, mask), ref[f"reg_{k}"])


@pytest.fixture(scope="module")
def model():
    rf.require()
    return DualStudent(rf.load_students())


def test_strong_view_logits(fx, model):
    common, _ = fx
    p = rf.tensors("phase_C")
    x = strong_aug.downscale(common["input.strong"], 0.75, multiple=16)
    with torch.no_grad():
        for k, student in enumerate(model.students, 1):
            assert (student.segment(x) - p[f"C.fwd.seg_strong.s{k}"]).abs().max() <= TOL


def _release_settings() -> DuplSettings:
    s = DuplSettings()
    s.data.crop_size = 224
    s.method.tau_high_end = list(VOC_TAU_END_PER_CLASS)
    for switch in ("ptc_pixel_box", "reg_include_padding", "anf_two_sided", "delayed_weights"):
        setattr(s.compat, switch, True)
    return s


@pytest.mark.parametrize("phase", ["A", "B", "C"])
def test_full_step_total_loss_and_gradients(fx, model, phase, monkeypatch):
    common, meta = fx
    ops = meta["phases"]["C"]["randaugment_ops_per_image"]
    op_ids = torch.tensor([[STRONG_OPS.index(name.lower()) for name in row] for row in ops])
    monkeypatch.setattr(strong_aug, "draw_ops", lambda *a, **k: op_ids)  # the release's drawn ops
    batch = {
        "image": common["input.weak"],
        "labels": common["label.cls"],
        "img_box": common["label.img_box"].long(),
    }
    model.zero_grad(set_to_none=True)
    result = training_step(model, batch, meta["phases"][phase]["n_iter"], step_config(_release_settings()))
    result.loss.backward()
    ref = meta["phases"][phase]["losses"]
    _close(result.loss, ref["total"])
    for name, value in result.terms.items():
        if NAMES.get(name, name) in ref:
            _close(value, ref[NAMES.get(name, name)])
    _close(result.stats["tau_h"], sum(meta["phases"][phase]["thr_high_per_image"]) / 2)
    stored = {k: v for k, v in rf.tensors(f"phase_{phase}").items() if ".grad." in k}
    assert stored
    for key, grad in stored.items():
        student, name = key.split(".", 3)[2:]
        name = name.replace("encoder.", "backbone.vit.").replace("decoder.", "head.")
        param = dict(model.students[int(student[1]) - 1].named_parameters())[name]
        assert (param.grad - grad).abs().max() <= TOL, key
    if phase == "A":  # the whole decoder has no gradient before t_seg
        assert all(p.grad is None for s in model.students for p in s.head.parameters())
