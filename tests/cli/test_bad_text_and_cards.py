"""Non-UTF-8 text inputs and cards that parse but are wrong inside: one line naming the file (17.6, 17.7)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image


def _error_line(r):
    lines = [line for line in r.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.output
    return errors[0]


@pytest.mark.parametrize(
    ("name", "content", "what"),
    [
        (
            "classes.txt",
            b"bo\xe9t\nballoon\ntree\nsign\nflower\n",
            "class list is not UTF-8 text (byte 0xe9 on line 1)",
        ),
        (
            "labels.csv",
            b"id,labels\ntrain_00000,balloon tree\ntrain_00001,\xff\xfeboat\n",
            "labels file is not UTF-8 text (byte 0xff on line 3)",
        ),
        (
            "splits/val.txt",
            b"val_00000\nval_0000\x9b1\n",
            "split list is not UTF-8 text (byte 0x9b on line 2)",
        ),
    ],
)
def test_non_utf8_dataset_text_names_the_file(run_cli, tiny_data, tmp_path, name, content, what):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    (root / name).write_bytes(content)
    r = run_cli("data", "verify", "--set", "data.adapter=folder", "--set", f"data.root={root}")
    assert r.exit_code == 1
    assert f"{root / name}: {what}" in _error_line(r)


def test_non_utf8_config_names_the_file(run_cli, tmp_path):
    config = tmp_path / "my.toml"
    config.write_bytes(b'[train]\nrun_name = "caf\xe9"\n')
    r = run_cli("config", "show", "--config", config)
    assert r.exit_code == 2
    assert f"{config}: config file is not UTF-8 text" in _error_line(r)


CARD_CASES = [
    (
        "no classes",
        lambda c: {k: v for k, v in c.items() if k != "classes"},
        "'classes' must be a non-empty list",
    ),
    ("no settings", lambda c: {k: v for k, v in c.items() if k != "settings"}, "card has no settings table"),
    (
        "short palette",
        lambda c: {**c, "palette": c["palette"][:2]},
        "'palette' must list 6 [r, g, b] colours",
    ),
    ("bad student", lambda c: {**c, "student": 7}, "'student' must be 1 or 2, not 7"),
    ("a list", lambda c: [c], "not a dupl checkpoint card"),
    (
        "invalid setting",
        lambda c: {**c, "settings": {**c["settings"], "train": {"max_iters": 0}}},
        "invalid value for train.max_iters = 0 (from card",
    ),
    (
        "unknown model",
        lambda c: {
            **c,
            "settings": {**c["settings"], "model": {**c["settings"]["model"], "arch": "no_such_net"}},
        },
        "cannot build its model: ",
    ),
]


@pytest.fixture(scope="module")
def card_run(tmp_path_factory, tiny_data):
    from dupl_cli.config.sources import load_settings
    from dupl_cli.models.dual import build_dual_student
    from dupl_cli.runs.card import Card
    from dupl_cli.runs.checkpoint import save_model

    settings = load_settings("tiny-cpu", assignments=[f'data.root="{tiny_data}"'], environ={}).settings
    model = build_dual_student(settings.model, num_classes=5, img_size=settings.data.crop_size)
    classes = ["boat", "balloon", "tree", "sign", "flower"]
    palette = [(k, k, k) for k in range(len(classes) + 1)]
    card = Card(classes, palette, settings.model_dump(mode="json"), step=3)
    run = tmp_path_factory.mktemp("cards") / "good"
    save_model(run / "best", model, card)
    return run


def _card_copy(card_run, tmp_path, mutate):
    run = tmp_path / "run"
    shutil.copytree(card_run, run)
    card = json.loads((run / "best.json").read_text())
    (run / "best.json").write_text(json.dumps(mutate(card)))
    return run


@pytest.mark.parametrize(("case", "mutate", "expected"), CARD_CASES, ids=[c[0] for c in CARD_CASES])
@pytest.mark.parametrize("preset", [False, True])
def test_cards_wrong_inside_are_one_line(run_cli, card_run, tmp_path, case, mutate, expected, preset):
    run = _card_copy(card_run, tmp_path, mutate)
    extra = ["--preset", "tiny-cpu"] if preset else []
    r = run_cli("export", run, "--out", tmp_path / "x.safetensors", *extra)
    assert r.exit_code == 2
    line = _error_line(r)
    assert str(run / "best.json") in line and expected in line
    assert not (tmp_path / "x.safetensors").exists()


def test_card_classes_that_do_not_fit_the_weights(run_cli, card_run, tmp_path):
    def more(card):
        return {**card, "classes": [*card["classes"], "kite"], "palette": [*card["palette"], [9, 9, 9]]}

    run = _card_copy(card_run, tmp_path, more)
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    r = run_cli("infer", run, tmp_path / "in", "--out", tmp_path / "o")
    assert r.exit_code == 2
    line = _error_line(r)
    assert f"{run / 'best.safetensors'}: weights do not match its card {run / 'best.json'} (6 classes" in line
    assert "size mismatch for" in line
    card = _card_copy(card_run, tmp_path / "u", lambda c: c) / "best.json"
    card.write_bytes(card.read_bytes().replace(b'"boat"', b'"bo\xe4t"'))
    r = run_cli("infer", tmp_path / "u" / "run", tmp_path / "in", "--out", tmp_path / "o")
    assert r.exit_code == 2 and f"{card}: checkpoint card is not UTF-8 text" in _error_line(r)
