"""The settings load under way: which sources ``DuplSettings()`` reads while ``load_settings`` runs.

A leaf of ``config``: the schema asks it for the active sources, the loader sets them, and neither
imports the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

SourcesBuilder = Callable[[type], list[Any]]  # settings class -> its sources, highest priority first

_ACTIVE: ContextVar[SourcesBuilder | None] = ContextVar("dupl_settings_load", default=None)


def active_sources(settings_cls: type) -> tuple[Any, ...]:
    """The sources of the load under way; none outside one (a bare ``DuplSettings()`` is the defaults)."""
    build = _ACTIVE.get()
    return () if build is None else tuple(build(settings_cls))


@contextmanager
def loading(build: SourcesBuilder) -> Iterator[None]:
    """Make ``build`` the source of settings for ``DuplSettings()`` calls inside the block."""
    token = _ACTIVE.set(build)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
