"""Assemble settings from defaults, preset, --config, environment and --set, recording provenance.

Priority (highest first): ``--set`` > env ``DUPL_SECTION__KEY`` > ``--config`` > preset > defaults.
Every leaf value remembers which source set it, for ``dupl config show --explain``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import tomllib
from pydantic import ValidationError

from dupl_cli.config.presets import load_config_file, load_layers
from dupl_cli.config.schema import SECTIONS, DuplSettings
from dupl_cli.errors import UserError

ENV_PREFIX = "DUPL_"


@dataclass
class ResolvedSettings:
    settings: DuplSettings
    sources: dict[str, str] = field(default_factory=dict)  # "section.key" -> origin
    preset: str | None = None


def parse_literal(text: str) -> Any:
    """A --set / env value as a TOML literal (number, bool, array, quoted string); else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _all_keys() -> list[str]:
    return [f"{name}.{key}" for name, section in SECTIONS.items() for key in section.model_fields]


def _unknown_key_error(dotted: str, value: Any, origin: str) -> UserError:
    close = get_close_matches(dotted, _all_keys(), n=1, cutoff=0.6)
    if not close and "." not in dotted:
        close = get_close_matches(dotted, list(SECTIONS), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return UserError(f"unknown setting {dotted} = {value!r} (from {origin}){hint}")


def _check_and_flatten(table: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """Validate the shape of one source (known sections and keys) and flatten it to dotted keys."""
    flat: dict[str, Any] = {}
    for section, body in table.items():
        if section not in SECTIONS:
            close = get_close_matches(section, list(SECTIONS), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UserError(f"unknown settings section {section!r} (from {origin}; sections: {', '.join(SECTIONS)}){hint}")
        if not isinstance(body, Mapping):
            raise UserError(f"{section} must be a table of settings (from {origin}), got {body!r}")
        fields = SECTIONS[section].model_fields
        for key, value in body.items():
            dotted = f"{section}.{key}"
            if key not in fields:
                raise _unknown_key_error(dotted, value, origin)
            flat[dotted] = value
    return flat


def parse_assignments(assignments: Sequence[str], origin: str = "--set") -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for item in assignments:
        if "=" not in item:
            raise UserError(f"--set expects section.key=value, got {item!r}")
        dotted, raw = item.split("=", 1)
        dotted = dotted.strip()
        if dotted.count(".") != 1:
            raise _unknown_key_error(dotted, raw, origin) if "." in dotted else UserError(
                f"--set expects section.key=value, got {item!r}"
            )
        section, key = dotted.split(".")
        table.setdefault(section, {})[key] = parse_literal(raw.strip())
    return table


def env_table(environ: Mapping[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """``DUPL_SECTION__KEY=value`` variables, one source per variable (for provenance)."""
    layers = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        layers.append((f"env {name}", {section.lower(): {key.lower(): parse_literal(environ[name])}}))
    return layers


def _value_error(exc: ValidationError, merged: dict[str, Any], sources: dict[str, str]) -> UserError:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    dotted = ".".join(loc[:2]) if len(loc) >= 2 else (loc[0] if loc else "settings")
    if dotted in merged:
        origin = sources.get(dotted, "default")
        msg = err["msg"].removeprefix("Value error, ")
        return UserError(f"invalid value for {dotted} = {merged[dotted]!r} (from {origin}): {msg}")
    return UserError(f"invalid settings: {err['msg'].removeprefix('Value error, ')}")


def load_settings(
    preset: str | None = None,
    config_file: Path | None = None,
    assignments: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> ResolvedSettings:
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, dict[str, Any]]] = []
    if preset:
        layers += load_layers(preset)
    if config_file is not None:
        layers += load_config_file(Path(config_file))
    layers += env_table(environ)
    layers.append(("--set", parse_assignments(assignments)))

    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for origin, table in layers:
        for dotted, value in _check_and_flatten(table, origin).items():
            merged[dotted] = value
            sources[dotted] = origin

    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in merged.items():
        section, key = dotted.split(".")
        nested.setdefault(section, {})[key] = value
    try:
        settings = DuplSettings.model_validate(nested)
    except ValidationError as exc:
        raise _value_error(exc, merged, sources) from None
    if "model.backbone" in sources and ":" in str(merged["model.backbone"]):
        sources["model.arch"] = sources["model.backbone"]
    return ResolvedSettings(settings=settings, sources=sources, preset=preset)


def explain(resolved: ResolvedSettings) -> list[tuple[str, Any, str]]:
    """Rows (dotted key, value, origin) for every setting."""
    data = resolved.settings.model_dump(mode="json")
    return [
        (f"{section}.{key}", value, resolved.sources.get(f"{section}.{key}", "default"))
        for section, body in data.items()
        for key, value in body.items()
    ]
