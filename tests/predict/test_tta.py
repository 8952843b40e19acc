"""TTA: flip invariance for a flip-symmetric model, merge rules, scale batching, sizes."""

import pytest
import torch
import torch.nn.functional as F

from dupl_cli.predict.tta import TTAConfig, ensemble, tta_logits


def symmetric_model(x):
    # Per-pixel function of the channels plus a horizontally symmetric pooling: commutes with flip.
    return torch.cat(
        [x.mean(1, keepdim=True), (x + x.flip(-1))[:, :2] * 0.5, F.avg_pool2d(x, 3, 1, 1)[:, :1]], 1
    )


def test_flip_symmetric_model_same_with_and_without_flip():
    x = torch.randn(2, 3, 20, 28)
    plain = tta_logits(symmetric_model, x, TTAConfig(scales=(1.0,), flip=False))
    with_flip = tta_logits(symmetric_model, x, TTAConfig(scales=(1.0,), flip=True, flip_merge="max"))
    summed = tta_logits(symmetric_model, x, TTAConfig(scales=(1.0,), flip=True, flip_merge="sum"))
    torch.testing.assert_close(with_flip, plain)
    torch.testing.assert_close(summed, 2 * plain)


def test_merge_rules_against_manual_computation():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
    x = torch.randn(1, 3, 16, 24)
    cfg = TTAConfig(scales=(1.0, 0.5), flip=True, flip_merge="sum", scale_merge="max")
    out = tta_logits(conv, x, cfg)
    views = []
    for s in (1.0, 0.5):
        v = (
            F.interpolate(x, size=(int(16 * s), int(24 * s)), mode="bilinear", align_corners=False)
            if s != 1
            else x
        )
        a = F.interpolate(conv(v), size=(16, 24), mode="bilinear", align_corners=False)
        b = F.interpolate(conv(v.flip(-1)), size=(16, 24), mode="bilinear", align_corners=False).flip(-1)
        views.append(a + b)
    torch.testing.assert_close(out, torch.maximum(views[0], views[1]), rtol=1e-5, atol=1e-5)
    summed = tta_logits(conv, x, TTAConfig(scales=(1.0, 0.5), flip=True, flip_merge="max", scale_merge="sum"))
    assert summed.shape == (1, 4, 16, 24)


def test_resize_policy_and_output_size():
    seen = []

    def model(v):
        seen.append(tuple(v.shape))
        return v[:, :2]

    x = torch.randn(3, 3, 30, 50)
    out = tta_logits(model, x, TTAConfig(scales=(1.0, 1.5), flip=True, resize=32))
    assert out.shape == (3, 2, 30, 50)
    assert seen == [(6, 3, 32, 32), (6, 3, 48, 48)]  # each scale = one batch of images + flips


def test_scales_of_equal_size_share_one_forward():
    calls = []
    x = torch.randn(1, 3, 4, 4)
    out = tta_logits(lambda v: calls.append(1) or v, x, TTAConfig(scales=(1.0, 1.1), scale_merge="sum"))
    assert len(calls) == 1  # int(1.1 * 4) == 4
    torch.testing.assert_close(out, 2 * x)


def test_ensemble_is_mean_of_logits():
    x = torch.randn(1, 3, 8, 8)
    out = tta_logits(ensemble([lambda v: v, lambda v: 3 * v]), x, TTAConfig())
    torch.testing.assert_close(out, 2 * x)


def test_from_settings():
    from dupl_cli.config.schema import EvalSettings

    s = EvalSettings()
    assert TTAConfig.from_settings(s, multiscale=False).scales == (1.0,)
    ms = TTAConfig.from_settings(s, multiscale=True)
    assert ms.scales == (1.0, 1.25, 1.5) and ms.flip and ms.scale_merge == "max"
    assert "flip merged by sum" in ms.describe()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_on_cuda_returns_float32():
    conv = torch.nn.Conv2d(3, 2, 1).cuda()
    out = tta_logits(conv, torch.randn(1, 3, 8, 8, device="cuda"), TTAConfig(flip=True))
    assert out.dtype == torch.float32


def test_views_padded_to_the_stride_and_cropped_back():
    def strict(v):  # a patch model: rejects sides not divisible by 8, output at 1/8
        assert v.shape[-2] % 8 == 0 and v.shape[-1] % 8 == 0, v.shape
        return F.avg_pool2d(v, 8)

    x = torch.randn(1, 3, 21, 13)
    out = tta_logits(strict, x, TTAConfig(scales=(1.0, 1.5), flip=True), multiple=8)
    assert out.shape == (1, 3, 21, 13) and torch.isfinite(out).all()
