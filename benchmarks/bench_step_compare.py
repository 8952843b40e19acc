"""This tree's training step against another commit's, per phase, on the release parity fixture batch.

DeiT-Tiny students with the fixture's weights, batch 2, 224 px, the release's step configuration, at
each phase's fixture iteration; forward + losses + backward (no optimiser step, so every timed step
does the same work). Each tree runs in its own subprocess with the tree on PYTHONPATH; trees alternate
(interleaved, the order flipped every round) and the figure is the median over rounds of each run's
fastest timed step. Needs DUPL_RELEASE_FIXTURES (or the default fixture path).

Usage: python benchmarks/bench_step_compare.py [--base 987e1d5] [--rounds 3] [--steps 2]
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

from worktree_rounds import head_commit, interleaved_rounds


def worker(tree: Path, steps: int) -> dict:
    """In the subprocess: seconds per phase of the tree on PYTHONPATH (checked)."""
    import torch

    sys.path[:0] = [str(tree / "tests"), str(tree / "tests" / "method")]  # release_fixture, then or now
    import release_fixture as rf
    from test_parity_losses import _release_batch, release_config

    import dupl_cli
    from dupl_cli.method import step as step_module
    from dupl_cli.models.dual import DualStudent

    assert Path(dupl_cli.__file__).resolve().is_relative_to(tree.resolve()), dupl_cli.__file__
    common, meta, config = rf.tensors("common"), rf.meta(), release_config()
    model = DualStudent(rf.load_students())
    batch = _release_batch(common)
    batch["max_present"] = int((batch["labels"] > 0).sum(1).max())  # as the train loader's collate adds
    out = {}
    for phase in rf.phases():
        t = meta["phases"][phase]["n_iter"]
        times = []
        for i in range(steps + 1):
            gen = torch.Generator().manual_seed(0)
            start = time.perf_counter()
            result = step_module.training_step(model, batch, t, config, generator=gen)
            result.loss.backward()
            model.zero_grad(set_to_none=True)
            if i:  # the first is warm-up
                times.append(time.perf_counter() - start)
        out[phase] = min(times)
    return out


def _run(tree: Path, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree), "--steps", str(steps)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"worker for {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="987e1d5", help="the commit to compare against")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="timed steps per phase and run (after one warm-up)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = interleaved_rounds(
            args.base, args.rounds, Path(tmp), lambda tree: _run(tree, args.steps),
            lambda result: " ".join(f"{k} {v:.3f}" for k, v in result.items()),
        )  # fmt: skip
    import platform

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"base {args.base} vs this tree ({head_commit()}), {args.rounds} rounds interleaved"
    )
    print(f"{'phase':<6}{'base s/step':>12}{'this s/step':>12}{'speed-up':>10}   (per round: base | this)")
    for phase in runs["base"][0]:
        b = statistics.median(x[phase] for x in runs["base"])
        t = statistics.median(x[phase] for x in runs["this"])
        rounds = (
            " ".join(f"{x[phase]:.2f}" for x in runs["base"])
            + " | "
            + " ".join(f"{x[phase]:.2f}" for x in runs["this"])
        )
        print(f"{phase:<6}{b:>12.3f}{t:>12.3f}{b / t:>9.2f}x   ({rounds})")


if __name__ == "__main__":
    main()
