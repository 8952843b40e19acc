"""train.loop: the one optimiser step, the linear loop around it and the hooks it calls in order."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from train_parts import CLASSES, SIZE, tiny_batch, tiny_parts

from dupl_cli.train import loop
from dupl_cli.train.loop import HookBase, StepEvents, optimizer_step, train_loop
from dupl_cli.train.state import TrainState


class _Loader(list):
    """Fixed batches with the prepared loader's ``set_epoch``."""

    def __init__(self, batches: list[dict]) -> None:
        super().__init__(batches)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


class _Recorder(HookBase):
    def __init__(self, name: str, calls: list, seen: list) -> None:
        self.name, self.calls, self.seen = name, calls, seen

    def before_train(self, state: TrainState) -> None:
        self.calls.append((self.name, "before_train", state.step))

    def after_step(self, state: TrainState, events: StepEvents) -> None:
        self.calls.append((self.name, "after_step", state.step))
        self.seen.append(events)

    def after_train(self, state: TrainState) -> None:
        self.calls.append((self.name, "after_train", state.step))


def test_loop_calls_every_hook_in_order_after_each_step_across_epochs():
    parts, loader, state = tiny_parts(), _Loader([tiny_batch(0), tiny_batch(1)]), TrainState()
    calls, seen = [], []
    hooks = [_Recorder("first", calls, seen), _Recorder("second", calls, seen)]
    train_loop(parts, loader, state, hooks, stop=3, grad_accum=1)
    expected = [("first", "before_train", 0), ("second", "before_train", 0)]
    for step in (1, 2, 3):
        expected += [("first", "after_step", step), ("second", "after_step", step)]
    expected += [("first", "after_train", 3), ("second", "after_train", 3)]
    assert calls == expected
    assert state.step == 3 and loader.epochs == [0, 1]  # two batches an epoch: the third step starts epoch 1
    assert all(a is b for a, b in zip(seen[::2], seen[1::2], strict=True))  # one StepEvents per step, shared
    assert parts.scheduler.scheduler.last_epoch == 3
    inner = parts.optimizer.optimizer
    assert max(int(inner.state[p]["step"]) for p in inner.state) == 3  # the seg head trains from step 2


def test_optimizer_step_takes_an_accumulated_group_and_the_loaders_remainder():
    parts = tiny_parts(grad_accum=2)
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    fixed = [tiny_batch(0), tiny_batch(1), tiny_batch(2)]
    loader = parts.accelerator.prepare(torch.utils.data.DataLoader(fixed, batch_size=None))
    batches, taken = iter(loader), []
    while (outcome := optimizer_step(parts, batches, len(taken))) is not None:
        taken.append(outcome)
        assert not bool(outcome.bad) and not outcome.bad_on_host and torch.isfinite(outcome.result.loss)
    assert len(taken) == 2  # micro-batches 1-2, then 3 alone: Accelerate syncs at the loader's end
    assert parts.scheduler.scheduler.last_epoch == 2
    assert all(p.grad is None for p in parts.model.parameters())  # zero_grad(set_to_none=True)
    changed = [k for k, v in parts.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed


def test_a_non_finite_step_is_skipped_and_counted(monkeypatch):
    parts = tiny_parts()
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    real = loop.method_step.training_step

    def poisoned(model, batch, iteration, config, **kwargs):
        result = real(model, batch, iteration, config, **kwargs)
        return result._replace(loss=result.loss * float("nan"))

    monkeypatch.setattr(loop.method_step, "training_step", poisoned)
    outcome = optimizer_step(parts, iter([tiny_batch()]), 0)
    assert bool(outcome.bad) and not outcome.bad_on_host  # fused AdamW skips on the device
    for key, value in parts.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    in_row, skipped, last, _ = parts.guard.read(parts.guard.state().tolist())
    assert (in_row, skipped, last) == (1, 1, 0)
    assert parts.scheduler.scheduler.last_epoch == 1  # the schedule moves on, as it always has


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dupl_train_takes_every_step_through_optimizer_step(tiny_data, tmp_path, monkeypatch, run_cli):
    """Replaying the batches ``dupl train`` fed to ``optimizer_step`` through it reproduces the run's
    final weights bit for bit: it is the trainer's whole optimiser path."""
    taken = []

    def recorded(parts, micro_batches, step):
        batches = []

        def tap():
            for batch in micro_batches:
                batches.append(batch)
                yield batch

        outcome = real(parts, tap(), step)
        if outcome is not None:
            taken.append((step, batches))
        return outcome

    real = loop.optimizer_step
    monkeypatch.setattr(loop, "optimizer_step", recorded)
    run = tmp_path / "run"
    sets = {
        "data.root": tiny_data,
        "train.max_iters": 3,
        "method.t_seg": 1,
        "method.t_anf": 2,
        "train.val_every": 100,
    }
    args = [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    result = run_cli("train", "--preset", "tiny-cpu", "--run-dir", run, *args)
    assert result.exit_code == 0, result.output
    assert [step for step, _ in taken] == [0, 1, 2]

    from accelerate.utils import set_seed

    from dupl_cli.config.method_params import step_config
    from dupl_cli.config.sources import load_settings
    from dupl_cli.models.dual import build_dual_student
    from dupl_cli.train.accel import make_accelerator
    from dupl_cli.train.loop import TrainingModule, TrainParts
    from dupl_cli.train.optim import build_optimizer, build_scheduler
    from dupl_cli.train.step_guard import NonFiniteGuard

    settings = load_settings(
        "tiny-cpu", assignments=[f"{k}={v}" for k, v in sets.items()], environ={}
    ).settings
    set_seed(settings.train.seed)
    model = build_dual_student(settings.model, num_classes=CLASSES, img_size=SIZE)
    accelerator = make_accelerator("no")
    optimizer = build_optimizer(model, settings.train)
    scheduler = build_scheduler(optimizer, settings.train)
    module = TrainingModule(model, step_config(settings, num_classes=CLASSES))
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    guard = NonFiniteGuard(optimizer, accelerator.device)
    parts = TrainParts(accelerator, module, optimizer, scheduler, guard, settings.train.seed)
    for step, batches in taken:
        real(parts, iter(batches), step)
    trained = load_file(str(run / "final.safetensors"))
    replayed = model.state_dict()
    assert trained.keys() == replayed.keys()
    for key, value in trained.items():
        assert torch.equal(value, replayed[key]), key


def _snapshot(parts) -> tuple[dict, dict]:
    """Model and optimiser state (moments and step counts), cloned."""
    model = {k: v.clone() for k, v in parts.model.state_dict().items()}
    inner = parts.optimizer.optimizer.state_dict()["state"]
    optim = {i: {k: v.clone() for k, v in entry.items()} for i, entry in inner.items()}
    return model, optim


@pytest.mark.parametrize("fused", [True, False], ids=["device-skip", "host-read"])
def test_a_skipped_step_leaves_model_and_optimizer_bitwise_as_before(monkeypatch, fused):
    """After a good step (moments and step counts exist), a forced non-finite step changes no bit of
    the model's or the optimiser's state, on the fused device-skip path and the host-read fallback."""
    parts = tiny_parts(fused=fused)
    assert parts.guard.on_device is fused
    optimizer_step(parts, iter([tiny_batch(0)]), 0)
    model_before, optim_before = _snapshot(parts)
    assert optim_before  # the good step made moments to compare
    real = loop.method_step.training_step

    def poisoned(model, batch, iteration, config, **kwargs):
        result = real(model, batch, iteration, config, **kwargs)
        return result._replace(loss=result.loss * float("inf"))

    monkeypatch.setattr(loop.method_step, "training_step", poisoned)
    outcome = optimizer_step(parts, iter([tiny_batch(1)]), 1)
    assert bool(outcome.bad) and outcome.bad_on_host is not fused
    model_after, optim_after = _snapshot(parts)
    assert model_after.keys() == model_before.keys() and optim_after.keys() == optim_before.keys()
    for key, value in model_before.items():
        assert torch.equal(value, model_after[key]), key
    for index, entry in optim_before.items():
        for name, value in entry.items():
            assert torch.equal(value, optim_after[index][name]), (index, name)
