"""Issue 16: what a new user meets in the first hour gives no silent wrong answer."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest


def test_a_mistyped_demo_root_is_an_error_not_new_data(run_cli, tmp_path):
    typo = tmp_path / "mistyped"
    result = run_cli("data", "verify", "--preset", "tiny-cpu", "--set", f'data.root="{typo}"')
    assert result.exit_code == 2
    assert f"{typo}: no demo data there" in result.stderr and "dupl data demo --out" in result.stderr
    assert not typo.exists()


def test_the_demo_is_generated_when_asked(run_cli, tmp_path):
    root = tmp_path / "asked"
    sets = ["--set", f'data.root="{root}"', "--set", "data.options.generate=true"]
    result = run_cli("data", "verify", "--preset", "tiny-cpu", *sets)
    assert result.exit_code == 0, result.output
    assert (root / "classes.txt").is_file()


@pytest.fixture(scope="module")
def unmasked_run(tmp_path_factory, tiny_data):
    """A tiny-cpu run trained from a relative data root on a folder dataset without masks, asked for
    more iterations than its schedule has."""
    from typer.testing import CliRunner

    from dupl_cli.cli.app import app

    here = tmp_path_factory.mktemp("first-hour")
    data = here / "nomasks"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("masks"))
    before = Path.cwd()
    os.chdir(here)
    try:
        args = ["train", "--preset", "tiny-cpu", "--set", "data.adapter=folder", "--set", "data.root=nomasks",
                "--run-dir", "run", "--max-iters", "20"]  # fmt: skip
        result = CliRunner().invoke(app, args, catch_exceptions=False)
    finally:
        os.chdir(before)
    assert result.exit_code == 0, result.output
    return here / "run", data, result


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_max_iters_past_the_schedule_says_so_and_how_to_lengthen_it(unmasked_run):
    run, _, result = unmasked_run
    assert "--max-iters 20 is past the end of the schedule (train.max_iters = 6)" in result.stderr
    assert "--set train.max_iters=20" in result.stderr
    assert json.loads((run / "final.json").read_text())["step"] == 6


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cards_and_config_store_absolute_data_roots(unmasked_run):
    run, data, _ = unmasked_run
    card = json.loads((run / "final.json").read_text())
    assert card["settings"]["data"]["root"] == str(data.resolve())
    assert f'root = "{data.resolve()}"' in (run / "config.toml").read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_without_validation_does_not_claim_a_pick_by_validation(unmasked_run, run_cli, tmp_path):
    run, _, _ = unmasked_run
    card = json.loads((run / "final.json").read_text())
    assert "fixed before training" in card["student_rule"] and "validation" not in card["student_rule"]
    result = run_cli("pseudo-label", run / "final.safetensors", "--out", tmp_path / "pl", "--max-images", "1")
    assert result.exit_code == 0, result.output
    assert "fixed before training" in result.stdout and "best by validation" not in result.stdout
    assert "student 1 (fixed before training" in result.stdout  # the student is named once


@pytest.fixture
def folder_with_unlisted(tiny_data, tmp_path):
    """A folder dataset without split files (split from labels.csv) and two images labels.csv lacks."""
    root = tmp_path / "own"
    shutil.copytree(tiny_data, root, ignore=shutil.ignore_patterns("splits", "demo.json"))
    for name in ("extra_b", "extra_a"):
        shutil.copy(root / "images" / "train_00000.png", root / "images" / f"{name}.png")
    return root


def test_verify_names_images_missing_from_labels_csv(run_cli, folder_with_unlisted):
    sets = ["--set", "data.adapter=folder", "--set", f'data.root="{folder_with_unlisted}"']
    result = run_cli("data", "verify", "--preset", "tiny-cpu", *sets)
    assert result.exit_code == 0, result.output
    assert "2 image(s) under" in result.stdout and "extra_a, extra_b" in result.stdout
    report = json.loads(run_cli("data", "verify", "--preset", "tiny-cpu", *sets, "--json").stdout)
    assert all(split["left_out"] == ["extra_a", "extra_b"] for split in report["splits"])


@pytest.mark.slow
def test_training_warns_about_images_missing_from_labels_csv(run_cli, folder_with_unlisted):
    sets = ["--set", "data.adapter=folder", "--set", f'data.root="{folder_with_unlisted}"']
    result = run_cli("train", "--preset", "tiny-cpu", *sets, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "warning: 2 image(s) under" in result.stderr and "extra_a, extra_b" in result.stderr
