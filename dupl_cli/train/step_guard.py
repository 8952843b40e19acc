"""Skip optimiser steps whose loss is not finite, without a host sync per step.

Every process must agree to skip, and reading the verdict on the host every step would stall an
accelerator's queue. So the verdict stays on the device: the fused AdamW kernel takes it as its
``found_inf`` input and leaves parameters, moments and step count untouched when it is set; the
bookkeeping (steps skipped, in a row, which terms) accumulates on the device and is read when the
trainer reads anything anyway (logging, validation, checkpoints, the end). An optimiser without
that input falls back to one host read per step.
"""

from __future__ import annotations

import torch


def supports_device_skip(optimizer) -> bool:
    """A fused torch optimiser (``found_inf`` input) not driven by a GradScaler (which sets its own)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    return bool(inner.defaults.get("fused")) and getattr(optimizer, "scaler", None) is None


class NonFiniteGuard:
    def __init__(self, optimizer, device: torch.device, in_row: int = 0) -> None:
        self.optimizer = optimizer
        self.inner = getattr(optimizer, "optimizer", optimizer)
        self.on_device = supports_device_skip(optimizer)
        zero = torch.zeros((), device=device)
        self.in_row, self.skipped, self.last = zero + in_row, zero.clone(), zero - 1
        self.terms: dict[str, torch.Tensor] = {}

    def step(self, bad: torch.Tensor, terms: dict[str, torch.Tensor], step: int) -> bool | None:
        """Optimiser step unless ``bad`` (a device bool every process agrees on). Returns the verdict
        when it had to be read on the host (no device skip), else None."""
        bad_f = bad.float()
        self.in_row = (self.in_row + 1) * bad_f
        self.skipped = self.skipped + bad_f
        self.last = torch.where(bad, torch.full_like(self.last, step), self.last)
        for name, value in terms.items():
            flag = bad & ~torch.isfinite(value).all()
            self.terms[name] = self.terms[name] | flag if name in self.terms else flag
        if self.on_device:
            self.inner.found_inf = bad_f  # 0-dim, as GradScaler passes it
            self.optimizer.step()
            return None
        host_bad = bool(bad)
        if not host_bad:
            self.optimizer.step()
        return host_bad

    def state(self) -> torch.Tensor:
        """[in_row, skipped, last, term flags...] in one tensor, for a single host read."""
        flags = [self.terms[k].float() for k in sorted(self.terms)]
        return torch.stack([self.in_row, self.skipped, self.last, *flags])

    def read(self, values: list[float]) -> tuple[int, int, int, list[str]]:
        """(in a row, skipped since the last read, last bad step, non-finite terms) from ``state()``
        values; resets the since-last-read part."""
        names = [k for k, v in zip(sorted(self.terms), values[3:], strict=True) if v > 0] or ["total"]
        self.skipped = torch.zeros_like(self.skipped)
        self.terms = {}
        return int(values[0]), int(values[1]), int(values[2]), names
