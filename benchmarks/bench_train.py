"""Training throughput and peak memory per phase for the CPU presets (tiny-cpu, demo).

Each (preset, phase) runs in its own process through the real trainer (data loading, both
students, all phase losses, optimiser) with the phase forced by t_seg / t_anf, so peak RSS is
that configuration's own. Prints images/s (median over log intervals after the first) and peak
resident memory. On CUDA the device and peak GPU memory are printed too.

    python benchmarks/bench_train.py [--presets tiny-cpu demo] [--iters 40]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PHASES = {
    "A": ["method.t_seg=100000", "method.t_anf=100000"],
    "B": ["method.t_seg=0", "method.t_anf=100000"],
    "C": ["method.t_seg=0", "method.t_anf=0"],
}


def one(preset: str, phase: str, iters: int, out: Path) -> None:
    import torch

    from dupl_cli.config.sources import load_settings
    from dupl_cli.train.trainer import Trainer, TrainOptions

    data_root = out.parent / f"data-{preset}"
    sets = [
        f"data.root={data_root}",
        "data.options.generate=true",
        f"train.runs_root={out}",
        f"train.max_iters={iters}",
        "train.val_every=1000000",
        "train.ckpt_every=1000000",
        f"train.log_every={max(iters // 5, 1)}",
        "train.warmup_iters=1",
        *PHASES[phase],
    ]
    settings = load_settings(preset, assignments=sets, environ={}).settings
    Trainer(settings, TrainOptions(run_dir=out / "run", quiet=True)).run()
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records if "images_per_s" in r][1:]
    result = {
        "preset": preset,
        "phase": phase,
        "images_per_s": statistics.median(rates),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny-cpu", "demo"])
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--one", nargs=3, metavar=("PRESET", "PHASE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one[0], args.one[1], args.iters, Path(args.one[2]))
        return
    print(f"load average before: {os.getloadavg()[0]:.2f} (2-core machine: figures are disturbed above ~0.5)")
    print(f"{'preset':10} {'phase':5} {'images/s':>9} {'peak RSS MiB':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            for phase in PHASES:
                out = Path(tmp) / f"{preset}-{phase}"
                proc = subprocess.run(
                    [sys.executable, __file__, "--iters", str(args.iters), "--one", preset, phase, str(out)],
                    capture_output=True, text=True,
                )  # fmt: skip
                if proc.returncode != 0:
                    sys.exit(f"{preset} phase {phase} failed:\n{proc.stderr[-2000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                extra = f"  peak GPU {r['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in r else ""
                print(
                    f"{preset:10} {phase:5} {r['images_per_s']:9.1f} {r['peak_rss_mib']:13.0f}  "
                    f"({r['device']}, {r['threads']} threads){extra}"
                )


if __name__ == "__main__":
    main()
