"""Text inputs (class lists, label tables, split lists, cards, run files) read as UTF-8 or refused in
one line that names the file, the offending byte and its place."""

from __future__ import annotations

from pathlib import Path

from dupl_cli.core.errors import UserError


def read_text(path: Path, what: str, error: type[UserError] = UserError) -> str:
    """``path`` decoded as UTF-8 (a leading BOM dropped); ``error`` names the file otherwise."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory, not a {what}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {what} does not exist") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{path}: {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None
