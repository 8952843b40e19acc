"""Hostile files are one line (issue 26): every JSON and TOML reader turns a file nested thousands of
levels deep, a number of thousands of digits, a huge value or bytes that are not UTF-8 into one
UserError line naming the file, quoting at most ~200 characters of any value; ``dupl runs list``
lists an unreadable run as such and still shows the others."""

from __future__ import annotations

import json

import pytest

from dupl_cli.config.sources import load_settings
from dupl_cli.core.errors import UserError
from dupl_cli.runs import compare, run_dir, run_index
from dupl_cli.runs.card import Card

LIMIT = 700  # no message quotes more than ~200 characters of one value

HOSTILE_JSON = {
    "deep-array": b"[" * 100000,
    "deep-object": b'{"a":' * 100000,
    "deep-but-parses": b"[" * 500 + b"]" * 500,  # under Python's limit, over any setting's depth
    "long-number": b'{"format": ' + b"1" * 100000 + b"}",
    "not-utf8": b'{"format": "dupl-checkpoint/1", "x": "\xff\xfe"}',
    "huge-value": b'{"format": "dupl-checkpoint/1", "students": "' + b"x" * 10_000_000 + b'"}',
}
HOSTILE_TOML = {
    "deep-array": b"a = " + b"[" * 100000,
    "deep-table": b"a = " + b"{b = " * 100000,
    "deep-but-parses": b"a = " + b"[" * 500 + b"]" * 500,
    "long-number": b"[train]\nseed = " + b"1" * 100000 + b"\n",
    "not-utf8": b"[train]\nrun_name = '\xff'\n",
}


def _one_line(info, path) -> str:
    message = str(info.value)
    assert "\n" not in message and len(message) < LIMIT and str(path) in message, message[:LIMIT]
    return message


@pytest.mark.parametrize("kind", list(HOSTILE_JSON))
def test_cards_trainer_state_and_run_json(tmp_path, kind):
    card = tmp_path / "final.json"
    card.write_bytes(HOSTILE_JSON[kind])
    with pytest.raises(UserError) as info:
        Card.read(card)
    _one_line(info, card)
    assert Card.peek(card) is None
    if kind == "huge-value":
        return  # a valid JSON table: a trainer state or run.json may hold anything
    state = tmp_path / "checkpoints" / "step_3" / "trainer_state.json"
    state.parent.mkdir(parents=True)
    state.write_bytes(HOSTILE_JSON[kind])
    with pytest.raises(UserError) as info:
        run_dir.read_state(state.parent)
    _one_line(info, state)
    (tmp_path / "run.json").write_bytes(HOSTILE_JSON[kind])
    with pytest.raises(UserError) as info:
        run_index.load_run(tmp_path)
    _one_line(info, tmp_path / "run.json")
    assert run_index.read_run(tmp_path) == {} and run_index.summary(tmp_path)["status"] == "unreadable"


@pytest.mark.parametrize("kind", list(HOSTILE_TOML))
def test_preset_and_config_files(tmp_path, kind):
    path = tmp_path / "hostile.toml"
    path.write_bytes(HOSTILE_TOML[kind])
    for load in (
        lambda: load_settings(str(path), environ={}),
        lambda: load_settings(config_file=path, environ={}),
    ):
        with pytest.raises(UserError) as info:
            load()
        message = _one_line(info, path)
        assert "Traceback" not in message


@pytest.mark.parametrize("kind", list(HOSTILE_TOML))
def test_run_config_for_resume_compare_and_show(tmp_path, kind):
    (tmp_path / "config.toml").write_bytes(HOSTILE_TOML[kind])
    for read in (
        lambda: run_dir.changed_settings(tmp_path, {"train": {"lr": 1.0}}),
        lambda: compare.read_settings(tmp_path),
        lambda: run_index.settings_changed_from_preset(tmp_path),
    ):
        with pytest.raises(UserError) as info:
            read()
        _one_line(info, tmp_path / "config.toml")


def test_compare_notes_hostile_metrics_and_goes_on(tmp_path):
    run = tmp_path / "run"
    (run / "eval" / "val").mkdir(parents=True)
    (run / "config.toml").write_text("[train]\nseed = 0\n")
    good = {"step": 6, "validation": {"seg_s1": 0.5}, "best_student": 1}
    lines = [b"[" * 100000, b"1" * 100000, b"\xff\xfe", json.dumps(good).encode()]
    (run / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (run / "eval" / "val" / "metrics.json").write_bytes(b'{"miou": ' + b"[" * 100000)
    notes: list[str] = []
    assert compare.last_validation(run, notes) == good
    assert len(notes) == 3 and all("not valid JSON, line ignored" in n for n in notes)
    assert compare.read_evaluations(run, notes) == {} and "no mIoU in it" in notes[-1]
    assert run_index.validation_history(run) == [good]


def _run(root, name: str, run_json: bytes | None) -> None:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text("[train]\nseed = 0\n")
    if run_json is not None:
        (run / "run.json").write_bytes(run_json)


def test_runs_list_shows_an_unreadable_run_and_the_others(run_cli, tmp_path):
    root = tmp_path / "runs"
    _run(root, "good", json.dumps({"status": "finished", "preset": "tiny-cpu", "started": "1"}).encode())
    _run(root, "deep", b"[" * 100000)
    _run(root, "binary", b"\xff\xfe\x00")
    _run(
        root, "odd-types", json.dumps({"status": ["x"], "preset": {"a": 1}, "started": 5, "pid": []}).encode()
    )
    _run(root, "huge", json.dumps({"status": "x" * 1_000_000, "preset": "y" * 1_000_000}).encode())
    (root / "good" / "final.json").write_bytes(b'{"a":' * 100000)
    r = run_cli("runs", "list", "--set", f"train.runs_root={root}")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output[-2000:]
    for name in ("good", "deep", "binary", "odd-types", "huge"):
        assert name in r.output
    assert "deep: unreadable: " in r.output and "run file is nested too deeply" in r.output
    assert "binary: unreadable: " in r.output and "run file is not UTF-8 text" in r.output
    assert "good: unreadable: " in r.output and "final.json: checkpoint card is nested too deeply" in r.output
    assert max(len(line) for line in r.output.splitlines()) < LIMIT
    r = run_cli("runs", "list", "--set", f"train.runs_root={root}", "--json")
    rows = {row["name"]: row for row in json.loads(r.output)}
    assert rows["deep"]["status"] == "unreadable" and rows["odd-types"]["problem"] is None
    assert rows["odd-types"]["preset"] is None and rows["odd-types"]["status"] == "unknown"


def test_runs_show_names_the_problem(run_cli, tmp_path):
    root = tmp_path / "runs"
    _run(root, "deep", b"[" * 100000)
    r = run_cli("runs", "show", root / "deep")
    assert r.exit_code == 0, r.output
    assert "unreadable: " in r.output and "run file is nested too deeply" in r.output


def test_a_huge_setting_is_named_as_a_setting_not_the_dataset_plugin():
    huge = "x" * 1_000_000
    for assignment, key in (
        (f'data.root="{huge * 10}"', "data.root"),  # 10 MB
        (f'data.root="/data/{"y" * 300}"', "data.root"),
        (f"train.run_name={huge}", "train.run_name"),
        (f'model.pretrained="{huge}"', "model.pretrained"),
        (f"data.options.size={huge}", "data.options.size"),
        (f"data.options.{huge}=1", "data.options.xxx"),
        (f"train.{huge}=1", "train.xxx"),
        (f"{huge}", "--set expects section.key=value"),
        (f"train.lr={'[' * 100000}", "--set train.lr: value is nested too deeply"),
        (f"train.seed={'1' * 100000}", "--set train.seed: value holds a number too long"),
    ):
        with pytest.raises(UserError) as info:
            load_settings("tiny-cpu", assignments=[assignment], environ={})
        message = str(info.value)
        assert key in message and len(message) < LIMIT and "\n" not in message, message[:LIMIT]
        assert "plugin" not in message


def test_hostile_environment_values():
    for env in (
        {"DUPL_EVAL__SCALES": "[" * 100000},
        {"DUPL_DATA__OPTIONS": '{"a":' * 100000},
        {"DUPL_TRAIN__LR": "x" * 10_000_000},
    ):
        name = next(iter(env))
        with pytest.raises(UserError) as info:
            load_settings("tiny-cpu", environ=env)
        message = str(info.value)
        assert name in message and len(message) < LIMIT and "\n" not in message, message[:LIMIT]


def test_a_huge_preset_name():
    with pytest.raises(UserError) as info:
        load_settings("x" * 10_000_000, environ={})
    assert len(str(info.value)) < LIMIT
