"""Host syncs per training step, counted on CPU (tests/train/host_sync): none in phases A and B, at most
ANF's one in phase C, and none from the trainer between its log_every reads."""

from __future__ import annotations

import pytest
import torch
from host_sync import HostSyncCounter

from dupl_cli.method import step as step_module
from dupl_cli.method.params import CamConfig, NoiseFilterConfig, ParConfig, PhaseSchedule, StepConfig
from dupl_cli.models.dual import build_dual_student


def test_counter_records_reads_and_data_shaped_ops():
    x = torch.randn(6, 5)
    with HostSyncCounter() as counter:
        y = (x * 2).softmax(1).sum(0)  # none of these
        counter.tag = "reads"
        _ = y.sum().item(), float(y[0]), y.tolist()
        counter.tag = "shapes"
        _ = x[x > 0], torch.nonzero(x), x.unique(), torch.masked_select(x, x > 0)
        counter.tag = "free"
        _ = torch.where(x > 0, x, 0), x.masked_fill(x > 0, 0), x.argmax(1), x.gather(1, x.argsort(1))
    assert counter.count("reads") == 3
    assert counter.count("shapes") == 4
    assert counter.count("free") == 0
    assert counter.count(None) == 7
    assert all(e.where for e in counter.events)


def _model():
    from dupl_cli.config.schema import ModelSettings

    torch.manual_seed(0)
    return build_dual_student(
        ModelSettings(arch="test_vit", pretrained="none", head_channels=16), 5, img_size=64
    )


def _batch(b=2):
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(b, 5)
    labels[torch.arange(b), torch.arange(b) % 5] = 1
    labels[0, 3] = 1
    box = torch.tensor([[0, 64, 0, 64]] * b)
    box[-1] = torch.tensor([0, 64, 8, 56])
    # max_present: the train loader's host-side class count (data.loader.collate_train)
    return {
        "image": torch.randn(b, 3, 64, 64, generator=g),
        "labels": labels,
        "img_box": box,
        "max_present": 2,
    }


@pytest.mark.parametrize(("t", "budget"), [(0, 0), (2, 0), (4, 1), (5, 1)])  # A, B, C, C with L_reg
def test_training_step_syncs(t, budget):
    config = StepConfig(
        cam=CamConfig(scales=(1.0, 0.5, 1.5)),
        schedule=PhaseSchedule(t_seg=2, t_anf=4, max_iters=10, delayed_weights=True),
        par=ParConfig(iters=2),
        noise=NoiseFilterConfig(min_pixels=10),
    )
    model = _model()
    with HostSyncCounter() as counter:
        result = step_module.training_step(
            model, _batch(), t, config, generator=torch.Generator().manual_seed(1)
        )
        result.loss.backward()
    assert len(counter.events) <= budget, counter.events
    if budget:  # the one allowed: ANF's k-means
        assert all("noise_filter" in e.where for e in counter.events), counter.events


@pytest.mark.slow
def test_trainer_adds_no_sync_between_log_steps(tiny_data, tmp_path, monkeypatch, run_cli):
    """A whole tiny run under the counter, tagged by step: a step that neither logs, validates nor
    checkpoints costs its method budget only (the loss guard and the logged sums stay on the device)."""
    counter = HostSyncCounter()
    inner = step_module.training_step

    def tagged(model, batch, t, config, **kwargs):
        counter.tag = t
        return inner(model, batch, t, config, **kwargs)

    monkeypatch.setattr(step_module, "training_step", tagged)
    every, iters = 4, 8
    args = ["train", "--preset", "tiny-cpu", "--set", f"data.root={tiny_data}", "--run-dir", tmp_path / "run"]
    for key, value in {"max_iters": iters, "log_every": every, "val_every": 100, "ckpt_every": 100}.items():
        args += ["--set", f"train.{key}={value}"]
    with counter:
        result = run_cli(*args)
    assert result.exit_code == 0, result.output
    t_anf = 4  # tiny-cpu
    quiet = [t for t in range(iters) if (t + 1) % every]  # steps after which nothing is read
    assert quiet == [0, 1, 2, 4, 5, 6]
    for t in quiet:
        events = [e for e in counter.events if e.tag == t]
        assert len(events) <= (1 if t >= t_anf else 0), (t, events)
    # a log step reads once more (means, count and the loss guard together); the last step validates
    extra = [e for e in counter.events if e.tag == every - 1]
    assert [e.where.split(":")[0] for e in extra] == ["train/hooks.py"], extra
