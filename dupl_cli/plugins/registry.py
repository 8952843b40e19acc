"""Plugins by group and name: entry points of installed distributions and in-process ``register``.

Entry points are read once per process (``refresh()`` reads them again). Nothing is imported
until ``load`` asks for one plugin. On a name clash the built-in wins, then an in-process
registration, then the first distribution on sys.path; a warning names both sides. Whatever a
plugin does wrong (fails to import, calls ``sys.exit``, raises in its factory, returns something
off-protocol) becomes one ``UserError`` line naming the plugin and its distribution.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from difflib import get_close_matches
from importlib.metadata import EntryPoint
from typing import Any

from dupl_cli.core.errors import UserError, one_line
from dupl_cli.plugins import installed
from dupl_cli.plugins.protocol import check_backbone, check_dataset

BACKBONES = "dupl.backbones"
DATASETS = "dupl.datasets"
GROUPS = {BACKBONES: "backbone", DATASETS: "dataset"}
BUILTIN_DIST = "dupl"
ENTRY_POINT, IN_PROCESS = "entry point", "in-process"
CHECKS: dict[str, Callable[..., None]] = {BACKBONES: check_backbone, DATASETS: check_dataset}

log = logging.getLogger(__name__)


class PluginError(UserError):
    """A plugin that cannot be used; ``reason`` is the message without the plugin's label."""

    def __init__(self, label: str, joiner: str, reason: str, exit_code: int = 2) -> None:
        super().__init__(f"{label}{joiner}{reason}", exit_code=exit_code)
        self.reason = reason


@dataclass(frozen=True)
class Plugin:
    """A discovered plugin; ``load`` imports it."""

    group: str
    name: str
    value: str  # "module:attr" of the factory
    dist: str
    version: str
    origin: str  # ENTRY_POINT or IN_PROCESS
    where: str = ""  # the entry_points.txt that declares it
    target: Callable[..., Any] | None = field(default=None, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return GROUPS[self.group]

    @property
    def builtin(self) -> bool:
        return self.origin == ENTRY_POINT and self.dist == BUILTIN_DIST

    @property
    def source(self) -> str:
        """Who provides it: ``dist version``, or the factory of an unnamed in-process registration."""
        return (
            f"{self.dist} {self.version}".strip() if self.dist != IN_PROCESS else f"{IN_PROCESS} {self.value}"
        )

    @property
    def label(self) -> str:
        return f"{self.kind} plugin {self.name!r} ({self.source})"

    def import_factory(self) -> Callable[..., Any]:
        """The factory object; importing is guarded so a plugin can never end dupl."""
        if self.target is not None:
            return self.target
        try:
            with contextlib.redirect_stdout(sys.stderr):  # keep --json output clean of import chatter
                obj = EntryPoint(self.name, self.value, self.group).load()
        except KeyboardInterrupt:
            raise PluginError(
                self.label, ": ", f"interrupted while importing {self.value}", exit_code=130
            ) from None
        except BaseException as exc:  # SystemExit too: importing a plugin must never end dupl
            log.debug("importing %s failed", self.label, exc_info=True)
            raise PluginError(self.label, " failed to load: ", one_line(exc)) from None
        if not callable(obj):
            raise PluginError(self.label, ": ", f"{self.value} is a {type(obj).__name__}, not a factory")
        return obj


@dataclass(frozen=True)
class Factory:
    """A loaded plugin: calling it calls the factory, then checks what it returned."""

    plugin: Plugin
    fn: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            made = self.fn(*args, **kwargs)
        except UserError:
            raise  # already one line meant for the user
        except (Exception, SystemExit) as exc:
            log.debug("%s raised", self.plugin.label, exc_info=True)
            raise UserError(f"{self.plugin.label} failed: {one_line(exc)}") from None
        CHECKS[self.plugin.group](made, plugin=self.plugin.label)
        return made


@dataclass(frozen=True)
class PluginInfo:
    """One row of ``dupl plugins list``; a broken distribution has an empty name and group."""

    name: str
    group: str
    value: str
    dist: str
    version: str
    status: str  # "ok", "failed", "not loaded", "shadowed" or "broken"
    error: str = ""
    origin: str = ENTRY_POINT


_lock = threading.RLock()
_scanned: tuple[tuple[Plugin, ...], tuple[installed.Broken, ...]] | None = None
_registered: dict[tuple[str, str], Plugin] = {}
_warned: set[tuple[str, str, str, str]] = set()


def group_of(group: str) -> str:
    """``dupl.backbones`` or its kind ``backbone`` -> the group."""
    if group in GROUPS:
        return group
    for full, kind in GROUPS.items():
        if group == kind:
            return full
    raise ValueError(f"unknown plugin group {group!r}; use one of {', '.join([*GROUPS, *GROUPS.values()])}")


def refresh() -> None:
    """Forget what was read from installed distributions (tests that install or remove one)."""
    global _scanned
    with _lock:
        _scanned = None
        _warned.clear()


def _installed() -> tuple[tuple[Plugin, ...], tuple[installed.Broken, ...]]:
    global _scanned
    with _lock:
        if _scanned is None:
            declared, broken = installed.scan(GROUPS)
            plugins = tuple(
                Plugin(d.group, d.name, d.value, d.dist, d.version, ENTRY_POINT, d.where) for d in declared
            )
            _scanned = plugins, tuple(broken)
        return _scanned


def broken_distributions() -> list[installed.Broken]:
    return list(_installed()[1])


def _rank(plugin: Plugin) -> int:
    return 0 if plugin.builtin else 1 if plugin.origin == IN_PROCESS else 2


def _resolve(group: str) -> tuple[dict[str, Plugin], list[tuple[Plugin, Plugin]]]:
    """(winner by name, [(shadowed, winner)]), warning once per clash."""
    with _lock:
        candidates = [p for p in _installed()[0] if p.group == group]
        candidates += [p for (g, _), p in _registered.items() if g == group]
    winners: dict[str, Plugin] = {}
    shadowed: list[tuple[Plugin, Plugin]] = []
    for plugin in sorted(candidates, key=_rank):  # stable: sys.path / registration order within a rank
        keep = winners.setdefault(plugin.name, plugin)
        if keep is plugin or (keep.dist, keep.value) == (plugin.dist, plugin.value):
            continue  # the same declaration seen twice is no clash
        shadowed.append((plugin, keep))
        key = (group, plugin.name, plugin.dist, plugin.value)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(
                f"{GROUPS[group]} plugin name {plugin.name!r} is declared by both "
                f"{keep.source} ({keep.value}) "
                f"and {plugin.source} ({plugin.value}); using {keep.dist}'s"
                + (" (built-in)" if keep.builtin else ""),
                UserWarning,
                stacklevel=3,
            )
    return winners, shadowed


def register(
    group: str,
    name: str,
    factory: Callable[..., Any] | None = None,
    *,
    dist: str = IN_PROCESS,
    version: str = "",
) -> Any:
    """Register ``factory`` under ``name`` in this process, beside the entry points.

    Usable as a decorator (``@register("backbone", "mynet")``). Registering a name twice in-process
    is a ``ValueError``: ``unregister`` it first. A built-in of the same name still wins (warning).
    It lives in this process only: processes that torchrun or accelerate start need an entry point.
    """
    group = group_of(group)
    if not isinstance(name, str) or not name or any(c.isspace() or c in "=[]" for c in name):
        raise ValueError(f"invalid plugin name {name!r}: a non-empty name without spaces, '=' or brackets")

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise TypeError(f"{GROUPS[group]} plugin {name!r}: {fn!r} is not callable")
        value = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"
        with _lock:
            if (group, name) in _registered:
                raise ValueError(
                    f"{GROUPS[group]} plugin {name!r} is already registered in-process "
                    f"({_registered[group, name].value}); unregister it first"
                )
            _registered[group, name] = Plugin(group, name, value, dist, version, IN_PROCESS, target=fn)
        _resolve(group)  # a clash warns now, where the caller registers
        return fn

    return add if factory is None else add(factory)


def unregister(group: str, name: str) -> Callable[..., Any] | None:
    """Remove an in-process registration; returns its factory (None if there was none)."""
    with _lock:
        plugin = _registered.pop((group_of(group), name), None)
    return plugin.target if plugin is not None else None


def discover(group: str) -> dict[str, Plugin]:
    """The plugins of a group by name (clashes resolved); imports nothing."""
    return _resolve(group_of(group))[0]


def _broken_note() -> str:
    broken = broken_distributions()
    if not broken:
        return ""
    more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
    return f"; could not read the plugins of {broken[0].dist} ({broken[0].error}){more}"


def find(group: str, name: str) -> Plugin:
    """The plugin called ``name``; an unknown name is one line with the installed names and a hint."""
    group = group_of(group)
    available = discover(group)
    if name in available:
        return available[name]
    close = get_close_matches(name, list(available), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    names = ", ".join(sorted(available)) or "none"
    raise UserError(f"unknown {GROUPS[group]} {name!r} (installed: {names}){hint}{_broken_note()}")


def load(group: str, name: str) -> Factory:
    """Import only the plugin ``name`` of ``group``; call the result to build the object."""
    plugin = find(group, name)
    return Factory(plugin, plugin.import_factory())


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Shell wildcards (``conv*``, ``?it``, ``[rm]*``), case-insensitive; no patterns match all."""
    patterns = list(patterns)
    return not patterns or any(fnmatch.fnmatchcase(name.lower(), p.lower()) for p in patterns)


def _row(plugin: Plugin, status: str, error: str = "") -> PluginInfo:
    return PluginInfo(
        plugin.name, plugin.group, plugin.value, plugin.dist, plugin.version, status, error, plugin.origin
    )


def list_plugins(
    patterns: Iterable[str] = (), *, try_load: bool = True, groups: Iterable[str] | None = None
) -> list[PluginInfo]:
    """Rows for the plugins whose names match ``patterns``, then every broken distribution.

    ``try_load`` imports each plugin to report whether it loads (never its factory).
    """
    patterns = list(patterns)
    rows: list[PluginInfo] = []
    for group in [group_of(g) for g in groups] if groups else GROUPS:
        winners, shadowed = _resolve(group)
        entries = [(p, None) for p in winners.values()] + shadowed
        for plugin, keep in sorted(entries, key=lambda e: (e[0].name, e[1] is not None)):
            if not matches(plugin.name, patterns):
                continue
            if keep is not None:
                rows.append(_row(plugin, "shadowed", f"name taken by {keep.source}"))
            elif not try_load:
                rows.append(_row(plugin, "not loaded"))
            else:
                try:
                    plugin.import_factory()
                    rows.append(_row(plugin, "ok"))
                except PluginError as exc:
                    rows.append(_row(plugin, "failed", exc.reason))
    rows += [
        PluginInfo("", "", b.where, b.dist, b.version, "broken", b.error) for b in broken_distributions()
    ]
    return rows
