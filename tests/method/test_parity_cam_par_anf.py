"""Parity with the DuPL release's recorded step (fixtures README): CAMs, thresholds, token labels,
PAR, refined labels and the noise filter, stage by stage on the release's own tensors."""

from __future__ import annotations

import pytest
import release_fixture as rf
import torch
from method_oracles import refine

from dupl_cli.method.cam import merge_flip, multiscale_cam, normalise_cam, raw_cams_at_scales
from dupl_cli.method.noise_filter import noisy_pixels
from dupl_cli.method.params import ParConfig
from dupl_cli.method.thresholds import (
    cam_on_grid,
    cam_to_label,
    high_threshold,
    image_thresholds,
    refine_labels,
    token_labels,
)

pytestmark = pytest.mark.usefixtures("release_set")  # every test here runs once per recorded set

STUDENTS = rf.STUDENTS


@pytest.fixture(scope="module")
def students(release_set):
    return rf.load_students()


@pytest.fixture(scope="module")
def common(release_set):
    return rf.tensors("common")


def _scales() -> list[float]:
    return [float(s) for s in rf.hyper()["cam_scales"]]


def _tau_class(phase: str) -> torch.Tensor:
    hp = rf.hyper()
    n_iter = rf.meta()["phases"][phase]["n_iter"]
    tau_end = torch.tensor(hp["high_thre_target_per_class"])
    return high_threshold(
        n_iter, tau0=hp["high_thre_start"], tau_end=tau_end, t_start=hp["cam_iters"], t_end=hp["max_iters"]
    )


def _tau_high(phase: str):
    """The image thresholds of a phase; before the segmentation stage the fixed start value."""
    t = rf.tensors(f"phase_{phase}")
    return t[f"{phase}.thr.high"] if f"{phase}.thr.high" in t else rf.hyper()["high_thre_start"]


def _phases_with(key: str) -> list[str]:
    """Phases whose recording holds ``key`` in any set (collected once for all sets)."""
    found = set()
    for folder in rf.set_dirs():
        rf.use(folder)
        found |= {ph for ph in rf.phases() if f"{ph}.{key}.s1" in rf.tensors(f"phase_{ph}")}
    return sorted(found)


@pytest.mark.parametrize("student", STUDENTS)
def test_raw_cams(students, common, student):
    x = common["input.weak"]
    s = students[student - 1]
    with torch.no_grad():
        for (cam, cam_aux), scale in zip(
            raw_cams_at_scales(s, x, _scales(), flip=True), _scales(), strict=True
        ):
            torch.testing.assert_close(cam, common[f"cam.raw.s{student}.x{scale}"], atol=1e-4, rtol=0)
            torch.testing.assert_close(cam_aux, common[f"cam_aux.raw.s{student}.x{scale}"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("student", STUDENTS)
def test_normalised_multiscale_cams(students, common, student):
    cam, cam_aux = multiscale_cam(students[student - 1], common["input.weak"], scales=_scales(), flip=True)
    for b in range(rf.batch_size()):
        present = rf.present(b)
        torch.testing.assert_close(cam[b, present], common[f"cam.s{student}.b{b}"], atol=1e-4, rtol=0)
        torch.testing.assert_close(cam_aux[b, present], common[f"cam_aux.s{student}.b{b}"], atol=1e-4, rtol=0)
    # The combination step alone, fed the stored raw CAMs, reproduces the stored CAMs tightly.
    size = (rf.crop(), rf.crop())
    summed = sum(
        merge_flip(common[f"cam.raw.s{student}.x{s}"], size, rf.batch_size(), True) for s in _scales()
    )
    ref = rf.full_cam("cam", student)
    for b in range(rf.batch_size()):
        present = rf.present(b)
        torch.testing.assert_close(normalise_cam(summed)[b, present], ref[b, present], atol=1e-6, rtol=0)


@pytest.mark.parametrize("student", STUDENTS)
def test_token_cam_resize(common, student):
    """Our aux CAM on the token grid (what token labels threshold) equals the release's."""
    tok = cam_on_grid(rf.full_cam("cam_aux", student), rf.token_grid())
    for b in range(rf.batch_size()):
        present = rf.present(b)
        torch.testing.assert_close(
            tok[b, present], common[f"cam_aux.tok.s{student}"][b, present], atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("phase", _phases_with("refined"))
def test_dynamic_thresholds(common, phase):
    t = rf.tensors(f"phase_{phase}")
    tau_class = _tau_class(phase)
    torch.testing.assert_close(tau_class, t[f"{phase}.thr.class"], atol=1e-6, rtol=0)
    torch.testing.assert_close(
        image_thresholds(tau_class, common["label.cls"]), t[f"{phase}.thr.high"], atol=1e-6, rtol=0
    )
    expected = torch.tensor(rf.meta()["phases"][phase]["thr_high_per_image"])
    torch.testing.assert_close(t[f"{phase}.thr.high"], expected, atol=1e-6, rtol=0)


def test_threshold_table_unit():
    u, hp = rf.tensors("units"), rf.hyper()
    tau_end = torch.tensor(hp["high_thre_target_per_class"])
    for row, t in enumerate(u["thr.iters"].tolist()):
        got = high_threshold(
            int(t),
            tau0=hp["high_thre_start"],
            tau_end=tau_end,
            t_start=hp["cam_iters"],
            t_end=hp["max_iters"],
        )
        torch.testing.assert_close(got, u["thr.table"][row], atol=1e-6, rtol=0)


@pytest.mark.parametrize("phase", rf.phase_params())
@pytest.mark.parametrize("student", STUDENTS)
def test_ptc_token_labels(common, phase, student):
    t = rf.tensors(f"phase_{phase}")
    tau, low = _tau_high(phase), rf.hyper()["low_thre"]
    tok = common[f"cam_aux.tok.s{student}"]
    box = common["label.img_box"]
    got = cam_to_label(tok, common["label.cls"], tau_high=tau, tau_low=low, img_box=box, pixel_box=True)
    assert torch.equal(got, t[f"{phase}.ptc.label.s{student}"].long())
    # Through the public path (resize of the full-size aux CAM), on a batch whose absent channels are 0.
    got2 = token_labels(
        rf.full_cam("cam_aux", student),
        common["label.cls"],
        grid=rf.token_grid(),
        tau_high=tau,
        tau_low=low,
        img_box=box,
        pixel_box=True,
    )
    assert torch.equal(got2, got)


def test_token_label_units():
    u, common, checks = rf.tensors("units"), rf.tensors("common"), rf.meta()["checks"]
    tok, labels = common["cam_aux.tok.s1"], common["label.cls"]
    hp = rf.hyper()
    full_box = torch.tensor([[0, rf.crop(), 0, rf.crop()]] * rf.batch_size())
    fixed = cam_to_label(
        tok, labels, tau_high=hp["high_thre_start"], tau_low=hp["low_thre"], img_box=full_box
    )
    dyn = cam_to_label(tok, labels, tau_high=u["tok.dyn.high_thre"], tau_low=hp["low_thre"], img_box=full_box)
    boxed = cam_to_label(
        tok,
        labels,
        tau_high=hp["high_thre_start"],
        tau_low=hp["low_thre"],
        img_box=u["tok.box.img_box"],
        pixel_box=True,
    )
    assert torch.equal(fixed, u["tok.fixed.label"].long())
    assert torch.equal(dyn, u["tok.dyn.label"].long())
    assert torch.equal(boxed, u["tok.box.label"].long())
    assert int((fixed != dyn).sum()) == checks["unit_tok_dyn_differs_from_fixed_pixels"]
    assert int((boxed == 255).sum()) == checks["unit_tok_box_ignored_tokens"]


def test_par_unit():
    u, par = rf.tensors("units"), rf.hyper()["par"]
    out = refine(u["par.image"], u["par.probs_in"], dilations=tuple(par["dilations"]), iters=par["num_iter"])
    torch.testing.assert_close(out, u["par.probs_out"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("phase", _phases_with("refined"))
@pytest.mark.parametrize("student", STUDENTS)
def test_refined_labels(common, phase, student):
    t = rf.tensors(f"phase_{phase}")
    par = rf.hyper()["par"]
    images01 = common["input.weak_denorm_u8"].float() / 255
    got = refine_labels(
        images01,
        rf.full_cam("cam", student),
        common["label.cls"],
        tau_high=t[f"{phase}.thr.high"],
        tau_low=rf.hyper()["low_thre"],
        img_box=common["label.img_box"],
        par=ParConfig(
            dilations=tuple(par["dilations"]),
            iters=par["num_iter"],
            downscale=par["down_scale"],
            w_color=par["w1"],
            w_pos=par["w2"],
        ),
    )
    assert torch.equal(got, t[f"{phase}.refined.s{student}"].long())
    counts = rf.meta()["phases"][phase]["refined_label_counts"]
    for b in range(rf.batch_size()):
        ids, n = torch.unique(got[b], return_counts=True)
        assert {str(i): int(c) for i, c in zip(ids.tolist(), n.tolist(), strict=True)} == counts[
            f"s{student}.b{b}"
        ]


def _anf_phase() -> str:
    return next(ph for ph in rf.phases() if "gmm" in rf.meta()["phases"][ph])


@pytest.mark.parametrize("student", STUDENTS)
def test_anf_fits_and_masks(student):
    """Every fit the release recorded: not fitted, fitted but invalid, or valid with its noise mask."""
    phase = _anf_phase()
    t, gmm = rf.tensors(f"phase_{phase}"), rf.hyper()["gmm"]
    losses = t[f"{phase}.anf.pix_loss.s{student}"]
    labels = t[f"{phase}.refined.s{student}"].long()
    noise, fit = noisy_pixels(losses, labels, rf.noise_filter_config(), return_fit=True)
    assert torch.equal(noise, t[f"{phase}.anf.noise_mask.s{student}"])
    filtered = torch.where(noise, torch.full_like(labels, 255), labels)
    assert torch.equal(filtered, t[f"{phase}.refined_filtered.s{student}"].long())
    records = [r for r in rf.meta()["phases"][phase]["gmm"] if r["student"] == student]
    assert sorted(r["img"] for r in records) == list(range(rf.batch_size()))
    for rec in records:
        b = rec["img"]
        foreground = (labels[b] != 0) & (labels[b] != 255)
        assert int(foreground.sum()) == rec["n_roi"]
        assert int(fit.n_fit[b]) == rec["n_fit"] and bool(fit.fitted[b]) == rec["fitted"]
        assert bool(fit.valid[b]) == rec["valid"]
        assert int(noise[b].sum()) == rec["flipped"]
        assert int((filtered[b] != labels[b]).sum()) == rec["pixels_changed"]
        if not rec["fitted"]:  # too few pixels: no fit, nothing filtered
            assert rec["n_fit"] <= gmm["min_pixels"] and not noise[b].any()
            continue
        torch.testing.assert_close(fit.means[b].float(), torch.tensor(rec["means"]), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(
            fit.variances[b].float(), torch.tensor(rec["variances"]), atol=1e-4, rtol=1e-5
        )
        torch.testing.assert_close(fit.weights[b].float(), torch.tensor(rec["weights"]), atol=1e-4, rtol=1e-5)
        assert int(fit.n_iter[b]) == rec["em_iters"]
        if not rec["valid"]:  # fitted, means too close: nothing filtered
            assert not noise[b].any()
            continue
        assert int(fit.means[b].argmax()) == rec["noise_component"]
        assert int(((labels[b] == 0) & noise[b]).sum()) == 0  # background is never filtered
