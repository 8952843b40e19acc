"""The LargeFOV head runs channels-last inside and hands back default-layout logits of the same values."""

import torch
import torch.nn.functional as F

from dupl_cli.models.heads import LargeFOV


def _reference(head: LargeFOV, x: torch.Tensor) -> torch.Tensor:
    d = head.conv6.dilation
    y = F.relu(F.conv2d(x, head.conv6.weight, padding=d, dilation=d))
    y = F.relu(F.conv2d(y, head.conv7.weight, padding=d, dilation=d))
    return F.conv2d(y, head.conv8.weight)


def test_same_logits_default_layout_and_gradients():
    torch.manual_seed(0)
    head = LargeFOV(48, 6, channels=32, dilation=3)
    x = torch.randn(2, 48, 14, 15, requires_grad=True)
    out = head(x)
    assert out.is_contiguous() and out.shape == (2, 6, 14, 15)
    out.view(2, 6, -1)  # callers view the logits
    want = _reference(head, x)
    scale = want.abs().max().item()
    torch.testing.assert_close(out, want, atol=1e-5 * scale, rtol=0)  # measured 4e-7 relative
    (g_out,) = torch.autograd.grad(out.square().sum(), x)
    (g_want,) = torch.autograd.grad(want.square().sum(), x)
    torch.testing.assert_close(g_out, g_want, atol=1e-5 * g_want.abs().max().item(), rtol=0)
