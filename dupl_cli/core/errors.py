"""Errors meant for the user: shown as one line, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (settings, files, data). ``exit_code`` follows the CLI convention."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class DataError(UserError):
    """A problem with a dataset file; the message names the file."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)


def load_reason(exc: BaseException) -> str:
    """Why a weights or state file did not load, in one line; never torch's advice to unpickle anyway."""
    text = str(exc)
    if "weights_only" in text or "Weights only load failed" in text or "Unsupported global" in text:
        return "holds pickled objects that are not plain tensors (refused: dupl never unpickles code)"
    return one_line(exc)


QUOTE_LIMIT = 200
"""At most this many characters of any one value (a setting, a key, a file's text) go into a message."""


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was: a 10 MB value never makes a 10 MB
    error line."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def shown(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for a message, clipped (a huge list is not rendered whole first)."""
    if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value):,} items>"
    return clip(repr(value), limit)


def one_line(exc: BaseException) -> str:
    """An exception as one line for the user: its type and the first line of its message, clipped."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({shown(exc.code)})"
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {clip(lines[0], 2 * QUOTE_LIMIT)}" + (" ..." if len(lines) > 1 else "")
