"""The run's status is consistent (issue 26): a ``running`` record whose run lock nobody holds is a
crashed run, even while the process that wrote it lives on (a start that failed before its crash
handler, a test runner, a notebook); a held lock is a running run."""

from __future__ import annotations

import json

from dupl_cli.runs.run_index import mark_run, run_status
from dupl_cli.runs.run_lock import RunLock


def test_running_needs_its_lock(tmp_path):
    mark_run(tmp_path, "running", preset="tiny-cpu")  # this process, alive
    assert run_status(tmp_path) == "running"  # no lock file: a run from before the lock, trusted
    lock = RunLock.acquire(tmp_path)
    assert run_status(tmp_path) == "running"
    lock.release()
    assert run_status(tmp_path) == "crashed"
    record = json.loads((tmp_path / "run.json").read_text())
    (tmp_path / "run.json").write_text(json.dumps({**record, "host": "another-machine"}))
    assert run_status(tmp_path) == "running"  # another machine's lock cannot be probed: trusted


def test_a_failed_preflight_is_not_left_running(run_cli, tmp_path):
    run = tmp_path / "run"
    r = run_cli(
        "train", "--preset", "tiny-cpu", "--set", f"data.root={tmp_path / 'no-data'}", "--run-dir", run
    )
    assert r.exit_code != 0
    assert run_status(run) != "running"
