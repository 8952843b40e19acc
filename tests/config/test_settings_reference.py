"""docs/settings.md is the schema's: regenerated, it is the committed file; every key is in it once."""

from __future__ import annotations

import re
from pathlib import Path

from dupl_cli.config import keys
from dupl_cli.config.reference import COMMAND, settings_reference

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_the_committed_reference_is_not_stale():
    assert COMMITTED.read_text(encoding="utf-8") == settings_reference(), f"regenerate it: {COMMAND}"


def test_every_setting_has_one_row_with_a_description():
    rows = re.findall(r"^\| `([a-z0-9_.]+)` \| (.*) \| `(.*)` \| (.*) \|$", settings_reference(), re.M)
    documented = [key for key, *_ in rows]
    schema = [key for key in keys.leaf_keys() if not key.startswith("data.options.")]
    assert sorted(k for k in documented if not k.startswith("data.options.")) == sorted(schema)
    assert len(set(documented)) == len(documented)
    assert {"data.options.size", "data.options.generate"} <= set(documented)  # the demo adapter's
    assert all(description.strip() for *_, description in rows)
    row = dict((key, (kind, default)) for key, kind, default, _ in rows)
    assert row["train.precision"] == ('"auto" \\| "bf16" \\| "fp16" \\| "no"', '"auto"')
    assert row["method.anf.gamma"] == ("float (> 0, < 1)", "0.95")
    assert row["eval.checkpoint"][0] == "path or none"


def test_the_command_writes_or_prints_it(run_cli, tmp_path):
    out = tmp_path / "settings.md"
    result = run_cli("config", "reference", "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == settings_reference()
    printed = run_cli("config", "reference")
    assert printed.exit_code == 0 and printed.stdout == settings_reference()
