"""The card: the JSON beside every checkpoint and export, written and read only here.

A checkpoint ``<name>.safetensors`` has its card at ``<name>.json`` (format ``dupl-checkpoint/1``); an
export ``<name>.<ext>`` at ``<name>.<ext>.json`` (format ``dupl-export/1``, one per exported file). The
card carries what is needed to rebuild the model and use its output: the resolved settings, class names,
palette, the student chosen and why, step, metrics and library versions; an import adds where the
weights came from, an export what it takes and gives, a stage-2 segmenter the pseudo-labels it learnt
from. Cards written before this module (plain dicts with the same keys) load unchanged. Torch-free:
``dupl runs`` and ``dupl compare`` read cards too.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dupl_cli.config.sources import card_settings
from dupl_cli.core.atomic import atomic_write_text
from dupl_cli.core.errors import UserError, shown
from dupl_cli.core.textfile import read_json

CARD_FORMAT = "dupl-checkpoint/1"
EXPORT_FORMAT = "dupl-export/1"
HF_WEIGHTS, HF_CARD = "model.safetensors", "config.json"  # an hf export folder: weights and their card
_KIND = {CARD_FORMAT: "checkpoint", EXPORT_FORMAT: "export"}
DEFAULT_RULE = "best by validation during training"  # cards before ``student_rule`` were all chosen so


class _Invalid(ValueError):
    """What is wrong inside a card that parses; ``Card.from_json`` names the file."""


@dataclass(frozen=True)
class ImportRecord:
    """Where imported weights came from (the card's ``import`` table)."""

    file: str
    sha256: str
    layout: str  # two students, or one network
    module_prefix: bool  # the release's keys began with DDP's ``module.``
    tensors: int
    dropped: dict[str, str]  # release key -> why it is not needed at inference


@dataclass(frozen=True)
class ExportRecord:
    """How an export was made and what it takes and gives (the card's ``export`` table)."""

    format: str  # safetensors | onnx | torchscript
    student: int
    full: bool  # classifiers (CAM outputs) kept
    source: str  # the checkpoint it was cut from
    mean: list[float] | None
    std: list[float] | None
    check: dict[str, Any]  # {"atol": x, "results": [{"size": [b, h, w], "max_abs_diff": d}, ...]}
    weights: str | None = None  # safetensors: what the state dict holds
    inputs: list[dict[str, Any]] | None = None  # graph exports
    outputs: list[dict[str, Any]] | None = None
    opset: int | None = None  # ONNX


@dataclass(frozen=True)
class Stage2Record:
    """What a stage-2 segmenter learnt from (the card's ``stage2`` table): the pseudo-label folder and
    its record (``data.pseudo_labels``), and the loss it was trained with."""

    pseudo_labels: str  # the folder
    made_from: str  # the checkpoint the pseudo-labels were made with
    split: str
    source: str  # cam | seg
    crf: bool
    pseudo_miou: float | None = None  # the pseudo-labels' mIoU on the split's ground truth (0..1), if scored
    head: str | None = None  # model.head
    loss: str | None = None  # e.g. "cross-entropy, 255 ignored; confidence weights; online noise filter"


@dataclass(frozen=True)
class Card:
    classes: list[str]  # without background
    palette: list[tuple[int, int, int]]  # background first
    settings: dict[str, Any]  # the resolved settings as JSON
    student: int = 1  # 1-based: the one to use (an export: the one it holds)
    students: int = 2  # how many the checkpoint holds (an export: the checkpoint it was cut from)
    step: int | None = None
    student_rule: str | None = None  # how ``student`` was chosen
    selection: str | None = None  # train.select of the run: final or best-val
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    imported: ImportRecord | None = None
    export: ExportRecord | None = None
    stage2: Stage2Record | None = None  # a stage-2 segmenter's card only
    format: str = CARD_FORMAT
    file: Path | None = field(default=None, compare=False)  # where it was read from; never written

    @property
    def rule(self) -> str:
        return self.student_rule or DEFAULT_RULE

    def alone(self) -> Card:
        """An export card as the card of a checkpoint holding its one student (student 1 of 1)."""
        rule = f"student {self.student} of a {self.students}-student checkpoint ({self.rule}), exported alone"
        return replace(self, student=1, students=1, student_rule=rule)

    def with_versions(self, versions: dict[str, str]) -> Card:
        return replace(self, versions=dict(versions))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.format, "versions": self.versions, "step": self.step}
        out |= {"classes": list(self.classes), "palette": [list(c) for c in self.palette]}
        out |= {"student": self.student, "students": self.students}
        out |= _without_none(student_rule=self.student_rule, selection=self.selection)
        out |= {"metrics": self.metrics, "settings": self.settings}
        if self.imported is not None:
            out["import"] = _without_none(**vars(self.imported))
        if self.export is not None:
            out["export"] = _without_none(**vars(self.export))
        if self.stage2 is not None:
            out["stage2"] = _without_none(**vars(self.stage2))
        return out

    def write(self, card_file: Path) -> None:
        atomic_write_text(card_file, json.dumps(self.to_json(), indent=2))

    @classmethod
    def from_json(cls, data: Any, source: Path, expected: str = CARD_FORMAT) -> Card:
        """The card in ``data`` (parsed JSON) read from ``source``; a one-line UserError naming it."""
        if not isinstance(data, dict) or data.get("format") != expected:
            found = shown(data.get("format")) if isinstance(data, dict) else type(data).__name__
            raise UserError(f"{source}: not a dupl {_KIND[expected]} card (format {found})")
        try:
            return _parse(data, Path(source))
        except _Invalid as exc:
            raise UserError(f"{source}: {exc}") from None

    @classmethod
    def read(cls, card_file: Path, expected: str = CARD_FORMAT) -> Card:
        data = read_json(card_file, f"{_KIND[expected]} card")  # hostile files: one line naming it
        return cls.from_json(data, card_file, expected)

    @classmethod
    def peek(cls, card_file: Path) -> Card | None:
        """A checkpoint card for listings (``dupl runs``, ``dupl compare``): None when it is missing or
        unreadable, so one broken run never hides the others."""
        try:
            return cls.read(card_file) if Path(card_file).is_file() else None
        except UserError:
            return None

    def dupl_settings(self):
        """The settings it was made with, through the settings loader (errors name the card)."""
        return card_settings(self.file or Path("card"), self.settings)


def card_path(weights: Path) -> Path:
    """A checkpoint's card: ``best.safetensors`` -> ``best.json``."""
    return Path(weights).with_suffix(".json")


def export_card_path(exported: Path) -> Path:
    """An export's card: its full name + ``.json``, so the ONNX and TorchScript exports of one student do
    not share (and overwrite) a card."""
    return Path(exported).with_name(Path(exported).name + ".json")


def read_card(weights: Path) -> Card:
    """A checkpoint's card; the ``model.safetensors`` of an hf export folder has its ``config.json``,
    read as the card of a one-student checkpoint."""
    card_file = card_path(weights)
    hf_card = Path(weights).with_name(HF_CARD)
    if Path(weights).name == HF_WEIGHTS and not card_file.is_file() and hf_card.is_file():
        return Card.read(hf_card, EXPORT_FORMAT).alone()
    if not card_file.is_file():
        raise UserError(f"{card_file}: checkpoint card is missing (it must sit beside {Path(weights).name})")
    return Card.read(card_file)


def read_export_card(exported: Path) -> Card:
    card_file = export_card_path(exported)
    if not card_file.is_file():
        raise UserError(f"{card_file}: export card is missing")
    return Card.read(card_file, EXPORT_FORMAT)


def _without_none(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _parse(data: dict[str, Any], source: Path) -> Card:
    """The fields every command relies on, checked in the order a reader meets them."""
    students = data.get("students", 2)
    if students not in (1, 2):
        raise _Invalid(f"'students' must be 1 or 2, not {shown(students)}")
    classes = data.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c.strip() for c in classes)):
        raise _Invalid(f"'classes' must be a non-empty list of class names, not {classes!r:.80}")
    if len(set(classes)) != len(classes):
        raise _Invalid(f"'classes' repeats a name: {sorted({c for c in classes if classes.count(c) > 1})}")
    palette = data.get("palette")
    rgb = lambda c: isinstance(c, list) and len(c) == 3 and all(type(v) is int and 0 <= v <= 255 for v in c)  # noqa: E731
    if not (isinstance(palette, list) and len(palette) == len(classes) + 1 and all(map(rgb, palette))):
        colours = len(classes) + 1
        raise _Invalid(f"'palette' must list {colours} [r, g, b] colours (background and each class)")
    student = data.get("student", 1)
    if type(student) is not int or not 1 <= student <= students:
        raise _Invalid(f"'student' must be 1{' or 2' if students == 2 else ''}, not {shown(student)}")
    step = data.get("step")
    if step is not None and (type(step) is not int or step < 0):
        raise _Invalid(f"'step' must be a whole number >= 0, not {shown(step)}")
    if not isinstance(data.get("settings"), dict):
        raise _Invalid("checkpoint card has no settings table")
    return Card(
        classes=classes,
        palette=[tuple(c) for c in palette],
        settings=data["settings"],
        student=student,
        students=students,
        step=step,
        student_rule=_optional(data, "student_rule", str),
        selection=_optional(data, "selection", str),
        metrics=_optional(data, "metrics", dict) or {},
        versions=_optional(data, "versions", dict) or {},
        imported=_record(ImportRecord, data, "import"),
        export=_record(ExportRecord, data, "export"),
        stage2=_record(Stage2Record, data, "stage2"),
        format=data["format"],
        file=source,
    )


def _optional(data: dict[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise _Invalid(f"{key!r} must be a {'table' if kind is dict else 'text'}, not {value!r:.80}")
    return value


def _record(cls: type, data: dict[str, Any], key: str) -> Any:
    """The ``key`` table as ``cls`` (None when absent); unknown keys in it are left out."""
    table = data.get(key)
    if table is None:
        return None
    known = {f.name for f in fields(cls)}
    required = sorted(f.name for f in fields(cls) if f.default is MISSING)
    if not isinstance(table, dict) or not set(required) <= table.keys():
        raise _Invalid(f"{key!r} must be a table with {', '.join(required)}")
    return cls(**{k: v for k, v in table.items() if k in known})
