"""Evaluation throughput: single-scale, multi-scale + flip, and + dense CRF with 1 vs all workers.

Tiny model (timm ``test_vit``, random weights: speed only) on generated demo-like scenes.
Usage: python benchmarks/bench_eval.py [--images 16] [--size 256] [--workers N] [--repeats 3] [--device cuda]
The model runs on CUDA when available (else CPU); the CRF pool is pydensecrf on CPU processes.
The CRF figures also isolate the pool: CRF alone on precomputed logits, 1 vs N workers.
Other processes sharing the CPU disturb the figures; run on an idle machine for reference numbers.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def build(size: int):
    from dupl_cli.config.sources import load_settings
    from dupl_cli.models.dual import build_dual_student

    settings = load_settings("tiny-cpu", environ={}).settings
    torch.manual_seed(0)
    model = build_dual_student(settings.model, num_classes=5, img_size=size).eval()
    return settings, model


def scenes(n: int, size: int) -> list[np.ndarray]:
    from dupl_cli.data.demo import generate_image

    return [generate_image(0, 1, i, size)[0] for i in range(n)]


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:7.2f} img/s"


def median_runs(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each named fn over ``repeats`` rounds, run alternately within each round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    from dupl_cli.crf.params import CrfParams
    from dupl_cli.crf.pydensecrf_backend import CrfPool, default_workers
    from dupl_cli.predict.loop import to_tensor
    from dupl_cli.predict.tta import TTAConfig, stride_of, tta_logits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0, help="'all workers' (0 = available cores)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; figures are medians")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    settings, model = build(args.size)
    model.to(device)
    images = scenes(args.images, args.size)
    fn = model.students[0].segment
    mult = stride_of(model)
    mean, std = settings.data.mean, settings.data.std
    all_workers = default_workers(args.workers)
    params = CrfParams.for_segmentation(settings.crf)
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(
        f"device {device}{gpu}, CPU cores available: {len(os.sched_getaffinity(0))}, torch threads "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, {args.images} images "
        f"{args.size}x{args.size}, model test_vit, median of {args.repeats} interleaved rounds"
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    single, ms = TTAConfig(), TTAConfig(scales=(1.0, 1.25, 1.5), flip=True)

    @torch.no_grad()
    def logits_of(im: np.ndarray, cfg: TTAConfig) -> torch.Tensor:
        return tta_logits(fn, to_tensor(im, mean, std, device), cfg, multiple=mult)[0]

    def tta_pass(cfg: TTAConfig) -> list[np.ndarray]:
        out = [logits_of(im, cfg).cpu().numpy() for im in images]
        sync()
        return out

    logits = tta_pass(ms)  # warm-up (every shape) and the CRF's input
    tta_pass(single)
    pools = {w: CrfPool(w) for w in sorted({1, all_workers})}
    try:
        for w, pool in pools.items():  # start the workers before timing
            pool.map_segmentation(zip(images[:w], logits[:w], strict=True), params)

        def with_crf(pool) -> None:
            for i, im in enumerate(images):
                pool.submit_segmentation(i, im, logits_of(im, ms).cpu().numpy(), params)
            list(pool.drain())

        fns = {
            "single-scale": lambda: tta_pass(single),
            "multi-scale (1, 1.25, 1.5) + flip": lambda: tta_pass(ms),
        }
        for w, pool in pools.items():
            fns[f"multi-scale + flip + CRF, {w} worker(s)"] = lambda pool=pool: with_crf(pool)
        for w, pool in pools.items():
            fns[f"CRF alone, {w} worker(s)"] = lambda pool=pool: pool.map_segmentation(
                zip(images, logits, strict=True), params
            )
        medians = median_runs(fns, args.repeats)
    finally:
        for pool in pools.values():
            pool.close()
    rows = [(name, rate(args.images, seconds)) for name, seconds in medians.items()]
    if all_workers > 1:
        ratio = medians["CRF alone, 1 worker(s)"] / medians[f"CRF alone, {all_workers} worker(s)"]
        rows.append((f"CRF scaling 1 -> {all_workers} workers", f"{ratio:7.2f}x"))
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))


if __name__ == "__main__":
    main()
