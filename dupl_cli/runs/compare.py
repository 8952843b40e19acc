"""``dupl compare``: runs side by side, runs that differ only in ``train.seed`` as mean ± std.

Numbers come from files the run directory already holds, never from a new computation:

* the last ``validation`` record of ``metrics.jsonl`` (training-time protocol, docs/method.md §11):
  CAM, aux-CAM and segmentation mIoU of the student the run's card names (``final.json``, else
  ``best.json``; without a card, the record's ``best_student``);
* each ``eval/<tag>/metrics.json`` written by ``dupl evaluate`` (tag = split, source, -ms, -crf):
  its mIoU and over-activation, the mean over the foreground classes present in the ground truth of
  FP / (TP + FP) (paper Fig. 7);
* for a stage-2 run (``data.pseudo_labels``), the mIoU of the pseudo-labels it was trained on, as its
  card records them (``pseudo-labels``), so a stage-1 run and its stage-2 run read side by side.

Settings come from ``config.toml`` (else the card). Torch-free: only JSON and TOML are read.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dupl_cli.config.keys import flatten
from dupl_cli.core.errors import UserError
from dupl_cli.core.textfile import parse_json, read_json, read_toml
from dupl_cli.runs.card import Card

SEED = "train.seed"
NEUTRAL = (
    "train.run_name",
    "train.runs_root",
    "train.log_every",
    "train.image_every",
    "train.tracker",
    "data.num_workers",
    "crf.workers",
    "eval.checkpoint",
)
"""Settings that name, place or log a run but change none of its numbers: never a difference."""

VALIDATION = (("cam", "CAM"), ("aux_cam", "aux-CAM"), ("seg", "seg"))
PSEUDO = "pseudo-labels"
"""A stage-2 run's column: the mIoU of the pseudo-labels it learnt from (its card's ``stage2`` table)."""


@dataclass
class RunSummary:
    path: Path
    name: str
    settings: dict[str, Any]  # dotted keys
    values: dict[str, float] = field(default_factory=dict)  # column -> number (%)
    step: int | None = None  # of the validation record
    student: int | None = None
    student_from: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def seed(self) -> Any:
        return self.settings.get(SEED)


def _json_file(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path, "metrics file")
    except UserError:  # not UTF-8, not JSON, nested too deep: the caller notes it and goes on
        return None
    return data if isinstance(data, dict) else None


def _card(run: Path) -> Card | None:
    for name in ("final.json", "best.json"):
        if (run / name).is_file():
            return Card.peek(run / name)
    return None


def read_settings(run: Path) -> dict[str, Any]:
    config = run / "config.toml"
    if config.is_file():
        return flatten(read_toml(config, "run config"))
    card = _card(run)
    if card is not None:
        return flatten(card.settings)
    raise UserError(f"{run}: not a run directory (no config.toml, final.json or best.json)")


def last_validation(run: Path, notes: list[str]) -> dict[str, Any] | None:
    """The last ``validation`` record; unreadable lines are noted, not silently skipped."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    last = None
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line, f"{path}:{lineno}", "metrics line")
        except UserError:
            notes.append(f"{path}:{lineno}: not valid JSON, line ignored")
            continue
        if isinstance(record, dict) and isinstance(record.get("validation"), dict):
            last = record
    return last


def over_activation(payload: dict[str, Any]) -> float | None:
    """Mean FP / (TP + FP) over the foreground classes present in the ground truth, in %."""
    table = payload.get("per_class")
    per_class = list(table.values())[1:] if isinstance(table, dict) else []  # background first
    rates = [
        c["over_activation"]
        for c in per_class
        if isinstance(c, dict) and c.get("present_in_gt") and type(c.get("over_activation")) in (int, float)
    ]
    return 100.0 * statistics.fmean(rates) if rates else None


def read_evaluations(run: Path, notes: list[str]) -> dict[str, float]:
    values: dict[str, float] = {}
    for path in sorted((run / "eval").glob("*/metrics.json")):
        payload = _json_file(path)
        if payload is None or not isinstance(payload.get("miou"), (int, float)):
            notes.append(f"{path}: no mIoU in it (not an evaluate metrics.json?), ignored")
            continue
        tag = path.parent.name
        values[f"{tag} mIoU"] = 100.0 * payload["miou"]
        rate = over_activation(payload)
        if rate is not None:
            values[f"{tag} over-act."] = rate
    return values


def read_run(path: Path) -> RunSummary:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such run directory")
    run = RunSummary(path, str(path).rstrip("/") or str(path), read_settings(path))
    record = last_validation(path, run.notes)
    if record is not None:
        card = _card(path)
        if card is not None:
            run.student, run.student_from = card.student, "card"
        else:
            run.student, run.student_from = record.get("best_student", 1), "validation record"
        run.step = record.get("step")
        scores = record["validation"]
        for key, _ in VALIDATION:
            value = scores.get(f"{key}_s{run.student}")
            if isinstance(value, (int, float)):
                run.values[key] = float(value)
        max_iters = run.settings.get("train.max_iters")
        if isinstance(run.step, int) and isinstance(max_iters, int) and run.step < max_iters:
            run.notes.append(f"last validation at step {run.step} of train.max_iters {max_iters}")
    card = _card(path)
    if card is not None and card.stage2 is not None and isinstance(card.stage2.pseudo_miou, (int, float)):
        run.values[PSEUDO] = 100.0 * card.stage2.pseudo_miou
    run.values.update(read_evaluations(path, run.notes))
    if not run.values:
        run.notes.append("no metrics: no validation record in metrics.jsonl and no eval/*/metrics.json")
    return run


def differing(runs: list[RunSummary]) -> list[str]:
    """Setting keys whose value is not the same in every run (seed included, neutral keys not)."""
    keys = sorted({k for r in runs for k in r.settings} - set(NEUTRAL))
    missing = object()
    return [k for k in keys if len({json.dumps(r.settings.get(k, missing), default=str) for r in runs}) > 1]


def groups(runs: list[RunSummary]) -> list[list[RunSummary]]:
    """Runs with equal settings apart from the seed (and neutral keys), in order of first appearance."""
    out: dict[str, list[RunSummary]] = {}
    for run in runs:
        key = json.dumps(
            {k: v for k, v in run.settings.items() if k != SEED and k not in NEUTRAL},
            sort_keys=True,
            default=str,
        )
        out.setdefault(key, []).append(run)
    return list(out.values())


def columns(runs: list[RunSummary], eval_tags: list[str] | None = None) -> list[str]:
    """Validation columns first, then every evaluation's (or only the tags asked for)."""
    found = {k for r in runs for k in r.values}
    cols = [key for key, _ in VALIDATION if key in found] + [PSEUDO] * (PSEUDO in found)
    tags = eval_tags or sorted({k.rsplit(" ", 1)[0] for k in found if k.endswith(" mIoU")})
    for tag in tags:
        cols += [f"{tag} mIoU", f"{tag} over-act."]
    return cols


@dataclass
class GroupSummary:
    runs: list[RunSummary]
    mean: dict[str, float]
    std: dict[str, float | None]  # sample std (n - 1); None for one value
    count: dict[str, int]  # runs with a value in each column


def summarise(group: list[RunSummary], cols: list[str]) -> GroupSummary:
    mean, std, count = {}, {}, {}
    for col in cols:
        values = [r.values[col] for r in group if col in r.values and math.isfinite(r.values[col])]
        count[col] = len(values)
        if values:
            mean[col] = statistics.fmean(values)
            std[col] = statistics.stdev(values) if len(values) > 1 else None
    return GroupSummary(group, mean, std, count)


@dataclass
class Comparison:
    runs: list[RunSummary]
    columns: list[str]
    differing: list[str]
    groups: list[GroupSummary]


def compare(paths: list[Path], eval_tags: list[str] | None = None) -> Comparison:
    resolved = [Path(p).resolve() for p in paths]
    twice = sorted({str(p) for p, r in zip(paths, resolved, strict=True) if resolved.count(r) > 1})
    if twice:
        raise UserError(f"{twice[0]}: given more than once")
    runs = [read_run(Path(p)) for p in paths]
    for tag in eval_tags or []:
        for run in runs:
            if f"{tag} mIoU" not in run.values:
                run.notes.append(f"no eval/{tag}/metrics.json")
    cols = columns(runs, eval_tags)
    return Comparison(runs, cols, differing(runs), [summarise(g, cols) for g in groups(runs)])


def ordered(comparison: Comparison) -> list[RunSummary | GroupSummary]:
    """Each group's runs, then its mean ± std when it has two or more runs."""
    out: list[RunSummary | GroupSummary] = []
    for group in comparison.groups:
        out += group.runs
        if len(group.runs) > 1:
            out.append(group)
    return out


def _run_json(run: RunSummary, keys: list[str]) -> dict[str, Any]:
    return {
        "run": run.name,
        "path": str(run.path.resolve()),
        "settings": {k: run.settings.get(k) for k in keys},
        "validation_step": run.step,
        "student": run.student,
        "student_from": run.student_from,
        "values": run.values,
        "notes": run.notes,
    }


def to_json(comparison: Comparison) -> dict[str, Any]:
    keys = comparison.differing
    fixed = [k for k in keys if k != SEED]
    return {
        "columns": comparison.columns,
        "differing_settings": keys,
        "runs": [_run_json(r, keys) for r in comparison.runs],
        "groups": [
            {
                "runs": [r.name for r in g.runs],
                "seeds": [r.seed for r in g.runs],
                "settings": {k: g.runs[0].settings.get(k) for k in fixed},
                "mean": g.mean,
                "std": g.std,
                "count": g.count,
            }
            for g in comparison.groups
        ],
    }


def csv_rows(comparison: Comparison) -> list[list[Any]]:
    """Header + one row per run and per group of two or more (mean in the column, std in ``<column> std``)."""
    keys, cols = comparison.differing, comparison.columns
    header = ["kind", "name", "n", *keys, "step", "student", *cols, *(f"{c} std" for c in cols), "notes"]
    rows = [header]
    for item in ordered(comparison):
        if isinstance(item, RunSummary):
            rows.append(
                [
                    "run",
                    item.name,
                    1,
                    *(_cell(item.settings.get(k)) for k in keys),
                    item.step,
                    item.student,
                    *(item.values.get(c) for c in cols),
                    *([None] * len(cols)),
                    "; ".join(item.notes),
                ]
            )
        else:
            first = item.runs[0].settings
            settings = [
                " ".join(str(r.seed) for r in item.runs) if k == SEED else _cell(first.get(k)) for k in keys
            ]
            rows.append(
                [
                    "mean_std",
                    "; ".join(r.name for r in item.runs),
                    len(item.runs),
                    *settings,
                    None,
                    None,
                    *(item.mean.get(c) for c in cols),
                    *(item.std.get(c) for c in cols),
                    "",
                ]
            )
    return rows


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value
