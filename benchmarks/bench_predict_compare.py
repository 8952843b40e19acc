"""``infer``, ``evaluate`` and ``pseudo-label`` of this tree against another commit's, end to end.

Each command's task function (what the CLI calls once the model is loaded) runs on the same generated
demo images with the same randomly initialised demo model (timm ``test_vit``, 128-channel head: speed
only): evaluate single-scale on the val split, infer single-scale on the val images as files (masks
written), pseudo-label from CAMs (the default source) on the val split (fresh output folder each pass).
A figure includes a command's fixed costs: evaluate's confusion.png is a matplotlib chart in this tree
(issue 28 item 2; about 1 s per evaluation on this machine), a PIL picture in the first wave.
Each tree runs in its own subprocess with the tree on PYTHONPATH (the base is a ``git worktree`` of
``--base``; before the rooms split the tasks lived in ``dupl_cli/engine``); trees alternate, the order
flipped every round, and a figure is the median over rounds of each run's fastest timed pass.

Usage: python benchmarks/bench_predict_compare.py [--base 6e564dd] [--rounds 3] [--passes 2]
       [--images 96] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from worktree_rounds import head_commit, interleaved_rounds

COMMANDS = ("evaluate", "infer", "pseudo-label")


def _old_api(tree: Path) -> bool:
    """Before the rooms split the tasks lived in dupl_cli/engine."""
    return (tree / "dupl_cli" / "engine" / "evaluate.py").is_file()


def _settings(tree: Path, data: Path, size: int, n_val: int):
    from dupl_cli.config.sources import load_settings

    # The old tree's presets are read from its folder: the installed package maps dupl_cli.presets to
    # this checkout's.
    preset = "demo"
    options = [f"data.options.size={size}", f"data.options.n_val={n_val}", "data.options.n_train=1"]
    if _old_api(tree):
        preset = str(tree / "presets" / "demo.toml")
        options = [f"data.demo_size={size}", f"data.demo_n_val={n_val}", "data.demo_n_train=1"]
    return load_settings(preset, assignments=[f'data.root="{data}"', *options], environ={}).settings


def _loaded(tree: Path, settings, adapter, tmp: str):
    import torch

    from dupl_cli.models.dual import build_dual_student

    torch.manual_seed(0)
    model = build_dual_student(settings.model, num_classes=len(adapter.classes), img_size=128).eval()
    card = {
        "classes": list(adapter.classes),
        "palette": [list(c) for c in adapter.palette],
        "settings": settings.model_dump(mode="json"),
        "student": 1,
        "step": 1,
        "metrics": {},
    }
    if _old_api(tree):
        from dupl_cli.engine.infer import LoadedModel, Runtime
    else:
        from dupl_cli.predict.loop import LoadedModel, Runtime
        from dupl_cli.runs.card import Card

        card = Card(**{**card, "palette": list(adapter.palette)})
    path = Path(tmp) / "bench.safetensors"
    if not _old_api(tree):  # pseudo-label records the checkpoint's digest: it must exist
        from dupl_cli.runs.checkpoint import save_model

        save_model(path.with_suffix(""), model, card)
    return LoadedModel(model, card, path, "given"), Runtime(torch.device("cpu"))


def _tasks(tree: Path):
    if _old_api(tree):
        from dupl_cli.engine.evaluate import EvalRequest, run_evaluate
        from dupl_cli.engine.infer import run_infer
        from dupl_cli.engine.pseudo_label import PseudoLabelRequest, run_pseudo_label
        from dupl_cli.engine.tta import TTAConfig
    else:
        from dupl_cli.predict.tta import TTAConfig
        from dupl_cli.tasks.evaluate import EvalRequest, run_evaluate
        from dupl_cli.tasks.infer import run_infer
        from dupl_cli.tasks.pseudo_label import PseudoLabelRequest, run_pseudo_label
    return EvalRequest, run_evaluate, run_infer, PseudoLabelRequest, run_pseudo_label, TTAConfig


def worker(tree: Path, data: Path, size: int, n_val: int, passes: int) -> dict:
    """In the subprocess: the fastest timed pass of each command, seconds (after one warm-up pass)."""
    import torch

    import dupl_cli
    from dupl_cli.plugins import DATASETS, load

    assert Path(dupl_cli.__file__).resolve().is_relative_to(tree.resolve()), dupl_cli.__file__
    settings = _settings(tree, data, size, n_val)
    adapter = load(DATASETS, "demo")(settings.data, "val")
    EvalRequest, run_evaluate, run_infer, PseudoRequest, run_pseudo, TTAConfig = _tasks(tree)
    files = [str(p) for p in sorted((data / "images").glob("val_*.png"))]
    tta = TTAConfig.from_settings(settings.eval, multiscale=False)
    quiet = {"show_progress": False, "log": lambda _: None}
    with tempfile.TemporaryDirectory() as tmp:
        loaded, runtime = _loaded(tree, settings, adapter, tmp)
        out = Path(tmp)

        def fresh(name: str) -> Path:
            shutil.rmtree(out / name, ignore_errors=True)
            return out / name

        def fns(n: int) -> dict:
            """The three commands on the first ``n`` images (evaluate and pseudo-label capped at ``n``)."""
            cap = 0 if n == len(adapter) else n
            return {
                "evaluate": lambda: run_evaluate(
                    loaded,
                    adapter,
                    settings,
                    runtime,
                    EvalRequest("val", fresh("eval"), max_images=cap),
                    **quiet,
                ),
                "infer": lambda: run_infer(
                    loaded, files[:n], fresh("infer"), settings, runtime, tta=tta, **quiet
                ),
                "pseudo-label": lambda: run_pseudo(
                    loaded,
                    adapter,
                    settings,
                    runtime,
                    PseudoRequest(fresh("pl"), split="val", max_images=cap),
                    **quiet,
                ),
            }

        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        with torch.no_grad():
            for fn in fns(4).values():  # warm-up: every code path once
                fn()
            for _ in range(passes):
                for name, fn in fns(len(adapter)).items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()} | {"images": len(adapter), "files": len(files)}


def _run(tree: Path, data: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree), "--data", str(data)]
    cmd += ["--passes", str(args.passes), "--size", str(args.size), "--images", str(args.images)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"worker for {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _report(args, head: str, runs: dict[str, list[dict]]) -> None:
    import platform

    import torch

    first = runs["this"][0]
    print(
        f"machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, torch "
        f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; base {args.base} vs this "
        f"tree ({head}); {first['images']} demo images {args.size}x{args.size}, {args.rounds} rounds "
        f"interleaved, fastest of {args.passes} passes each (after a 4-image warm-up)"
    )
    header = f"{'command':<14}{'base img/s':>11}{'this img/s':>11}{'speed-up':>10}"
    print(f"{header}   (seconds per round: base | this)")
    for name in COMMANDS:
        b = statistics.median(r[name] for r in runs["base"])
        t = statistics.median(r[name] for r in runs["this"])
        rounds = " ".join(f"{r[name]:.2f}" for r in runs["base"]) + " | "
        rounds += " ".join(f"{r[name]:.2f}" for r in runs["this"])
        n = first["images"]
        print(f"{name:<14}{n / b:>11.1f}{n / t:>11.1f}{b / t:>9.2f}x   ({rounds})")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="6e564dd", help="the commit to compare against (the first wave)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--passes", type=int, default=2, help="timed passes per command and run (after a warm-up)")
    p.add_argument("--images", type=int, default=96, help="demo val images")
    p.add_argument("--size", type=int, default=128, help="side of the demo images")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.size, args.images, args.passes)))
        return
    from dupl_cli.data.demo import write_demo

    with tempfile.TemporaryDirectory() as tmp:
        data = write_demo(Path(tmp) / "data", size=args.size, n_train=1, n_val=args.images)
        runs = interleaved_rounds(
            args.base, args.rounds, Path(tmp), lambda tree: _run(tree, data, args),
            lambda result: " ".join(f"{k} {result[k]:.2f}" for k in COMMANDS),
        )  # fmt: skip
    _report(args, head_commit(), runs)


if __name__ == "__main__":
    main()
