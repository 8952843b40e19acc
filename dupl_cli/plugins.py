"""Entry-point plugin registry for backbones and dataset adapters.

Built-ins register through the same pyproject entry points a third party uses. Loading is lazy
(only the plugin asked for is imported), a clash of names warns and keeps the built-in, and a
plugin that fails to import is reported by ``dupl plugins list`` without breaking anything else.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from difflib import get_close_matches
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from dupl_cli.errors import UserError

BACKBONES = "dupl.backbones"
DATASETS = "dupl.datasets"
GROUPS = {BACKBONES: "backbone", DATASETS: "dataset"}
BUILTIN_DIST = "dupl"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    group: str
    value: str
    dist: str
    version: str
    status: str  # "ok", "failed" or "not loaded"
    error: str = ""


def _dist(ep: EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    return (dist.metadata["Name"], dist.version) if dist is not None else ("?", "?")


def discover(group: str) -> dict[str, EntryPoint]:
    """Entry points of a group by name; on a clash the built-in (or first seen) wins, with a warning."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        if ep.name in found:
            keep, drop = found[ep.name], ep
            if _dist(ep)[0] == BUILTIN_DIST and _dist(keep)[0] != BUILTIN_DIST:
                keep, drop = ep, keep
            if keep.value != drop.value:
                warnings.warn(
                    f"{GROUPS[group]} plugin name {ep.name!r} is registered by both {_dist(keep)[0]} "
                    f"({keep.value}) and {_dist(drop)[0]} ({drop.value}); using {_dist(keep)[0]}",
                    stacklevel=2,
                )
            found[ep.name] = keep
        else:
            found[ep.name] = ep
    return found


def _load(ep: EntryPoint, group: str) -> Callable[..., Any]:
    try:
        obj = ep.load()
    except Exception as exc:  # any import-time failure of third-party code
        dist = _dist(ep)[0]
        raise UserError(
            f"{GROUPS[group]} plugin {ep.name!r} from {dist} failed to load: {type(exc).__name__}: {exc}"
        ) from None
    if not callable(obj):
        raise UserError(f"{GROUPS[group]} plugin {ep.name!r} ({ep.value}) is not a factory")
    return obj


def load(group: str, name: str) -> Callable[..., Any]:
    """The factory registered under ``name`` in ``group``; a one-line error if unknown or broken."""
    available = discover(group)
    if name not in available:
        close = get_close_matches(name, list(available), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        names = ", ".join(sorted(available)) or "none"
        raise UserError(f"unknown {GROUPS[group]} {name!r} (installed: {names}){hint}")
    return _load(available[name], group)


def list_plugins(try_load: bool = True) -> list[PluginInfo]:
    rows = []
    for group in GROUPS:
        for name, ep in sorted(discover(group).items()):
            dist, version = _dist(ep)
            status, error = "not loaded", ""
            if try_load:
                try:
                    _load(ep, group)
                    status = "ok"
                except UserError as exc:
                    status, error = "failed", str(exc).split(": ", 1)[-1]
            rows.append(PluginInfo(name, group, ep.value, dist, version, status, error))
    return rows
