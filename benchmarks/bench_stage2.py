"""What each stage-2 loss does on the demo data (issue 25): a DeepLab-V2 segmenter (demo-stage2) trained
on the CAM + CRF pseudo-labels of a stage-1 demo run, once per variant and seed, scored on val.

Variants (each a setting; docs/method.md §12):

* ``no band``: pseudo-labels without an uncertain band (the CAM CRF's two background scores equal,
  ``crf.cam.tau_low = crf.cam.tau_high = --single-tau``): every pixel is a label, right or wrong;
* ``ignore band`` (the default): the band is 255, left out of the loss;
* ``confidence``: ``method.stage2_weights = confidence``, each pixel weighted by its label's confidence;
* ``online ANF``: ``method.stage2_anf`` from a quarter of the schedule;
* ``confidence + ANF``.

Every run goes through the real commands (``dupl pseudo-label``, ``dupl train``); the table prints the
pseudo-labels' own mIoU and uncertain share on train, each variant's final val mIoU (mean ± std over
seeds, validation protocol: crops resized to the training size) and the share of foreground labels
the online filter dropped in the last log interval.

    python benchmarks/bench_stage2.py --stage1 runs/demo [--data .demo/data] [--seeds 0 1] [--iters 400]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "no band": ("single", []),
    "ignore band": ("band", []),
    "confidence": ("band", ["method.stage2_weights=confidence"]),
    "online ANF": ("band", ["method.stage2_anf=true", "method.stage2_anf_start={quarter}"]),
    "confidence + ANF": (
        "band",
        ["method.stage2_weights=confidence", "method.stage2_anf=true", "method.stage2_anf_start={quarter}"],
    ),
}


def dupl(*args: str) -> None:
    """One dupl command in a fresh process (one intra-op thread: the machine's cores are shared)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, "-m", "dupl_cli", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"dupl {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def pseudo_labels(stage1: Path, out: Path, extra: list[str]) -> dict:
    """CAM + CRF pseudo-labels of the train split with confidence maps, scored; their record."""
    sets = [a for s in extra for a in ("--set", s)]
    flags = ["--split", "train", "--crf", "--confidence", "--evaluate"]
    dupl("pseudo-label", str(stage1), "--out", str(out), *flags, *sets)
    return json.loads((out / "pseudo_labels.json").read_text())


def train(data: Path, labels: Path, run: Path, seed: int, iters: int, extra: list[str]) -> dict:
    sets = [
        f"data.root={data}",
        f"data.pseudo_labels={labels}",
        f"train.seed={seed}",
        f"train.max_iters={iters}",
    ]
    sets += [f"train.val_every={iters}", f"train.ckpt_every={iters}", *extra]
    start = time.perf_counter()
    dupl("train", "--preset", "demo-stage2", *(a for s in sets for a in ("--set", s)), "--run-dir", str(run))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss/seg" in r]
    return {
        "miou": [r for r in records if "validation" in r][-1]["validation"]["seg_s1"],
        "noise_share": 100 * logged[-1].get("noise_share", 0.0),
        "seconds": time.perf_counter() - start,
    }


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage1", type=Path, default=Path("runs/demo"), help="a finished stage-1 demo run")
    parser.add_argument("--data", type=Path, default=Path(".demo/data"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--single-tau", type=float, default=0.45, help="background score of 'no band'")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    if not (args.stage1 / "final.safetensors").is_file():  # make bench runs every script: not an error
        print(f"skipped: {args.stage1} has no final.safetensors; train the demo first (make demo)")
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        single = [f"crf.cam.tau_high={args.single_tau}", f"crf.cam.tau_low={args.single_tau}"]
        folders = {"band": tmp / "band", "single": tmp / "single"}
        needed = {VARIANTS[v][0] for v in args.variants}
        records = {k: pseudo_labels(args.stage1, folders[k], single if k == "single" else []) for k in needed}
        for kind, meta in records.items():
            scores = meta["metrics"]
            print(f"pseudo-labels ({kind}): train mIoU {100 * scores['miou']:.1f}, "
                  f"uncertain {100 * scores['uncertain_share']:.1f} %")  # fmt: skip
        print(f"\n{'variant':18} {'val mIoU':>12} {'ANF drop %':>10} {'s/run':>6}")
        for name in args.variants:
            kind, extra = VARIANTS[name]
            extra = [e.format(quarter=args.iters // 4) for e in extra]
            folder = folders[kind]
            runs = [
                train(args.data, folder, tmp / f"{name}-{seed}".replace(" ", "_"), seed, args.iters, extra)
                for seed in args.seeds
            ]
            miou = _mean_std([r["miou"] for r in runs])
            noise = statistics.fmean(r["noise_share"] for r in runs)
            seconds = statistics.fmean(r["seconds"] for r in runs)
            print(f"{name:18} {miou:>12} {noise:>10.1f} {seconds:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
