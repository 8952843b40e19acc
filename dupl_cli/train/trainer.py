"""``dupl train``: the set-up around the training loop (``train.loop``) and its hooks (``train.hooks``).

The trainer claims the run directory, checks the data, builds the model, optimiser and schedule,
resumes, and records the outcome in run.json. One process by default; ``accelerate launch -m
dupl_cli train`` or ``torchrun`` for data parallel (CPU gloo when there is no CUDA). Nothing here
reads rank variables: Accelerate does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dupl_cli.config.method_params import stage2_config, step_config
from dupl_cli.config.schema import DuplSettings
from dupl_cli.config.toml_writer import dumps
from dupl_cli.core.errors import UserError, one_line
from dupl_cli.core.writable import check_writable
from dupl_cli.data.base import SubsetAdapter, left_out_note
from dupl_cli.data.loader import train_loader
from dupl_cli.data.pseudo_labels import stage2_loader
from dupl_cli.data.verify import check_split
from dupl_cli.method.params import StepConfig
from dupl_cli.method.schedule import phase_name
from dupl_cli.models.backbones.base import normalisation_mismatch
from dupl_cli.plugins import DATASETS, load
from dupl_cli.runs import run_dir as runs
from dupl_cli.runs import run_index
from dupl_cli.runs.card import Card, Stage2Record
from dupl_cli.runs.checkpoint import build_network, is_stage2
from dupl_cli.runs.resume import load_resume
from dupl_cli.runs.run_lock import RunLock, clean_leftovers
from dupl_cli.train.accel import make_accelerator
from dupl_cli.train.compile import compile_from_settings
from dupl_cli.train.divergence import SaveGate, loss_weights
from dupl_cli.train.hooks import (
    BestModelHook,
    CheckpointHook,
    FinalModelHook,
    ImagesHook,
    LogHook,
    TrackerHook,
    ValidationHook,
)
from dupl_cli.train.loop import HookBase, TrainingModule, TrainParts, step_generator, train_loop
from dupl_cli.train.optim import build_optimizer, build_scheduler
from dupl_cli.train.progress import TrainingProgress
from dupl_cli.train.stage2 import (
    PHASE,
    Stage2Module,
    check_stage,
    pseudo_label_split,
    stage2_record,
    wants_confidence,
)
from dupl_cli.train.state import TrainState
from dupl_cli.train.step_guard import NonFiniteGuard
from dupl_cli.train.trackers import TrackerImages, start_trackers, tracker_names

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass
class TrainOptions:
    run_dir: Path | None = None
    resume: str | None = None  # None, "latest" or a path
    stop_at: int | None = None  # stop after this iteration (schedule unchanged)
    dry_run: bool = False
    preset: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    quiet: bool = False


def _checked(adapter, on_error: str, kind: str, report):
    """A split checked before the first step (all problems listed at once); bad samples left out
    with ``data.on_error = skip``, so no validation fails hours into a run."""
    good, problems = check_split(adapter, on_error=on_error)
    if problems:
        report(f"warning: skipping {len(problems)} bad {kind} sample(s) (data.on_error = skip):")
        for problem in problems:
            report(f"  {problem.message}")
    return SubsetAdapter(adapter, good) if len(good) != len(adapter) else adapter


def _datasets(settings: DuplSettings, with_val: bool, report) -> tuple[Any, Any]:
    """The training split and the val split (when it has masks), both checked before the first step."""
    factory = load(DATASETS, settings.data.adapter)
    train_set = factory(settings.data, settings.data.train_split)
    if note := left_out_note(train_set):
        report(f"warning: {note}")
    if is_stage2(settings):  # the pseudo-labels as masks, their folder checked against the split first
        train_set = pseudo_label_split(train_set, settings)
    train_set = _checked(train_set, settings.data.on_error, "training", report)
    if settings.train.label_quality and is_stage2(settings):
        raise UserError(
            "train.label_quality measures stage 1's own labels; a stage-2 run learns fixed pseudo-labels "
            "(score them with dupl pseudo-label --evaluate)"
        )
    if settings.train.label_quality and not train_set.has_masks:
        raise UserError(
            f"train.label_quality: the training split {settings.data.train_split!r} of data.root "
            f"{settings.data.root} has no masks to measure the labels against; turn it off"
        )
    val_set = None
    if with_val:
        val_set = factory(settings.data, settings.data.val_split)
        if not val_set.has_masks:
            report(f"note: split {settings.data.val_split!r} has no masks; validation is off")
            return train_set, None
        val_set = _checked(val_set, settings.data.on_error, "validation", report)
    return train_set, val_set


def log_fatal(run_dir: Path, exc: BaseException) -> None:
    """The error that ends a run, appended to its train.log (with the traceback when it is a bug)."""
    import traceback

    if isinstance(exc, UserError):
        text = f"fatal: {exc}"
    elif isinstance(exc, KeyboardInterrupt):
        text = "fatal: interrupted (KeyboardInterrupt)"
    else:
        text = f"fatal: {one_line(exc)}\n" + "".join(traceback.format_exception(exc)).rstrip()
    try:
        with open(Path(run_dir) / "train.log", "a", encoding="utf-8") as log:
            log.write(text + "\n")
    except OSError:
        pass  # the run directory itself is the problem (gone, read-only, disk full): the terminal has it


def parameter_counts(model: nn.Module) -> dict[str, int]:
    student = model.students[0]
    count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
    backbone, heads = student.param_groups()
    return {
        "per_student_trainable": count(backbone) + count(heads),
        "per_student_backbone": count(backbone),
        "per_student_heads": count(heads),
        "frozen": count(p for p in model.parameters() if not p.requires_grad),
        "total": count(model.parameters()),
    }


def _card(
    settings: DuplSettings,
    classes,
    palette,
    step: int,
    student: int,
    metrics: dict,
    rule: str,
    *,
    students: int | None = None,
    stage2: Stage2Record | None = None,
) -> Card:
    return Card(
        classes=list(classes),
        palette=[tuple(c) for c in palette],
        settings=settings.model_dump(mode="json"),
        student=student,
        students=settings.method.students if students is None else students,
        step=step,
        student_rule=rule,
        selection=settings.train.select,
        metrics=metrics,
        stage2=stage2,
    )


class Trainer:
    def __init__(self, settings: DuplSettings, options: TrainOptions) -> None:
        check_stage(settings)  # a stage-2 preset without its pseudo-label folder stops here, in one line
        self.settings = runs.absolute_paths(settings)  # cards must name the same data from any folder
        self.options = options
        self.model: nn.Module | None = None
        self.config: StepConfig | None = None  # built in run() once the class count is known
        self._lock: RunLock | None = None
        self._running = False  # run.json says running (set by _record_start)

    # -- set-up -------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> tuple[Path | None, Path | None]:
        options, train = self.options, self.settings.train
        if options.dry_run:
            return None, None
        if options.resume is not None:
            run_dir, ckpt = runs.find_resume(options.resume, options.run_dir, train.runs_root)
            return run_dir, ckpt
        run_dir = options.run_dir or runs.new_run_dir(train.runs_root, train.run_name, options.preset)
        return run_dir, None

    def _claim_run_dir(self, run_dir: Path, resume_ckpt: Path | None) -> tuple[RunLock, list[Path]]:
        """Lock the run directory (before looking at it: two starts at once cannot both pass), then
        remove an interrupted run's leftovers. Main process only."""
        check_writable(run_dir, "run directory")
        lock = RunLock.acquire(run_dir)
        try:
            if resume_ckpt is None and runs.latest_checkpoint(run_dir) is not None:
                raise UserError(
                    f"{run_dir}: already holds a run; use --resume to continue it or choose another --run-dir"
                )
            return lock, clean_leftovers(run_dir)
        except BaseException:
            lock.release()
            raise

    def _announce_claim(
        self, progress: TrainingProgress, run_dir: Path | None, leftovers: list[Path]
    ) -> None:
        if self._lock is not None and self._lock.unsupported:
            progress.message(
                f"warning: {run_dir}: not locked ({self._lock.unsupported}); "
                "start one training here at a time"
            )
        if leftovers:
            names = ", ".join(str(p.relative_to(run_dir)) for p in leftovers)
            progress.message(f"note: removed what an interrupted run left behind: {names}")

    def run(self) -> Path | None:
        """Train; the run directory is locked throughout and a fatal error is also written to train.log."""
        run_dir, resume_ckpt = self._prepare_run_dir()
        train = self.settings.train
        accelerator = make_accelerator(
            train.precision, train.grad_accum, run_dir, train.tracker if run_dir else "none"
        )
        owned = run_dir is not None and accelerator.is_main_process
        lock, leftovers = self._claim_run_dir(run_dir, resume_ckpt) if owned else (None, [])
        self._lock = lock
        try:
            return self._run(accelerator, run_dir, resume_ckpt, leftovers)
        except BaseException as exc:
            if owned:
                log_fatal(run_dir, exc)
                if self._running:  # a set-up failure after run.json said running (the loop marks its own)
                    run_index.mark_crashed(run_dir, one_line(exc))
            raise
        finally:
            if lock is not None:
                lock.release()

    def _run(
        self, accelerator: Accelerator, run_dir: Path | None, resume_ckpt: Path | None, leftovers: list[Path]
    ) -> Path | None:
        from accelerate.utils import set_seed

        settings, train = self.settings, self.settings.train
        main = accelerator.is_main_process
        progress = TrainingProgress(train.max_iters, 0, run_dir if main else None, enabled=main,
                                    quiet=self.options.quiet)  # fmt: skip
        self._announce_claim(progress, run_dir, leftovers)
        set_seed(train.seed, deterministic=train.deterministic)
        if train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        train_set, val_set = _datasets(settings, not self.options.dry_run, progress.message)
        model = self._build_model(train_set.classes, progress, main)
        if run_dir is not None and main:  # running only once the data checks and the model have passed
            self._record_start(run_dir, resume_ckpt, progress)
        if main:
            self._report_batch(accelerator, progress)
        if self.options.dry_run:
            return self._dry_run(accelerator, model, train_set, progress)
        parts, loader, state = self._prepare(accelerator, model, train_set, run_dir, resume_ckpt, progress)
        progress.start = state.step
        hooks = self._hooks(parts, val_set, train_set, run_dir, progress)
        self._run_recorded(parts, loader, state, hooks, progress, run_dir if main else None)
        return run_dir

    def _record_start(self, run_dir: Path, resume_ckpt: Path | None, progress: TrainingProgress) -> None:
        """Warn about settings changed since the checkpoint, write config.toml, mark the run started."""
        settings_json = self.settings.model_dump(mode="json")
        changed = runs.changed_settings(run_dir, settings_json) if resume_ckpt else []
        for line in changed:
            progress.message(f"warning: setting changed since the checkpoint: {line}")
        runs.write_config(run_dir, settings_json, self.options.sources)
        run_index.mark_run(run_dir, "running", preset=self.options.preset)
        self._running = True
        run_index.point_latest(self.settings.train.runs_root, run_dir)

    def _build_model(self, classes: list[str], progress: TrainingProgress, main: bool) -> nn.Module:
        """The step config and the dual student for ``classes`` (with data.pseudo_labels: the stage-2
        config and segmenter), warning when the backbone's pretraining statistics differ from the
        data's normalisation."""
        settings = self.settings
        stage2 = is_stage2(settings)
        self.config = stage2_config(settings) if stage2 else step_config(settings, num_classes=len(classes))
        model = build_network(settings, len(classes), settings.method.students)
        self.model = model  # the unwrapped network, for callers that inspect it after training
        backbone = model.students[0].backbone
        model_settings, data = settings.model, settings.data
        stats = normalisation_mismatch(
            backbone, model_settings.arch, model_settings.pretrained, data.mean, data.std
        )
        if main and stats:
            progress.message(f"warning: {stats}")
        return model

    def _prepare(
        self,
        accelerator: Accelerator,
        model: nn.Module,
        train_set: Any,
        run_dir: Path,
        resume_ckpt: Path | None,
        progress: TrainingProgress,
    ) -> tuple[TrainParts, Any, TrainState]:
        """(TrainParts, prepared loader, TrainState): compiled model, optimiser, schedule and loader
        through ``accelerator.prepare``, the checkpoint's state when resuming, trackers started."""
        settings, train = self.settings, self.settings.train
        compile_from_settings(model, train)
        optimizer = build_optimizer(model, train)
        scheduler = build_scheduler(optimizer, train)
        loader = self._loader(train_set, train.batch_size)
        module = self._module(model)
        module, optimizer, loader, scheduler = accelerator.prepare(module, optimizer, loader, scheduler)
        state = TrainState()
        if resume_ckpt is not None:
            saved, resume_ckpt = load_resume(accelerator, run_dir, resume_ckpt, progress.message)
            state = TrainState.from_json(saved)
            progress.message(f"resumed from {resume_ckpt} at step {state.step}")
        start_trackers(accelerator, settings, run_dir)
        guard = NonFiniteGuard(optimizer, accelerator.device, in_row=state.bad_in_row)
        parts = TrainParts(accelerator, module, optimizer, scheduler, guard, seed=train.seed)
        return parts, loader, state

    def _hooks(
        self,
        parts: TrainParts,
        val_set: Any,
        train_set: Any,
        run_dir: Path | None,
        progress: TrainingProgress,
    ) -> list[HookBase]:
        """The hooks after each step, in the order they run (train.hooks)."""
        settings, train = self.settings, self.settings.train
        own_dir = run_dir if parts.accelerator.is_main_process else None  # the files are the main process's
        stop = self._stop()
        stage2 = stage2_record(train_set, settings) if is_stage2(settings) else None
        students = len(parts.model.students)
        card = functools.partial(
            _card, settings, train_set.classes, train_set.palette, students=students, stage2=stage2
        )
        tracked = bool(tracker_names(train.tracker)) and own_dir is not None
        images = TrackerImages(parts.accelerator, tracker_names(train.tracker), own_dir) if tracked else None
        schedule = getattr(self.config, "schedule", None)  # none in stage 2: its phase is PHASE
        weights = loss_weights(settings)
        hooks: list[HookBase] = [LogHook(parts, progress, schedule, train, run_dir, stop, weights)]
        if tracked:
            hooks.append(ImagesHook(images, train_set.palette, train.image_every))
        if val_set is not None:
            scales = self.config.cam.scales if not is_stage2(settings) else ()  # a segmenter has no CAMs
            hooks.append(
                ValidationHook(parts, val_set, train_set.classes, settings, scales, progress, own_dir, stop)
            )
        if own_dir is not None and train.select == "best-val":
            hooks.append(BestModelHook(parts, settings, card, progress, own_dir))
        if tracked:
            hooks.append(TrackerHook(parts.accelerator, images, train_set.palette))
        if run_dir is not None:
            checkpoints = CheckpointHook(
                parts.accelerator, run_dir, train.ckpt_every, train.keep_checkpoints, stop,
                gate=SaveGate(parts, train, run_dir, weights),
            )  # fmt: skip
            hooks += [checkpoints, FinalModelHook(parts, settings, card, progress, run_dir)]
        return hooks

    def _stop(self) -> int:
        """The step this run stops after: the schedule's end, or ``--max-iters`` before it."""
        max_iters = self.settings.train.max_iters
        return min(max_iters, self.options.stop_at or max_iters)

    def _views(self) -> int:
        """Weak views per image the step needs: two with diff_aug (one per student)."""
        return 2 if getattr(self.config, "diff_aug", False) else 1

    def _loader(self, train_set: Any, batch_size: int, **kwargs) -> Any:
        """The training loader: weak views, or in stage 2 views with their pseudo-labels (and confidence)."""
        settings = self.settings
        if is_stage2(settings):
            confidence = wants_confidence(settings)
            return stage2_loader(train_set, settings.data, batch_size, seed=settings.train.seed,
                                 confidence=confidence, **kwargs)  # fmt: skip
        return train_loader(
            train_set, settings.data, batch_size, seed=settings.train.seed, views=self._views(),
            gt_masks=settings.train.label_quality, **kwargs,
        )  # fmt: skip

    def _module(self, model: nn.Module) -> nn.Module:
        """What one forward of the step runs: the DuPL step, or in stage 2 the segmenter's."""
        return (
            Stage2Module(model, self.config)
            if is_stage2(self.settings)
            else TrainingModule(model, self.config)
        )

    def _run_recorded(
        self,
        parts: TrainParts,
        loader: Any,
        state: TrainState,
        hooks: list[HookBase],
        progress: TrainingProgress,
        run_dir: Path | None,
    ) -> None:
        """The loop, with its outcome in run.json (``run_dir`` None: not this process's job)."""
        try:
            self._check_loader(parts.accelerator, loader)
            train_loop(
                parts, loader, state, hooks, stop=self._stop(), grad_accum=self.settings.train.grad_accum
            )
        except BaseException as exc:
            if run_dir is not None:
                run_index.mark_run(run_dir, "crashed", error=one_line(exc))
            raise
        finally:
            progress.close()
            parts.accelerator.end_training()
        if run_dir is not None:
            step = state.step
            run_index.mark_run(
                run_dir, "finished" if step >= self.settings.train.max_iters else "stopped", step=step
            )

    def _check_loader(self, accelerator: Accelerator, loader: Any) -> None:
        if len(loader) == 0:
            raise UserError(
                f"training split has fewer images than one batch ({self.settings.train.batch_size} x "
                f"{accelerator.num_processes} processes)"
            )

    def _report_batch(self, accelerator: Accelerator, progress: TrainingProgress) -> None:
        """The effective batch, with a warning when it differs from the preset's reference batch."""
        train = self.settings.train
        effective = accelerator.num_processes * train.batch_size * train.grad_accum
        progress.message(
            f"effective batch {effective} = {accelerator.num_processes} process(es) x {train.batch_size} per "
            f"device x {train.grad_accum} accumulation"
            f" | precision {accelerator.mixed_precision} | device {accelerator.device}"
        )
        if effective != train.reference_batch:
            progress.message(
                f"warning: effective batch {effective} differs from this preset's reference batch "
                f"{train.reference_batch}; results depend on it"
            )

    def _dry_run(
        self, accelerator: Accelerator, model: nn.Module, train_set: Any, progress: TrainingProgress
    ) -> None:
        settings = self.settings
        batch = next(iter(self._loader(train_set, 2, num_workers=0)))
        module = accelerator.prepare(self._module(model))
        print(dumps(settings.model_dump(mode="json")))
        for key, value in parameter_counts(model).items():
            print(f"parameters {key}: {value:,}")
        schedule = getattr(self.config, "schedule", None)
        for step in sorted({0, schedule.t_seg, schedule.t_anf}) if schedule is not None else [0]:
            result = module(batch, step, step_generator(settings.train.seed, step))
            accelerator.backward(result.loss)
            module.zero_grad(set_to_none=True)
            terms = " ".join(f"{k} {float(v.detach()):.4f}" for k, v in result.terms.items())
            print(
                f"dry run: phase {phase_name(step, schedule) if schedule else PHASE} step {step}: "
                f"loss {float(result.loss.detach()):.4f} "
                f"({terms})"
            )
        return None
