"""Big images: time and peak memory of whole-image against sliding-window segmentation, by image size.

The demo model (timm ``test_vit``, 128-channel head, random weights: speed only; 6 logits), single-scale,
through the real prediction loop (``predict.loop.predict`` with a ``SegRoute``; labels kept in memory,
nothing written), on random uint8 images of 1, 4, 16 and 49 MP. Slide mode uses the demo's training crop
(128 px windows every 85 px, ``eval.batch_size`` 8 windows per forward). Each figure comes from a fresh
subprocess: peak memory is the growth of the peak resident set (reset once the model is built and the
image decoded, /proc/self/clear_refs) over the process's size at that point (on CUDA,
``torch.cuda.max_memory_allocated`` too). Whole-image segmentation above ``--whole-up-to`` MP is not
run (its attention grows with the square of the pixels); the table says so. ``agree`` is the share of
pixels whose slide label equals the whole-image
label where both ran: with random weights and random pixels it says little. ``--agreement CHECKPOINT``
(e.g. ``runs/demo/final.safetensors`` from ``make demo``) prints instead how often slide and whole agree
for trained weights on demo scenes of ``--agreement-size`` pixels.

Usage: python benchmarks/bench_big_images.py [--mp 1 4 16 49] [--whole-up-to 4] [--repeats 1] [--device cpu]
       python benchmarks/bench_big_images.py --agreement runs/demo/final.safetensors [--agreement-size 512]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _reset_peak() -> bool:
    """Reset the kernel's peak resident set of this process (Linux >= 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_mb(field: str = "VmRSS") -> float:
    """Current (``VmRSS``) or peak (``VmHWM``) resident set from /proc; else the process's peak so far."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def worker(side: int, mode: str, crop: int, device: str, labels_out: str) -> dict:
    import numpy as np
    import torch

    from dupl_cli.config.sources import load_settings
    from dupl_cli.crf.params import CrfParams
    from dupl_cli.models.dual import build_dual_student
    from dupl_cli.predict.loop import Item, PredictOptions, ProgressBar, Runtime, Sink, predict
    from dupl_cli.predict.routes import SegRoute
    from dupl_cli.predict.slide import SlideConfig, window_count
    from dupl_cli.predict.tta import TTAConfig, stride_of

    settings = load_settings("demo", environ={}).settings
    torch.manual_seed(0)
    model = build_dual_student(settings.model, num_classes=5, img_size=128).eval().to(device)
    slide = SlideConfig(mode, crop=crop)
    route = SegRoute(model.students[0].segment, TTAConfig(), stride_of(model), CrfParams(), slide)
    options = PredictOptions(tuple(settings.data.mean), tuple(settings.data.std), batch_size=8)

    class Keep(Sink):
        def label(self, item, route, label):
            self.label_map = np.asarray(label)

    def run(image: np.ndarray, show: bool) -> Keep:
        keep = Keep()
        with torch.no_grad(), ProgressBar(f"{mode} {side}x{side}", 1, show) as bar:
            predict([Item(0, "big", image)], [route], [keep], Runtime(torch.device(device)), options, bar)
        return keep

    run(np.zeros((crop * 2, crop * 2, 3), np.uint8), show=False)  # warm-up
    image = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = _rss_mb()
    _reset_peak()  # the peak counts from here: the image's decoding is not the prediction's memory
    start = time.perf_counter()
    keep = run(image, show=sys.stderr.isatty())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"seconds": seconds, "peak_mb": max(_rss_mb("VmHWM") - base, 0.0), "windows": 0}
    if mode == "slide":
        out["windows"] = window_count((side, side), slide)
    if device.startswith("cuda"):
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if labels_out:
        np.save(labels_out, keep.label_map)
    return out


def _run(side: int, mode: str, args, labels_out: str) -> dict:
    """The fastest of ``--repeats`` fresh runs, with the largest peak memory among them."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(side), "--mode", mode]
    cmd += ["--crop", str(args.crop), "--device", args.device, "--labels-out", labels_out]
    runs = []
    for _ in range(args.repeats):
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"worker {mode} {side}px failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    return best | {"peak_mb": max(r["peak_mb"] for r in runs)}


def _row(mp: float, side: int, whole: dict | None, slide: dict, agree: str) -> str:
    def cell(r: dict | None) -> str:
        if r is None:
            return "not run".ljust(22)
        cuda = f", GPU {r['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in r else ""
        return f"{r['seconds']:7.1f} s {r['peak_mb']:7.0f} MB{cuda}"

    windows = f"{slide['windows']:>5} windows"
    return f"{mp:>5g} MP {side:>5}² | whole {cell(whole)} | slide {cell(slide)} {windows} | {agree}"


def agreement(checkpoint: Path, size: int, crop: int, images: int = 4) -> None:
    """Slide against whole labels of a trained checkpoint on generated demo scenes."""
    import torch

    from dupl_cli.data.demo import generate_image
    from dupl_cli.predict.loop import load_for_inference, to_batch
    from dupl_cli.predict.slide import SlideConfig, slide_predict
    from dupl_cli.predict.tta import TTAConfig, stride_of, tta_logits

    loaded = load_for_inference(checkpoint, "given", torch.device("cpu"))
    fn, multiple = loaded.model.eval().students[0].segment, stride_of(loaded.model)
    data = loaded.card.settings["data"]
    mean, std = data["mean"], data["std"]
    shares = []
    for i in range(images):
        image = generate_image(0, 1, i, size)[0]
        with torch.no_grad():
            whole = tta_logits(fn, to_batch([image], mean, std, "cpu"), TTAConfig(), multiple=multiple)[0]
            slide = slide_predict(
                fn, image, TTAConfig(), SlideConfig("slide", crop), lambda u: to_batch(u, mean, std, "cpu"),
                multiple=multiple, batch_size=8,
            )  # fmt: skip
        shares.append(float((whole.argmax(0).to(torch.uint8) == slide.labels).float().mean()))
    print(
        f"{checkpoint}: slide ({crop} px windows) and whole-image labels agree on "
        f"{100 * sum(shares) / len(shares):.1f} %"
        f" of pixels ({images} demo scenes {size}x{size}, single scale)"
    )


def main(argv: list[str] | None = None) -> None:
    import platform

    import numpy as np
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mp", type=float, nargs="+", default=[1, 4, 16, 49], help="image sizes, megapixels")
    p.add_argument("--whole-up-to", type=float, default=4, help="largest image (MP) run as a whole")
    p.add_argument("--crop", type=int, default=128, help="window side (the demo's training crop)")
    p.add_argument("--repeats", type=int, default=1, help="fresh runs per figure: the fastest is shown")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--agreement", type=Path, help="a trained checkpoint: slide/whole agreement on demo scenes"
    )
    p.add_argument("--agreement-size", type=int, default=512)
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--labels-out", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.mode, args.crop, args.device, args.labels_out)))
        return
    if args.agreement:
        agreement(args.agreement, args.agreement_size, args.crop)
        return
    machine = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs"
    print(
        f"machine: {machine}, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}; "
        f"device {args.device}; demo model (test_vit), single scale; slide: {args.crop} px windows every "
        f"{args.crop * 2 // 3} px, 8 a forward; fastest of {args.repeats} fresh run(s)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for mp in args.mp:
            side = round(math.sqrt(mp * 1e6))
            paths = {m: str(Path(tmp) / f"{m}.npy") for m in ("whole", "slide")}
            whole = _run(side, "whole", args, paths["whole"]) if mp <= args.whole_up_to else None
            slide = _run(side, "slide", args, paths["slide"])
            agree = "agree -"
            if whole is not None:
                agree = (
                    f"agree {100 * float((np.load(paths['whole']) == np.load(paths['slide'])).mean()):.1f} %"
                )
            print(_row(mp, side, whole, slide, agree), flush=True)


if __name__ == "__main__":
    main()
