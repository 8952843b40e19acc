"""Experiment trackers: which package each needs, the settings as hyper-parameters, and images.

Accelerate logs scalars to every tracker with one call but has no generic image call: some
trackers implement ``log_images``, each with its own input shape, and others take none. Each
tracker here has a small adapter (:data:`IMAGE_ADAPTERS`); MLflow takes the PNG files as
artifacts, and a tracker without an adapter finds the same PNG files in the run directory
(``images/`` for the training grid, ``curves/`` for the curves). Main process only: elsewhere
Accelerate hands out blank trackers.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dupl_cli.config.schema import DuplSettings
from dupl_cli.core.errors import UserError, one_line

if TYPE_CHECKING:
    from accelerate import Accelerator

PROJECT = "dupl"
"""The project name every tracker gets (a W&B project, an MLflow experiment, TensorBoard's
``events/dupl`` folder)."""

PACKAGES: dict[str, tuple[str, str]] = {  # tracker: (module it imports, dupl extra)
    "tensorboard": ("tensorboard", "tb"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "aim": ("aim", "aim"),
    "comet_ml": ("comet_ml", "comet"),
    "clearml": ("clearml", "clearml"),
    "dvclive": ("dvclive", "dvclive"),
    "trackio": ("trackio", "trackio"),
    "swanlab": ("swanlab", "swanlab"),
}


def tracker_names(tracker: str | Sequence[str]) -> list[str]:
    """``train.tracker`` as a list: one name, several, or none (``"none"``)."""
    names = [tracker] if isinstance(tracker, str) else list(tracker)
    return [name for name in dict.fromkeys(names) if name != "none"]


def check_packages(names: Iterable[str]) -> None:
    """One line naming the install for the first tracker whose package is missing."""
    for name in names:
        module, extra = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f'train.tracker "{name}" needs the {extra} extra: pip install "dupl[{extra}]"')


def hyperparameters(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The resolved settings flattened to ``section.key`` -> int, float, bool or str (lists and
    tables as JSON, None as ``"none"``, non-finite floats as text): what every tracker accepts."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(hyperparameters(value, f"{name}."))
        elif value is None:
            flat[name] = "none"
        elif isinstance(value, float) and not math.isfinite(value):
            flat[name] = str(value)
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def init_kwargs(names: Sequence[str], options: dict[str, dict[str, Any]], run_dir: Path) -> dict[str, dict]:
    """Each tracker's ``[train.trackers.<name>]`` options, named after the run directory unless
    they name it themselves."""
    kwargs = {name: dict(options.get(name, {})) for name in names}
    if "wandb" in kwargs:
        kwargs["wandb"].setdefault("name", run_dir.name)
    if "mlflow" in kwargs:
        kwargs["mlflow"].setdefault("run_name", run_dir.name)
    return kwargs


def _arrays(images: dict[str, Path]) -> dict[str, np.ndarray]:
    from PIL import Image

    out = {}
    for key, path in images.items():
        with Image.open(path) as image:
            out[key] = np.asarray(image.convert("RGB"))
    return out


def _tensorboard(tracker: Any, images: dict[str, Path], step: int) -> None:
    tracker.log_images(_arrays(images), step=step, dataformats="HWC")


def _listed(tracker: Any, images: dict[str, Path], step: int) -> None:
    """wandb, swanlab: a list of arrays per key."""
    tracker.log_images({k: [v] for k, v in _arrays(images).items()}, step=step)


def _plain(tracker: Any, images: dict[str, Path], step: int) -> None:
    """aim, clearml: one array per key."""
    tracker.log_images(_arrays(images), step=step)


def _mlflow(tracker: Any, images: dict[str, Path], step: int) -> None:
    """The PNG files as artifacts under ``images/step_<N>/``."""
    for key, path in images.items():
        folder = f"images/step_{step}/{key.rsplit('/', 1)[0]}" if "/" in key else f"images/step_{step}"
        tracker.log_artifact(str(path), artifact_path=folder)


ImageAdapter = Callable[[Any, dict[str, Path], int], None]
IMAGE_ADAPTERS: dict[str, ImageAdapter] = {
    "tensorboard": _tensorboard,
    "wandb": _listed,
    "swanlab": _listed,
    "aim": _plain,
    "clearml": _plain,
    "mlflow": _mlflow,
}
"""Trackers that take images; the others (comet_ml, dvclive, trackio) have the PNG files on disk."""


class TrackerImages:
    """The training grid and the curves, as PNG files in the run directory and to each tracker
    that takes images. Main process only."""

    def __init__(self, accelerator: Accelerator, names: Sequence[str], run_dir: Path) -> None:
        self.accelerator, self.names, self.run_dir = accelerator, list(names), run_dir
        self.grid_step = -1  # the step whose grid was logged last

    def log_grid(self, grid: np.ndarray | None, step: int) -> None:
        """The training grid (H×W×3 uint8) as ``images/grid_step_<N>.png`` and to the trackers;
        once per step."""
        if grid is None or step == self.grid_step:
            return
        self.grid_step = step
        from PIL import Image

        path = self.run_dir / "images" / f"grid_step_{step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)
        self.log({"train/grid": path}, step)

    def log_curves(self, step: int) -> None:
        """The curve PNGs of ``curves/`` (written by the validation) to the trackers."""
        curves = sorted((self.run_dir / "curves").glob("*.png"))
        if curves:
            self.log({f"curves/{path.stem}": path for path in curves}, step)

    def log(self, images: dict[str, Path], step: int) -> None:
        for name in self.names:
            adapter = IMAGE_ADAPTERS.get(name)
            if adapter is not None:
                adapter(self.accelerator.get_tracker(name), images, step)


def start_trackers(accelerator: Accelerator, settings: DuplSettings, run_dir: Path | None) -> list[str]:
    """Start ``train.tracker``'s trackers (main process only; none without a run directory) with the
    resolved settings as hyper-parameters; returns their names."""
    names = tracker_names(settings.train.tracker) if run_dir is not None else []
    if names:
        config = hyperparameters(settings.model_dump(mode="json"))
        kwargs = init_kwargs(names, settings.train.trackers, run_dir)
        try:
            accelerator.init_trackers(PROJECT, config=config, init_kwargs=kwargs)
        except Exception as exc:  # a tracker's own refusal (options, store, login): one line
            raise UserError(f"could not start train.tracker {', '.join(names)}: {one_line(exc)}") from exc
    return names
