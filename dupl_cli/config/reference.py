"""The settings reference (docs/settings.md), generated from the schema so it cannot drift from it.

Every key of ``DuplSettings`` with its type, constraints, release default and description, section
by section; then the ``[data.options]`` of each built-in dataset adapter that declares them.
``dupl config reference --out docs/settings.md`` writes it; a test fails when the committed file is
stale.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from dupl_cli.config.keys import section_type
from dupl_cli.config.options import options_model
from dupl_cli.config.schema import DuplSettings
from dupl_cli.plugins import DATASETS, discover

COMMAND = "dupl config reference --out docs/settings.md"
_BOUNDS = ((Ge, "≥", "ge"), (Gt, ">", "gt"), (Le, "≤", "le"), (Lt, "<", "lt"))

INTRO = f"""# Settings reference

Generated from `dupl_cli/config/schema.py` by `{COMMAND}`;
do not edit by hand (a test fails when this file is stale). Defaults are the release's
(docs/method.md); presets (`dupl presets list`) change some of them.

A setting `section.key` is set, highest priority first, by `--set section.key=value` (a TOML literal),
the environment variable `DUPL_SECTION__KEY`, a `--config` TOML file, a preset, or a checkpoint's card;
in a TOML file it is `key = value` under `[section]`. `dupl config show --explain` prints the resolved
value of every key with its source. Every number is finite: `inf` and `nan` are refused for any
float, alone or in a list.
"""


def type_text(annotation: Any) -> str:
    """A field's annotation as a reader writes it: ``int``, ``path or none``, ``"a" | "b"``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (Union, UnionType):
        kinds = [type_text(a) for a in args if a is not NoneType]
        return " or ".join(kinds) + (" or none" if NoneType in args else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_text(args[0])}"
        return f"[{', '.join(type_text(a) for a in args)}]"
    if origin is dict:
        return "table"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " | ".join(json.dumps(m.value) for m in annotation)
    return getattr(annotation, "__name__", str(annotation))


def bounds_text(field: FieldInfo) -> str:
    """``≥ 0, ≤ 1`` from the field's numeric constraints; empty without any."""
    found = []
    for meta in field.metadata:
        for kind, sign, attr in _BOUNDS:
            if isinstance(meta, kind):
                found.append(f"{sign} {getattr(meta, attr)}")
    return ", ".join(found)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rows(model: type[BaseModel], defaults: dict[str, Any], prefix: str) -> Iterable[str]:
    """One table row per leaf of ``model``; nested sections come back as their own tables."""
    for name, field in model.model_fields.items():
        if section_type(field) is not None:
            continue
        kind = type_text(field.annotation)
        bounds = bounds_text(field)
        kind += f" ({bounds})" if bounds else ""
        default = f"`{_cell(json.dumps(defaults[name]))}`"
        yield f"| `{prefix}{name}` | {_cell(kind)} | {default} | {_cell(field.description or '')} |"


def _table(
    title: str, model: type[BaseModel], defaults: dict[str, Any], prefix: str, note: str = ""
) -> list[str]:
    head = [f"## [{title}]{note}", "", "| key | type | default | description |", "| --- | --- | --- | --- |"]
    lines = head + list(_rows(model, defaults, prefix)) + [""]
    for name, field in model.model_fields.items():
        sub = section_type(field)
        if sub is not None:
            lines += _table(f"{title}.{name}", sub, defaults[name], f"{prefix}{name}.")
    return lines


def _adapter_options() -> list[str]:
    """``[data.options]`` of each built-in dataset adapter that declares an options model."""
    lines = []
    for name, plugin in sorted(discover(DATASETS).items()):
        model = options_model(name)[1] if plugin.builtin else None
        if model is None:
            continue
        defaults = model().model_dump(mode="json")
        lines += _table("data.options", model, defaults, "data.options.", f" of adapter {json.dumps(name)}")
    return lines


def settings_reference() -> str:
    """The whole reference as Markdown (deterministic: no environment, paths or installed plugins)."""
    defaults = DuplSettings().model_dump(mode="json")  # a bare DuplSettings reads no source: the defaults
    lines = [INTRO]
    for name, field in DuplSettings.model_fields.items():
        lines += _table(name, section_type(field), defaults[name], f"{name}.")
    lines += _adapter_options()
    return "\n".join(lines).rstrip("\n") + "\n"
