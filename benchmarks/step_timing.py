"""What bench_step.py and gpu_check.py share: a synthetic training batch and the timed step loop."""

from __future__ import annotations

import time

import torch

from dupl_cli.method.step import training_step


def synthetic_batch(b: int, size: int, device: torch.device, *, padded: bool = False) -> dict:
    """VOC-like weak-view batch of smooth images (CAMs, PAR and ANF see structure, not noise), with
    the host-side ``max_present`` the train loader's collate adds; ``padded`` crops the last box."""
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(b, 20)
    labels[torch.arange(b), torch.randint(0, 20, (b,), generator=g)] = 1
    box = torch.tensor([[0, size, 0, size]] * b)
    if padded:
        labels[0, 4] = 1
        box[-1, 2] = size // 6
    low = torch.randn(b, 3, size // 32, size // 32, generator=g)
    image = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return {
        "image": image.to(device),
        "labels": labels.to(device),
        "img_box": box.to(device),
        "max_present": int((labels > 0).sum(1).max()),
    }


def timed_steps(model, batch, t, config, opt, gen, *, steps: int, warmup: int, bf16: bool) -> list[float]:
    """Seconds of ``steps`` full training steps (forward, losses, backward, optimiser) at iteration
    ``t`` after ``warmup`` untimed ones; CUDA work is waited for on both sides of each step."""
    device = batch["image"].device
    cuda = device.type == "cuda"
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            result = training_step(model, batch, t, config, generator=gen)
        result.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times
