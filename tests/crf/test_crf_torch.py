"""The torch dense CRF against its oracle, pydensecrf itself: labels, marginals, edge cases, batching.

Real photos: CamVid val (480×360) from $DUPL_CAMVID (an invalid path fails), else the first
``shared/data/camvid`` beside the repository root or above it (worktrees); skipped when absent.
Fast tests use a few photos at reduced size and the demo images; the full-size check is ``slow``.
"""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
import torch
import torch.nn.functional as F
from pydensecrf.utils import unary_from_labels

from dupl_cli.core.errors import UserError
from dupl_cli.crf import dense as crf_mod
from dupl_cli.crf import torch_backend as crf_torch
from dupl_cli.crf.dense import (
    CrfParams,
    CrfRunner,
    LabelRouter,
    TorchCrf,
    cam_crf_batch,
    crf_cam_pseudo_label,
    dense_crf,
    dense_crf_batch,
)
from dupl_cli.crf.pydensecrf_backend import INSTALL_HINT

SEG = CrfParams()  # sxy 121, srgb 5 (and the Gaussian sxy 1)
CAM = CrfParams(10, 3.0, 3.0, 36.0, 3.0, 4.0)  # the CAM pseudo-label kernels
AGREE = 0.995
# Largest |Q_torch - Q_pydensecrf| measured on CamVid (full and reduced size) and demo images, both
# parameter sets, 11 and 21 labels: 3.6e-7 after 1 step, 1.6e-5 after 10 (float summation order; the
# lattice is the same). The bounds leave a margin for other CPUs and BLAS builds.
Q_TOL = {1: 1e-5, 10: 2e-4}


@pytest.fixture(autouse=True)
def _one_thread():
    """Agreement, not speed, is tested here: one thread keeps these tests quick on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _camvid_dir() -> Path | None:
    env = os.environ.get("DUPL_CAMVID")
    if env:  # set but wrong: a configuration error, not a reason to skip
        if not (Path(env) / "val").is_dir():
            pytest.fail(f"DUPL_CAMVID={env}: no val/ folder of CamVid photos there")
        return Path(env)
    root = Path(__file__).resolve().parents[2]
    for base in (root.parent, *root.parent.parents):
        if (base / "shared" / "data" / "camvid" / "val").is_dir():
            return base / "shared" / "data" / "camvid"
    return None


def _camvid(n: int, scale: float = 1.0) -> list[np.ndarray]:
    from PIL import Image

    folder = _camvid_dir()
    if folder is None:
        pytest.skip("CamVid photos not found (set DUPL_CAMVID)")
    files = sorted((folder / "val").glob("*.png"))[::25][:n]
    out = []
    for f in files:
        im = Image.open(f).convert("RGB")
        if scale != 1.0:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
        out.append(np.array(im))
    return out


def _demo(n: int, size: int) -> list[np.ndarray]:
    from dupl_cli.data.demo import generate_image

    return [generate_image(0, 1, i, size)[0] for i in range(n)]


def _smooth_logits(k: int, h: int, w: int, seed: int, cell: int = 12, scale: float = 3.0) -> np.ndarray:
    """Spatially smooth random logits: coarse Gaussian noise upsampled bilinearly."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, k, max(2, h // cell), max(2, w // cell), generator=g) * scale
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0].numpy()


def _oracle(image: np.ndarray, unary: np.ndarray, p: CrfParams, iters: int | None = None) -> np.ndarray:
    k, h, w = unary.shape
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(np.ascontiguousarray(unary.reshape(k, -1), dtype=np.float32))
    d.addPairwiseGaussian(sxy=p.gauss_sxy, compat=p.gauss_compat)
    d.addPairwiseBilateral(sxy=p.bilateral_sxy, srgb=p.bilateral_srgb, rgbim=np.ascontiguousarray(image),
                           compat=p.bilateral_compat)  # fmt: skip
    return np.array(d.inference(p.iters if iters is None else iters)).reshape(k, h, w)


def _seg_unary(logits: np.ndarray) -> np.ndarray:
    return crf_torch.segmentation_unary(torch.from_numpy(logits))[0].numpy()


def _torch_q(images, unaries, p: CrfParams, sparse=None) -> list[np.ndarray]:
    qs = crf_torch.marginals([torch.from_numpy(im) for im in images],
                             [torch.from_numpy(u)[None] for u in unaries], p, sparse=sparse)  # fmt: skip
    return [q[0].numpy() for q in qs]


def _check_labels(images, k: int, p: CrfParams, seed: int = 0) -> None:
    logits = [_smooth_logits(k, *im.shape[:2], seed + i) for i, im in enumerate(images)]
    got = dense_crf_batch(images, logits, p)
    for im, lg, lab in zip(images, logits, got, strict=True):
        ref = _oracle(im, _seg_unary(lg), p).argmax(0)
        assert not np.array_equal(ref, lg.argmax(0))  # the CRF changed something
        assert (lab == ref).mean() >= AGREE


@pytest.mark.parametrize("p", [SEG, CAM], ids=["seg", "cam"])
def test_labels_match_pydensecrf_on_demo_images(p):
    _check_labels(_demo(3, 96), 11, p)
    _check_labels(_demo(2, 80), 21, p, seed=7)


@pytest.mark.parametrize("p", [SEG, CAM], ids=["seg", "cam"])
def test_labels_match_pydensecrf_on_photos(p):
    _check_labels(_camvid(2, scale=0.4), 11, p)
    _check_labels(_camvid(1, scale=0.3), 21, p, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("p", [SEG, CAM], ids=["seg", "cam"])
def test_labels_match_pydensecrf_on_full_size_photos(p):
    images = _camvid(3)
    assert images[0].shape == (360, 480, 3)
    _check_labels(images, 11, p)
    _check_labels(images, 21, p, seed=5)


@pytest.mark.parametrize("iters", [1, 10])
@pytest.mark.parametrize("sparse", [True, False], ids=["csr", "segment"])
def test_marginals_within_tolerance(iters, sparse):
    images = [*_demo(1, 72), *(_camvid(1, scale=0.25) if _camvid_dir() else [])]
    for p in (SEG, CAM):
        p = dataclasses.replace(p, iters=iters)
        unaries = [_seg_unary(_smooth_logits(21, *im.shape[:2], 1)) for im in images]
        for im, u, q in zip(images, unaries, _torch_q(images, unaries, p, sparse=sparse), strict=True):
            ref = _oracle(im, u, p)
            assert np.abs(q - ref).max() <= Q_TOL[iters]
            assert np.abs(ref - np.exp(-u) / np.exp(-u).sum(0)).max() > 100 * Q_TOL[iters]  # messages matter


def test_cam_pseudo_labels_match_pydensecrf():
    images = _demo(3, 80)
    g = torch.Generator().manual_seed(0)
    cams = [F.interpolate(torch.rand(1, c, 8, 8, generator=g), size=(80, 80), mode="bilinear")[0].numpy()
            for c in (2, 1)] + [np.zeros((0, 80, 80), np.float32)]  # fmt: skip
    ids = [np.array([3, 5]), np.array([2]), np.array([], dtype=np.int64)]
    got = cam_crf_batch(images, cams, ids, CAM, 0.7, 0.25)
    for im, cam, ci, lab in zip(images, cams, ids, got, strict=True):
        ref = crf_cam_pseudo_label(im, cam, ci, CAM, 0.7, 0.25)
        assert lab.dtype == np.uint8 and (lab == ref).mean() >= AGREE
    assert {3, 5} <= set(np.unique(got[0])) <= {0, 3, 5, 255} and not got[2].any()


def test_edge_cases_one_label_many_labels_tiny_thin_constant():
    rng = np.random.default_rng(0)
    one = _demo(1, 40)[0]
    assert not dense_crf(one, rng.normal(size=(1, 40, 40)).astype(np.float32), SEG).any()
    cases = [
        (one, 81),  # COCO's label count
        (rng.integers(0, 256, (1, 1, 3), dtype=np.uint8), 5),
        (rng.integers(0, 256, (1, 57, 3), dtype=np.uint8), 4),
        (rng.integers(0, 256, (43, 1, 3), dtype=np.uint8), 4),
        (rng.integers(0, 256, (2, 3, 3), dtype=np.uint8), 3),
        (np.full((30, 41, 3), 128, np.uint8), 6),  # constant image
        (np.zeros((17, 19, 3), np.uint8), 6),  # all-zero features at pixel 0 and in the ghost
    ]
    for image, k in cases:
        logits = _smooth_logits(k, *image.shape[:2], k, cell=4)
        unary = _seg_unary(logits)
        (q,) = _torch_q([image], [unary], SEG)
        ref = _oracle(image, unary, SEG)
        assert np.abs(q - ref).max() <= Q_TOL[10], image.shape
        assert (dense_crf(image, logits, SEG) == ref.argmax(0)).mean() >= AGREE


def test_vertices_of_pydensecrf_sse_padding_are_reproduced():
    """N % 4 != 0: pydensecrf's lattice also holds the vertices of a zero feature vector; on a dark
    image they sit among the pixels' vertices and change the blur (by up to 0.19 here without them)."""
    image = np.random.default_rng(0).integers(0, 40, (9, 11, 3), dtype=np.uint8)
    unary = _seg_unary(_smooth_logits(4, 9, 11, 1, cell=2))
    for sparse in (True, False):
        (q,) = _torch_q([image], [unary], SEG, sparse=sparse)
        assert np.abs(q - _oracle(image, unary, SEG)).max() <= Q_TOL[10]


def test_batch_of_different_sizes_equals_single_images():
    dark = np.random.default_rng(0).integers(0, 40, (9, 11, 3), dtype=np.uint8)  # its ghosts matter
    images = [*_demo(2, 48), _demo(1, 33)[0][:, :21].copy(), np.full((5, 7, 3), 9, np.uint8), dark]
    ks = [3, 7, 5, 2, 4]  # label counts differ too
    logits = [_smooth_logits(k, *im.shape[:2], k, cell=6) for im, k in zip(images, ks, strict=True)]
    unaries = [_seg_unary(lg) for lg in logits]
    for sparse in (True, False):
        batched = _torch_q(images, unaries, SEG, sparse=sparse)
        for im, u, qb in zip(images, unaries, batched, strict=True):
            (single,) = _torch_q([im], [u], SEG, sparse=sparse)
            np.testing.assert_allclose(qb, single, atol=1e-6)
            assert np.abs(qb - _oracle(im, u, SEG)).max() <= Q_TOL[10]
    labels = dense_crf_batch(images, logits, SEG)
    assert [lab.shape for lab in labels] == [im.shape[:2] for im in images]


def test_deterministic_and_both_splat_paths_agree():
    image = _camvid(1, scale=0.2)[0] if _camvid_dir() else _demo(1, 64)[0]
    unary = _seg_unary(_smooth_logits(11, *image.shape[:2], 2))
    a, b = _torch_q([image], [unary], SEG, sparse=False), _torch_q([image], [unary], SEG, sparse=False)
    c, e = _torch_q([image], [unary], SEG, sparse=True), _torch_q([image], [unary], SEG, sparse=True)
    assert np.array_equal(a[0], b[0]) and np.array_equal(c[0], e[0])
    np.testing.assert_allclose(a[0], c[0], atol=1e-5)


def test_api_types_devices_backends_and_bad_input(monkeypatch):
    image = _demo(1, 40)[0]
    logits = _smooth_logits(4, 40, 40, 0, cell=5)
    lab_np = dense_crf(image, logits, SEG)
    lab_t = dense_crf(torch.from_numpy(image), torch.from_numpy(logits), SEG)
    assert isinstance(lab_np, np.ndarray) and lab_np.dtype == np.uint8 and lab_np.shape == (40, 40)
    assert torch.is_tensor(lab_t) and lab_t.dtype == torch.uint8 and np.array_equal(lab_t.numpy(), lab_np)
    ref = dense_crf(image, logits, SEG, backend="pydensecrf")
    assert isinstance(ref, np.ndarray) and (ref == lab_np).mean() >= AGREE
    with pytest.raises(UserError, match=r"logits must be K×H×W"):
        dense_crf(image, logits[:, :30], SEG)
    with pytest.raises(UserError, match="uint8 H×W×3"):
        dense_crf(image.astype(np.float32), logits, SEG)
    with pytest.raises(UserError, match="crf.backend must be one of"):
        dense_crf(image, logits, SEG, backend="gpu")
    assert crf_mod.resolve_backend("auto", "cuda") == "torch"
    assert crf_mod.resolve_backend("auto", "cpu") == crf_mod.CPU_AUTO
    monkeypatch.setattr(crf_mod, "pydensecrf_available", lambda: False)
    assert crf_mod.resolve_backend("auto", "cpu") == "torch"
    assert crf_mod.resolve_backend("pydensecrf", "cuda") == "pydensecrf"


def test_router_through_torch_runner_batches_and_delivers_every_key():
    images = _demo(3, 48)
    logits = [torch.from_numpy(_smooth_logits(5, 48, 48, i, cell=6)) for i in range(3)]
    got: dict = {}
    runner = CrfRunner("torch")
    router = LabelRouter(runner, lambda k, lab: got.__setitem__(k, lab))
    for i, (im, lg) in enumerate(zip(images, logits, strict=True)):
        router.segmentation(i, im, lg, SEG)
    cams = torch.rand(5, 48, 48)
    labels = np.array([0, 1, 0, 1, 0], np.float32)
    router.cams("cam", images[0], cams, labels, CAM, 0.7, 0.25, without_crf=None)
    router.drain()
    runner.close()
    assert isinstance(runner._impl, TorchCrf)
    for i in range(3):
        assert isinstance(got[i], np.ndarray) and np.array_equal(got[i], dense_crf(images[i], logits[i], SEG))
    ref = crf_cam_pseudo_label(images[0], cams[[1, 3]].numpy(), np.array([2, 4]), CAM, 0.7, 0.25)
    assert (got["cam"] == ref).mean() >= AGREE
    batched = TorchCrf(max_batch=2)
    out = [r for i, (im, lg) in enumerate(zip(images, logits, strict=True))
           for r in batched.submit_segmentation(i, im, lg, SEG)]  # fmt: skip
    assert [k for k, _ in out] == [0, 1] and [k for k, _ in batched.drain()] == [2]


def test_label_unary_matches_pydensecrf_unary_from_labels():
    labels = np.random.default_rng(0).integers(0, 4, (2, 9, 11))
    got = crf_torch.label_unary(torch.from_numpy(labels), 4, 0.7).numpy()
    for s in range(2):
        ref = unary_from_labels(labels[s], 4, gt_prob=0.7, zero_unsure=False).reshape(4, 9, 11)
        np.testing.assert_array_equal(got[s], ref)


def _spy_torch_backend(monkeypatch) -> list:
    calls = []
    real = crf_torch.marginals
    monkeypatch.setattr(crf_torch, "marginals", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_demo_evaluation_multiscale_crf_torch_matches_pydensecrf_miou(cli, tmp_path, monkeypatch):
    import json

    calls = _spy_torch_backend(monkeypatch)
    miou = {}
    for backend in ("pydensecrf", "torch"):
        out = tmp_path / backend
        r = cli("evaluate", str(cli.run_dir), "--multiscale", "--crf", "--out", str(out),
                "--set", f'crf.backend="{backend}"')  # fmt: skip
        assert r.exit_code == 0, r.output
        miou[backend] = json.loads((out / "metrics.json").read_text())["miou"]
        assert bool(calls) == (backend == "torch")
    assert abs(miou["torch"] - miou["pydensecrf"]) <= 0.001  # 0.1 mIoU points


def test_cam_pseudo_labels_through_the_cli_match_between_backends(cli, tmp_path, monkeypatch):
    from dupl_cli.evaluation.visualize import load_mask

    calls = _spy_torch_backend(monkeypatch)
    for backend in ("pydensecrf", "torch"):
        r = cli("pseudo-label", str(cli.run_dir), "--out", str(tmp_path / backend), "--split", "val",
                "--source", "cam", "--crf", "--set", f'crf.backend="{backend}"')  # fmt: skip
        assert r.exit_code == 0, r.output
    assert calls
    files = sorted((tmp_path / "torch").glob("*.png"))
    assert len(files) == 4
    for f in files:
        assert (load_mask(f) == load_mask(tmp_path / "pydensecrf" / f.name)).mean() >= AGREE


def test_pydensecrf_backend_missing_fails_before_any_work(cli, tmp_path, monkeypatch):
    def missing():
        raise UserError(INSTALL_HINT)

    monkeypatch.setattr(crf_mod, "require_pydensecrf", missing)
    calls = _spy_torch_backend(monkeypatch)
    r = cli("evaluate", str(cli.run_dir), "--crf", "--set", 'crf.backend="pydensecrf"')
    assert r.exit_code == 2 and "pip install" in r.output and not calls
    r = cli("evaluate", str(cli.run_dir), "--crf", "--max-images", "1", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert calls  # auto on CPU without the extra: the torch backend
