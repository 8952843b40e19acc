"""Experiment trackers: settings, missing extras, and a tiny training logged to each tracker offline
and read back with the tracker's own reader (TensorBoard's EventAccumulator, MLflow's client, the
W&B offline run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest
import tomllib
from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.config.schema import TrackerName, TrainSettings
from dupl_cli.train import trackers

runner = CliRunner()

LOGGED = {"loss/cls", "loss/total", "lr", "tau_h", "noise_share"}
VALIDATION = {"val/seg_s1", "val/seg_s2", "val/cam_s1"}


def tiny_train(root: Path, tmp: Path, *sets: str):
    args = ["train", "--preset", "tiny-cpu", "--set", f"data.root={root}", "--set", f"train.runs_root={tmp}"]
    args += ["--run-dir", str(tmp / "run")]
    for item in sets:
        args += ["--set", item]
    return runner.invoke(app, args)


def trained(root: Path, tmp: Path, *sets: str) -> Path:
    result = tiny_train(root, tmp, *sets)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return tmp / "run"


def test_tracker_names_cover_accelerate_and_each_has_an_extra():
    assert set(get_args(TrackerName)) == set(trackers.PACKAGES)
    from accelerate.utils import LoggerType

    assert {str(t) for t in LoggerType if str(t) != "all"} <= set(trackers.PACKAGES)
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["project"]["optional-dependencies"]
    assert {extra for _, extra in trackers.PACKAGES.values()} <= set(extras)


def test_tracker_setting_takes_one_name_a_list_and_each_trackers_options():
    assert trackers.tracker_names(TrainSettings().tracker) == []
    assert trackers.tracker_names(TrainSettings(tracker="mlflow").tracker) == ["mlflow"]
    both = TrainSettings(tracker=["tensorboard", "mlflow"], trackers={"wandb": {"mode": "offline"}})
    assert trackers.tracker_names(both.tracker) == ["tensorboard", "mlflow"]
    assert trackers.init_kwargs(["wandb"], both.trackers, Path("runs/x")) == {
        "wandb": {"mode": "offline", "name": "x"}
    }
    with pytest.raises(ValueError):
        TrainSettings(tracker="neptune")
    with pytest.raises(ValueError):
        TrainSettings(trackers={"neptune": {}})


def test_hyperparameters_are_flat_and_json_safe():
    flat = trackers.hyperparameters(
        {"train": {"lr": 1e-4, "run_name": None, "tau": float("nan")}, "method": {"scales": [1.0, 0.5]}}
    )
    assert flat == {
        "train.lr": 1e-4,
        "train.run_name": "none",
        "train.tau": "nan",
        "method.scales": "[1.0, 0.5]",
    }
    json.dumps(flat, allow_nan=False)


def test_a_missing_extra_is_one_line_before_training(tiny_data, tmp_path, monkeypatch):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(
        trackers.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    result = tiny_train(tiny_data, tmp_path, 'train.tracker=["tensorboard", "mlflow"]')
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0
    assert lines[-1] == 'error: train.tracker "mlflow" needs the mlflow extra: pip install "dupl[mlflow]"'
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_tracker_refusing_its_options_is_one_line(tiny_data, tmp_path):
    pytest.importorskip("tensorboard", reason="the tb extra is not installed")
    result = tiny_train(
        tiny_data, tmp_path, "train.tracker=tensorboard", "train.trackers.tensorboard={bogus = 1}"
    )
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and lines[-1].startswith(
        "error: could not start train.tracker tensorboard: "
    )
    assert "bogus" in lines[-1] and "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tensorboard_and_mlflow_together_read_back(tiny_data, tmp_path, monkeypatch):
    """One run, two trackers: TensorBoard event files through EventAccumulator, an MLflow file
    store through MlflowClient (metrics, params, artifacts)."""
    pytest.importorskip("tensorboard", reason="the tb extra is not installed")
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this
    run = trained(tiny_data, tmp_path, 'train.tracker=["tensorboard", "mlflow"]')

    events = sorted((run / "events").rglob("events.out.tfevents.*"))
    scalars, images = set(), set()
    for folder in {path.parent for path in events}:
        acc = EventAccumulator(str(folder))
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        images |= set(acc.Tags()["images"])
    assert (LOGGED | VALIDATION) <= scalars and any(tag.startswith("loss/") for tag in scalars - LOGGED)
    assert "train/grid" in images and any(tag.startswith("curves/") for tag in images)

    client = MlflowClient(tracking_uri=store)
    (experiment,) = [e for e in client.search_experiments() if e.name == trackers.PROJECT]
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert mlrun.info.run_name == "run"
    assert (LOGGED | VALIDATION) <= set(mlrun.data.metrics)
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "loss/total")] == [1, 2, 3, 4, 5, 6]
    params = mlrun.data.params
    assert params["train.max_iters"] == "6" and params["model.arch"] == "test_vit"
    assert json.loads(params["method.cam_scales"]) == [1.0, 0.5]
    step6 = {a.path for a in client.list_artifacts(mlrun.info.run_id, "images/step_6/curves")}
    assert step6 and all(path.endswith(".png") for path in step6)
    grids = client.list_artifacts(mlrun.info.run_id, "images/step_3/train")
    assert [a.path for a in grids] == ["images/step_3/train/grid_step_3.png"]
    assert sorted(p.name for p in (run / "images").glob("*.png")) == ["grid_step_3.png", "grid_step_6.png"]


def _wandb_records(run_file: Path) -> list:
    """The records of an offline run's .wandb file as wandb's own protobuf ``Record``s. wandb 0.31
    ships no Python reader for the file (its Go core writes it), so the framing is read here: a
    7-byte header, then LevelDB log chunks (crc, length, type; 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, pending, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wandb_offline_run_holds_history_config_and_images(tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    trained(tiny_data, tmp_path, "train.tracker=wandb", 'train.trackers.wandb={mode = "offline"}')

    (run_file,) = (tmp_path / "wandb").rglob("offline-run-*/run-*.wandb")
    records = _wandb_records(run_file)
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    keys = set().union(*history)
    assert (LOGGED | VALIDATION) <= keys
    assert {"train/grid/_type", "curves/loss/_type"} <= keys  # the images, as wandb's media records
    assert [h["_step"] for h in history if "loss/total" in h] == [1, 2, 3, 4, 5, 6]
    config = {}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in r.config.update})
    assert config["train.max_iters"] == 6 and config["model.arch"] == "test_vit"
    media = {p.parent.name for p in (run_file.parent / "files" / "media" / "images").rglob("*.png")}
    assert media == {"train", "curves"}


class _FakeTracker:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def log_images(self, values, step=None, **kwargs):
        self.calls.append(("images", values, step, kwargs))

    def log_artifact(self, local_path, artifact_path=None):
        self.calls.append(("artifact", local_path, artifact_path))


class _FakeAccelerator:
    def __init__(self, names) -> None:
        self.trackers = {name: _FakeTracker() for name in names}

    def get_tracker(self, name):
        return self.trackers[name]


def test_each_tracker_gets_images_in_its_own_shape_and_the_files_stay_on_disk(tmp_path):
    import numpy as np

    names = ["tensorboard", "wandb", "mlflow", "dvclive"]
    accelerator = _FakeAccelerator(names)
    images = trackers.TrackerImages(accelerator, names, tmp_path)
    grid = np.zeros((4, 12, 3), dtype=np.uint8)
    images.log_grid(grid, 3)
    images.log_grid(grid, 3)  # once per step
    (tb_call,) = accelerator.trackers["tensorboard"].calls
    assert tb_call[1]["train/grid"].shape == (4, 12, 3) and tb_call[2:] == (3, {"dataformats": "HWC"})
    (wandb_call,) = accelerator.trackers["wandb"].calls
    assert [a.shape for a in wandb_call[1]["train/grid"]] == [(4, 12, 3)]
    png = tmp_path / "images" / "grid_step_3.png"
    assert accelerator.trackers["mlflow"].calls == [("artifact", str(png), "images/step_3/train")]
    assert accelerator.trackers["dvclive"].calls == [] and png.is_file()
