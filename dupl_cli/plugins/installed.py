"""What installed distributions declare in their ``entry_points.txt`` for dupl's groups.

importlib's own ``entry_points()`` fails for every distribution at once when one file holds
non-UTF-8 bytes or a line without ``=``, and drops lines before the first ``[group]`` header
without a word. This reader keeps going: a distribution whose declaration is malformed is
returned as ``Broken`` (listed by ``dupl plugins list``) and the others still work. Only files
that mention ``dupl.`` are parsed, so a broken unrelated package is never dupl's business.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import Distribution, distributions
from pathlib import Path

PREFIX = "dupl."
_REFERENCE = re.compile(
    r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(\s*:\s*[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?(\s*\[[^\]]*\])?$"
)


@dataclass(frozen=True)
class Declared:
    """One ``name = module:attr`` line of a ``[dupl.*]`` section."""

    group: str
    name: str
    value: str
    dist: str
    version: str
    where: str  # the entry_points.txt that declares it


@dataclass(frozen=True)
class Broken:
    """A distribution whose dupl declarations cannot be read; ``error`` is one line."""

    dist: str
    version: str
    where: str
    error: str


class Malformed(ValueError):
    pass


def _where(dist: Distribution, filename: str) -> str:
    base = getattr(dist, "_path", None)  # PathDistribution's folder; other finders have none
    return str(Path(base) / filename) if base is not None else f"{filename} of {_guess_name(dist)}"


def _guess_name(dist: Distribution) -> str:
    """The name in the folder's name (``foo_bar-1.0.dist-info``), read without opening a file."""
    base = getattr(dist, "_path", None)
    if base is None:
        return "?"
    return Path(base).name.removesuffix(".dist-info").removesuffix(".egg-info").split("-")[0]


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text: str, groups: Iterable[str]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(group, name, value) of every ``[dupl.*]`` entry, and notes on unknown ``dupl.*`` groups.

    Raises ``Malformed`` with the line number for anything that is not a header, a comment or
    ``name = value``; a bad reference in a dupl group is malformed too.
    """
    known = set(groups)
    found: list[tuple[str, str, str]] = []
    notes: list[str] = []
    section: str | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise Malformed(f"line {lineno}: {line!r} is not a [group] header")
            section = line[1:-1].strip()
            if section.startswith(PREFIX) and section not in known:
                notes.append(
                    f"line {lineno}: unknown group [{section}]; dupl reads "
                    + ", ".join(f"[{g}]" for g in sorted(known))
                )
            continue
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise Malformed(f"line {lineno}: {line!r} is not 'name = module:attr'")
        if section is None:
            raise Malformed(f"line {lineno}: {name!r} comes before any [group] header")
        if section in known:
            if not _REFERENCE.match(value):
                raise Malformed(f"line {lineno}: {value!r} is not a module:attr reference")
            found.append((section, name, value))
    return found, notes


def _read(dist: Distribution, filename: str) -> str | None:
    """The file's text; ``None`` if absent. Undecodable bytes raise ``Malformed`` only if dupl's."""
    try:
        return dist.read_text(filename)
    except UnicodeDecodeError as exc:
        if filename == "entry_points.txt" and PREFIX.encode() not in exc.object:
            return None
        raise Malformed(f"not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise Malformed(f"cannot be read ({exc.strerror or exc})") from None


def _identity(dist: Distribution) -> tuple[str, str]:
    metadata = _read(dist, "METADATA") or _read(dist, "PKG-INFO") or ""
    fields = dict(re.findall(r"^(Name|Version):[ \t]*(.*?)[ \t]*$", metadata.split("\n\n", 1)[0], re.M))
    if "Name" not in fields:
        raise Malformed("has no Name field")
    return fields["Name"], fields.get("Version", "?")


def scan(groups: Iterable[str]) -> tuple[list[Declared], list[Broken]]:
    """Declarations in sys.path order; the first distribution of a name wins, as for imports."""
    groups = tuple(groups)
    declared: list[Declared] = []
    broken: list[Broken] = []
    seen: set[str] = set()
    for dist in distributions():
        guessed = _key(_guess_name(dist))
        if guessed != "?" and guessed in seen:
            continue  # a copy later on sys.path: never imported, so never dupl's
        seen.add(guessed)
        where = _where(dist, "entry_points.txt")
        try:
            text = _read(dist, "entry_points.txt")
        except Malformed as exc:
            text, error = None, f"{where}: {exc}"
        else:
            if not text or PREFIX not in text:
                continue
            error = ""
        try:
            name, version = _identity(dist)
        except Malformed as exc:
            broken.append(
                Broken(_guess_name(dist), "?", _where(dist, "METADATA"), f"{_where(dist, 'METADATA')}: {exc}")
            )
            continue
        if text is None:
            broken.append(Broken(name, version, where, error))
            continue
        try:
            found, notes = parse(text, groups)
        except Malformed as exc:
            broken.append(Broken(name, version, where, f"{where}: {exc}"))
            continue
        broken += [Broken(name, version, where, f"{where}: {note}") for note in notes]
        declared += [Declared(g, n, v, name, version, where) for g, n, v in found]
    return declared, broken
