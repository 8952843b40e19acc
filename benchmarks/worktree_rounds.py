"""What bench_step_compare.py and bench_predict_compare.py share: this tree against another commit,
checked out as a temporary ``git worktree``, timed in interleaved rounds (base first on even rounds,
this tree first on odd ones) so drift in the machine's load falls on both alike."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def head_commit() -> str:
    """This checkout's short HEAD (what "this tree" was built on)."""
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip()


def interleaved_rounds(
    base_rev: str, rounds: int, tmp: Path, run: Callable[[Path], dict], shown: Callable[[dict], str]
) -> dict[str, list[dict]]:
    """``run(tree)`` for the worktree of ``base_rev`` (under ``tmp``) and for this tree, ``rounds``
    times each, interleaved; prints ``shown(result)`` per run; the worktree is removed afterwards."""
    base = Path(tmp) / "base"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base), base_rev], check=True
    )
    try:
        trees = {"base": base, "this": ROOT}
        runs: dict[str, list[dict]] = {"base": [], "this": []}
        for r in range(rounds):
            for name in ["base", "this"] if r % 2 == 0 else ["this", "base"]:
                runs[name].append(run(trees[name]))
                print(f"round {r + 1} {name}: {shown(runs[name][-1])}", flush=True)
        return runs
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
