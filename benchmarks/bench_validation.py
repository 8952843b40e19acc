"""Validation's share of a VOC training run, batched on every rank vs the release's one rank, batch 1.

share = V / (T * t_step + V),  V = n_val * ceil(N / P) * t_img   (sharded: each of P ranks does N / P)
release: V = n_val * N * t_img(batch 1) on rank 0 while the P - 1 others wait (P does not divide it).
T = 20000 iterations, validation every 2000 (n_val = 10), N = 1449 VOC val images, batch 4 per step.
t_step: one full training step (phase C: every pass), t_img: validation seconds per image at the
preset's settings (crop-size input, CAM scales 1, 1.25, 1.5 + flip, both students, masks 500×375).
Random weights: speed only. On CPU the ratio t_img / t_step stands for the GPU's only roughly.
Usage: python benchmarks/bench_validation.py [--arch test_vit] [--size 448] [--repeats 3] [--ranks 8]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from step_timing import synthetic_batch, timed_steps

VOC_VAL, VOC_ITERS, VOC_VAL_EVERY = 1449, 20000, 2000


def _model_and_config(arch: str, size: int, device):
    from dupl_cli.config.method_params import step_config
    from dupl_cli.config.schema import DuplSettings, ModelSettings
    from dupl_cli.models.dual import build_dual_student

    settings = DuplSettings(model=ModelSettings(arch=arch, pretrained="none"))
    torch.manual_seed(0)
    model = build_dual_student(settings.model, 20, img_size=size).to(device)
    return settings, model, step_config(settings)


def val_batches(b: int, size: int, device, n: int) -> list[dict]:
    """What eval_loader yields: crop-size images, 500×375 masks, labels, original sizes."""
    data = synthetic_batch(b, size, device)
    masks = torch.randint(0, 21, (b, 375, 500), device=device)
    sizes = torch.tensor([[375, 500]] * b)
    return [{"image": data["image"], "mask": masks, "labels": data["labels"], "orig_size": sizes}] * n


def seconds_per_val_image(model, settings, batches, device, cam_threshold: float) -> float:
    from dupl_cli.train.validation import confusions

    model.eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        confusions(
            model,
            batches[:1],
            num_classes=20,
            cam_scales=settings.method.cam_scales,
            cam_threshold=cam_threshold,
            device=device,
        )  # fmt: skip  (warm-up)
        sync()
        start = time.perf_counter()
        confusions(model, batches, num_classes=20, cam_scales=settings.method.cam_scales,
                   cam_threshold=cam_threshold, device=device)  # fmt: skip
        sync()
    model.train()
    return (time.perf_counter() - start) / sum(len(b["image"]) for b in batches)


def validation_share(arch: str, size: int, device, *, repeats: int = 3, ranks: int = 8) -> dict:
    """Median t_step, t_img (batch 4 and 1) and the shares of a VOC run; interleaved rounds."""
    from dupl_cli.train.optim import build_optimizer

    settings, model, config = _model_and_config(arch, size, device)
    opt = build_optimizer(model, settings.train)
    batch, gen = synthetic_batch(4, size, device), torch.Generator().manual_seed(0)
    cam_threshold = settings.eval.cam_threshold
    four, one = val_batches(4, size, device, 2), val_batches(1, size, device, 4)
    runs = {"t_step": [], "t_img_b4": [], "t_img_b1": []}
    for _ in range(repeats):
        model.train()
        runs["t_step"] += timed_steps(model, batch, config.schedule.t_anf + 1, config, opt, gen,
                                      steps=2, warmup=1, bf16=device.type == "cuda")  # fmt: skip
        runs["t_img_b4"].append(seconds_per_val_image(model, settings, four, device, cam_threshold))
        runs["t_img_b1"].append(seconds_per_val_image(model, settings, one, device, cam_threshold))
    out = {k: statistics.median(v) for k, v in runs.items()}
    n_val = math.ceil(VOC_ITERS / VOC_VAL_EVERY)
    train = VOC_ITERS * out["t_step"]
    for p in (1, ranks):
        v = n_val * math.ceil(VOC_VAL / p) * out["t_img_b4"]
        out[f"share_sharded_p{p}"] = v / (train + v)
    v = n_val * VOC_VAL * out["t_img_b1"]
    out["share_release_p1"] = v / (train + v)
    v_ranks = n_val * VOC_VAL * out["t_img_b1"]  # rank 0 alone; per-rank training time is the same
    out[f"share_release_p{ranks}"] = v_ranks / (train + v_ranks)
    return out


def report(out: dict, ranks: int) -> list[str]:
    return [
        f"t_step {out['t_step'] * 1e3:.1f} ms (batch 4, phase C), validation {1 / out['t_img_b4']:.2f} img/s "
        f"batched (4), {1 / out['t_img_b1']:.2f} img/s one at a time",
        f"VOC run: {VOC_ITERS} steps + {math.ceil(VOC_ITERS / VOC_VAL_EVERY)} validations"
        f" of {VOC_VAL} images",
        f"  validation share, batched on every rank: {100 * out['share_sharded_p1']:.1f} % (1 process), "
        f"{100 * out[f'share_sharded_p{ranks}']:.1f} % ({ranks} processes)",
        f"  release-style (batch 1, rank 0 only): {100 * out['share_release_p1']:.1f} % (1 process), "
        f"{100 * out[f'share_release_p{ranks}']:.1f} % ({ranks} processes, the others waiting)",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="test_vit")
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ranks", type=int, default=8, help="processes of the multi-GPU projection")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device}, {args.arch} at {args.size} px (random weights)")
    for line in report(validation_share(args.arch, args.size, device, repeats=args.repeats,
                                        ranks=args.ranks), args.ranks):  # fmt: skip
        print(line)


if __name__ == "__main__":
    main()
