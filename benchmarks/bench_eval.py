"""Evaluation throughput on CPU: single-scale, multi-scale + flip, and + dense CRF with 1 vs all workers.

Tiny model (timm ``test_vit``, random weights: speed only) on generated demo-like scenes.
Usage: python benchmarks/bench_eval.py [--images 24] [--size 256] [--workers N]
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


def main() -> None:
    from dupl_cli.engine.crf import CrfParams, CrfPool, default_workers
    from dupl_cli.engine.infer import to_tensor
    from dupl_cli.engine.tta import TTAConfig, stride_of, tta_logits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0, help="'all workers' (0 = available cores)")
    args = ap.parse_args()
    settings, model = build(args.size)
    images = scenes(args.images, args.size)
    fn = model.students[0].segment
    mult = stride_of(model)
    mean, std = settings.data.mean, settings.data.std
    all_workers = default_workers(args.workers)
    params = CrfParams.for_segmentation(settings.crf)
    print(f"CPU cores available: {len(os.sched_getaffinity(0))}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}, {args.images} images {args.size}x{args.size}, model test_vit")  # fmt: skip

    def tta_pass(cfg: TTAConfig) -> tuple[float, list[np.ndarray]]:
        t0 = time.perf_counter()
        out = [
            tta_logits(fn, to_tensor(im, mean, std, "cpu"), cfg, multiple=mult)[0].numpy() for im in images
        ]
        return time.perf_counter() - t0, out

    tta_pass(TTAConfig())  # warm-up
    t_single, _ = tta_pass(TTAConfig())
    ms = TTAConfig(scales=(1.0, 1.25, 1.5), flip=True)
    tta_logits(fn, to_tensor(images[0], mean, std, "cpu"), ms, multiple=mult)  # warm-up: new shapes
    t_ms, logits = tta_pass(ms)
    rows = [
        ("single-scale", rate(args.images, t_single)),
        ("multi-scale (1, 1.25, 1.5) + flip", rate(args.images, t_ms)),
    ]

    crf_only = {}
    for workers in sorted({1, all_workers}):
        with CrfPool(workers) as pool:
            pool.map_segmentation(
                zip(images[:workers], logits[:workers], strict=True), params
            )  # start workers
            t0 = time.perf_counter()
            pool.map_segmentation(zip(images, logits, strict=True), params)
            crf_only[workers] = time.perf_counter() - t0
        with CrfPool(workers) as pool:
            pool.map_segmentation(zip(images[:workers], logits[:workers], strict=True), params)
            t0 = time.perf_counter()
            for i, im in enumerate(images):
                lg = tta_logits(fn, to_tensor(im, mean, std, "cpu"), ms, multiple=mult)[0].numpy()
                pool.submit_segmentation(i, im, lg, params)
            list(pool.drain())
            rows.append(
                (
                    f"multi-scale + flip + CRF, {workers} worker(s)",
                    rate(args.images, time.perf_counter() - t0),
                )
            )
    for workers, seconds in crf_only.items():
        rows.append((f"CRF alone, {workers} worker(s)", rate(args.images, seconds)))
    if all_workers > 1:
        rows.append(
            (f"CRF scaling 1 -> {all_workers} workers", f"{crf_only[1] / crf_only[all_workers]:7.2f}x")
        )
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))


if __name__ == "__main__":
    main()
