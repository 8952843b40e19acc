"""The typed card (``runs.card``): cards written before it still load, with their weights; every card
a builder writes reads back equal; what is wrong inside a card is one line naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dupl_cli.core.errors import UserError
from dupl_cli.models.dual import build_dual_student
from dupl_cli.runs.card import (
    CARD_FORMAT,
    EXPORT_FORMAT,
    Card,
    ExportRecord,
    ImportRecord,
    export_card_path,
    read_card,
)
from dupl_cli.runs.checkpoint import load_model

OLD_CARDS = Path(__file__).resolve().parents[1] / "fixtures" / "cards"
CHECKPOINT_CARDS = ["train-final.json", "train-best-val.json", "import-one-network.json"]


def _weights_beside(card_file: Path, folder: Path) -> Path:
    """``folder/final.safetensors`` with weights of the card's model (random, as fresh training would
    start) and the old card copied beside it byte for byte."""
    card = Card.read(card_file)
    settings = card.dupl_settings()
    model = build_dual_student(
        settings.model.model_copy(update={"pretrained": "none"}),
        len(card.classes),
        img_size=settings.data.crop_size,
        students=card.students,
    )
    weights = folder / "final.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    shutil.copyfile(card_file, folder / "final.json")
    return weights


@pytest.mark.parametrize("name", CHECKPOINT_CARDS)
def test_old_checkpoint_cards_load_with_their_weights(tmp_path, name):
    weights = _weights_beside(OLD_CARDS / name, tmp_path)
    model, card = load_model(weights)
    raw = json.loads((OLD_CARDS / name).read_text())
    assert card.format == CARD_FORMAT and card.file == tmp_path / "final.json"
    assert (card.classes, card.student, card.students, card.step) == (
        raw["classes"],
        raw["student"],
        raw["students"],
        raw["step"],
    )
    assert card.palette[0] == tuple(raw["palette"][0]) and len(model.students) == raw["students"]
    assert card.student_rule == raw["student_rule"] and card.settings == raw["settings"]
    assert card.to_json() == raw  # nothing dropped, renamed or added on the way through


def test_the_old_cards_say_what_each_kind_records():
    final, best = Card.read(OLD_CARDS / "train-final.json"), Card.read(OLD_CARDS / "train-best-val.json")
    assert (final.selection, best.selection) == ("final", "best-val") and final.metrics["seg_s2"] > 0
    assert final.imported is None and final.export is None and final.versions["dupl"]
    imported = Card.read(OLD_CARDS / "import-one-network.json")
    assert imported.step is None and imported.students == 1 and imported.selection is None
    assert imported.imported.layout.startswith("one network") and imported.imported.tensors == 83
    assert list(imported.imported.dropped) == ["encoder.head.weight"]


def test_old_export_card_loads_with_its_student(tmp_path):
    from dupl_cli.models.backbones import build_backbone
    from dupl_cli.models.student import Student
    from dupl_cli.tasks.export import inference_state, load_exported_student

    old = OLD_CARDS / "export-safetensors.json"
    card = Card.read(old, EXPORT_FORMAT)
    settings = card.dupl_settings()
    model = settings.model.model_copy(update={"pretrained": "none"})
    backbone = build_backbone(model, settings.data.crop_size)
    student = Student(
        backbone, len(card.classes), head_channels=model.head_channels, head_dilation=model.head_dilation
    )
    exported = tmp_path / "best.student2.safetensors"
    save_file(inference_state(student, full=False), str(exported))
    shutil.copyfile(old, export_card_path(exported))
    rebuilt, read = load_exported_student(exported)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(rebuilt.segment(x), student.eval().segment(x))
    assert (read.student, read.export.format, read.export.full) == (2, "safetensors", False)
    assert read.export.check["results"][0]["size"] == [2, 224, 224] and read.export.opset is None
    raw = json.loads(old.read_text())
    assert read.to_json() == {**raw, "students": 2}  # the source checkpoint's count, written since


def test_every_builder_shape_reads_back_equal(tmp_path):
    settings = json.loads((OLD_CARDS / "train-final.json").read_text())["settings"]
    imported = ImportRecord("/w/r.pth", "ab" * 32, "one network (ToCo layout)", True, 83, {"k": "why"})
    check = {"atol": 0.001, "results": [{"size": [1, 64, 96], "max_abs_diff": 0.0}]}
    export = ExportRecord("onnx", 1, True, "run/best.safetensors", [0.5] * 3, [0.2] * 3, check, opset=18)
    cards = [
        Card(["cat", "dog"], [(0, 0, 0), (1, 2, 3), (4, 5, 6)], settings, 2, step=6, selection="best-val"),
        Card(["cat"], [(0, 0, 0), (9, 9, 9)], settings, students=1, student_rule="only", imported=imported),
        Card(["cat"], [(0, 0, 0), (9, 9, 9)], settings, versions={"dupl": "0"}, export=export),
    ]
    for k, card in enumerate(cards):
        expected = EXPORT_FORMAT if card.export else CARD_FORMAT
        card = Card(**{**vars(card), "format": expected})
        card.write(tmp_path / f"{k}.json")
        assert Card.read(tmp_path / f"{k}.json", expected) == card


BROKEN = [
    ({"students": 3}, "'students' must be 1 or 2, not 3"),
    ({"classes": ["cat", "cat"]}, "'classes' repeats a name: ['cat']"),
    ({"palette": [[0, 0, 0]]}, "'palette' must list 3 [r, g, b] colours"),
    ({"students": 1, "student": 2}, "'student' must be 1, not 2"),
    ({"step": -1}, "'step' must be a whole number >= 0, not -1"),
    ({"settings": None}, "checkpoint card has no settings table"),
    ({"selection": 3}, "'selection' must be a text, not 3"),
    ({"import": {"file": "x"}}, "'import' must be a table with dropped, file, layout, module_prefix"),
    ({"format": EXPORT_FORMAT}, "not a dupl checkpoint card (format 'dupl-export/1')"),
]


@pytest.mark.parametrize(("change", "expected"), BROKEN, ids=[e.split(" ")[0] for _, e in BROKEN])
def test_what_is_wrong_inside_a_card_is_one_line_naming_it(tmp_path, change, expected):
    good = {"format": CARD_FORMAT, "classes": ["cat", "dog"], "palette": [[0, 0, 0]] * 3, "settings": {}}
    (tmp_path / "m.json").write_text(json.dumps({**good, **change}))
    with pytest.raises(UserError) as caught:
        read_card(tmp_path / "m.safetensors")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'm.json'}: ") and expected in message and "\n" not in message
    assert Card.peek(tmp_path / "m.json") is None  # listings skip it instead of stopping
