"""Segmentation head: DeepLab LargeFOV (docs/method.md §2)."""

from __future__ import annotations

import torch
from torch import nn


class LargeFOV(nn.Module):
    """conv3x3 (dilated) -> ReLU -> conv3x3 (dilated) -> ReLU -> conv1x1; no bias, no norm."""

    def __init__(self, in_ch: int, num_out: int, channels: int = 512, dilation: int = 5) -> None:
        super().__init__()
        self.conv6 = nn.Conv2d(in_ch, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv7 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv8 = nn.Conv2d(channels, num_out, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv8(self.relu(self.conv7(self.relu(self.conv6(x)))))
