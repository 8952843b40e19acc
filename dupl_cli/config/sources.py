"""Settings sources (preset, --config, checkpoint card, environment, --set) and the loader over them.

Priority, highest first: ``--set`` > env ``DUPL_SECTION__KEY`` > ``--config`` > preset > card > defaults.
Each is a pydantic-settings source returned by ``DuplSettings.settings_customise_sources`` while
:func:`load_settings` runs; pydantic-settings deep-merges them. Each source checks its own keys
(one line naming key, value and origin) and remembers the origin of every leaf it sets, for
``dupl config show --explain`` and the comments of a run's ``config.toml``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
from pydantic import BaseModel, ValidationError
from pydantic_settings import EnvSettingsSource, PydanticBaseSettingsSource
from pydantic_settings.exceptions import SettingsError

from dupl_cli.config import keys
from dupl_cli.config.context import loading
from dupl_cli.config.options import OPTION_ERROR, options_model
from dupl_cli.config.presets import load_config_file, load_layers
from dupl_cli.config.schema import DataSettings, DuplSettings
from dupl_cli.core.errors import QUOTE_LIMIT, UserError, clip, shown
from dupl_cli.core.textfile import check_depth, too_deep

ENV_PREFIX = "DUPL_"


@dataclass(frozen=True)
class ResolvedSettings:
    settings: DuplSettings
    sources: dict[str, str] = field(default_factory=dict)  # dotted key -> origin; absent = default
    preset: str | None = None
    ignored: tuple[str, ...] = ()  # adapter options dropped because another adapter was chosen above them


class _Layers:
    """What each dupl source holds: checked tables, lowest first, each with the origin of its keys."""

    layers: list[tuple[keys.Origin, dict[str, Any]]]

    def merged(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for _, table in self.layers:
            out = keys.deep_merge(out, table)
        return out

    def leaves(self) -> list[tuple[str, Any, str]]:
        """(dotted key, value, origin) of every leaf, lowest layer first."""
        return [
            (key, value, keys.origin_of(origin, key))
            for origin, table in self.layers
            for key, value in keys.flatten(table).items()
        ]


class _TableSource(_Layers, PydanticBaseSettingsSource):
    """TOML-shaped tables (a preset chain, a --config chain, a card, --set); pydantic-settings gets their
    merge."""

    def __init__(self, settings_cls: type[DuplSettings], layers: Sequence[tuple[str, Mapping[str, Any]]]):
        super().__init__(settings_cls)
        for origin, table in layers:
            keys.check_table(table, origin)
        self.layers = [(origin, dict(table)) for origin, table in layers]

    def get_field_value(self, field, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ hands over the whole tree

    def __call__(self) -> dict[str, Any]:
        return self.merged()


class PresetSource(_TableSource):
    def __init__(self, settings_cls, name: str):
        super().__init__(settings_cls, load_layers(name))


class ConfigFileSource(_TableSource):
    def __init__(self, settings_cls, path: Path):
        super().__init__(settings_cls, load_config_file(Path(path)))


class CardSource(_TableSource):
    """The settings a checkpoint was trained with (the card JSON beside its .safetensors)."""

    def __init__(self, settings_cls, card_file: Path, settings: Any):
        if not isinstance(settings, Mapping):
            raise UserError(f"{card_file}: checkpoint card has no settings table")
        super().__init__(settings_cls, [(f"card {card_file}", migrate_card(settings))])


class SetSource(_TableSource):
    def __init__(self, settings_cls, assignments: Sequence[str]):
        super().__init__(settings_cls, [("--set", parse_assignments(assignments))])


def migrate_card(table: Mapping[str, Any]) -> dict[str, Any]:
    """Cards written before the nested sections keep their flat keys; move them (values unchanged).

    Old cards carry the demo generator's fields for every adapter: they only move for the demo one.
    """
    moves = keys.renamed()
    flat = keys.flatten(table)
    if not any(key in moves for key in flat):
        return dict(table)
    adapter = flat.get("data.adapter", "voc")
    out: dict[str, Any] = {}
    for key, value in flat.items():
        new = moves.get(key, key)
        if new.startswith("data.options.") and key != new and adapter != "demo":
            continue
        node = out
        *parents, leaf = new.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


class EnvSource(_Layers, EnvSettingsSource):
    """``DUPL_SECTION__KEY=value`` through pydantic-settings' own env parsing (prefix, ``__`` nesting
    to any depth, JSON for lists and tables), read from ``environ`` and checked like every source."""

    def __init__(self, settings_cls: type[DuplSettings], environ: Mapping[str, str]):
        super().__init__(settings_cls)  # env_prefix / env_nested_delimiter from DuplSettings.model_config
        self.names = {name.lower(): name for name in environ}
        self.env_vars = {name.lower(): value for name, value in environ.items()}
        self.layers = [(self.origin, self._read())]  # read now: the loader scopes options before the merge

    def origin(self, dotted: str) -> str:
        """The variable that set ``dotted`` (the longest one naming a prefix of it)."""
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            name = (ENV_PREFIX + "__".join(parts[:n])).lower()
            if name in self.names:
                return f"env {self.names[name]}"
        return f"env {ENV_PREFIX}{'__'.join(parts).upper()}"

    def _read(self) -> dict[str, Any]:
        for lower, name in self.names.items():
            head = lower[len(ENV_PREFIX) :].split("__", 1)[0]
            if (
                lower.startswith(ENV_PREFIX.lower())
                and "__" in lower
                and head not in self.settings_cls.model_fields
            ):
                keys.check_table({head: {}}, f"env {name}")
        try:
            data = super().__call__()
        except SettingsError as exc:
            raise UserError(self._parse_error(exc)) from None
        except RecursionError:  # a JSON value nested thousands deep
            self._check_values()
            raise
        self._check_values()  # nested deeper than any setting: refused before pydantic walks it
        keys.check_table(data, self.origin)
        return data

    def _check_values(self) -> None:
        """One line naming the first DUPL_ variable whose JSON value is nested too deeply."""
        for lower, value in self.env_vars.items():
            if not (lower.startswith(ENV_PREFIX.lower()) and value.lstrip()[:1] in ("[", "{")):
                continue
            source = f"env {clip(self.names[lower])}"
            try:
                parsed = json.loads(value)
            except ValueError:
                continue  # not JSON: _parse_error names it
            except RecursionError:
                raise too_deep(source, "value") from None
            check_depth(parsed, source, "value")

    def __call__(self) -> dict[str, Any]:
        return self.merged()

    def _parse_error(self, exc: SettingsError) -> str:
        """Name the variable pydantic-settings could not decode (a list or table that is not JSON)."""
        for lower, value in self.env_vars.items():
            dotted = lower[len(ENV_PREFIX) :].replace("__", ".")
            info = keys.field_at(dotted) if lower.startswith(ENV_PREFIX.lower()) else None
            if info is None or not self.field_is_complex(info):
                continue
            try:
                json.loads(value or "")
            except ValueError:
                name = self.names[lower]
                return (
                    f"invalid value for {dotted} = {shown(value)} (from env {name}): "
                    "lists and tables are written as JSON"
                )
        return clip(f"cannot read the {ENV_PREFIX} environment variables: {exc} ({exc.__cause__})", 400)


def parse_literal(text: str, source: str = "--set") -> Any:
    """A --set value as a TOML literal (number, bool, array, inline table, quoted string); else the raw
    string. Nested thousands deep or a number of thousands of digits: one line naming ``source``."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise too_deep(source, "value") from None
    except ValueError:  # int() refuses more than sys.get_int_max_str_digits() digits
        raise UserError(f"{source}: value holds a number too long to read ({clip(text, 40)})") from None
    return check_depth(value, source, "value")


def parse_assignments(assignments: Sequence[str]) -> dict[str, Any]:
    """``section.key=value`` items (dotted paths of any depth) as one nested table."""
    table: dict[str, Any] = {}
    for item in assignments:
        dotted, eq, raw = item.partition("=")
        parts = dotted.strip().split(".")
        if not eq or len(parts) < 2 or not all(parts):
            raise UserError(f"--set expects section.key=value, got {shown(item)}")
        node = table
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = parse_literal(raw.strip(), f"--set {clip(dotted.strip())}")
    return table


@dataclass
class _Load:
    """What one load_settings call asks for; its sources exist while DuplSettings() runs."""

    preset: str | None
    config_file: Path | None
    assignments: Sequence[str]
    environ: Mapping[str, str]
    card: tuple[Path, Any] | None
    sources: list[Any] = field(default_factory=list)  # lowest priority first
    ignored: list[str] = field(default_factory=list)

    def build(self, settings_cls) -> list[PydanticBaseSettingsSource]:
        """The sources, highest priority first, as pydantic-settings wants them."""
        self.sources = [CardSource(settings_cls, *self.card)] if self.card is not None else []
        if self.preset:
            self.sources.append(PresetSource(settings_cls, self.preset))
        if self.config_file is not None:
            self.sources.append(ConfigFileSource(settings_cls, self.config_file))
        self.sources += [EnvSource(settings_cls, self.environ), SetSource(settings_cls, self.assignments)]
        self.ignored = scope_options(self.sources)
        return self.sources[::-1]

    def merged(self) -> tuple[dict[str, Any], dict[str, str]]:
        values: dict[str, Any] = {}
        provenance: dict[str, str] = {}
        for source in self.sources:
            for key, value, origin in source.leaves():
                values[key], provenance[key] = value, origin
        return values, provenance


def scope_options(sources: Sequence[_Layers]) -> list[str]:
    """``[data.options]`` written beside a ``data.adapter`` belong to that adapter: tiny-cpu's demo
    options do not reach ``--set data.adapter=mine``. Drops those, returns what was dropped.
    Options written without an adapter (an env variable, a --set) go to whichever adapter is chosen."""
    written: list[tuple[_Layers, int, Any]] = []
    adapter = DataSettings.model_fields["adapter"].default
    for source in sources:
        for i, (_, table) in enumerate(source.layers):
            data = table.get("data")
            if isinstance(data, Mapping) and "adapter" in data:
                adapter = data["adapter"]
                if "options" in data:
                    written.append((source, i, adapter))
    ignored = []
    for source, i, written_for in written:
        if written_for != adapter:
            origin, table = source.layers[i]
            data = dict(table["data"])
            options = data.pop("options")
            ignored += [
                f"{key} (from {keys.origin_of(origin, key)}; written for adapter {written_for!r})"
                for key in keys.flatten({"data": {"options": options}})
            ]
            source.layers[i] = (origin, {**table, "data": data})
    return ignored


def load_settings(
    preset: str | None = None,
    config_file: Path | None = None,
    assignments: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    card: tuple[Path, Any] | None = None,
) -> ResolvedSettings:
    """Settings from the sources asked for; ``card`` is (card file, its settings table)."""
    load = _Load(preset, config_file, list(assignments), os.environ if environ is None else environ, card)
    try:
        with loading(load.build):
            settings = DuplSettings()
    except ValidationError as exc:
        raise _value_error(exc, *load.merged()) from None
    values, sources = load.merged()
    if ":" in str(values.get("model.backbone", "")):
        sources["model.arch"] = sources["model.backbone"]
    return ResolvedSettings(settings=settings, sources=sources, preset=preset, ignored=tuple(load.ignored))


def _first_error(exc: ValidationError) -> dict[str, Any]:
    """The error to report: the first, unless a union tried several forms and one of them says what
    is wrong (``[0.5, nan]`` for ``float | list[float]``: not finite, rather than not a number)."""
    errors = exc.errors()
    return next((e for e in errors if e["type"] == "finite_number"), errors[0])


def _value_error(exc: ValidationError, values: dict[str, Any], sources: dict[str, str]) -> UserError:
    """One line naming the key, its value (at most ``QUOTE_LIMIT`` characters of it) and its origin."""
    err = _first_error(exc)
    loc = [str(p) for p in err["loc"]]
    msg = clip(err["msg"].removeprefix("Value error, "), 2 * QUOTE_LIMIT)
    if err["type"] == OPTION_ERROR:
        ctx = err["ctx"]
        dotted = f"data.options.{ctx['option']}"
        where = sources.get(dotted, sources.get("data.adapter", "default"))
        what = "unknown setting" if ctx["unknown"] else "invalid value for"
        return UserError(f"{what} {clip(dotted)} = {shown(values.get(dotted))} (from {where}): {msg}")
    for n in range(len(loc), 0, -1):
        dotted = ".".join(loc[:n])
        if dotted in values:
            return UserError(
                f"invalid value for {dotted} = {shown(values[dotted])} (from {sources[dotted]}): {msg}"
            )
    if loc:  # a default, or a rule across keys of one section
        return UserError(f"invalid value for {clip('.'.join(loc))}: {msg}")
    return UserError(f"invalid settings: {msg}")


def card_settings(card_file: Path, settings: Any) -> DuplSettings:
    """A checkpoint's own settings, as trained (no environment, no --set)."""
    return load_settings(environ={}, card=(Path(card_file), settings)).settings


def explain(resolved: ResolvedSettings) -> list[tuple[str, Any, str, str]]:
    """Rows (dotted key, value, origin, description) for every setting."""
    data = resolved.settings.model_dump(mode="json")
    model: type[BaseModel] | None = None
    if resolved.settings.data.options:
        model = options_model(resolved.settings.data.adapter)[1]
    rows = []
    for key, value in keys.flatten(data).items():
        info = keys.field_at(key)
        if info is None and model is not None and key.startswith("data.options."):
            info = model.model_fields.get(key.split(".")[2])
        description = (info.description or "") if info is not None else ""
        rows.append((key, value, resolved.sources.get(key, "default"), description))
    return rows
