"""A checkpoint card's settings load through the settings sources: no temporary file, errors name the card."""

from __future__ import annotations

import json
import shutil
import tempfile

import click
import pytest
import typer

from dupl_cli.config import keys
from dupl_cli.config.sources import load_settings
from dupl_cli.runs.card import card_path


def _forbid_temp_files(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("card settings must not go through a temporary file")

    for name in ("mkstemp", "mkdtemp", "TemporaryDirectory", "NamedTemporaryFile", "TemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)


def test_evaluate_reads_the_card_settings_without_writing_anything(tiny_run, tmp_path, monkeypatch):
    from dupl_cli.cli.evaluate_cmd import prepare

    run_dir, data_root, trained = tiny_run
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    monkeypatch.chdir(readonly)
    _forbid_temp_files(monkeypatch)
    before = sorted(p.name for p in run_dir.iterdir())
    ctx = typer.Context(click.Command("evaluate"))
    settings, _, loaded, student = prepare(
        ctx, None, None, ["eval.batch_size=2"], run_dir / "best.safetensors", None, False
    )
    assert settings.model_copy(update={"eval": trained.eval}) == trained  # everything else from the card
    assert settings.eval.batch_size == 2 and settings.data.options == trained.data.options
    assert loaded.path == run_dir / "best.safetensors" and student == "best"
    assert sorted(p.name for p in run_dir.iterdir()) == before and not list(readonly.iterdir())


def test_card_is_a_source_below_env_and_set(tiny_run):
    run_dir, _, trained = tiny_run
    card_file = card_path(run_dir / "best.safetensors")
    table = json.loads(card_file.read_text())["settings"]
    env = {"DUPL_METHOD__ANF__GAMMA": "0.8"}
    r = load_settings(assignments=["train.lr=0.5"], environ=env, card=(card_file, table))
    assert (r.settings.train.lr, r.settings.method.anf.gamma, r.settings.model.arch) == (0.5, 0.8, "test_vit")
    assert r.sources["model.arch"] == f"card {card_file}"
    assert r.sources["data.options.size"] == f"card {card_file}"
    assert r.sources["method.anf.gamma"] == "env DUPL_METHOD__ANF__GAMMA" and r.sources["train.lr"] == "--set"


def test_cards_written_with_flat_keys_still_load(tiny_run):
    run_dir, _, trained = tiny_run
    flat = keys.flatten(trained.model_dump(mode="json"))
    flat.pop("data.options.generate")  # newer than the flat keys: no flat card has it
    old = {}
    back = {new: old_key for old_key, new in keys.renamed().items()}
    for key, value in flat.items():
        section, *rest = back.get(key, key).split(".")
        node = old.setdefault(section, {})
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = value
    assert "anf_gamma" in old["method"] and "demo_size" in old["data"] and "cam_tau_low" in old["crf"]
    assert load_settings(environ={}, card=(run_dir / "best.json", old)).settings == trained
    # Old cards of other adapters carry the demo fields too: those are dropped, not an error.
    voc = {**old, "data": {**old["data"], "adapter": "voc"}}
    assert load_settings(environ={}, card=(run_dir / "best.json", voc)).settings.data.options == {}


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"train": {"lr": "abc"}}, "invalid value for train.lr = 'abc' (from card {card})"),
        ({"train": {"lrr": 1}}, "unknown setting train.lrr = 1 (from card {card}); did you mean train.lr?"),
        (None, "{card}: checkpoint card has no settings table"),
    ],
)
def test_invalid_card_settings_are_one_line_naming_the_card(cli, tmp_path, settings, expected):
    run = tmp_path / "run"
    shutil.copytree(cli.run_dir, run)
    card = run / "best.json"
    content = json.loads(card.read_text())
    if settings is None:
        del content["settings"]
    else:
        content["settings"] = settings
    card.write_text(json.dumps(content))
    result = cli("evaluate", str(run / "best.safetensors"), "--set", f"data.root={cli.data_root}")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected.format(card=card) in lines[0]
