"""Which recorded quantities of the release's trajectories each of dupl's fixes changes.

Runs every trajectory set (tests/fixtures and $DUPL_RELEASE_TRAJECTORIES) through `dupl train`'s
optimiser step with every compat switch on except one, and prints, per switch, how many recorded
quantities then differ from the release and the first step and quantities that do. About a minute
per set and switch on one CPU thread.

    OMP_NUM_THREADS=1 python benchmarks/trajectory_fixes.py
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "train")]

import release_trajectory as rt  # noqa: E402
from test_release_trajectory import mismatches  # noqa: E402

SWITCHES = ("ptc_pixel_box", "reg_include_padding", "anf_two_sided", "delayed_weights")


class _Patches:
    """The monkeypatch interface the trajectory runner needs, outside pytest."""

    def __init__(self) -> None:
        self._undo: list[tuple[object, str, object]] = []

    def setattr(self, target, name, value) -> None:
        self._undo.append((target, name, getattr(target, name)))
        setattr(target, name, value)

    def undo(self) -> None:
        for target, name, value in reversed(self._undo):
            setattr(target, name, value)


def effect(folder: Path, switch: str) -> list[str]:
    patches = _Patches()
    try:
        return mismatches(folder, patches, extra=[f"compat.{switch}=false"])
    finally:
        patches.undo()


def main() -> None:
    print("| set | fix (switch off) | differences | first step | first quantities |")
    print("|---|---|---|---|---|")
    for folder in rt.trajectory_dirs():
        for switch in SWITCHES:
            found = effect(folder, switch)
            by_step: OrderedDict[str, list[str]] = OrderedDict()
            for line in found:
                step, what = line.split(": ", 1)
                by_step.setdefault(step, []).append(what.split(":")[0])
            first = next(iter(by_step.items()), ("-", []))
            names = ", ".join(dict.fromkeys(first[1][:3])) or "none"
            print(f"| {folder.name} | {switch} | {len(found)} | {first[0]} | {names} |", flush=True)


if __name__ == "__main__":
    main()
