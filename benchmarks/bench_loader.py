"""Training loader throughput (images/s) and the per-sample cost split, on demo scenes and real photos.

The real ``train_loader`` over a real adapter (the folder adapter) at the preset's weak view (voc-vitb:
crop 448, batch 4), for 0, 1 and 2 workers; then one sample's cost split decode / to-tensor /
geometry / photometric (jitter, grayscale, blur) / normalise in-process, and what ``train_loader``
and Accelerate's prepared loader do about pinned memory and persistent workers.

Real photos: CamVid (480×360 PNG) from --camvid, $DUPL_CAMVID, or ``shared/data/camvid`` beside or
above the repository; skipped (with a line saying so) when absent. It is read through a folder-layout
view of symlinks in a temporary directory (image-level labels from its masks), never copied.
Usage: python benchmarks/bench_loader.py [--batches 12] [--workers 0,1,2] [--repeats 3] [--target 70]
Workers needed for the target = ceil(target / images/s of one worker), the per-worker rate being the
1-worker figure (one worker process keeps one core busy); the 2-worker figure shows the scaling here.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CAMVID_CLASSES = [
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
]  # fmt: skip; index 11 of the masks is Unlabelled (void)


def camvid_dir(given: str | None) -> Path | None:
    if given or os.environ.get("DUPL_CAMVID"):
        path = Path(given or os.environ["DUPL_CAMVID"])
        if not (path / "train").is_dir():
            raise SystemExit(f"{path}: no train/ folder of CamVid photos there")
        return path
    here = Path(__file__).resolve().parent
    for base in here.parents:
        if (base / "shared" / "data" / "camvid" / "train").is_dir():
            return base / "shared" / "data" / "camvid"
    return None


def camvid_view(camvid: Path, out: Path, split: str = "train", limit: int = 0) -> Path:
    """Folder layout over CamVid: images/ symlinks, classes.txt, labels.csv from the masks."""
    from PIL import Image

    (out / "images").mkdir(parents=True)
    (out / "classes.txt").write_text("\n".join(CAMVID_CLASSES) + "\n")
    rows = []
    files = sorted((camvid / split).glob("*.png"))
    for f in files[:limit] if limit else files:
        (out / "images" / f.name).symlink_to(f.resolve())
        present = np.unique(np.asarray(Image.open(camvid / f"{split}annot" / f.name)))
        rows.append(f"{f.stem}," + " ".join(CAMVID_CLASSES[i] for i in present if i < len(CAMVID_CLASSES)))
    (out / "labels.csv").write_text("id,labels\n" + "\n".join(rows) + "\n")
    (out / "splits").mkdir()
    (out / "splits" / "train.txt").write_text("\n".join(f.stem for f in files[:limit] or files) + "\n")
    return out


def settings_for(root: Path):
    from dupl_cli.config.sources import load_settings

    return load_settings("voc-vitb", assignments=["data.adapter=folder", f"data.root={root}"], environ={})


def folder_adapter(data_settings):
    from dupl_cli.data.folder import build

    return build(data_settings, "train")


def loader_rate(adapter, data_settings, workers: int, batches: int) -> float:
    """Images/s after the first batch (worker start-up excluded: the workers persist across epochs)."""
    from dupl_cli.data.loader import train_loader

    loader = train_loader(adapter, data_settings, 4, seed=0, num_workers=workers)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(it)["id"])
    seconds = time.perf_counter() - start
    del it, loader
    return n / seconds


def profile(adapter, data_settings, n: int) -> dict[str, float]:
    """Median milliseconds per sample of each stage of the weak view, on one thread as in a worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _profile(adapter, data_settings, n)
    finally:
        torch.set_num_threads(threads)


def _profile(adapter, data_settings, n: int) -> dict[str, float]:
    from torchvision.transforms.v2 import functional as F

    from dupl_cli.data.blur import gaussian_blur, kernel_size
    from dupl_cli.data.images import read_image
    from dupl_cli.data.transforms import WeakView, normalize, to_tensor

    view = WeakView(data_settings)
    stages: dict[str, list[float]] = {}

    def timed(name, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        stages.setdefault(name, []).append(1e3 * (time.perf_counter() - start))
        return out

    for i in range(n):
        gen = torch.Generator().manual_seed(i)
        timed("decode (read_image)", read_image, adapter.path_of(i % len(adapter)))
        sample = timed("adapter[i] (decode + labels)", adapter.__getitem__, i % len(adapter))
        image = timed("to_tensor", to_tensor, sample.image)
        crop = timed("geometry", view.geometry, image, gen)[0]
        x = timed("to float", lambda c: c.float().div_(255.0), crop)
        x = timed("photometric", view.photometric, x, gen).clamp_(0, 1)
        timed("normalise", normalize, x, view.mean, view.std)
        sigma = float(np.mean(view.blur)) or 1.0  # the blur's mean sigma; its k×k kernel for comparison
        k = kernel_size(sigma)
        timed(f"  blur sigma {sigma:.2f}: torchvision {k}x{k}", F.gaussian_blur, x, [k, k], [sigma, sigma])
        timed(f"  blur sigma {sigma:.2f}: separable (used)", gaussian_blur, x, sigma)
        gen = torch.Generator().manual_seed(i)
        timed("whole view (WeakView)", view, sample.image, gen)
    return {k: statistics.median(v) for k, v in stages.items()}


def pinning_report(adapter, data_settings) -> list[str]:
    from accelerate import Accelerator

    from dupl_cli.data.loader import train_loader

    loader = train_loader(adapter, data_settings, 4, seed=0, num_workers=1)
    prepared = Accelerator(cpu=not torch.cuda.is_available()).prepare(loader)
    lines = [
        f"train_loader: pin_memory={loader.pin_memory} persistent_workers={loader.persistent_workers} "
        f"prefetch_factor={loader.prefetch_factor} (pin_memory follows torch.cuda.is_available())"
    ]
    lines.append(
        f"accelerate-prepared ({type(prepared).__name__}): pin_memory={prepared.pin_memory} "
        f"persistent_workers={prepared.persistent_workers} prefetch_factor={prepared.prefetch_factor}"
    )
    return lines


def run_dataset(name: str, root: Path, args) -> None:
    data_settings = settings_for(root).settings.data
    adapter = folder_adapter(data_settings)
    print(f"\n== {name}: {len(adapter)} images, crop {data_settings.crop_size}, batch 4 ==")
    workers = [int(w) for w in args.workers.split(",")]
    rates: dict[int, list[float]] = {w: [] for w in workers}
    for _ in range(args.repeats):  # interleaved rounds
        for w in workers:
            rates[w].append(loader_rate(adapter, data_settings, w, args.batches))
    med = {w: statistics.median(r) for w, r in rates.items()}
    for w in workers:
        print(f"  {w} workers: {med[w]:6.1f} img/s  (runs {', '.join(f'{r:.1f}' for r in rates[w])})")
    per_worker = med.get(1)
    if per_worker:
        print(
            f"  per worker: {per_worker:.1f} img/s -> {math.ceil(args.target / per_worker)} workers for "
            f"{args.target:g} img/s (batch 4 every {4 / args.target:.3f} s)"
        )
        if 2 in med:
            print(f"  scaling 1 -> 2 workers on {os.cpu_count()} cores: x{med[2] / per_worker:.2f}")
    print("  per-sample cost (in-process, median ms):")
    for stage, ms in profile(adapter, data_settings, args.profile).items():
        print(f"    {stage:30s} {ms:7.2f}")


def main() -> None:
    from dupl_cli.data.demo import write_demo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; figures are medians")
    ap.add_argument("--profile", type=int, default=16, help="samples in the per-stage profile")
    ap.add_argument("--target", type=float, default=70.0, help="images/s the step consumes")
    ap.add_argument("--demo-size", type=int, default=448, help="side of the generated demo scenes")
    ap.add_argument("--camvid", default=None)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        demo = write_demo(Path(tmp) / "demo", size=args.demo_size, n_train=64, n_val=4)
        run_dataset(f"demo scenes {args.demo_size} px PNG", demo, args)
        camvid = camvid_dir(args.camvid)
        if camvid is None:
            print("\nCamVid not found (set --camvid or DUPL_CAMVID): real-photo figures skipped")
        else:
            run_dataset("CamVid train 480x360 PNG", camvid_view(camvid, Path(tmp) / "camvid", limit=96), args)
        print()
        data_settings = settings_for(demo).settings.data
        for line in pinning_report(folder_adapter(data_settings), data_settings):
            print(line)


if __name__ == "__main__":
    main()
