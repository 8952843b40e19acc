"""The CLI's own commands: presets, config show --explain, plugins list, fast torch-free --help."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from typer.testing import CliRunner

from dupl_cli.cli.app import app

runner = CliRunner()


def test_config_show_explain_names_every_source(monkeypatch):
    monkeypatch.setenv("DUPL_TRAIN__LR", "3e-4")
    monkeypatch.setenv("DUPL_TRAIN__SEED", "5")
    result = runner.invoke(
        app,
        ["config", "show", "--preset", "voc-vitb", "--set", "train.lr=1e-4", "--explain", "--format", "json"],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows["train.lr"] == {"value": 1e-4, "source": "--set", "description": "Backbone learning rate"}
    assert rows["train.seed"] == {"value": 5, "source": "env DUPL_TRAIN__SEED", "description": "Global seed"}
    assert rows["model.arch"]["source"] == "preset voc-vitb"
    assert rows["train.eps"]["source"] == "default"
    assert all(row["description"] for row in rows.values()), "every setting needs a description"


def test_config_show_explain_prints_descriptions_of_nested_and_adapter_options(monkeypatch):
    monkeypatch.setenv("DUPL_METHOD__ANF__GAMMA", "0.9")
    result = runner.invoke(app, ["config", "show", "--preset", "tiny-cpu", "--explain"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = lines.index("method.anf.gamma = 0.9  (env DUPL_METHOD__ANF__GAMMA)")
    assert lines[at + 1] == "    Noise posterior threshold gamma"
    at = lines.index("data.options.size = 64  (preset tiny-cpu)")
    assert (
        lines[at + 1] == "    Side of the generated demo images"
    )  # from the demo adapter's own options model
    assert "    Global seed" in lines


def test_config_file_with_non_utf8_bytes_is_one_line_naming_it(tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_bytes(b"[train]\nlr = 1.0 # \xff\n")
    result = runner.invoke(app, ["config", "show", "--config", str(cfg)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {cfg}: config file is not UTF-8 text (byte 0xff at offset 19)"]


def test_config_show_toml_round_trips(tmp_path):
    import tomllib

    result = runner.invoke(app, ["--preset", "demo", "config", "show", "--set", "train.lr=0.5"])
    assert result.exit_code == 0, result.output
    parsed = tomllib.loads(result.output)
    assert parsed["train"]["lr"] == 0.5 and parsed["data"]["adapter"] == "demo"
    assert parsed["method"]["anf"]["min_pixels"] == 100 and parsed["data"]["options"]["size"] == 128
    # What config show prints is a valid --config file giving the same settings.
    cfg = tmp_path / "resolved.toml"
    cfg.write_text(result.output)
    again = runner.invoke(app, ["config", "show", "--config", str(cfg)])
    assert again.output == result.output


def test_unknown_key_exits_2_with_one_line():
    result = runner.invoke(app, ["config", "show", "--set", "train.lrr=1"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: unknown setting train.lrr = 1 (from --set); did you mean train.lr?"]


def test_presets_list_and_show():
    listed = runner.invoke(app, ["presets", "list"])
    assert listed.exit_code == 0 and "voc-vitb21k" in listed.output and "tiny-cpu" in listed.output
    shown = runner.invoke(app, ["presets", "show", "coco-vitb"])
    assert shown.exit_code == 0 and 'base = "voc-vitb"' in shown.output
    missing = runner.invoke(app, ["presets", "show", "voc-vit"])
    assert missing.exit_code == 2 and "did you mean 'voc-vitb'" in missing.output


def test_plugins_list_shows_builtins_with_status():
    result = runner.invoke(app, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {(r["group"], r["name"]): r for r in json.loads(result.output)}
    assert rows[("dupl.backbones", "vit")]["status"] == "ok"
    assert rows[("dupl.backbones", "vit")]["dist"] == "dupl"
    assert ("dupl.datasets", "voc") in rows


def test_help_is_fast_and_does_not_import_torch():
    code = (
        "import sys, time; t = time.perf_counter();"
        "from dupl_cli.cli.app import app;"
        "from typer.testing import CliRunner; r = CliRunner().invoke(app, ['--help']);"
        "assert r.exit_code == 0, r.output;"
        "print('torch' in sys.modules, time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "False", "dupl --help imported torch"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dupl_cli", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - start < 3.0  # < 1 s on an idle machine; slack for a loaded CI box
