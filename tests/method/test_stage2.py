"""The second stage's arithmetic (docs/method.md §12): the loss ignores the uncertain band, confidence
weights scale each pixel, the online noise filter is stage 1's, and a label's confidence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.method.noise_filter import noisy_pixels
from dupl_cli.method.params import NoiseFilterConfig
from dupl_cli.method.stage2 import Stage2Config, filter_noise, label_confidence, stage2_loss, stage2_step


def _case(seed: int = 0, classes: int = 4, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, size // 4, size // 4, generator=g, requires_grad=True)
    labels = torch.randint(0, classes, (2, size, size), generator=g)
    return logits, labels


def test_ignored_pixels_carry_no_gradient():
    logits, labels = _case()
    labels[:, :, : labels.shape[-1] // 2] = IGNORE_INDEX  # the left half is uncertain
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    up.retain_grad()
    stage2_loss(up, labels).backward()
    assert (up.grad[..., : labels.shape[-1] // 2] == 0).all()
    assert (up.grad[..., labels.shape[-1] // 2 :].abs().sum((1, 2, 3)) > 0).all()


def test_the_loss_is_the_mean_cross_entropy_over_certain_pixels():
    logits, labels = _case(1)
    labels[0, :4] = IGNORE_INDEX
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    want = F.cross_entropy(up, labels, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(stage2_loss(logits, labels), want)
    everything_uncertain = torch.full_like(labels, IGNORE_INDEX)
    assert stage2_loss(logits, everything_uncertain).item() == 0.0


def test_confidence_weights_scale_each_pixel_and_normalise_by_their_sum():
    logits, labels = _case(2)
    weights = torch.rand(labels.shape, generator=torch.Generator().manual_seed(3))
    ce = F.cross_entropy(
        F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False),
        labels,
        reduction="none",
    )
    torch.testing.assert_close(stage2_loss(logits, labels, weights), (ce * weights).sum() / weights.sum())
    ones = torch.ones(labels.shape)
    torch.testing.assert_close(stage2_loss(logits, labels, ones), stage2_loss(logits, labels))


def test_the_online_filter_is_stage_one_s_noise_filter_on_the_detached_loss():
    g = torch.Generator().manual_seed(0)
    labels = torch.ones(1, 48, 48, dtype=torch.long)
    labels[:, :, :8] = 0
    logits = torch.zeros(1, 3, 48, 48)
    logits[:, 1] = 1.5 + 0.3 * torch.randn(1, 48, 48, generator=g)  # agrees with label 1 mostly ...
    noisy = torch.rand(1, 48, 48, generator=g) < 0.15
    noisy[:, :, :8] = False
    logits[:, 2][noisy] = 9.0  # ... but not on 15 % of the foreground: those labels look like noise
    config = NoiseFilterConfig(min_pixels=100)
    filtered, mask = filter_noise(logits.requires_grad_(), labels, config)
    ce = F.cross_entropy(logits.detach(), labels, reduction="none")
    assert torch.equal(mask, noisy_pixels(ce, labels, config))
    assert mask.sum() > 0 and torch.equal(mask, noisy)  # exactly the disagreeing pixels
    assert (filtered[mask] == IGNORE_INDEX).all() and torch.equal(filtered[~mask], labels[~mask])


def test_label_confidence_of_logits_and_of_cams():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]], [[0.0, 3.0]]])  # K=3, H=1, W=2
    label = torch.tensor([[0, 1]])
    conf = label_confidence(logits, label, "seg")
    torch.testing.assert_close(
        conf, torch.stack([logits[:, 0, 0].softmax(0)[0], logits[:, 0, 1].softmax(0)[1]])[None]
    )
    cams = torch.tensor([[[0.9, 0.1, 0.3]], [[0.2, 0.6, 0.8]]])  # C=2
    present = torch.tensor([1.0, 0.0])  # class 2 is not in the image: its CAM does not count
    conf = label_confidence(cams, torch.tensor([[1, 0, IGNORE_INDEX]]), "cam", present)
    torch.testing.assert_close(conf, torch.tensor([[0.9, 0.9, 0.0]]))


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Identity()
        self.backbone.stride = 4
        self.conv = torch.nn.Conv2d(3, 3, 4, stride=4)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("config", [Stage2Config(), Stage2Config(weights="confidence")])
def test_a_step_gives_a_finite_loss_with_gradient_and_logs(config):
    torch.manual_seed(0)
    model = _Tiny()
    batch = {"image": torch.randn(2, 3, 30, 30), "mask": torch.randint(0, 3, (2, 30, 30)).to(torch.uint8)}
    batch["confidence"] = torch.rand(2, 30, 30)
    result = stage2_step(model, batch, 0, config)
    result.loss.backward()
    assert torch.isfinite(result.loss) and model.conv.weight.grad.abs().sum() > 0
    assert set(result.terms) == {"seg"} and {"noise_share", "uncertain_share"} <= set(result.stats)
    assert result.visuals["prediction"].shape == (30, 30)
