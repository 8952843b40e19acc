"""Parity with the DuPL release's recorded step: every loss term, the strong view's logits, the
consistency masks and targets, and one full training step per phase (loss terms, total, every
stored gradient tensor and the gradient norm of every parameter).

Tolerances, measured on the b21990f set at 1 and 2 threads, with oneDNN and with PyTorch's own
convolutions, contiguous and channels-last feature maps:
- values ``1e-4 * |ref| + 1e-6``: losses agree within 7e-7;
- gradient tensors ``1e-4 * max|g_ref| + 1e-6``: within 6e-7 of the largest entry once the
  head ReLU units sitting on their kink are put on the reference's side (``relu_kinks``; one
  unit, 9e-8 from zero, in phases B and C);
- gradient norms ``5e-4 * norm + 1e-6``: the reference's own LargeFOV conv7 weight-gradient
  norms are 1.2-1.5e-4 from float64 (fp32 sums of 392 terms per entry in its convolution);
  every other norm is within 2e-5.
"""

import pytest
import release_fixture as rf
import relu_kinks
import torch

from dupl_cli.method import losses as L
from dupl_cli.method import step as step_module
from dupl_cli.method import strong_aug
from dupl_cli.method.params import (
    STRONG_OPS,
    CamConfig,
    ConsistencyConfig,
    LossWeights,
    ParConfig,
    PhaseSchedule,
    StepConfig,
    StrongViewConfig,
    ThresholdConfig,
)
from dupl_cli.models.dual import DualStudent

pytestmark = pytest.mark.usefixtures("release_set")  # every test here runs once per recorded set

REL = 1e-4
REL_NORM = 5e-4  # the reference's conv7 weight-gradient norms are 1.2-1.5e-4 from float64 (fp32 sums)
ABS = 1e-6
NAMES = {"dis": "sim", "dis_1": "sim_1", "dis_2": "sim_2"}  # our name -> the release's


@pytest.fixture(scope="module")
def fx(release_set):
    return rf.tensors("common"), rf.meta()


def _close(value, expected):
    value = float(torch.as_tensor(value).detach())
    assert abs(value - float(expected)) <= REL * abs(float(expected)) + ABS, (value, float(expected))


def _labels_key(phase: str) -> str:
    """The label the other student learns: filtered once the noise filter has run."""
    return "refined_filtered" if f"{phase}.refined_filtered.s1" in rf.tensors(f"phase_{phase}") else "refined"


@pytest.mark.parametrize("phase", rf.phase_params())
def test_each_loss_term_from_stored_tensors(fx, phase):
    common, meta = fx
    p = rf.tensors(f"phase_{phase}")
    ref = meta["phases"][phase]["losses"]
    y = common["label.cls"]
    for k in rf.STUDENTS:
        _close(L.classification_loss(common[f"fwd.cls.s{k}"], y), ref[f"cls_fmap_{k}"])
        _close(L.classification_loss(common[f"fwd.cls_aux.s{k}"], y), ref[f"cls_aux_{k}"])
        tok = p[f"{phase}.ptc.label.s{k}"]
        assert torch.equal(L.token_affinity(tok), p[f"{phase}.ptc.aff.s{k}"])
        _close(L.ptc_loss(common[f"fwd.fmap.s{k}"], tok), ref[f"ptc_{k}"])
    to_2, to_1 = L.discrepancy_terms(common["fwd.fmap.s1"], common["fwd.fmap.s2"], form="release")
    _close(to_2, ref["sim_1"])
    _close(to_1, ref["sim_2"])
    if f"{phase}.refined.s1" not in p:
        assert "seg_1" not in ref
        return
    key = _labels_key(phase)
    _close(L.seg_loss(common["fwd.seg.s1"], p[f"{phase}.{key}.s2"]), ref["seg_1"])
    _close(L.seg_loss(common["fwd.seg.s2"], p[f"{phase}.{key}.s1"]), ref["seg_2"])


def _consistency_phase() -> str:
    return next(ph for ph in rf.phases() if f"{ph}.reg.mask.s1" in rf.tensors(f"phase_{ph}"))


def _confident_key(p: dict, phase: str, k: int) -> str:
    return next(key for key in p if key.startswith(f"{phase}.reg.conf_gt_") and key.endswith(f".s{k}"))


def test_anf_losses_and_consistency_masks_targets_and_terms(fx):
    common, meta = fx
    phase = _consistency_phase()
    p = rf.tensors(f"phase_{phase}")
    ref = meta["phases"][phase]["losses"]
    confidence, strong_hp = rf.hyper()["reg_confidence"], rf.hyper()["strong_aug"]
    for k, other in ((1, 2), (2, 1)):
        own = L.pixel_ce(common[f"fwd.seg.s{k}"], p[f"{phase}.refined.s{k}"])
        stored = p[f"{phase}.anf.pix_loss.s{k}"]
        assert (own - stored).abs().max() <= REL * stored.abs().max() + ABS
        discarded = p[f"{phase}.refined_filtered.s{other}"] == 255  # compat.reg_include_padding: no box
        target, mask, confident = L.consistency_target(
            common[f"fwd.seg.s{k}"], discarded, confidence=confidence
        )
        assert torch.equal(confident, p[_confident_key(p, phase, k)])
        assert torch.equal(mask, p[f"{phase}.reg.mask.s{k}"])
        assert int(mask.sum()) == meta["phases"][phase]["reg_mask_pixels"][f"s{k}"]
        assert torch.equal(torch.where(mask, target, 255).to(torch.uint8), p[f"{phase}.reg.target.s{k}"])
        size = tuple(common["input.weak"].shape[-2:])
        strong = strong_aug.undo_on_logits(p[f"{phase}.fwd.seg_strong.s{k}"], size, flip=strong_hp["hflip"])
        _close(L.consistency_loss(strong, target, mask), ref[f"reg_{k}"])


@pytest.fixture(scope="module")
def model(release_set):
    return DualStudent(rf.load_students())


def test_strong_view_logits(fx, model):
    common, _ = fx
    phase = _consistency_phase()
    p = rf.tensors(f"phase_{phase}")
    x = strong_aug.downscale(common["input.strong"], rf.hyper()["strong_aug"]["resize"], multiple=16)
    with torch.no_grad():
        for k, student in enumerate(model.students, 1):
            stored = p[f"{phase}.fwd.seg_strong.s{k}"]
            assert (student.segment(x) - stored).abs().max() <= REL * stored.abs().max() + ABS


def release_config() -> StepConfig:
    """The step configuration of the release run the fixture set describes (all from its meta.json)."""
    hp = rf.hyper()
    par, strong = hp["par"], hp["strong_aug"]
    return StepConfig(
        cam=CamConfig(scales=tuple(hp["cam_scales"]), flip=True),
        thresholds=ThresholdConfig(
            tau_low=hp["low_thre"],
            tau_start=hp["high_thre_start"],
            tau_end=tuple(hp["high_thre_target_per_class"]),
        ),
        schedule=PhaseSchedule(
            t_seg=hp["cam_iters"], t_anf=hp["gmm_iters"], max_iters=hp["max_iters"], delayed_weights=True
        ),
        weights=LossWeights(ptc=hp["w_ptc"], dis=hp["w_sim"], seg=hp["w_seg"], reg=hp["w_reg"]),
        par=ParConfig(
            dilations=tuple(par["dilations"]),
            iters=par["num_iter"],
            downscale=par["down_scale"],
            w_color=par["w1"],
            w_pos=par["w2"],
        ),
        noise=rf.noise_filter_config(),
        strong=StrongViewConfig(
            n=strong["n"], magnitude=strong["m"], scale=strong["resize"], flip=strong["hflip"]
        ),
        consistency=ConsistencyConfig(confidence=hp["reg_confidence"], include_padding=True),
        discrepancy="release",
        ptc_pixel_box=True,
    )


def _stored_labels(phase: str):
    """Wrap the step's label stage so the losses see the release's own labels.

    A pixel whose CAM sits on a threshold may take either label in two correct fp32 runs; the
    label stages are compared exactly elsewhere (test_parity_cam_par_anf.py, and
    test_step_labels_match_the_release below), so gradients here are compared on equal labels.
    """
    p = rf.tensors(f"phase_{phase}")
    original = step_module.make_pseudo_labels

    def wrapped(*args, **kwargs):
        ours = original(*args, **kwargs)
        token = [p[f"{phase}.ptc.label.s{k}"].long() for k in rf.STUDENTS]
        if ours.refined is None:
            return ours._replace(token=token)
        refined = [p[f"{phase}.refined.s{k}"].long() for k in rf.STUDENTS]
        filtered = [p[f"{phase}.{_labels_key(phase)}.s{k}"].long() for k in rf.STUDENTS]
        return ours._replace(token=token, refined=refined, filtered=filtered)

    return original, wrapped


def _release_batch(common):
    return {
        "image": common["input.weak"],
        "labels": common["label.cls"],
        "img_box": common["label.img_box"].long(),
    }


def _release_ops(monkeypatch, meta):
    phase = _consistency_phase()
    ops = meta["phases"][phase]["randaugment_ops_per_image"]
    op_ids = torch.tensor([[STRONG_OPS.index(name.lower()) for name in row] for row in ops])
    monkeypatch.setattr(strong_aug, "draw_ops", lambda *a, **k: op_ids)  # the release's drawn ops


def _reference_gradients(phase: str, grads):
    """(stored tensors, norms) of the reference, keyed (student index, our parameter name)."""
    tensors = {}
    for key, g_ref in rf.tensors(f"phase_{phase}").items():
        if ".grad." in key:
            _, _, rest = key.split(".", 2)  # "<phase>.grad.s<k>.<release name>"
            branch, release_name = rest.split(".", 1)
            student, name = rf.our_name(f"branch{branch[1:]}.{release_name}")
            tensors[(student - 1, name)] = g_ref
    norms, none = {}, []
    for key, n_ref in rf.meta()["phases"][phase]["grad_l2_norm_per_param"].items():
        student, name = rf.our_name(key)
        if name not in grads[student - 1]:  # timm's unused ImageNet head is not part of our backbone
            assert n_ref is None and name.startswith("backbone.vit.head."), key
        elif n_ref is None:
            none.append((student - 1, name))
        else:
            norms[(student - 1, name)] = n_ref
    return tensors, norms, none


@pytest.mark.slow
@pytest.mark.parametrize("phase", rf.phase_params())
def test_full_step_total_loss_and_gradients(fx, model, phase, monkeypatch):
    common, meta = fx
    _release_ops(monkeypatch, meta)
    _, wrapped = _stored_labels(phase)
    monkeypatch.setattr(step_module, "make_pseudo_labels", wrapped)
    with relu_kinks.HeadKinks(model.students) as kinks:
        result = step_module.training_step(
            model, _release_batch(common), meta["phases"][phase]["n_iter"], release_config()
        )
        grads = kinks.gradients(result.loss)
        ref = meta["phases"][phase]["losses"]
        _close(result.loss, ref["total"])
        for name, value in result.terms.items():
            if NAMES.get(name, name) in ref:
                _close(value, ref[NAMES.get(name, name)])
        thr = meta["phases"][phase]["thr_high_per_image"]
        _close(result.stats["tau_h"], sum(thr) / len(thr))

        tensors, norms, none = _reference_gradients(phase, grads)
        assert tensors and norms
        for key in none:
            g = grads[key[0]][key[1]]
            assert g is None or not g.any(), f"{key} has a gradient; the release's has none"
        trained = {(k, n) for k, gs in enumerate(grads) for n, g in gs.items() if g is not None and g.any()}
        assert trained <= set(norms), f"no recorded norm for {sorted(trained - set(norms))[:3]}"
        tensor_tol = {key: REL * float(g.abs().max()) + ABS for key, g in tensors.items()}
        norm_tol = {key: REL_NORM * n + ABS for key, n in norms.items()}
        grads, flipped = kinks.explain(grads, tensors, norms, tensor_tol, norm_tol)

    note = f"units on their kink flipped to the reference's side: {[str(u) for u in flipped]}"
    for key, g_ref in tensors.items():
        err = float((grads[key[0]][key[1]] - g_ref).abs().max())
        assert err <= tensor_tol[key], (key, err, tensor_tol[key], note)
    for key, n_ref in norms.items():
        err = abs(float(grads[key[0]][key[1]].norm()) - n_ref)
        assert err <= norm_tol[key], (key, err, norm_tol[key], note)


@pytest.mark.parametrize("phase", rf.phase_params())
def test_step_labels_match_the_release(fx, model, phase, monkeypatch):
    """The step's own token, refined and filtered labels, from its own CAMs, equal the release's."""
    common, meta = fx
    _release_ops(monkeypatch, meta)
    seen = {}
    original = step_module.make_pseudo_labels

    def spy(*args, **kwargs):
        seen["labels"] = out = original(*args, **kwargs)
        return out

    monkeypatch.setattr(step_module, "make_pseudo_labels", spy)
    with torch.no_grad():
        step_module.training_step(
            model, _release_batch(common), meta["phases"][phase]["n_iter"], release_config()
        )
    p, ours = rf.tensors(f"phase_{phase}"), seen["labels"]
    for k in rf.STUDENTS:
        assert torch.equal(ours.token[k - 1], p[f"{phase}.ptc.label.s{k}"].long()), f"token labels s{k}"
        if f"{phase}.refined.s{k}" in p:
            assert torch.equal(ours.refined[k - 1], p[f"{phase}.refined.s{k}"].long()), f"refined s{k}"
            expected = p[f"{phase}.{_labels_key(phase)}.s{k}"].long()
            assert torch.equal(ours.filtered[k - 1], expected), f"filtered s{k}"
        else:
            assert ours.refined is None
