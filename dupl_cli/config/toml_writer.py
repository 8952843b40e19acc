"""Minimal TOML writer for flat settings sections (no dependency needed for this shape)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dumps(sections: Mapping[str, Mapping[str, Any]], comments: Mapping[str, str] | None = None) -> str:
    """``{section: {key: value}}`` as TOML; ``None`` values become comments; ``comments`` by dotted key."""
    comments = comments or {}
    lines: list[str] = []
    for section, body in sections.items():
        lines.append(f"[{section}]")
        for key, value in body.items():
            note = comments.get(f"{section}.{key}")
            suffix = f"  # {note}" if note else ""
            if value is None:
                lines.append(f"# {key} = (unset){suffix}")
            else:
                lines.append(f"{key} = {_value(value)}{suffix}")
        lines.append("")
    return "\n".join(lines)
