"""Issue 16 item 13: global flags after the command, flags shown as flags, no mid-word wrapping,
`data labels` derives labels from the masks as its help says."""

from __future__ import annotations

import shutil


def _root(tiny_data) -> list[str]:
    return ["--preset", "tiny-cpu", "--set", f'data.root="{tiny_data}"']


def test_quiet_and_verbose_work_after_the_command(run_cli, tiny_data):
    loud = run_cli("data", "verify", *_root(tiny_data))
    assert loud.exit_code == 0 and "split" in loud.stdout
    for args in (
        ("data", "verify", "-q", *_root(tiny_data)),
        ("data", "verify", *_root(tiny_data), "--quiet"),
    ):
        quiet = run_cli(*args)
        assert quiet.exit_code == 0, quiet.output
        assert quiet.stdout == ""
    assert run_cli("data", "verify", *_root(tiny_data), "-v").exit_code == 0


def test_flags_show_no_value_type_in_help(run_cli):
    for command in (["evaluate"], ["export"], ["data", "verify"], []):
        text = run_cli(*command, "--help").stdout
        assert "--help" in text and "<bool>" not in text, command


def test_long_paths_are_not_wrapped_when_piped(run_cli, tiny_data, tmp_path):
    deep = tmp_path / ("a-folder-with-a-rather-long-name-" * 3) / "data"
    shutil.copytree(tiny_data, deep)
    result = run_cli("data", "verify", "--preset", "tiny-cpu", "--set", f'data.root="{deep}"')
    assert result.exit_code == 0, result.output
    assert str(deep) in result.stdout


def test_data_labels_come_from_the_masks(run_cli, tiny_data, tmp_path):
    root = tmp_path / "own"
    shutil.copytree(tiny_data, root)
    truth = (root / "labels.csv").read_text().splitlines()
    first_id = truth[1].split(",")[0]
    wrong = [truth[0], f"{first_id},flower boat sign", *truth[2:]]
    (root / "labels.csv").write_text("\n".join(wrong) + "\n")
    sets = ["--preset", "tiny-cpu", "--set", "data.adapter=folder", "--set", f'data.root="{root}"']
    out = tmp_path / "labels.csv"
    result = run_cli("data", "labels", *sets, "--split", "train", "--split", "val", "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(out.read_text().splitlines()[1:]) == sorted(truth[1:])
    refused = run_cli("data", "labels", *sets, "--out", root / "labels.csv")
    assert refused.exit_code == 2 and "labels file the dataset reads" in refused.stderr
