"""Dense CRF throughput: pydensecrf (one core, pool on all cores) vs the torch backend (CPU, CUDA).

Images per second for H×W×K cases (default 500x375x21, VOC-like, and 640x480x81, COCO-like), 10
mean-field steps with the segmentation kernels (docs/method.md §11). Scenes: demo-generator
images with spatially smooth random logits. Methods run interleaved, ``--repeats`` times; the
median is reported with its ratio to one pydensecrf core. CUDA rows appear when a GPU is visible;
their inputs are already on the device (as the merged TTA logits are in the commands) and labels
come back to the host. Each case also prints the torch backend's label agreement with pydensecrf,
whether two runs give bitwise equal marginals (per device and splat/slice implementation) and
equal labels. Runs unchanged on CPU-only and GPU machines.

Usage: python benchmarks/bench_crf.py [--images 2] [--repeats 3] [--cases 500x375x21,640x480x81]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F


def scenes(n: int, h: int, w: int, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from dupl_cli.data.demo import generate_image

    images, logits = [], []
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        images.append(np.ascontiguousarray(generate_image(0, 1, i, max(h, w))[0][:h, :w]))
        coarse = torch.randn(1, k, h // 16, w // 16, generator=g) * 3
        logits.append(F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0].numpy())
    return images, logits


def methods(images, logits, params, workers: int, batch: int) -> dict:
    from dupl_cli.crf.dense import dense_crf_batch
    from dupl_cli.crf.pydensecrf_backend import CrfPool, crf_segmentation
    from dupl_cli.crf.torch_backend import segmentation_labels

    threads = torch.get_num_threads()

    def torch_cpu(n_threads):
        def run():
            torch.set_num_threads(n_threads)
            try:
                return [lab.copy() for lab in dense_crf_batch(images, logits, params)]
            finally:
                torch.set_num_threads(threads)

        return run

    out = {
        "pydensecrf, 1 core": lambda: [
            crf_segmentation(im, lg, params) for im, lg in zip(images, logits, strict=True)
        ],
        f"pydensecrf pool, {workers} processes": lambda: pool.map_segmentation(
            zip(images, logits, strict=True), params
        ),
        "torch CPU, 1 thread": torch_cpu(1),
        f"torch CPU, {threads} threads": torch_cpu(threads),
    }
    if threads == 1:
        del out[f"torch CPU, {threads} threads"]
    pool = CrfPool(workers)
    out["_pool"] = pool
    if torch.cuda.is_available():
        dev_images = [torch.from_numpy(im).cuda() for im in images]
        dev_logits = [torch.from_numpy(lg).cuda() for lg in logits]

        def cuda(b, sparse=None):
            def run():
                labels = []
                for i in range(0, len(dev_images), b):
                    chunk = slice(i, i + b)
                    labels += segmentation_labels(dev_images[chunk], dev_logits[chunk], params, sparse=sparse)
                return [lab.cpu().numpy() for lab in labels]

            return run

        out["torch CUDA, 1 image per call"] = cuda(1)
        out[f"torch CUDA, batches of {batch}"] = cuda(batch)
        # cuSPARSE CSR splat/slice instead of segment sums and gathers: its bitwise repeatability is
        # not documented by torch, hence not the default; reported to decide with numbers.
        out[f"torch CUDA, batches of {batch}, CSR"] = cuda(batch, sparse=True)
    return out


def repeatability(image: np.ndarray, logits: np.ndarray, params) -> str:
    """Whether two runs give bitwise equal marginals, per device and splat/slice implementation."""
    from dupl_cli.crf.torch_backend import marginals, segmentation_unary

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = []
    for dev in devices:
        im, lg = torch.from_numpy(image).to(dev), torch.from_numpy(logits).to(dev)
        for sparse, name in ((True, "CSR"), (False, "segment sums")):
            a, b = (marginals([im], [segmentation_unary(lg)], params, sparse=sparse)[0] for _ in range(2))
            out.append(f"{dev} {name} {torch.equal(a, b)}")
    return ", ".join(out)


def bench_case(h: int, w: int, k: int, args, params) -> None:
    images, logits = scenes(args.images, h, w, k)
    runs = methods(images, logits, params, args.workers, args.batch)
    pool = runs.pop("_pool")
    try:
        results = {name: fn() for name, fn in runs.items()}  # warm-up (pool spawn, CUDA init) + labels
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    finally:
        pool.close()
    ref = results["pydensecrf, 1 core"]
    base = len(images) / statistics.median(times["pydensecrf, 1 core"])
    print(f"\n{w}x{h}, {k} labels, {params.iters} iterations, {len(images)} images, "
          f"median of {args.repeats}:")  # fmt: skip
    for name, ts in times.items():
        rate = len(images) / statistics.median(ts)
        agree = np.mean([(a == b).mean() for a, b in zip(results[name], ref, strict=True)])
        print(f"  {name:34s} {rate:8.3f} img/s  {rate / base:7.2f}x  "
              f"labels = pydensecrf on {100 * agree:6.2f}%")  # fmt: skip
    print(f"  marginals repeat bitwise: {repeatability(images[0], logits[0], params)}")
    for name in runs:
        if name.startswith("torch"):
            again = runs[name]()
            same = all(np.array_equal(a, b) for a, b in zip(again, results[name], strict=True))
            print(f"  {name}: labels repeat exactly: {same}")


def main() -> None:
    from dupl_cli.crf.params import CrfParams
    from dupl_cli.crf.pydensecrf_backend import default_workers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2, help="images per case")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default="500x375x21,640x480x81", help="WxHxK, comma separated")
    ap.add_argument("--workers", type=int, default=0, help="pool processes (0 = available cores)")
    ap.add_argument("--batch", type=int, default=8, help="images per torch CUDA call")
    args = ap.parse_args()
    args.workers = default_workers(args.workers)
    params = CrfParams()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"CPU cores available {cores}, torch threads {torch.get_num_threads()}, GPU {gpu}, "
          f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}")  # fmt: skip
    for case in args.cases.split(","):
        w, h, k = (int(v) for v in case.lower().split("x"))
        bench_case(h, w, k, args, params)


if __name__ == "__main__":
    main()
