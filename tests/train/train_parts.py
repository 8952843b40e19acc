"""What the loop and hook tests share: a tiny dual student prepared for training, and batches."""

from __future__ import annotations

import torch

from dupl_cli.config.schema import ModelSettings, TrainSettings
from dupl_cli.method.params import CamConfig, NoiseFilterConfig, ParConfig, PhaseSchedule, StepConfig
from dupl_cli.models.dual import build_dual_student
from dupl_cli.train.accel import make_accelerator
from dupl_cli.train.loop import TrainingModule, TrainParts
from dupl_cli.train.optim import build_optimizer, build_scheduler
from dupl_cli.train.step_guard import NonFiniteGuard

SIZE, CLASSES = 64, 5
CONFIG = StepConfig(
    cam=CamConfig(scales=(1.0,)),
    schedule=PhaseSchedule(t_seg=2, t_anf=4, max_iters=10),
    par=ParConfig(iters=2),
    noise=NoiseFilterConfig(min_pixels=10),
)


def tiny_parts(*, grad_accum: int = 1, fused: bool = True, seed: int = 0) -> TrainParts:
    """test_vit students at 64 px, the trainer's optimiser and schedule, through ``accelerator.prepare``
    (``fused=False``: an optimiser the guard must read on the host)."""
    torch.manual_seed(seed)
    settings = ModelSettings(arch="test_vit", pretrained="none", head_channels=16)
    model = build_dual_student(settings, CLASSES, img_size=SIZE)
    train = TrainSettings(max_iters=10, warmup_iters=2)
    accelerator = make_accelerator("no", grad_accum)
    optimizer = build_optimizer(model, train)
    if not fused:
        optimizer = torch.optim.AdamW([{**group, "fused": None} for group in optimizer.param_groups])
    scheduler = build_scheduler(optimizer, train)
    module, optimizer, scheduler = accelerator.prepare(TrainingModule(model, CONFIG), optimizer, scheduler)
    return TrainParts(
        accelerator, module, optimizer, scheduler, NonFiniteGuard(optimizer, accelerator.device), seed
    )


def tiny_batch(seed: int = 0, b: int = 2) -> dict:
    """B×3×64×64 images with one or two classes each, whole-crop boxes."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(b, CLASSES)
    labels[torch.arange(b), torch.arange(b) % CLASSES] = 1
    labels[0, 3] = 1
    return {
        "image": torch.randn(b, 3, SIZE, SIZE, generator=generator),
        "labels": labels,
        "img_box": torch.tensor([[0, SIZE, 0, SIZE]] * b),
        "max_present": 2,
    }
