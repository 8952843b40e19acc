"""Minimal TOML writer for the settings tree: sections and sub-sections of plain values."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _table(lines: list[str], name: str, body: Mapping[str, Any], comments: Mapping[str, str]) -> None:
    plain = {k: v for k, v in body.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in body.items() if isinstance(v, Mapping)}
    if plain:
        lines.append(f"[{name}]")
        for key, value in plain.items():
            note = comments.get(f"{name}.{key}")
            suffix = f"  # {note}" if note else ""
            if value is None:
                lines.append(f"# {_key(key)} = (unset){suffix}")
            else:
                lines.append(f"{_key(key)} = {_value(value)}{suffix}")
        lines.append("")
    for key, value in tables.items():
        _table(lines, f"{name}.{_key(key)}", value, comments)


def dumps(sections: Mapping[str, Mapping[str, Any]], comments: Mapping[str, str] | None = None) -> str:
    """``{section: {key: value, sub: {...}}}`` as TOML; ``None`` values become comments; ``comments`` by
    dotted key."""
    lines: list[str] = []
    for section, body in sections.items():
        _table(lines, _key(section), body, comments or {})
    return "\n".join(lines)
