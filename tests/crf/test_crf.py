"""CRF: identical to a direct pydensecrf call, in process and through the pool; CAM variant."""

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
import torch
from pydensecrf.utils import unary_from_labels

from dupl_cli.config.schema import CrfSettings
from dupl_cli.core.errors import UserError
from dupl_cli.crf import pydensecrf_backend
from dupl_cli.crf.params import CrfParams
from dupl_cli.crf.pydensecrf_backend import CrfPool, crf_cam_pseudo_label, crf_segmentation


def _scene(seed=0, h=24, w=31, k=3):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    image[:, : w // 2] //= 4
    logits = rng.normal(size=(k, h, w)).astype(np.float32)
    logits[1, :, : w // 2] += 1.5
    return image, logits


def _direct(image, logits, s):
    k, h, w = logits.shape
    p = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(np.ascontiguousarray(-np.log(p).reshape(k, -1), dtype=np.float32))
    d.addPairwiseGaussian(sxy=s.gauss_sxy, compat=s.gauss_compat)
    d.addPairwiseBilateral(
        sxy=s.bilateral_sxy,
        srgb=s.bilateral_srgb,
        rgbim=np.ascontiguousarray(image),
        compat=s.bilateral_compat,
    )
    return np.array(d.inference(s.iters)).reshape(k, h, w).argmax(0)


def test_matches_direct_pydensecrf_call_and_pool():
    s = CrfSettings()
    params = CrfParams.for_segmentation(s)
    scenes = [_scene(i) for i in range(3)]
    direct = [_direct(im, lg, s) for im, lg in scenes]
    assert not np.array_equal(direct[0], scenes[0][1].argmax(0))  # the CRF did something
    for (im, lg), ref in zip(scenes, direct, strict=True):
        np.testing.assert_array_equal(crf_segmentation(im, lg, params), ref)
    with CrfPool(workers=2) as pool:
        pooled = pool.map_segmentation(scenes, params)
    for got, ref in zip(pooled, direct, strict=True):
        np.testing.assert_array_equal(got, ref)


def test_cam_variant_two_passes_combined():
    s = CrfSettings()
    params = CrfParams.for_cams(s)
    image, _ = _scene(1)
    rng = np.random.default_rng(3)
    cams = rng.random((2, 24, 31)).astype(np.float32)
    out = crf_cam_pseudo_label(image, cams, np.array([4, 7]), params, 0.7, 0.25)

    def one_pass(tau):
        stack = np.concatenate([np.full((1, 24, 31), tau, np.float32), cams])
        d = dcrf.DenseCRF2D(31, 24, 3)
        d.setUnaryEnergy(unary_from_labels(stack.argmax(0), 3, gt_prob=0.7, zero_unsure=False))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=36, srgb=3, rgbim=np.ascontiguousarray(image), compat=4)
        return np.array(d.inference(10)).reshape(3, 24, 31).argmax(0)

    high, low = one_pass(0.7), one_pass(0.25)
    keys = np.array([0, 4, 7])
    expected = np.where(high > 0, keys[high], np.where(low == 0, 0, 255))
    np.testing.assert_array_equal(out, expected)
    assert set(np.unique(out)) <= {0, 4, 7, 255}
    assert out.dtype == np.uint8


def test_missing_pydensecrf_fails_with_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("pydensecrf"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(UserError, match=r'pip install "dupl\[crf\]"'):
        pydensecrf_backend.require_pydensecrf()


def test_default_workers(monkeypatch):
    assert pydensecrf_backend.default_workers(3) == 3
    alone = pydensecrf_backend.default_workers(0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")  # rank variables are Accelerate's: never read here
    assert pydensecrf_backend.default_workers(0) == alone >= 1
    assert pydensecrf_backend.default_workers(0, local_processes=2) == max(1, alone // 2)
    assert pydensecrf_backend.default_workers(0, local_processes=64 * alone) == 1


@pytest.mark.filterwarnings("error::UserWarning")  # torch warns on a read-only numpy array
@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
def test_read_only_strided_and_tensor_inputs_give_the_same_labels(backend, tmp_path):
    from PIL import Image

    from dupl_cli.crf.dense import cam_crf_batch, dense_crf

    image, logits = _scene(seed=3)
    Image.fromarray(image).save(tmp_path / "scene.png")
    read_only = np.asarray(Image.open(tmp_path / "scene.png"))  # what a user passes first
    assert not read_only.flags.writeable
    strided = np.ascontiguousarray(image[:, ::-1])[:, ::-1]  # a reversed view: not C-contiguous
    assert not strided.flags.c_contiguous
    params = CrfParams()
    want = dense_crf(image.copy(), logits, params, backend=backend)
    for im in (read_only, strided, torch.from_numpy(image.copy())):
        got = dense_crf(im, logits, params, backend=backend)
        np.testing.assert_array_equal(np.asarray(got), want)
    frozen = logits.copy()
    frozen.flags.writeable = False
    np.testing.assert_array_equal(dense_crf(read_only, frozen, params, backend=backend), want)
    cams = np.clip(logits[1:], 0, None) / max(1e-6, float(logits[1:].max()))
    ids = [np.array([1, 2])]
    want_cam = cam_crf_batch([image.copy()], [cams], ids, params, 0.7, 0.25, backend=backend)[0]
    cams.flags.writeable = False
    got_cam = cam_crf_batch([read_only], [cams], ids, params, 0.7, 0.25, backend=backend)[0]
    np.testing.assert_array_equal(got_cam, want_cam)
