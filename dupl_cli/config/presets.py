"""Built-in presets (TOML shipped as package data) and user preset files with ``base = "..."``."""

from __future__ import annotations

import os
import re
from difflib import get_close_matches
from importlib import resources
from pathlib import Path
from typing import Any

from dupl_cli.core.errors import UserError, clip, shown
from dupl_cli.core.textfile import MAX_STRUCTURED_BYTES, parse_toml

PATH_MAX = 4096


def _preset_dir():
    return resources.files("dupl_cli.presets")


def builtin_names() -> list[str]:
    return sorted(p.name[: -len(".toml")] for p in _preset_dir().iterdir() if p.name.endswith(".toml"))


def _read_toml(text: str, origin: str, what: str) -> dict[str, Any]:
    """A preset's or config file's TOML; nested thousands deep, huge numbers: one line naming it."""
    return parse_toml(text, origin, what)


def _refuse_url(name: str) -> None:
    # A Path argument collapses "https://" to "https:/"; catch both (not a drive letter: two+ letters).
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", name):
        url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)", r"\1://", name)  # undo the Path collapse
        raise UserError(f"{url}: URLs are not supported; download the file and give its path")


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file, or a one-line error naming it."""
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a {what}")
    if not path.is_file():
        raise UserError(f"{path}: {what} does not exist")
    try:
        if (size := path.stat().st_size) > MAX_STRUCTURED_BYTES:
            limit = MAX_STRUCTURED_BYTES
            raise UserError(f"{path}: {what} is {size:,} bytes, more than the {limit:,} one may have")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: {what} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def _looks_like_path(name: str) -> bool:
    return name.endswith(".toml") or "/" in name or (os.sep != "/" and os.sep in name)


def preset_text(name: str, what: str = "preset file") -> tuple[str, str]:
    """Return (text, origin) of a built-in preset name or a path to a TOML file (always, for a config
    file). A built-in name wins over a file or folder of that name unless the value looks like a path
    (ends in .toml or holds a separator)."""
    if len(name) > PATH_MAX:  # the OS would refuse it in a message quoting all of it
        raise UserError(f"{clip(name)}: too long for a {what} name or path (at most {PATH_MAX} characters)")
    _refuse_url(name)
    path = Path(name)
    if what == "config file" or _looks_like_path(name):
        if path.is_dir() and (_preset_dir() / f"{path.name}.toml").is_file():
            raise UserError(
                f"{path}: is a directory, not a {what}; for the built-in preset write --preset {path.name}"
            )
        return read_text_file(path, what), str(path)
    resource = _preset_dir() / f"{name}.toml"
    if resource.is_file():
        return resource.read_text(encoding="utf-8"), f"preset {name}"
    if path.is_file():
        return read_text_file(path, what), str(path)
    close = get_close_matches(name, builtin_names(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    found = (
        f"; ./{name} is a directory, not a preset file (give a .toml path for a file)"
        if path.is_dir()
        else ""
    )
    raise UserError(f"unknown preset {shown(name)} (built-in: {', '.join(builtin_names())}){hint}{found}")


def description(name: str) -> str:
    """The first comment line of a preset: what it is for."""
    text, _ = preset_text(name)
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def load_layers(
    name: str, _seen: tuple[str, ...] = (), what: str = "preset file"
) -> list[tuple[str, dict[str, Any]]]:
    """Layers of a preset, base first: [(origin, table), ...]. ``base`` chains are followed."""
    if name in _seen:
        raise UserError(f"preset {name!r}: circular base chain {' -> '.join((*_seen, name))}")
    text, origin = preset_text(name, what)
    table = _read_toml(text, origin, what)
    base = table.pop("base", None)
    table.pop("description", None)
    layers: list[tuple[str, dict[str, Any]]] = []
    if base is not None:
        if not isinstance(base, str):
            raise UserError(f"{origin}: base must be a preset name or path, got {shown(base)}")
        layers = load_layers(base, (*_seen, name))
    layers.append((origin, table))
    return layers


def load_config_file(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """A --config file: same format as a preset (may use ``base``)."""
    layers = load_layers(str(path), what="config file")
    return [(f"config file {path}" if origin == str(path) else origin, table) for origin, table in layers]
