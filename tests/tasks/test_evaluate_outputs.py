"""`dupl evaluate`: capped evaluations never replace a full one, and say they were capped."""

from __future__ import annotations

import json
import shutil


def test_a_capped_evaluation_goes_elsewhere_and_records_the_cap(tiny_run, run_cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    assert run_cli("evaluate", run).exit_code == 0
    full = run / "eval" / "val-seg" / "metrics.json"
    before = full.read_text()
    assert json.loads(before)["max_images"] == 0 and json.loads(before)["images"] == 4

    result = run_cli("evaluate", run, "--max-images", "2")
    assert result.exit_code == 0, result.output
    capped = json.loads((run / "eval" / "val-seg-first2" / "metrics.json").read_text())
    assert capped["max_images"] == 2 and capped["images"] == 2 and "capped" in capped["protocol"]["split"]
    assert full.read_text() == before

    refused = run_cli("evaluate", run, "--max-images", "2", "--out", full.parent)
    assert refused.exit_code == 2 and "holds a full evaluation" in refused.stderr
    assert full.read_text() == before
