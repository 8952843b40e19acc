"""``benchmarks/bench_ablation.py --dry`` names every ladder row's real CLI call, and the harder
generated set is a valid folder dataset. Both fast: nothing is trained."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_dry_run_prints_the_ladder(tmp_path, capsys):
    bench = _module("bench_ablation")
    bench.main(["--out", str(tmp_path), "--dry", "--seeds", "2", "--iters", "30"])
    lines = capsys.readouterr().out.splitlines()
    trains = [line for line in lines if line.startswith("$ dupl train")]
    assert len(trains) == 2 * len(bench.ROWS)
    for row in ("baseline", "ds", "dis", "dta", "anf", "reg"):
        assert any(f"--preset ablation-{row} " in line for line in trains)
    compat = [line for line in trains if "compat-s1" in line][0]
    assert "--preset ablation-reg" in compat and "compat.anf_two_sided=true" in compat
    assert all("method.t_seg=10" in line and "method.t_anf=20" in line for line in trains)
    assert 'base = "demo"' in (tmp_path / "layer.toml").read_text()
    evals = [line for line in lines if line.startswith("$ dupl evaluate")]
    assert any("best.safetensors --student best --cams" in line for line in evals)


def test_hard_data_is_a_folder_dataset(tmp_path):
    hard = _module("make_hard_data")
    hard.main(["--out", str(tmp_path / "d"), "--size", "64", "--n-train", "3", "--n-val", "2"])
    root = tmp_path / "d"
    classes = (root / "classes.txt").read_text().split()
    assert len(classes) == 12
    rows = (root / "labels.csv").read_text().splitlines()[1:]
    assert len(rows) == 5
    image, mask = hard.generate(0, 0, 0, 64)
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
    present = {classes[k - 1] for k in np.unique(mask) if 0 < k <= len(classes)}
    assert present == set(rows[0].split(",")[1].split())


def test_quality_table_averages_phase_c_lines_per_row(tmp_path):
    import json

    bench = _module("bench_ablation")
    runs = []
    for seed, acc in ((0, 0.6), (1, 0.8)):
        run = tmp_path / f"reg-s{seed}"
        run.mkdir()
        lines = [
            {"step": 1, "phase": "B", "quality/label_acc": 0.1},
            {"step": 2, "phase": "C", "quality/label_acc": acc, "quality/reg_share": 0.05},
            {"step": 3, "phase": "C", "quality/label_acc": acc + 0.1},
            {"step": 3, "validation": {"seg_s1": 50.0}},
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        runs.append(run)
    assert bench.read_quality(runs[0]) == {"label_acc": 65.0, "reg_share": 5.0}
    table = bench.summary({"reg": runs}, bench.read_quality).splitlines()
    assert (
        table[0] == "| row | n | label_acc | reg_share |"
        and table[2] == "| reg | 2 | 75.0 ± 14.1 | 5.0 ± 0.0 |"
    )
