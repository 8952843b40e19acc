"""The Accelerate training loop around ``method.step.training_step``.

One process by default; ``accelerate launch -m dupl_cli train`` or ``torchrun`` for data parallel
(CPU gloo when there is no CUDA). Nothing here reads rank variables: Accelerate does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dupl_cli.config.method_params import step_config
from dupl_cli.config.schema import DuplSettings
from dupl_cli.config.toml_writer import dumps
from dupl_cli.core.errors import UserError, one_line
from dupl_cli.core.writable import check_writable
from dupl_cli.data.base import SubsetAdapter, left_out_note, shard
from dupl_cli.data.loader import eval_loader, train_loader
from dupl_cli.data.verify import check_split
from dupl_cli.evaluation.curves import write_curves
from dupl_cli.evaluation.visual_grid import training_grid
from dupl_cli.method import step as method_step
from dupl_cli.method.params import StepConfig
from dupl_cli.method.schedule import phase_name
from dupl_cli.models.backbones.base import normalisation_mismatch
from dupl_cli.models.dual import build_dual_student
from dupl_cli.plugins import DATASETS, load
from dupl_cli.runs import run_dir as runs
from dupl_cli.runs import run_index
from dupl_cli.runs.card import Card
from dupl_cli.runs.checkpoint import save_model
from dupl_cli.runs.resume import load_resume
from dupl_cli.runs.run_lock import RunLock, clean_leftovers
from dupl_cli.train.accel import make_accelerator
from dupl_cli.train.compile import compile_from_settings
from dupl_cli.train.optim import build_optimizer, build_scheduler
from dupl_cli.train.progress import TrainingProgress
from dupl_cli.train.step_guard import NonFiniteGuard
from dupl_cli.train.validation import validate


@dataclass
class TrainOptions:
    run_dir: Path | None = None
    resume: str | None = None  # None, "latest" or a path
    stop_at: int | None = None  # stop after this iteration (schedule unchanged)
    dry_run: bool = False
    preset: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    quiet: bool = False


class TrainingModule(nn.Module):
    """Wraps the dual student so one DDP forward covers the whole step (CAMs, labels, losses)."""

    def __init__(self, dual: nn.Module, config: StepConfig) -> None:
        super().__init__()
        self.dual = dual
        self.config = config

    def forward(self, batch: dict[str, Any], step: int, generator: torch.Generator | None = None):
        return method_step.training_step(self.dual, batch, step, self.config, generator=generator)


def _step_generator(seed: int, step: int) -> torch.Generator:
    """The strong view's randomness is a function of (seed, step): identical after a resume.

    A CPU generator on every device: the step draws its few op indices on the host (a device
    generator would not fit ``torch.randint`` on the host, and a device draw would need a read).
    """
    gen = torch.Generator()
    gen.manual_seed((seed * 1_000_003 + step) % (2**63))
    return gen


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
    train_set = _checked(train_set, settings.data.on_error, "training", report)
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


FINAL_RULE = (
    "fixed before training: the students are trained symmetrically, and no pixel label of any split chose it"
)


def best_val_rule(settings: DuplSettings, step: int) -> str:
    return (
        f"best seg mIoU on {settings.data.val_split!r} at step {step} (train.select = best-val: "
        "that split's pixel labels chose the checkpoint and the student)"
    )


def _card(
    settings: DuplSettings, classes, palette, step: int, student: int, metrics: dict, rule: str
) -> Card:
    return Card(
        classes=list(classes),
        palette=[tuple(c) for c in palette],
        settings=settings.model_dump(mode="json"),
        student=student,
        students=settings.method.students,
        step=step,
        student_rule=rule,
        selection=settings.train.select,
        metrics=metrics,
    )


class Trainer:
    def __init__(self, settings: DuplSettings, options: TrainOptions) -> None:
        self.settings = runs.absolute_paths(settings)  # cards must name the same data from any folder
        self.options = options
        self.model: nn.Module | None = None
        self.config: StepConfig | None = None  # built in run() once the class count is known
        self._lock: RunLock | None = None

    # -- set-up -------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> tuple[Path | None, Path | None]:
        opts, t = self.options, self.settings.train
        if opts.dry_run:
            return None, None
        if opts.resume is not None:
            run_dir, ckpt = runs.find_resume(opts.resume, opts.run_dir, t.runs_root)
            return run_dir, ckpt
        run_dir = opts.run_dir or runs.new_run_dir(t.runs_root, t.run_name, opts.preset)
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

    def _announce_claim(self, progress, run_dir: Path | None, leftovers: list[Path]) -> None:
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
        t = self.settings.train
        acc = make_accelerator(t.precision, t.grad_accum, run_dir, t.tracker if run_dir else "none")
        owned = run_dir is not None and acc.is_main_process
        lock, leftovers = self._claim_run_dir(run_dir, resume_ckpt) if owned else (None, [])
        self._lock = lock
        try:
            return self._run(acc, run_dir, resume_ckpt, leftovers)
        except BaseException as exc:
            if owned:
                log_fatal(run_dir, exc)
            raise
        finally:
            if lock is not None:
                lock.release()

    def _run(self, acc, run_dir: Path | None, resume_ckpt: Path | None, leftovers: list[Path]) -> Path | None:
        from accelerate.utils import set_seed

        s, t = self.settings, self.settings.train
        main = acc.is_main_process
        progress = TrainingProgress(t.max_iters, 0, run_dir if main else None, enabled=main,
                                    quiet=self.options.quiet)  # fmt: skip
        self._announce_claim(progress, run_dir, leftovers)
        if run_dir is not None and main:
            changed = runs.changed_settings(run_dir, s.model_dump(mode="json")) if resume_ckpt else []
            for line in changed:
                progress.message(f"warning: setting changed since the checkpoint: {line}")
            runs.write_config(run_dir, s.model_dump(mode="json"), self.options.sources)
            self._mark_started(run_dir)
        set_seed(t.seed, deterministic=t.deterministic)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        train_set, val_set = _datasets(s, not self.options.dry_run, progress.message)
        classes, palette = train_set.classes, train_set.palette
        self.config = step_config(s, num_classes=len(classes))
        model = build_dual_student(s.model, num_classes=len(classes), img_size=s.data.crop_size,
                                   students=s.method.students)  # fmt: skip
        self.model = model  # the unwrapped dual student, for callers that inspect it after training
        backbone = model.students[0].backbone
        stats = normalisation_mismatch(backbone, s.model.arch, s.model.pretrained, s.data.mean, s.data.std)
        if main and stats:
            progress.message(f"warning: {stats}")
        if main:
            self._report_batch(acc, progress)
        if self.options.dry_run:
            return self._dry_run(acc, model, train_set, progress)

        compile_from_settings(model, t)
        optimizer = build_optimizer(model, t)
        scheduler = build_scheduler(optimizer, t)
        loader = train_loader(train_set, s.data, t.batch_size, seed=t.seed, views=self._views())
        module = TrainingModule(model, self.config)
        module, optimizer, loader, scheduler = acc.prepare(module, optimizer, loader, scheduler)
        state = {"step": 0, "best": None, "bad_in_row": 0}
        if resume_ckpt is not None:
            state, resume_ckpt = load_resume(acc, run_dir, resume_ckpt, progress.message)
            progress.message(f"resumed from {resume_ckpt} at step {state['step']}")
        if t.tracker != "none" and run_dir is not None:
            acc.init_trackers(
                "events",
                config={f"{k}": json.dumps(v) for k, v in s.model_dump(mode="json")["method"].items()},
            )
        progress.start = state["step"]
        loop = _Loop(self, acc, module, optimizer, scheduler, loader, val_set,
                     classes, palette, run_dir, progress, state)  # fmt: skip
        self._run_recorded(loop, acc, progress, run_dir if main else None)
        return run_dir

    def _views(self) -> int:
        """Weak views per image the step needs: two with diff_aug (one per student)."""
        return 2 if self.config.diff_aug else 1

    def _mark_started(self, run_dir: Path) -> None:
        run_index.mark_run(run_dir, "running", preset=self.options.preset)
        run_index.point_latest(self.settings.train.runs_root, run_dir)

    def _run_recorded(self, loop, acc, progress, run_dir: Path | None) -> None:
        """The loop, with its outcome in run.json (``run_dir`` None: not this process's job)."""
        try:
            loop.run()
        except BaseException as exc:
            if run_dir is not None:
                run_index.mark_run(run_dir, "crashed", error=one_line(exc))
            raise
        finally:
            progress.close()
            acc.end_training()
        if run_dir is not None:
            step = loop.state["step"]
            run_index.mark_run(
                run_dir, "finished" if step >= self.settings.train.max_iters else "stopped", step=step
            )

    def _report_batch(self, acc, progress) -> None:
        """The effective batch, with a warning when it differs from the preset's reference batch."""
        t = self.settings.train
        effective = acc.num_processes * t.batch_size * t.grad_accum
        progress.message(
            f"effective batch {effective} = {acc.num_processes} process(es) x {t.batch_size} per device x "
            f"{t.grad_accum} accumulation"
            f" | precision {acc.mixed_precision} | device {acc.device}"
        )
        if effective != t.reference_batch:
            progress.message(
                f"warning: effective batch {effective} differs from this preset's reference batch "
                f"{t.reference_batch}; results depend on it"
            )

    def _dry_run(self, acc, model, train_set, progress) -> None:
        s = self.settings
        loader = train_loader(train_set, s.data, 2, seed=s.train.seed, num_workers=0, views=self._views())
        batch = next(iter(loader))
        module = acc.prepare(TrainingModule(model, self.config))
        print(dumps(s.model_dump(mode="json")))
        for key, value in parameter_counts(model).items():
            print(f"parameters {key}: {value:,}")
        schedule = self.config.schedule
        for step in sorted({0, schedule.t_seg, schedule.t_anf}):
            result = module(batch, step, _step_generator(s.train.seed, step))
            acc.backward(result.loss)
            module.zero_grad(set_to_none=True)
            terms = " ".join(f"{k} {float(v):.4f}" for k, v in result.terms.items())
            print(
                f"dry run: phase {phase_name(step, schedule)} step {step}: loss {float(result.loss):.4f} "
                f"({terms})"
            )
        return None


class _Loop:
    """The iteration loop with its bookkeeping (kept apart from set-up for readability)."""

    def __init__(
        self,
        trainer,
        acc,
        module,
        optimizer,
        scheduler,
        loader,
        val_set,
        classes,
        palette,
        run_dir,
        progress,
        state,
    ):
        self.s = trainer.settings
        self.config = trainer.config
        self.opts = trainer.options
        self.acc, self.module, self.optimizer, self.scheduler = acc, module, optimizer, scheduler
        self.loader, self.val_set = loader, val_set
        self.classes, self.palette = classes, palette
        self.run_dir, self.progress, self.state = run_dir, progress, state
        self.sums: dict[str, torch.Tensor] = {}
        self.count: torch.Tensor | int = 0  # good steps in the log interval, on the device
        self.guard = NonFiniteGuard(optimizer, acc.device, in_row=state.get("bad_in_row", 0))

    @property
    def model(self):
        return self.acc.unwrap_model(self.module).dual

    def run(self) -> None:
        t = self.s.train
        stop = min(t.max_iters, self.opts.stop_at or t.max_iters)
        step = self.state["step"]
        per_epoch = len(self.loader)
        if per_epoch == 0:
            raise UserError(
                f"training split has fewer images than one batch ({t.batch_size} x {self.acc.num_processes} "
                "processes)"
            )
        micro = step * t.grad_accum
        epoch, offset = divmod(micro, per_epoch)
        bad_micro = torch.zeros((), device=self.acc.device)
        while step < stop:
            self.loader.set_epoch(epoch)
            batches = self.acc.skip_first_batches(self.loader, offset) if offset else self.loader
            for batch in batches:
                with self.acc.accumulate(self.module):
                    result = self.module(batch, step, _step_generator(t.seed, step))
                    bad_micro = bad_micro + (~torch.isfinite(result.loss.detach())).float()
                    self.acc.backward(result.loss)
                    if self.acc.sync_gradients:
                        # Every process must agree to skip a bad step: the verdict is reduced on the device.
                        bad = self.acc.reduce(bad_micro, "sum") > 0
                        bad_micro = torch.zeros((), device=self.acc.device)
                        if self.guard.step(bad, result.terms, step):  # a verdict only without a device skip
                            self._check_guard(step)
                        self.scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)
                if not self.acc.sync_gradients:
                    continue
                self._accumulate(result, bad)
                step += 1
                self.state["step"] = step
                self._after_step(step, stop, result)
                if step >= stop:
                    break
            epoch, offset = epoch + 1, 0
        self._finish(step)

    def _check_guard(self, step: int, values: list[float] | None = None) -> None:
        """Report skipped non-finite steps (read with ``values`` or here) and stop after too many in a row."""
        in_row, skipped, last, names = self.guard.read(
            values if values is not None else self.guard.state().tolist()
        )
        self.state["bad_in_row"] = in_row
        if skipped == 1:
            self.progress.message(f"warning: step {last}: non-finite loss ({', '.join(names)}); step skipped")
        elif skipped > 1:
            self.progress.message(
                f"warning: {skipped} steps up to step {last}: non-finite loss ({', '.join(names)}); "
                "steps skipped"
            )
        if in_row >= self.s.train.max_bad_steps:
            ckpt = runs.latest_checkpoint(self.run_dir) if self.run_dir else None
            raise UserError(
                f"{in_row} non-finite steps in a row (last: {', '.join(names)}); stopped. "
                f"Last good checkpoint: {ckpt or 'none'}. Lower train.lr or use train.precision=no",
                exit_code=1,
            )

    def _accumulate(self, result, bad: torch.Tensor) -> None:
        """Device-side sums of the logged values over good steps (a skipped step adds nothing)."""
        good = ~bad
        values = {f"loss/{k}": v.detach().float() for k, v in result.terms.items()}
        values["loss/total"] = result.loss.detach().float()
        values.update({k: v.detach().float().mean() for k, v in result.stats.items()})
        for key, value in values.items():
            value = torch.where(good, value, torch.zeros_like(value))
            self.sums[key] = self.sums.get(key, torch.zeros((), device=value.device)) + value
        self.count = self.count + good.float()

    def _after_step(self, step: int, stop: int, result) -> None:
        t = self.s.train
        log = step % t.log_every == 0 or step == stop
        if log:
            self._log(step)  # reads the guard too
        elif step % t.val_every == 0 or step % t.ckpt_every == 0:
            self._check_guard(step)  # before a checkpoint records bad_in_row
        if self.s.train.tracker != "none" and step % t.image_every == 0 and self.acc.is_main_process:
            self._log_images(step, result)
        if self.val_set is not None and (step % t.val_every == 0 or step == stop):
            self._validate(step)
        if self.run_dir is not None and (step % t.ckpt_every == 0 or step == stop):
            runs.save_checkpoint(self.acc, self.run_dir, step, dict(self.state), t.keep_checkpoints)

    def _log(self, step: int) -> None:
        keys = sorted(self.sums)
        device = self.acc.device
        count = torch.as_tensor(self.count, device=device).float().reshape(1)
        stacked = torch.zeros(0, device=device)
        if keys:
            stacked = self.acc.reduce(torch.stack([self.sums[k] for k in keys]) / count.clamp_min(1), "mean")
        # The only host read of the log interval: means, count and the bad-step guard together.
        values = torch.cat([stacked, count, self.guard.state()]).tolist()
        count, guard = values[len(keys)], values[len(keys) + 1 :]
        self.sums, self.count = {}, 0
        self._check_guard(step, guard)
        if not keys or count == 0:
            return
        record = dict(zip(keys, values[: len(keys)], strict=True))
        record.setdefault("tau_h", float("nan"))
        record.setdefault("noise_share", 0.0)
        record["lr"] = self.scheduler.get_last_lr()[0]
        record["phase"] = phase_name(step, self.config.schedule)
        images = self.s.train.batch_size * self.s.train.grad_accum * self.acc.num_processes
        self.progress.update(step, record, images)
        if self.s.train.tracker != "none":
            self.acc.log(
                {k: v for k, v in record.items() if isinstance(v, float) and math.isfinite(v)}, step=step
            )

    def _log_images(self, step: int, result) -> None:
        grid = training_grid(result.visuals, self.palette)
        if grid is not None:
            self.acc.get_tracker("tensorboard").log_images({"train/grid": grid}, step=step, dataformats="HWC")

    def _validate(self, step: int) -> None:
        own_part = shard(
            self.val_set, self.acc.process_index, self.acc.num_processes, self.s.train.val_max_images
        )
        # batched at the training batch (the images share the crop size); every rank runs its shard
        batch = self.s.train.batch_size
        loader = eval_loader(own_part, self.s.data, size=self.s.data.crop_size, batch_size=batch)
        scores = validate(
            self.model,
            loader,
            num_classes=len(self.classes),
            class_names=self.classes,
            cam_scales=self.config.cam.scales,
            cam_threshold=self.s.eval.cam_threshold,
            device=self.acc.device,
        )
        student = max(range(1, len(self.model.students) + 1), key=lambda k: scores[f"seg_s{k}"])  # ties: 1
        best_score = scores[f"seg_s{student}"]
        text = " ".join(f"{k} {v:.1f}" for k, v in scores.items())
        self.progress.message(f"validation step {step}: {text} (mIoU %)")
        if self.run_dir is None or not self.acc.is_main_process:
            return
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps({"step": step, "validation": scores, "best_student": student}) + "\n")
        write_curves(self.run_dir)  # PNG curves beside the numbers, without TensorBoard
        if self.s.train.tracker != "none":
            self.acc.log({f"val/{k}": v for k, v in scores.items()}, step=step)
        self.state["last"] = {"step": step, "scores": scores}
        best = self.state.get("best")
        if self.s.train.select == "best-val" and (best is None or best_score > best["score"]):
            self.state["best"] = {"step": step, "score": best_score, "student": student, "scores": scores}
            card = _card(
                self.s, self.classes, self.palette, step, student, scores, best_val_rule(self.s, step)
            )
            save_model(self.run_dir / "best", self.model, card)
            self.progress.message(
                f"new best: student {student} seg mIoU {best_score:.1f} -> "
                f"{self.run_dir / 'best.safetensors'}"
            )

    def _finish(self, step: int) -> None:
        if self.run_dir is None or step < self.s.train.max_iters:
            return
        if self.acc.is_main_process:
            best = self.state.get("best")
            if self.s.train.select == "best-val" and best is not None:
                student, scores, rule = best["student"], best["scores"], best_val_rule(self.s, best["step"])
            else:  # the default, and best-val without any validation
                rule = FINAL_RULE if self.s.method.students == 2 else "the only student"
                student, scores = 1, (self.state.get("last") or {}).get("scores", {})
            card = _card(self.s, self.classes, self.palette, step, student, scores, rule)
            path = save_model(self.run_dir / "final", self.model, card)
            self.progress.message(f"training finished at step {step}: {path}")
        self.acc.wait_for_everyone()
