"""Text inputs (class lists, label tables, split lists, cards, run files) read as UTF-8 or refused in
one line that names the file, the offending byte and its place.

JSON and TOML go through :func:`parse_json` / :func:`parse_toml` (or the ``read_*`` forms): a hostile
file (nested thousands of levels deep, a number of a million digits, not UTF-8, gigabytes long) is
one ``UserError`` line naming the file, never a RecursionError or a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import tomllib

from dupl_cli.core.errors import UserError, clip

MAX_DEPTH = 64
"""Deepest nesting of tables and lists a JSON or TOML input may have (dupl's own files use 5)."""
MAX_STRUCTURED_BYTES = 64 << 20
"""Largest JSON or TOML input read (cards, run files, presets and config files are kilobytes)."""


def read_text(path: Path, what: str, error: type[UserError] = UserError, limit: int | None = None) -> str:
    """``path`` decoded as UTF-8 (a leading BOM dropped); ``error`` names the file otherwise.
    ``limit``: refuse a file larger than this many bytes before reading it."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory, not a {what}")
    try:
        if limit is not None and (size := path.stat().st_size) > limit:
            raise error(f"{path}: {what} is {size:,} bytes, more than the {limit:,} one may have")
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {what} does not exist") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    except MemoryError:
        raise error(f"{path}: {what} is too large to read into memory") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{path}: {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None


def _too_deep(data: Any) -> bool:
    """Whether ``data`` nests deeper than MAX_DEPTH (walked without recursion)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > MAX_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def too_deep(source: object, what: str, error: type[UserError] = UserError) -> UserError:
    """The one line for an input nested deeper than MAX_DEPTH (or than Python's recursion limit)."""
    return error(f"{source}: {what} is nested too deeply to read (more than {MAX_DEPTH} levels)")


def check_depth(data: Any, source: object, what: str, error: type[UserError] = UserError) -> Any:
    """``data`` when it nests at most MAX_DEPTH levels, else one line naming ``source``."""
    if _too_deep(data):
        raise too_deep(source, what, error)
    return data


def _parse(text: str, source: object, what: str, kind: str, error: type[UserError]) -> Any:
    loads = json.loads if kind == "JSON" else tomllib.loads
    try:
        data = loads(text)
    except RecursionError:
        raise too_deep(source, what, error) from None
    except MemoryError:
        raise error(f"{source}: {what} is too large to read into memory") from None
    except ValueError as exc:  # JSONDecodeError, TOMLDecodeError, a number of thousands of digits
        limit = sys.get_int_max_str_digits()
        reason = f"a number longer than {limit} digits" if "digits" in str(exc) else clip(str(exc))
        raise error(f"{source}: {what} is not valid {kind} ({reason})") from None
    return check_depth(data, source, what, error)


def parse_json(text: str, source: object, what: str, error: type[UserError] = UserError) -> Any:
    """``text`` as JSON, or one line naming ``source`` (a file, ``line N of FILE``, a variable)."""
    return _parse(text, source, what, "JSON", error)


def parse_toml(text: str, source: object, what: str, error: type[UserError] = UserError) -> dict[str, Any]:
    """``text`` as TOML, or one line naming ``source``."""
    return _parse(text, source, what, "TOML", error)


def read_json(path: Path, what: str, error: type[UserError] = UserError) -> Any:
    """A UTF-8 JSON file, or one line naming it."""
    return parse_json(read_text(path, what, error, MAX_STRUCTURED_BYTES), path, what, error)


def read_toml(path: Path, what: str, error: type[UserError] = UserError) -> dict[str, Any]:
    """A UTF-8 TOML file, or one line naming it."""
    return parse_toml(read_text(path, what, error, MAX_STRUCTURED_BYTES), path, what, error)
