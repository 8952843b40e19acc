"""The shape of the settings tree: dotted keys, renamed keys, descriptions, checking a source's table.

Every source (preset, --config, card, environment, --set) is checked here before pydantic sees it,
so an unknown or renamed key is one line naming the key, its value and where it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from difflib import get_close_matches
from functools import cache
from typing import Any, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from dupl_cli.config.schema import DuplSettings
from dupl_cli.core.errors import UserError, clip, shown

Origin = str | Callable[[str], str]  # one origin for a whole table, or one per dotted key

# Keys that moved without a pattern; the ``family_key`` -> ``family.key`` moves are derived below.
_MOVED = {f"data.demo_{key}": f"data.options.{key}" for key in ("seed", "size", "n_train", "n_val")}


def _root() -> type[BaseModel]:
    return DuplSettings


def section_type(field: FieldInfo) -> type[BaseModel] | None:
    ann = field.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _is_table(field: FieldInfo) -> bool:
    return field.annotation is dict or get_origin(field.annotation) is dict


def walk(model: type[BaseModel] | None = None, prefix: str = "") -> Iterator[tuple[str, FieldInfo, bool]]:
    """(dotted key, field, is_section) for every field of the tree, depth first."""
    for name, field in (model or _root()).model_fields.items():
        dotted = f"{prefix}{name}"
        sub = section_type(field)
        yield dotted, field, sub is not None
        if sub is not None:
            yield from walk(sub, f"{dotted}.")


@cache
def leaf_keys() -> tuple[str, ...]:
    return tuple(key for key, _, is_section in walk() if not is_section)


@cache
def renamed() -> dict[str, str]:
    """Old flat key -> new nested key (``method.anf_gamma`` -> ``method.anf.gamma``)."""
    moves = dict(_MOVED)
    for key, field, is_section in walk():
        parent, _, name = key.rpartition(".")
        if is_section and parent:
            for sub in section_type(field).model_fields:
                moves[f"{parent}.{name}_{sub}"] = f"{key}.{sub}"
    return moves


def field_at(dotted: str) -> FieldInfo | None:
    model: type[BaseModel] | None = _root()
    field = None
    for part in dotted.split("."):
        if model is None or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        model = section_type(field)
    return field


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys of nested tables: ``{"method": {"anf": {"gamma": 1}}}`` ->
    ``{"method.anf.gamma": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; tables merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _hint(dotted: str, origin: str, table: bool) -> str:
    new = renamed().get(dotted)
    if new is not None:
        env = f" ({'DUPL_' + new.replace('.', '__').upper()})" if origin.startswith("env ") else ""
        return f"; did you mean {new}{env}?"
    sections = [key for key, _, is_section in walk() if is_section]
    first, then = (sections, leaf_keys()) if table else (leaf_keys(), sections)
    close = get_close_matches(dotted, first, n=1, cutoff=0.6) or get_close_matches(dotted, then, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def origin_of(origin: Origin, dotted: str) -> str:
    return origin(dotted) if callable(origin) else origin


def check_table(
    table: Mapping[str, Any], origin: Origin, model: type[BaseModel] | None = None, prefix: str = ""
) -> None:
    """Raise a one-line UserError for the first unknown or renamed key, or a table in the wrong place."""
    model = model or _root()
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        where = clip(origin_of(origin, dotted))
        field = model.model_fields.get(key)
        if field is None:
            hint = _hint(dotted, where, table=not prefix or isinstance(value, Mapping))
            if not prefix:
                sections = ", ".join(model.model_fields)
                raise UserError(
                    f"unknown settings section {shown(key)} (from {where}; sections: {sections}){hint}"
                )
            if isinstance(value, Mapping):
                raise UserError(f"unknown settings section {shown(dotted)} (from {where}){hint}")
            raise UserError(f"unknown setting {clip(dotted)} = {shown(value)} (from {where}){hint}")
        sub = section_type(field)
        if sub is not None:
            if not isinstance(value, Mapping):
                raise UserError(f"{dotted} must be a table of settings (from {where}), got {shown(value)}")
            check_table(value, origin, sub, f"{dotted}.")
        elif isinstance(value, Mapping) and not _is_table(field):
            inner = next(iter(flatten(value, f"{dotted}.")), dotted)
            raise UserError(
                f"unknown setting {clip(inner)} (from {where}): {dotted} is a single value, not a table"
            )
