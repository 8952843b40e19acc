"""The hooks ``dupl train`` runs after each optimiser step (``train.loop.train_loop``), in this order:

* :class:`LogHook`: the log interval's means (one host read per interval) and the non-finite guard's report;
* :class:`ImagesHook`: the first image's panels to the trackers;
* :class:`ValidationHook`: mIoU per student on the val split, metrics.jsonl and the curves;
* :class:`BestModelHook`: ``best.safetensors`` when a validation beats the best (train.select = best-val);
* :class:`TrackerHook`: the logged means, validation scores and curves to the trackers;
* :class:`CheckpointHook`: the resumable checkpoint;
* :class:`FinalModelHook`: ``final.safetensors`` with its card when the schedule ends.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dupl_cli.config.schema import DuplSettings, TrainSettings
from dupl_cli.data.base import shard
from dupl_cli.data.loader import eval_loader
from dupl_cli.evaluation.curves import write_curves
from dupl_cli.evaluation.visual_grid import training_grid
from dupl_cli.method.params import PhaseSchedule
from dupl_cli.method.schedule import phase_name
from dupl_cli.method.step import StepResult
from dupl_cli.runs import run_dir as runs
from dupl_cli.runs.card import Card
from dupl_cli.runs.checkpoint import save_model
from dupl_cli.train.divergence import LOSS_WEIGHTS, SaveGate, diverged, loss_weights
from dupl_cli.train.loop import HookBase, StepEvents, TrainParts
from dupl_cli.train.progress import TrainingProgress, append_line
from dupl_cli.train.stage2 import PHASE
from dupl_cli.train.state import BestModel, TrainState, Validation
from dupl_cli.train.trackers import TrackerImages
from dupl_cli.train.validation import validate

if TYPE_CHECKING:
    from accelerate import Accelerator

CardMaker = Callable[[int, int, dict[str, float], str], Card]
"""(step, student, metrics, student rule) -> the card saved beside a model."""

FINAL_RULE = (
    "fixed before training: the students are trained symmetrically, and no pixel label of any split chose it"
)


def best_val_rule(settings: DuplSettings, step: int) -> str:
    return (
        f"best seg mIoU on {settings.data.val_split!r} at step {step} (train.select = best-val: "
        "that split's pixel labels chose the checkpoint and the student)"
    )


def _due(step: int, every: int, stop: int) -> bool:
    """Whether a ``every``-steps job runs after ``step``: on its multiples and at the loop's stop."""
    return step % every == 0 or step == stop


class LogHook(HookBase):
    """Loss terms and statistics averaged over each log interval, and the non-finite guard's report.

    The sums stay on the device; a log step reads the means, the count of good steps and the
    guard's counters in one host read. The guard is also read alone before a validation or a
    checkpoint that is not a log step (the checkpoint records the bad-step streak), and at once
    when it had to read its verdict on the host anyway.
    """

    def __init__(
        self,
        parts: TrainParts,
        progress: TrainingProgress,
        schedule: PhaseSchedule | None,  # None: stage 2, whose phase is always PHASE
        train: TrainSettings,
        run_dir: Path | None,
        stop: int,
        weights: tuple[str, ...] = LOSS_WEIGHTS,  # the loss weights a divergence stop names
    ) -> None:
        self.parts, self.progress, self.schedule, self.train = parts, progress, schedule, train
        self.run_dir, self.stop, self.weights = run_dir, stop, weights
        self.sums: dict[str, torch.Tensor] = {}  # device scalars over the interval's good steps
        self.count: torch.Tensor | int = 0  # good steps in the interval, on the device

    def after_step(self, state: TrainState, events: StepEvents) -> None:
        if events.outcome.bad_on_host:
            self._report_guard(state)
        self._accumulate(events.outcome.result, events.outcome.bad)
        train = self.train
        if _due(state.step, train.log_every, self.stop):
            events.record = self._read_interval(state)
        elif state.step % train.val_every == 0 or state.step % train.ckpt_every == 0:
            self._report_guard(state)

    def _accumulate(self, result: StepResult, bad: torch.Tensor) -> None:
        """Device-side sums of the logged values over good steps (a skipped step adds nothing)."""
        good = ~bad
        values = {f"loss/{k}": v.detach().float() for k, v in result.terms.items()}
        values["loss/total"] = result.loss.detach().float()
        values.update({k: v.detach().float().mean() for k, v in result.stats.items()})
        for name, (hits, pixels) in (result.counts or {}).items():
            values[f"quality/{name}{HITS}"], values[f"quality/{name}{PIXELS}"] = hits, pixels
        for key, value in values.items():
            value = torch.where(good, value, torch.zeros_like(value))
            self.sums[key] = self.sums.get(key, torch.zeros((), device=value.device)) + value
        self.count = self.count + good.float()

    def _read_interval(self, state: TrainState) -> dict[str, Any] | None:
        """The interval's record (None when every step of it was skipped), shown and written to
        metrics.jsonl; the guard is reported from the same read."""
        accelerator = self.parts.accelerator
        keys = sorted(self.sums)
        device = accelerator.device
        count = torch.as_tensor(self.count, device=device).float().reshape(1)
        stacked = torch.zeros(0, device=device)
        if keys:
            stacked = accelerator.reduce(
                torch.stack([self.sums[k] for k in keys]) / count.clamp_min(1), "mean"
            )
        # The only host read of the log interval: means, count and the bad-step guard together.
        values = torch.cat([stacked, count, self.parts.guard.state()]).tolist()
        count, guard = values[len(keys)], values[len(keys) + 1 :]
        self.sums, self.count = {}, 0
        self._report_guard(state, guard)
        if not keys or count == 0:
            return None
        record = pixel_ratios(dict(zip(keys, values[: len(keys)], strict=True)))
        record.setdefault("tau_h", float("nan"))
        record.setdefault("noise_share", 0.0)
        record["lr"] = self.parts.scheduler.get_last_lr()[0]
        record["phase"] = phase_name(state.step, self.schedule) if self.schedule is not None else PHASE
        images = self.train.batch_size * self.train.grad_accum * accelerator.num_processes
        self.progress.update(state.step, record, images)
        return record

    def _report_guard(self, state: TrainState, values: list[float] | None = None) -> None:
        """Report skipped non-finite steps (``values``: the guard's state, read with the means, or
        read here) and stop after ``train.max_bad_steps`` in a row."""
        guard = self.parts.guard
        in_row, skipped, last, names = guard.read(values if values is not None else guard.state().tolist())
        last += 1  # the guard keeps the iteration index; lines count steps taken, as metrics.jsonl does
        state.bad_in_row = in_row
        if skipped == 1:
            self.progress.message(f"warning: step {last}: non-finite loss ({', '.join(names)}); step skipped")
        elif skipped > 1:
            self.progress.message(
                f"warning: {skipped} steps up to step {last}: non-finite loss ({', '.join(names)}); "
                "steps skipped"
            )
        if in_row >= self.train.max_bad_steps:
            what = f"{in_row} non-finite steps in a row, last: {', '.join(names)}"
            raise diverged(last, what, self.train, self.run_dir, self.weights)


HITS, PIXELS = "#hits", "#pixels"


def pixel_ratios(record: dict[str, float]) -> dict[str, float]:
    """The interval's label-quality counts as ratios (hits over pixels, summed over its steps); one
    with no pixel in the interval is left out."""
    out = {k: v for k, v in record.items() if not k.endswith((HITS, PIXELS))}
    for key in record:
        if key.endswith(HITS):
            name = key.removesuffix(HITS)
            pixels = record[name + PIXELS]
            if pixels > 0:
                out[name] = record[key] / pixels
    return out


class ImagesHook(HookBase):
    """Every ``every`` steps, the first image's panels (image, CAM, pseudo-label, prediction) to
    the trackers (``train.trackers.TrackerImages``). Main process only."""

    def __init__(self, images: TrackerImages, palette: list[tuple[int, int, int]], every: int) -> None:
        self.images, self.palette, self.every = images, palette, every

    def after_step(self, state: TrainState, events: StepEvents) -> None:
        if state.step % self.every:
            return
        self.images.log_grid(training_grid(events.outcome.result.visuals, self.palette), state.step)


class ValidationHook(HookBase):
    """Every ``train.val_every`` steps and at the stop: CAM, aux-CAM and seg mIoU of every student
    on this process's shard of the val split (reduced over processes), shown and kept as
    ``state.last``; appended to metrics.jsonl and drawn as curves in ``own_dir`` (the main process's
    run directory; None elsewhere)."""

    def __init__(
        self,
        parts: TrainParts,
        val_set: Any,
        classes: list[str],
        settings: DuplSettings,
        cam_scales: tuple[float, ...],
        progress: TrainingProgress,
        own_dir: Path | None,
        stop: int,
    ) -> None:
        accelerator = parts.accelerator
        self.parts, self.settings, self.cam_scales = parts, settings, cam_scales
        self.progress, self.own_dir, self.stop = progress, own_dir, stop
        self.classes = classes
        self.own_part = shard(val_set, accelerator.process_index, accelerator.num_processes,
                              settings.train.val_max_images)  # fmt: skip

    def after_step(self, state: TrainState, events: StepEvents) -> None:
        if not _due(state.step, self.settings.train.val_every, self.stop):
            return
        scores = self._scores()
        students = len(self.parts.model.students)
        student = max(range(1, students + 1), key=lambda k: scores[f"seg_s{k}"])  # ties: 1
        text = " ".join(f"{k} {v:.1f}" for k, v in scores.items())
        self.progress.message(f"validation step {state.step}: {text} (mIoU %)")
        events.scores, events.best_student = scores, student
        state.last = Validation(state.step, scores)
        if self.own_dir is None:
            return
        line = json.dumps({"step": state.step, "validation": scores, "best_student": student})
        append_line(self.own_dir / "metrics.jsonl", line)  # a full disk: one line naming the file
        write_curves(self.own_dir)  # PNG curves beside the numbers, without TensorBoard

    def _scores(self) -> dict[str, float]:
        settings = self.settings
        # batched at the training batch (the images share the crop size); every rank runs its shard
        loader = eval_loader(self.own_part, settings.data, size=settings.data.crop_size,
                             batch_size=settings.train.batch_size)  # fmt: skip
        return validate(
            self.parts.model,
            loader,
            num_classes=len(self.classes),
            class_names=self.classes,
            cam_scales=self.cam_scales,
            cam_threshold=settings.eval.cam_threshold,
            device=self.parts.accelerator.device,
        )


class _ModelSaver(HookBase):
    """What the hooks that write an inference checkpoint share: the model, its card and the save gate."""

    def __init__(
        self,
        parts: TrainParts,
        settings: DuplSettings,
        card: CardMaker,
        progress: TrainingProgress,
        run_dir: Path,
    ) -> None:
        self.parts, self.settings, self.card = parts, settings, card
        self.progress, self.run_dir = progress, run_dir
        self.gate = SaveGate(parts, settings.train, run_dir, loss_weights(settings))


class BestModelHook(_ModelSaver):
    """``train.select = best-val``: after a validation whose best student beats ``state.best``,
    that state and ``best.safetensors`` with its card. Main process only."""

    def after_step(self, state: TrainState, events: StepEvents) -> None:
        if events.scores is None:
            return
        student, scores = events.best_student, events.scores
        score = scores[f"seg_s{student}"]
        if state.best is not None and score <= state.best.score:
            return
        if not self.gate.ready(state.step):
            return  # steps are being skipped: no best model from a diverging run
        state.best = BestModel(state.step, score, student, scores)
        card = self.card(state.step, student, scores, best_val_rule(self.settings, state.step))
        save_model(self.run_dir / "best", self.parts.model, card)
        self.progress.message(
            f"new best: student {student} seg mIoU {score:.1f} -> {self.run_dir / 'best.safetensors'}"
        )


class TrackerHook(HookBase):
    """The logged means (finite ones) and the validation scores (as ``val/...``) to the trackers;
    at each validation also the curves and the step's training grid (``images``). Main process only."""

    def __init__(
        self,
        accelerator: Accelerator,
        images: TrackerImages | None = None,
        palette: list[tuple[int, int, int]] | None = None,
    ) -> None:
        self.accelerator, self.images, self.palette = accelerator, images, palette

    def after_step(self, state: TrainState, events: StepEvents) -> None:
        if events.record is not None:
            finite = {k: v for k, v in events.record.items() if isinstance(v, float) and math.isfinite(v)}
            self.accelerator.log(finite, step=state.step)
        if events.scores is not None:
            self.accelerator.log({f"val/{k}": v for k, v in events.scores.items()}, step=state.step)
            if self.images is not None:
                self.images.log_curves(state.step)
                if events.outcome is not None:
                    grid = training_grid(events.outcome.result.visuals, self.palette or [])
                    self.images.log_grid(grid, state.step)  # once per step, with ImagesHook's


class CheckpointHook(HookBase):
    """Every ``every`` steps and at the stop: Accelerate's state and ``state`` as a resumable
    checkpoint, the newest ``keep`` kept. Every process (the save is collective). With a ``gate``
    (train.divergence), a save due while steps are skipped waits for the next good step, and
    non-finite weights or a streak at the stop end the run unsaved."""

    def __init__(
        self, accelerator: Accelerator, run_dir: Path, every: int, keep: int, stop: int,
        gate: SaveGate | None = None,
    ) -> None:  # fmt: skip
        self.accelerator, self.run_dir, self.every, self.keep, self.stop = (
            accelerator,
            run_dir,
            every,
            keep,
            stop,
        )
        self.gate, self.pending = gate, False

    def after_step(self, state: TrainState, events: StepEvents) -> None:
        if not (self.pending or _due(state.step, self.every, self.stop)):
            return
        if self.gate is not None and not self.gate.ready(state.step):
            if state.step >= self.stop:
                raise self.gate.stop(state.step)
            self.pending = True  # the next good step saves
            return
        self.pending = False
        runs.save_checkpoint(self.accelerator, self.run_dir, state.step, state.to_json(), self.keep)


class FinalModelHook(_ModelSaver):
    """When the schedule has ended (not at an earlier ``--max-iters``): ``final.safetensors`` with a
    card naming the student and the rule that chose it. Every process waits for the main one."""

    def after_train(self, state: TrainState) -> None:
        if state.step < self.settings.train.max_iters:
            return
        if not self.gate.ready(state.step):
            raise self.gate.stop(state.step)
        if self.parts.accelerator.is_main_process:
            student, scores, rule = self._choice(state)
            path = save_model(
                self.run_dir / "final", self.parts.model, self.card(state.step, student, scores, rule)
            )
            self.progress.message(f"training finished at step {state.step}: {path}")
        self.parts.accelerator.wait_for_everyone()

    def _choice(self, state: TrainState) -> tuple[int, dict[str, float], str]:
        """(student, the latest validation's scores, why this student) for the final weights' card."""
        last = {} if state.last is None else state.last.scores
        best = state.best
        if self.settings.train.select != "best-val" or best is None:  # the default, or no validation
            return 1, last, FINAL_RULE if len(self.parts.model.students) == 2 else "the only student"
        if best.step == state.step:
            return best.student, best.scores, best_val_rule(self.settings, best.step)
        # validation chose the student at an earlier step: these are the last step's weights, not its
        where = f"; the weights are step {state.step}'s (best.safetensors holds step {best.step}'s)"
        return best.student, last, best_val_rule(self.settings, best.step) + where
