"""Training progress for the main process: a rich bar on a terminal, plain lines otherwise,
plus ``metrics.jsonl`` and ``train.log`` in the run directory."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from dupl_cli.core.writable import write_failure


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def append_line(path: Path, text: str) -> None:
    """Append ``text`` and a newline to ``path``; a full disk is one line naming the file
    (``core.writable.write_failure``), not an OSError traceback."""
    try:
        with open(path, "a", encoding="utf-8") as out:
            out.write(text + "\n")
    except OSError as exc:
        raise write_failure(path, exc) or exc from None


class TrainingProgress:
    def __init__(
        self, total: int, start: int, run_dir: Path | None, enabled: bool, quiet: bool = False
    ) -> None:
        self.total, self.start, self.enabled, self.quiet = total, start, enabled, quiet
        self.run_dir = run_dir
        self.rich = enabled and not quiet and sys.stderr.isatty()
        self._bar = None
        self._task = None
        self._t0 = time.perf_counter()
        self._last_step, self._last_time = start, self._t0
        if self.rich:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False,
            )  # fmt: skip
            self._task = self._bar.add_task("train", total=total, completed=start, info="")
            self._bar.start()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        self._append_log(text)
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def _append_log(self, text: str) -> None:
        if self.run_dir is not None:
            append_line(self.run_dir / "train.log", text)

    def update(self, step: int, record: dict[str, Any], images_per_step: int) -> None:
        """Called every log interval with host-side numbers; writes metrics.jsonl."""
        if not self.enabled:
            return
        now = time.perf_counter()
        rate = (step - self._last_step) * images_per_step / max(now - self._last_time, 1e-9)
        eta = (self.total - step) * (now - self._t0) / max(step - self.start, 1)
        self._last_step, self._last_time = step, now
        record = {"step": step, **record, "images_per_s": round(rate, 2), "eta_s": round(eta, 1)}
        if self.run_dir is not None:
            append_line(self.run_dir / "metrics.jsonl", json.dumps(record))
        # Per-student terms (…_1, …_2) go to metrics.jsonl; the line shows the sums.
        losses = " ".join(
            f"{k[5:]} {v:.3f}"
            for k, v in record.items()
            if k.startswith("loss/") and not k.endswith(("_1", "_2"))
        )
        tau = record["tau_h"]  # none in stage 2 (NaN): not shown
        tau_text = f" | tau_h {tau:.3f}" if tau == tau else ""
        info = (
            f"phase {record['phase']} | {losses} | lr {record['lr']:.2e}{tau_text} "
            f"| noise {100 * record['noise_share']:.1f}% | {rate:.1f} img/s"
        )
        if self._bar is not None:
            self._bar.update(self._task, completed=step, description=f"train {record['phase']}", info=info)
        else:
            line = f"step {step}/{self.total} {info} | eta {format_eta(eta)}"
            self._append_log(line)
            if not self.quiet:
                print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
