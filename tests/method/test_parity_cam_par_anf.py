"""Parity with the DuPL release's recorded step (fixtures README): CAMs, thresholds, token labels,
PAR, refined labels and the noise filter, stage by stage on the release's own tensors."""

from __future__ import annotations

import pytest
import release_fixture as rf
import torch
import torch.nn.functional as F

from dupl_cli.method.cam import merge_flip, multiscale_cam, normalise_cam
from dupl_cli.method.noise_filter import noisy_pixels
from dupl_cli.method.par import refine
from dupl_cli.method.thresholds import (
    cam_to_label,
    high_threshold,
    image_thresholds,
    refine_labels,
    token_labels,
)

SCALES = (1.0, 0.5, 1.5)
STUDENTS = (1, 2)


@pytest.fixture(scope="module")
def students():
    rf.require()
    return rf.load_students()


@pytest.fixture(scope="module")
def common():
    return rf.tensors("common")


def _tau_class(phase: str) -> torch.Tensor:
    hp = rf.meta()["hyper_parameters"]
    n_iter = rf.meta()["phases"][phase]["n_iter"]
    tau_end = torch.tensor(hp["high_thre_target_per_class"])
    return high_threshold(n_iter, tau0=hp["high_thre_start"], tau_end=tau_end, t_start=hp["cam_iters"], t_end=hp["max_iters"])


def _full_cam(common, key: str, student: int) -> torch.Tensor:
    """The stored present-class CAM channels placed into a B×20×H×W tensor (absent channels 0)."""
    cams = []
    for b in range(2):
        part = common[f"{key}.s{student}.b{b}"]
        full = torch.zeros(20, *part.shape[-2:])
        full[common[f"cam.present.b{b}"].long()] = part
        cams.append(full)
    return torch.stack(cams)


@pytest.mark.parametrize("student", STUDENTS)
def test_raw_cams(students, common, student):
    x = common["input.weak"]
    s = students[student - 1]
    with torch.no_grad():
        for scale in SCALES:
            size = int(scale * 224)
            xs = x if size == 224 else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            cam, cam_aux = s.cams(torch.cat([xs, xs.flip(-1)]))
            torch.testing.assert_close(cam, common[f"cam.raw.s{student}.x{scale}"], atol=1e-4, rtol=0)
            torch.testing.assert_close(cam_aux, common[f"cam_aux.raw.s{student}.x{scale}"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("student", STUDENTS)
def test_normalised_multiscale_cams(students, common, student):
    cam, cam_aux = multiscale_cam(students[student - 1], common["input.weak"], scales=SCALES)
    for b in range(2):
        present = common[f"cam.present.b{b}"].long()
        torch.testing.assert_close(cam[b, present], common[f"cam.s{student}.b{b}"], atol=1e-4, rtol=0)
        torch.testing.assert_close(cam_aux[b, present], common[f"cam_aux.s{student}.b{b}"], atol=1e-4, rtol=0)
    # The combination step alone, fed the stored raw CAMs, reproduces the stored CAMs tightly.
    summed = sum(merge_flip(common[f"cam.raw.s{student}.x{s}"], (224, 224), 2, True) for s in SCALES)
    ref = _full_cam(common, "cam", student)
    for b in range(2):
        present = common[f"cam.present.b{b}"].long()
        torch.testing.assert_close(normalise_cam(summed)[b, present], ref[b, present], atol=1e-6, rtol=0)


@pytest.mark.parametrize("student", STUDENTS)
def test_token_cam_resize(common, student):
    # cam_aux.tok is the full normalised aux CAM resized; check on the present channels we can rebuild.
    full = _full_cam(common, "cam_aux", student)
    tok = F.interpolate(full, size=(14, 14), mode="bilinear", align_corners=False)
    for b in range(2):
        present = common[f"cam.present.b{b}"].long()
        torch.testing.assert_close(tok[b, present], common[f"cam_aux.tok.s{student}"][b, present], atol=1e-5, rtol=0)


@pytest.mark.parametrize("phase", ["B", "C"])
def test_dynamic_thresholds(common, phase):
    t = rf.tensors(f"phase_{phase}")
    tau_class = _tau_class(phase)
    torch.testing.assert_close(tau_class, t[f"{phase}.thr.class"], atol=1e-6, rtol=0)
    torch.testing.assert_close(image_thresholds(tau_class, common["label.cls"]), t[f"{phase}.thr.high"], atol=1e-6, rtol=0)


def test_threshold_table_unit():
    u = rf.tensors("units")
    tau_end = torch.tensor(rf.meta()["hyper_parameters"]["high_thre_target_per_class"])
    for row, t in enumerate(u["thr.iters"].tolist()):
        got = high_threshold(int(t), tau0=0.7, tau_end=tau_end, t_start=2000, t_end=20000)
        torch.testing.assert_close(got, u["thr.table"][row], atol=1e-6, rtol=0)


@pytest.mark.parametrize("phase", ["A", "B", "C"])
@pytest.mark.parametrize("student", STUDENTS)
def test_ptc_token_labels(common, phase, student):
    t = rf.tensors(f"phase_{phase}")
    tau = 0.7 if phase == "A" else t[f"{phase}.thr.high"]
    tok = common[f"cam_aux.tok.s{student}"]
    got = cam_to_label(tok, common["label.cls"], tau_high=tau, tau_low=0.25, img_box=common["label.img_box"], pixel_box=True)
    assert torch.equal(got, t[f"{phase}.ptc.label.s{student}"].long())
    # Through the public path (resize of the 224 px aux CAM), on a batch whose absent channels are 0.
    got2 = token_labels(_full_cam(common, "cam_aux", student), common["label.cls"], grid=(14, 14), tau_high=tau, tau_low=0.25, img_box=common["label.img_box"], pixel_box=True)
    assert torch.equal(got2, got)


def test_token_label_units():
    u, common = rf.tensors("units"), rf.tensors("common")
    tok, labels = common["cam_aux.tok.s1"], common["label.cls"]
    full_box = torch.tensor([[0, 224, 0, 224]] * 2)
    fixed = cam_to_label(tok, labels, tau_high=0.7, tau_low=0.25, img_box=full_box)
    dyn = cam_to_label(tok, labels, tau_high=u["tok.dyn.high_thre"], tau_low=0.25, img_box=full_box)
    boxed = cam_to_label(tok, labels, tau_high=0.7, tau_low=0.25, img_box=u["tok.box.img_box"], pixel_box=True)
    assert torch.equal(fixed, u["tok.fixed.label"].long())
    assert torch.equal(dyn, u["tok.dyn.label"].long())
    assert torch.equal(boxed, u["tok.box.label"].long())
    assert (fixed != dyn).sum() == 6


def test_par_unit():
    u = rf.tensors("units")
    out = refine(u["par.image"], u["par.probs_in"], dilations=(1, 2, 4, 8, 12, 24), iters=10)
    torch.testing.assert_close(out, u["par.probs_out"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("phase", ["B", "C"])
@pytest.mark.parametrize("student", STUDENTS)
def test_refined_labels(common, phase, student):
    t = rf.tensors(f"phase_{phase}")
    images01 = common["input.weak_denorm_u8"].float() / 255
    got = refine_labels(
        images01,
        _full_cam(common, "cam", student),
        common["label.cls"],
        tau_high=t[f"{phase}.thr.high"],
        tau_low=0.25,
        img_box=common["label.img_box"],
    )
    assert torch.equal(got, t[f"{phase}.refined.s{student}"].long())


@pytest.mark.parametrize("student", STUDENTS)
def test_anf_fits_and_masks(student):
    t = rf.tensors("phase_C")
    losses = t[f"C.anf.pix_loss.s{student}"]
    labels = t[f"C.refined.s{student}"].long()
    noise, fit = noisy_pixels(losses, labels, one_sided=False, return_fit=True)
    assert torch.equal(noise, t[f"C.anf.noise_mask.s{student}"])
    filtered = torch.where(noise, torch.full_like(labels, 255), labels)
    assert torch.equal(filtered, t[f"C.refined_filtered.s{student}"].long())
    for rec in rf.meta()["phases"]["C"]["gmm"]:
        if rec["student"] != student:
            continue
        b = rec["img"]
        assert int(fit.n_fit[b]) == rec["n_fit"] and bool(fit.fitted[b]) == rec["fitted"]
        assert bool(fit.valid[b]) == rec["valid"]
        torch.testing.assert_close(fit.means[b].float(), torch.tensor(rec["means"]), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(fit.variances[b].float(), torch.tensor(rec["variances"]), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(fit.weights[b].float(), torch.tensor(rec["weights"]), atol=1e-4, rtol=1e-5)
        assert int(fit.n_iter[b]) == rec["em_iters"]
