"""Misbehaving plugins (issue 17 item 10): one line naming plugin and distribution, never a traceback.

A factory that raises, a plugin that exits or is interrupted while importing, and a distribution
whose ``entry_points.txt`` or METADATA is malformed, seen through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.plugins import BACKBONES, DATASETS

runner = CliRunner()


def one_line_error(result, code: int) -> str:
    """The single stderr line of a failed command (no traceback), without its ``error:`` prefix."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0].removeprefix("error: ")


def listed(*args) -> dict[str, dict]:
    result = runner.invoke(app, ["plugins", "list", "--json", *args])
    assert result.exit_code == 0, result.output
    return {r["name"] or r["dist"]: r for r in json.loads(result.stdout)}


def verify_with(adapter: str, root) -> list[str]:
    return [
        "data",
        "verify",
        "--preset",
        "tiny-cpu",
        "--set",
        f"data.adapter={adapter}",
        "--set",
        f"data.root={root}",
    ]


def test_a_dataset_factory_that_raises_is_one_line_naming_plugin_and_distribution(
    fake_distribution, tmp_path
):
    fake_distribution(
        "dupl-raiser",
        "0.3",
        {DATASETS: {"raiser": "dupl_raiser:build"}},
        {"dupl_raiser": "def build(data_settings, split):\n    return {}['no such key']\n"},
    )
    message = one_line_error(runner.invoke(app, verify_with("raiser", tmp_path)), 2)
    assert message == "dataset plugin 'raiser' (dupl-raiser 0.3) failed: KeyError: 'no such key'"


def test_a_backbone_factory_that_raises_stops_train_with_one_line(registered, tiny_data, tmp_path):
    def build(arch, **kwargs):
        raise RuntimeError(f"cannot build {arch}\nsecond line of detail")

    registered(BACKBONES, "crashnet", build, dist="dupl-crash", version="2.0")
    args = [
        "train",
        "--preset",
        "tiny-cpu",
        "--set",
        f"data.root={tiny_data}",
        "--set",
        "model.backbone=crashnet",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    message = one_line_error(runner.invoke(app, args), 2)
    assert (
        message
        == "backbone plugin 'crashnet' (dupl-crash 2.0) failed: RuntimeError: cannot build test_vit ..."
    )


@pytest.mark.parametrize(
    "body, reason",
    [
        ("import sys\nsys.exit(3)\n", "called sys.exit(3)"),
        ("raise SystemExit('bye')\n", "called sys.exit('bye')"),
        ("raise KeyboardInterrupt\n", "interrupted while importing dupl_quitter:build"),
    ],
)
def test_a_plugin_exiting_at_import_is_listed_as_failed(fake_distribution, tmp_path, body, reason):
    fake_distribution(
        "dupl-quitter", "1.0", {BACKBONES: {"quitter": "dupl_quitter:build"}}, {"dupl_quitter": body}
    )
    rows = listed()
    assert (rows["quitter"]["status"], rows["quitter"]["error"]) == ("failed", reason)
    assert rows["vit"]["status"] == "ok" and rows["voc"]["status"] == "ok"  # listed after it, still there

    table = runner.invoke(app, ["plugins", "list"])
    assert table.exit_code == 0 and f"quitter (failed): {reason}" in table.stdout.splitlines()

    # Used for real, it is one line and dupl's own exit code, not the plugin's.
    used = runner.invoke(app, ["--set", "model.backbone=quitter", "config", "show", "--preset", "tiny-cpu"])
    assert used.exit_code == 0  # settings alone import no plugin
    from dupl_cli.core.errors import UserError
    from dupl_cli.plugins import load

    with pytest.raises(UserError) as err:
        load(BACKBONES, "quitter")
    assert str(err.value).startswith("backbone plugin 'quitter' (dupl-quitter 1.0)") and reason in str(
        err.value
    )
    assert err.value.exit_code == (130 if "interrupted" in reason else 2)


@pytest.mark.slow  # a subprocess
def test_sys_exit_at_import_does_not_end_a_real_plugins_list_process(fake_distribution):
    site = fake_distribution(
        "dupl-quitter",
        "1.0",
        {BACKBONES: {"quitter": "dupl_quitter:build"}},
        {"dupl_quitter": "print('chatter on stdout'); import sys; sys.exit(0)\n"},
    ).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-m", "dupl_cli", "plugins", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}  # the plugin's print did not corrupt the JSON
    assert rows["quitter"]["error"] == "called sys.exit(0)" and rows["mit"]["status"] == "ok"
    assert "chatter on stdout" in done.stderr and "Traceback" not in done.stderr


MALFORMED = {
    "no equals sign": (
        b"[dupl.backbones]\nthis line has no equals\n",
        "line 2: 'this line has no equals' is not",
    ),
    "unclosed header": (
        b"[dupl.backbones\nbad = dupl_bad:build\n",
        "line 1: '[dupl.backbones' is not a [group]",
    ),
    "entry before any header": (b"bad = dupl_bad:build\n[dupl.datasets]\n", "line 1: 'bad' comes before any"),
    "bad reference": (
        b"[dupl.backbones]\nbad = not a::reference\n",
        "line 2: 'not a::reference' is not a module",
    ),
    "not utf-8": (b"[dupl.backbones]\nbad = dupl_bad:build\n# caf\xe9\n", "not UTF-8 (byte 43)"),
    "unknown group": (b"[dupl.backbone]\nbad = dupl_bad:build\n", "line 1: unknown group [dupl.backbone]"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_entry_points_txt_is_listed_as_a_broken_distribution(fake_distribution, tmp_path, case):
    text, reason = MALFORMED[case]
    info = fake_distribution("dupl-bad", "0.9", text, {"dupl_bad": "def build(*a, **k):\n    return 1\n"})
    fake_distribution(
        "dupl-good",
        "1.0",
        {DATASETS: {"good": "dupl_good:build"}},
        {"dupl_good": "def build(*a, **k):\n    return 1\n"},
    )
    rows = listed()
    broken = rows["dupl-bad"]
    assert (broken["status"], broken["version"], broken["group"]) == ("broken", "0.9", "")
    assert broken["error"].startswith(f"{info / 'entry_points.txt'}: ") and reason in broken["error"]
    assert "bad" not in rows and rows["good"]["status"] == "ok" and rows["vit"]["status"] == "ok"

    table = runner.invoke(app, ["plugins", "list", "--no-load"])
    assert table.exit_code == 0 and "dupl-bad" in table.stdout and "broken" in table.stdout
    # Asking for a plugin that is missing names the broken distribution too.
    message = one_line_error(runner.invoke(app, verify_with("bad", tmp_path)), 2)
    assert message.startswith("unknown dataset 'bad'") and "could not read the plugins of dupl-bad" in message


def test_unreadable_metadata_is_a_broken_distribution(fake_distribution):
    info = fake_distribution(
        "dupl-meta",
        "1.0",
        {BACKBONES: {"meta": "dupl_meta:build"}},
        metadata=b"Metadata-Version: 2.1\nName: dupl-m\xe9ta\nVersion: 1.0\n",
    )
    broken = listed()["dupl_meta"]
    assert broken["status"] == "broken" and broken["error"] == f"{info / 'METADATA'}: not UTF-8 (byte 34)"


def test_broken_unrelated_distributions_are_not_dupls_business(fake_distribution):
    fake_distribution("other-tool", "1.0", b"[console_scripts]\nno equals here\n\xff\n")
    assert "other-tool" not in listed() and "other_tool" not in listed()
