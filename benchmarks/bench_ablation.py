"""The paper's Table-4 ablation ladder at toy scale, through the real CLI (docs/method.md §3, §10).

Trains, for every row and seed, ``dupl train --preset ablation-<row> --config <layer>`` where the
layer is ``base = "demo"`` plus the data root: the demo preset's model, data, schedule and
optimiser sit above the ablation preset (``--config`` outranks ``--preset``), and since the demo
preset names no ``method.students`` / ``method.use_*`` the row's switches survive. The resolved
``config.toml`` of a row is therefore exactly ``dupl config show --preset demo`` with the row's
switches (plus ``train.seed``, ``train.select = "best-val"`` and the size options below). Rows:

    baseline  ds  dis  dta  anf  reg (= full DuPL)  compat (full DuPL with the release's training
    behaviour: compat.ptc_pixel_box, reg_include_padding, anf_two_sided, delayed_weights)

``compat.eval_gt_student`` is an evaluation rule, not training behaviour: every row is evaluated
the same way (never by the evaluated split's ground truth).

Each finished run is evaluated with ``dupl evaluate`` on the val split, single scale, no CRF:

    val-seg-s<K>        segmentation head of student K (``--student``) of the final checkpoint
    val-cams-s<K>       its CAM pseudo-labels (multi-scale CAM, GT image labels, threshold 0.5)
    val-seg-bestval     best.safetensors, student chosen by val seg mIoU during training:
    val-cams-bestval    optimistic on val (val's labels chose the checkpoint and the student)

and ``--train-cams`` adds train-cams-s<K> (pseudo-label quality on the training images). Prints
one line per run as it finishes, then a mean ± std table per row and the ``dupl compare`` table
(its CAM / aux-CAM / seg columns are the last training-time validation record of the student
final.json names, i.e. the best-val student under train.select = best-val).

Time (2 vCPU, CPU only): one demo training (450 iterations, 128 px, batch 8) takes ~4 min on an
idle machine (the one-student baseline less, phase C more), the four evaluations ~1 min. The
default (7 rows x 3 seeds) is about 2 h; ``--rows baseline reg --seeds 1`` about 10 min;
``--quick`` (12 iterations, 16 train / 8 val images of 64 px) about 2 min per run. On a box
shared with other jobs expect 2-3x that (measured: 4.5 to 14 min per demo training). Finished
runs (final.safetensors present) and evaluations (metrics.json present) are kept on a rerun, and
an interrupted run resumes from its last checkpoint.

    python benchmarks/bench_ablation.py --out /tmp/ablation [--rows baseline reg] [--seeds 3]
    python benchmarks/bench_ablation.py --out /tmp/hard --data /tmp/hard-data --iters 450

With ``--set train.label_quality=true`` (data with training masks) it also prints each row's
label quality in phase C (``quality/*`` of docs/method.md §8.1, mean of the log lines).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROWS = {
    "baseline": ("ablation-baseline", []),
    "ds": ("ablation-ds", []),
    "dis": ("ablation-dis", []),
    "dta": ("ablation-dta", []),
    "anf": ("ablation-anf", []),
    "reg": ("ablation-reg", []),
    "compat": (
        "ablation-reg",
        [
            "compat.ptc_pixel_box=true",
            "compat.reg_include_padding=true",
            "compat.anf_two_sided=true",
            "compat.delayed_weights=true",
        ],
    ),
}
REPO = Path(__file__).resolve().parents[1]
DUPL = [sys.executable, "-m", "dupl_cli"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (runs, data, tables)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="ladder rows")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (train.seed)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--student", type=int, default=1, choices=(1, 2), help="student of the final checkpoint")
    p.add_argument("--data", type=Path, help="existing folder-layout dataset (default: generate the demo)")
    p.add_argument("--data-size", type=int, default=128, help="generated demo image side")
    p.add_argument("--n-train", type=int, default=300, help="generated demo training images")
    p.add_argument("--n-val", type=int, default=60, help="generated demo validation images")
    p.add_argument("--iters", type=int, help="train.max_iters; t_seg, t_anf, validation at 1/3, 2/3")
    p.add_argument("--crop", type=int, help="data.crop_size (default: the demo's 128)")
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for every run")
    p.add_argument("--train-cams", action="store_true", help="also score CAM pseudo-labels on train")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of each subprocess (on a 2-core box shared with other jobs, phase C ran "
        "~10x faster with 1 than with 2: 2.9 vs 0.3 images/s)",
    )
    p.add_argument(
        "--src",
        type=Path,
        help="run the CLI from this source tree (a `git archive` snapshot with presets/ moved into "
        "dupl_cli/) instead of the checkout, so edits made meanwhile do not reach later runs",
    )
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (1 on a shared 2-core box)")
    p.add_argument("--quick", action="store_true", help="smoke: 12 iterations on 16+8 images of 64 px")
    p.add_argument("--dry", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.crop, args.data_size, args.n_train, args.n_val = 12, 64, 64, 16, 8
    return args


def schedule_sets(args) -> list[str]:
    """Size options as --set: the demo schedule scaled to --iters (its thirds: t_seg, t_anf, validation)."""
    sets = ["train.select=best-val"]  # keeps best.safetensors for the best-by-val evaluation
    if args.iters:
        third = max(args.iters // 3, 1)
        sets += [
            f"train.max_iters={args.iters}",
            f"method.t_seg={third}",
            f"method.t_anf={2 * third}",
            f"train.val_every={third}",
            f"train.ckpt_every={third}",
            f"train.warmup_iters={min(50, max(args.iters // 9, 1))}",
            f"train.log_every={min(25, third)}",
        ]
    if args.crop:
        sets.append(f"data.crop_size={args.crop}")
    if args.quick:  # the tiny set has few foreground pixels per map and 2-image batches leave PAR cheap
        sets += ["train.batch_size=4", "train.reference_batch=4", "method.anf.min_pixels=10"]
    return sets + args.sets


def prepare_layer(args) -> Path:
    """The demo data (generated once) and the config layer every run puts above its ablation preset."""
    args.out.mkdir(parents=True, exist_ok=True)
    layer = args.out / "layer.toml"
    if args.data is not None:  # any folder-layout dataset: the folder adapter with its own splits
        root, table = args.data.resolve(), 'adapter = "folder"\ntrain_split = "train"\nval_split = "val"\n'
    else:
        root = (args.out / "data").resolve()
        gen = ["--size", str(args.data_size), "--n-train", str(args.n_train), "--n-val", str(args.n_val)]
        if not (root / "classes.txt").is_file():
            run_cli(["data", "demo", "--out", str(root), *gen], args, log=None)
        table = ""
    options = (
        ""
        if args.data is not None
        else f"\n[data.options]\nsize = {args.data_size}\nn_train = {args.n_train}\nn_val = {args.n_val}\n"
    )
    layer.write_text(f'base = "demo"\n\n[data]\n{table}root = "{root}"\n{options}')
    return layer


def run_cli(cli_args: list[str], args, log: Path | None) -> float:
    """One dupl subprocess (its output to ``log``); returns its wall time. Fails loudly."""
    cmd = [*DUPL, *cli_args]
    print("$ dupl " + " ".join(cli_args), flush=True)
    if args.dry:
        return 0.0
    start = time.perf_counter()
    with open(log or os.devnull, "a", encoding="utf-8") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, **cli_env(args))
    if done.returncode != 0:
        raise RuntimeError(f"failed ({done.returncode}): dupl {' '.join(cli_args)} (log: {log})")
    return time.perf_counter() - start


def cli_env(args) -> dict:
    """cwd and environment of a dupl subprocess: `python -m` puts the cwd first on sys.path."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "COLUMNS": "240"}
    if args.src is None:
        return {"cwd": REPO, "env": env}
    src = str(args.src.resolve())
    return {"cwd": src, "env": {**env, "PYTHONPATH": src}}


def evaluations(args, run: Path) -> list[tuple[str, list[str]]]:
    """(tag, dupl evaluate arguments) of one run; the tag is the eval/ folder `dupl compare` reads."""
    k = str(args.student)
    final, best = str(run / "final.safetensors"), str(run / "best.safetensors")
    jobs = [
        (f"val-seg-s{k}", [final, "--student", k]),
        (f"val-cams-s{k}", [final, "--student", k, "--cams"]),
        ("val-seg-bestval", [best, "--student", "best"]),
        ("val-cams-bestval", [best, "--student", "best", "--cams"]),
    ]
    if args.train_cams:
        jobs.append((f"train-cams-s{k}", [final, "--student", k, "--cams", "--split", "train"]))
    return jobs


def train_and_evaluate(args, layer: Path, row: str, seed: int) -> Path:
    preset, extra = ROWS[row]
    run = (args.out / "runs" / f"{row}-s{seed}").resolve()
    sets = [*schedule_sets(args), f"train.seed={seed}", *extra]
    took = 0.0
    if not (run / "final.safetensors").is_file():
        run.mkdir(parents=True, exist_ok=True)
        cli = ["train", "--preset", preset, "--config", str(layer), "--run-dir", str(run)]
        if any((run / "checkpoints").glob("step_*")):  # an interrupted run continues where it stopped
            cli.append("--resume")
        took = run_cli([*cli, *(a for s in sets for a in ("--set", s))], args, run / "bench.log")
    for tag, eval_args in evaluations(args, run):
        if not (run / "eval" / tag / "metrics.json").is_file():
            run_cli(["evaluate", *eval_args, "--out", str(run / "eval" / tag)], args, run / "bench.log")
    if not args.dry:
        scores = "  ".join(f"{t} {v:.1f}" for t, v in read_scores(run).items())
        print(f"{row} seed {seed}: trained in {took / 60:.1f} min | {scores}", flush=True)
    return run


def attempt(args, layer: Path, row: str, seed: int) -> tuple[str, Path] | None:
    """One run; a failure is reported and the others go on (a rerun picks it up again)."""
    try:
        return row, train_and_evaluate(args, layer, row, seed)
    except RuntimeError as exc:
        print(f"{row} seed {seed}: {exc}", flush=True)
        return None


def read_scores(run: Path) -> dict[str, float]:
    """mIoU (%) of every evaluation of a run, by tag."""
    out = {}
    for path in sorted((run / "eval").glob("*/metrics.json")):
        out[path.parent.name] = 100.0 * json.loads(path.read_text())["miou"]
    return out


def read_quality(run: Path) -> dict[str, float]:
    """Each ``quality/*`` figure (%, docs/method.md §8.1) averaged over the run's phase-C log lines."""
    values: dict[str, list[float]] = {}
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        if record.get("phase") == "C":
            for key, value in record.items():
                if key.startswith("quality/"):
                    values.setdefault(key.removeprefix("quality/"), []).append(100.0 * value)
    return {key: statistics.fmean(v) for key, v in values.items()}


def summary(runs: dict[str, list[Path]], read=read_scores) -> str:
    """Mean ± std (sample, n - 1) per row of each figure ``read`` gives a run, as a Markdown table."""
    tags = sorted({t for paths in runs.values() for p in paths for t in read(p)})
    lines = ["| row | n | " + " | ".join(tags) + " |", "|---|---|" + "---|" * len(tags)]
    for row, paths in runs.items():
        cells = []
        for tag in tags:
            values = [s[tag] for s in map(read, paths) if tag in s]
            std = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            cells.append(f"{statistics.fmean(values):.1f}{std}" if values else "–")
        lines.append(f"| {row} | {len(paths)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    layer = prepare_layer(args)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [(row, seed) for seed in seeds for row in args.rows]  # a whole ladder per seed first
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        done = [d for d in pool.map(lambda job: attempt(args, layer, *job), jobs) if d is not None]
    if args.dry or not done:
        return
    runs: dict[str, list[Path]] = {}
    for row, run in done:
        runs.setdefault(row, []).append(run)
    table = summary(runs)
    print(
        f"\nmIoU % (val, single scale, no CRF; student {args.student} of the final checkpoint, and "
        "the best-by-val checkpoint and student), mean ± std over seeds:\n" + table,
        flush=True,
    )
    quality = summary(runs, read_quality)
    if any(read_quality(p) for paths in runs.values() for p in paths):
        table += "\n\nLabel quality, % (phase C, training views):\n" + quality
        print("\nLabel quality % (mean of the phase-C log lines, training views, both students; "
              "docs/method.md §8.1), mean ± std over seeds:\n" + quality, flush=True)  # fmt: skip
    (args.out / "summary.md").write_text(table + "\n")
    compare = ["compare", *(str(r) for _, r in done), "--csv", str(args.out / "compare.csv")]
    subprocess.run([*DUPL, *compare], check=True, **cli_env(args))


if __name__ == "__main__":
    main()
