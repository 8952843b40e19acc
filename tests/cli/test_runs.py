"""`dupl runs list / show` and runs/latest (issue 16 item 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _train(run_cli, tiny_data, runs_root, *extra):
    sets = [
        f'data.root="{tiny_data}"',
        f'train.runs_root="{runs_root}"',
        "train.max_iters=3",
        "method.t_seg=1",
        "method.t_anf=2",
        "train.val_every=3",
        "train.ckpt_every=3",
        *extra,
    ]
    args = ["train", "--preset", "tiny-cpu", "-q"]
    for s in sets:
        args += ["--set", s]
    return run_cli(*args)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_runs_are_listed_with_status_and_latest_follows_the_newest(run_cli, tiny_data, tmp_path):
    root = tmp_path / "runs"
    assert _train(run_cli, tiny_data, root, 'train.run_name="first"').exit_code == 0
    assert os.readlink(root / "latest") == "first"
    curves = {
        p.name for p in (root / "first" / "curves").iterdir()
    }  # drawn at the validation (issue 16 item 9)
    assert {"loss.png", "lr.png", "tau_h.png", "noise_share.png", "val_miou.png"} <= curves
    assert _train(run_cli, tiny_data, root, 'train.run_name="second"', "train.lr=1e-3").exit_code == 0
    assert os.readlink(root / "latest") == "second"

    rows = json.loads(run_cli("runs", "list", "--set", f'train.runs_root="{root}"', "--json").stdout)
    assert [r["name"] for r in rows] == ["first", "second"]
    for r in rows:
        assert r["status"] == "finished" and r["step"] == 3 and r["preset"] == "tiny-cpu"
        assert r["dataset"] == f"demo {tiny_data}" and r["size_bytes"] > 0 and r["best"]["step"] == 3
    table = run_cli("runs", "list", "--set", f'train.runs_root="{root}"').stdout
    assert "first" in table and "second" in table and "finished" in table

    shown = run_cli("runs", "show", root / "latest")
    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert "second" in out and "train.lr" in out and "0.001" in out and "train.max_iters" in out
    assert "validation mIoU (%) over time" in out and "seg_s1" in out
    assert "train.batch_size" not in out  # as the preset: not listed


def test_a_run_whose_process_is_gone_is_crashed(run_cli, tmp_path):
    from dupl_cli.runs.run_index import mark_run

    run = tmp_path / "runs" / "gone"
    run.mkdir(parents=True)
    (run / "config.toml").write_text("[train]\nmax_iters = 10\n")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    mark_run(run, "running", preset="tiny-cpu")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "pid": int(dead.stdout)}))
    alive = tmp_path / "runs" / "alive"
    alive.mkdir()
    (alive / "config.toml").write_text("[train]\nmax_iters = 10\n")
    mark_run(alive, "running", preset="tiny-cpu")  # this process
    rows = json.loads(
        run_cli("runs", "list", "--set", f'train.runs_root="{tmp_path / "runs"}"', "--json").stdout
    )
    assert {r["name"]: r["status"] for r in rows} == {"gone": "crashed", "alive": "running"}
