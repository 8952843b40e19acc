"""train.hooks and train.state: each hook's own state and files, on a tiny prepared dual student."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from host_sync import HostSyncCounter
from safetensors.torch import load_file
from train_parts import CLASSES, CONFIG, tiny_parts

from dupl_cli.config.schema import DuplSettings, TrainSettings
from dupl_cli.core.errors import UserError
from dupl_cli.method.step import StepResult
from dupl_cli.runs.card import read_card
from dupl_cli.runs.run_dir import checkpoint_dirs, read_state
from dupl_cli.train.divergence import SaveGate
from dupl_cli.train.hooks import (
    FINAL_RULE,
    BestModelHook,
    CheckpointHook,
    FinalModelHook,
    LogHook,
    TrackerHook,
    ValidationHook,
    best_val_rule,
)
from dupl_cli.train.loop import StepEvents, StepOutcome
from dupl_cli.train.progress import TrainingProgress
from dupl_cli.train.state import BestModel, TrainState, Validation
from dupl_cli.train.trainer import _card

NAMES = [f"class{k}" for k in range(CLASSES)]
PALETTE = [(k, 2 * k, 3 * k) for k in range(CLASSES + 1)]


def _progress(run_dir) -> TrainingProgress:
    return TrainingProgress(10, 0, run_dir, enabled=True, quiet=True)


def _taken(parts, step: int, cls: float) -> StepOutcome:
    """The outcome of an optimiser step at ``step`` whose loss (and cls term) is ``cls``, after the
    guard has taken it as ``optimizer_step`` does."""
    loss = torch.tensor(cls)
    result = StepResult(loss, {"cls": loss.clone()}, {"tau_h": torch.tensor(0.5)}, {})
    bad = ~torch.isfinite(loss)
    verdict = parts.guard.step(bad, result.terms, step)
    return StepOutcome(result, bad, verdict is True)


def _log_hook(parts, tmp_path, **train) -> LogHook:
    settings = TrainSettings(**{"log_every": 3, "val_every": 100, "ckpt_every": 100, **train})
    return LogHook(parts, _progress(tmp_path), CONFIG.schedule, settings, tmp_path, stop=10)


def _run_steps(hook, parts, losses, state=None) -> TrainState:
    state = state or TrainState()
    for cls in losses:
        outcome = _taken(parts, state.step, cls)
        state.step += 1
        hook.after_step(state, StepEvents(outcome))
    return state


def test_train_state_is_written_as_checkpoints_always_held_it():
    assert json.dumps(TrainState().to_json()) == '{"step": 0, "best": null, "bad_in_row": 0}'
    scores = {"seg_s1": 1.5, "seg_s2": 2.5}
    state = TrainState(4, BestModel(2, 2.5, 2, scores), 1, Validation(4, scores))
    assert list(state.to_json()) == ["step", "best", "bad_in_row", "last"]
    assert state.to_json()["best"] == {"step": 2, "score": 2.5, "student": 2, "scores": scores}
    assert TrainState.from_json(json.loads(json.dumps(state.to_json()))) == state


def test_log_hook_averages_good_steps_in_one_host_read(tmp_path):
    parts = tiny_parts()
    hook = _log_hook(parts, tmp_path)
    state, counter = TrainState(), HostSyncCounter()
    with counter:
        for step, cls in enumerate((1.0, float("nan"), 3.0), start=1):
            counter.tag = step
            _run_steps(hook, parts, [cls], state)
    assert [e.tag for e in counter.events] == [3]  # steps 1 and 2 stay on the device
    assert counter.events[0].where.startswith("train/hooks.py")
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert (
        record["step"] == 3 and record["loss/cls"] == 2.0 and record["loss/total"] == 2.0
    )  # NaN step left out
    assert record["tau_h"] == 0.5 and record["phase"] == "B"
    assert hook.sums == {} and hook.count == 0 and state.bad_in_row == 0
    assert "warning: step 2: non-finite loss (cls); step skipped" in (tmp_path / "train.log").read_text()


def test_log_hook_turns_label_quality_counts_into_pixel_ratios(tmp_path):
    """Hits and pixels are summed over the interval's good steps and divided once: a step without
    a count weighs nothing, a skipped step's counts are left out, a ratio with no pixel is not logged."""
    parts = tiny_parts()
    hook = _log_hook(parts, tmp_path)
    steps = [  # (loss, counts)
        (1.0, {"label_acc": torch.tensor([3.0, 4.0]), "strong_agree": torch.tensor([0.0, 0.0])}),
        (float("nan"), {"label_acc": torch.tensor([0.0, 100.0])}),
        (3.0, {"label_acc": torch.tensor([6.0, 6.0])}),
    ]
    state, counter = TrainState(), HostSyncCounter()
    with counter:
        for cls, counts in steps:
            outcome = _taken(parts, state.step, cls)
            outcome = outcome._replace(result=outcome.result._replace(counts=counts))
            state.step += 1
            hook.after_step(state, StepEvents(outcome))
    assert len(counter.events) == 1  # still the interval's one read
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record["quality/label_acc"] == pytest.approx(9 / 10) and "quality/strong_agree" not in record
    assert not any("#" in key for key in record)


def test_log_hook_stops_after_too_many_bad_steps_in_a_row(tmp_path):
    parts = tiny_parts()
    hook = _log_hook(parts, tmp_path, log_every=1, max_bad_steps=2)
    state = _run_steps(hook, parts, [1.0, float("nan")])
    assert state.bad_in_row == 1
    stopped = r"step 3: training diverged \(2 non-finite steps in a row, last: cls\); stopped"
    with pytest.raises(UserError, match=stopped + r".*train\.lr = .*method\.w_ptc.*no good checkpoint"):
        _run_steps(hook, parts, [float("nan")], state)
    assert state.bad_in_row == 2


def test_log_hook_reads_the_guard_before_a_checkpoint_and_when_the_optimiser_cannot_skip(tmp_path):
    parts = tiny_parts()
    state = _run_steps(_log_hook(parts, tmp_path, ckpt_every=2), parts, [float("nan"), float("nan")])
    assert state.bad_in_row == 2  # read at step 2 (a checkpoint step), not a log step

    host, host_dir = tiny_parts(fused=False), tmp_path / "host"
    host_dir.mkdir()
    state = _run_steps(_log_hook(host, host_dir), host, [float("nan")])
    assert state.bad_in_row == 1  # the verdict was read on the host: reported at once
    assert "warning: step 1: non-finite loss (cls); step skipped" in (host_dir / "train.log").read_text()


def _state_with_validation(step: int, seg: tuple[float, float]) -> tuple[TrainState, StepEvents]:
    scores = {"cam_s1": 1.0, "cam_s2": 1.0, "seg_s1": seg[0], "seg_s2": seg[1]}
    events = StepEvents(outcome=None, scores=scores, best_student=1 + int(seg[1] > seg[0]))
    return TrainState(step=step), events


def test_best_model_hook_keeps_the_best_validation_and_its_file(tmp_path):
    parts, settings = tiny_parts(), DuplSettings(train={"select": "best-val"})
    card = functools.partial(_card, settings, NAMES, PALETTE)
    hook = BestModelHook(parts, settings, card, _progress(tmp_path), tmp_path)
    state = TrainState()
    for step, seg in ((2, (10.0, 20.0)), (4, (15.0, 12.0)), (6, (30.0, 5.0))):
        state.step, (_, events) = step, _state_with_validation(step, seg)
        hook.after_step(state, events)
        if step == 2:
            assert state.best == BestModel(2, 20.0, 2, events.scores)
            assert read_card(tmp_path / "best.safetensors").step == 2
        if step == 4:  # 15 < 20: nothing changes
            assert state.best.step == 2 and read_card(tmp_path / "best.safetensors").step == 2
    assert (state.best.step, state.best.student, state.best.score) == (6, 1, 30.0)
    saved = read_card(tmp_path / "best.safetensors")
    assert (saved.step, saved.student, saved.student_rule) == (6, 1, best_val_rule(settings, 6))
    assert "new best: student 1 seg mIoU 30.0" in (tmp_path / "train.log").read_text()


def test_a_best_val_final_card_describes_the_final_weights(tmp_path):
    parts, settings = tiny_parts(), DuplSettings(train={"max_iters": 6, "select": "best-val"})
    card = functools.partial(_card, settings, NAMES, PALETTE)
    best_scores = {"seg_s1": 10.0, "seg_s2": 40.0}
    final_scores = {"seg_s1": 30.0, "seg_s2": 20.0}
    state = TrainState(step=6, best=BestModel(2, 40.0, 2, best_scores), last=Validation(6, final_scores))
    FinalModelHook(parts, settings, card, _progress(tmp_path), tmp_path).after_train(state)
    saved = read_card(tmp_path / "final.safetensors")
    assert (saved.step, saved.student) == (6, 2)  # validation's student, the final step's weights
    assert saved.metrics == final_scores  # the scores of these weights, not step 2's
    assert "step 6's (best.safetensors holds step 2's)" in saved.student_rule


def test_final_model_hook_writes_at_the_schedules_end_only(tmp_path):
    parts, settings = tiny_parts(), DuplSettings(train={"max_iters": 6})
    card = functools.partial(_card, settings, NAMES, PALETTE)
    hook = FinalModelHook(parts, settings, card, _progress(tmp_path), tmp_path)
    hook.after_train(TrainState(step=3))  # --max-iters before the end: resumable, no final model
    assert not (tmp_path / "final.safetensors").exists()
    scores = {"seg_s1": 4.0, "seg_s2": 8.0}
    hook.after_train(TrainState(step=6, last=Validation(6, scores)))
    saved = read_card(tmp_path / "final.safetensors")
    assert (saved.step, saved.student, saved.student_rule, saved.metrics) == (6, 1, FINAL_RULE, scores)
    weights = load_file(str(tmp_path / "final.safetensors"))
    for key, value in parts.model.state_dict().items():
        assert torch.equal(weights[key], value), key


def test_checkpoint_hook_saves_the_state_on_its_steps_and_at_the_stop(tmp_path):
    parts = tiny_parts()
    hook = CheckpointHook(parts.accelerator, tmp_path, every=2, keep=5, stop=3)
    state = TrainState(bad_in_row=1, last=Validation(1, {"seg_s1": 1.0}))
    for step in (1, 2, 3):
        state.step = step
        hook.after_step(state, StepEvents(outcome=None))
    assert [step for step, _ in checkpoint_dirs(tmp_path)] == [2, 3]
    assert read_state(tmp_path / "checkpoints" / "step_3") == state.to_json()


def test_validation_hook_scores_on_its_steps_and_appends_metrics(tiny_data, tmp_path):
    from dupl_cli.config.sources import load_settings
    from dupl_cli.plugins import DATASETS, load

    settings = load_settings("tiny-cpu", assignments=[f"data.root={tiny_data}"], environ={}).settings
    val_set = load(DATASETS, "demo")(settings.data, "val")
    parts = tiny_parts()
    hook = ValidationHook(
        parts, val_set, val_set.classes, settings, (1.0,), _progress(tmp_path), tmp_path, stop=7
    )
    state = TrainState()
    events = []
    for step in range(1, 8):  # val_every 6, and the stop at 7
        state.step = step
        events.append(StepEvents(outcome=None))
        hook.after_step(state, events[-1])
    assert [e.scores is not None for e in events] == [False] * 5 + [True, True]
    assert state.last == Validation(7, events[-1].scores)
    assert set(events[-1].scores) == {f"{kind}_s{k}" for kind in ("cam", "aux_cam", "seg") for k in (1, 2)}
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [6, 7]
    assert lines[-1]["best_student"] == events[-1].best_student
    assert (tmp_path / "curves").is_dir()


class _Tracker:
    def __init__(self) -> None:
        self.logged: list[tuple[dict, int]] = []

    def log(self, values: dict, step: int) -> None:
        self.logged.append((values, step))


def test_tracker_hook_logs_finite_means_then_validation_scores():
    tracker = _Tracker()
    record = {"loss/cls": 1.5, "tau_h": float("nan"), "phase": "A", "lr": 1e-4}
    TrackerHook(tracker).after_step(
        TrainState(step=3), StepEvents(None, record=record, scores={"seg_s1": 2.0})
    )
    TrackerHook(tracker).after_step(TrainState(step=4), StepEvents(None))
    assert tracker.logged == [({"loss/cls": 1.5, "lr": 1e-4}, 3), ({"val/seg_s1": 2.0}, 3)]


def _gated(parts, tmp_path, every: int, stop: int, keep: int = 1) -> CheckpointHook:
    gate = SaveGate(parts, TrainSettings(), tmp_path)
    return CheckpointHook(parts.accelerator, tmp_path, every=every, keep=keep, stop=stop, gate=gate)


def test_checkpoint_hook_waits_out_a_bad_streak_and_keeps_the_last_good_checkpoint(tmp_path):
    """A save due while steps are skipped waits for the next good step; with keep=1 the last good
    checkpoint is never rotated out by a bad one; a streak at the stop ends the run unsaved."""
    parts = tiny_parts()
    hook = _gated(parts, tmp_path, every=2, stop=8)
    state = TrainState()

    def steps(losses):
        for cls in losses:
            outcome = _taken(parts, state.step, cls)
            state.step += 1
            hook.after_step(state, StepEvents(outcome))

    steps([1.0, 1.0, float("nan")])  # step_2 saved; step 3 skipped
    steps([float("nan")])  # step 4 falls due in the streak: not written
    assert [s for s, _ in checkpoint_dirs(tmp_path)] == [2]
    steps([1.0])  # the next good step writes it
    assert [s for s, _ in checkpoint_dirs(tmp_path)] == [5]
    assert read_state(tmp_path / "checkpoints" / "step_5")["bad_in_row"] == 0
    steps([1.0, float("nan")])  # step 6 saved, step 7 skipped
    with pytest.raises(UserError, match=r"step 8: training diverged .*last good checkpoint: .*step_6"):
        steps([float("nan")])
    assert [s for s, _ in checkpoint_dirs(tmp_path)] == [6]


def test_no_save_holds_a_non_finite_weight(tmp_path):
    """Non-finite weights stop the run at its next save, and nothing is written: not the rotating
    checkpoint, not best.safetensors, not final.safetensors."""
    parts, settings = tiny_parts(), DuplSettings(train={"max_iters": 2, "select": "best-val"})
    hook = _gated(parts, tmp_path, every=1, stop=2)
    state = TrainState(step=1)
    hook.after_step(state, StepEvents(_taken(parts, 0, 1.0)))
    with torch.no_grad():
        next(parts.model.parameters()).view(-1)[0] = float("inf")
    state.step = 2
    with pytest.raises(UserError, match=r"step 2: training diverged \(the weights are not finite\).*step_1"):
        hook.after_step(state, StepEvents(_taken(parts, 1, 1.0)))
    card = functools.partial(_card, settings, NAMES, PALETTE)
    best = BestModelHook(parts, settings, card, _progress(tmp_path), tmp_path)
    with pytest.raises(UserError, match="the weights are not finite"):
        best.after_step(state, StepEvents(None, scores={"seg_s1": 5.0, "seg_s2": 1.0}, best_student=1))
    with pytest.raises(UserError, match="the weights are not finite"):
        FinalModelHook(parts, settings, card, _progress(tmp_path), tmp_path).after_train(state)
    assert [s for s, _ in checkpoint_dirs(tmp_path)] == [1]
    assert not (tmp_path / "best.safetensors").exists() and not (tmp_path / "final.safetensors").exists()
