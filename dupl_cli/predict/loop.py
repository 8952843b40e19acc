"""The one prediction loop under evaluate, pseudo-label and infer.

    items (this process's shard) -> normalise -> every route (TTA logits or CAM) -> sinks.output
                                 -> CRF pool or argmax / CAM rule (crf.LabelRouter) -> sinks.label

A route turns an image into an output and then a label (``predict.routes``); sinks accumulate
confusion matrices, write PNGs or keep report samples (``predict.sinks``). The front ends only pick
items, routes and sinks and turn what the sinks hold into their typed result. Process index and count
come from Accelerate's ``PartialState``, never from rank variables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dupl_cli.crf.dense import CrfRunner, LabelRouter
from dupl_cli.evaluation.metrics import reduce_across_processes
from dupl_cli.predict.choices import StudentPick, choose_students
from dupl_cli.runs.card import Card
from dupl_cli.runs.checkpoint import load_model


# ---------------------------------------------------------------- processes and model
@dataclass(frozen=True)
class Runtime:
    """Device and process layout (from Accelerate's PartialState)."""

    device: torch.device
    process_index: int = 0
    num_processes: int = 1
    local_processes: int = 1  # processes on this machine: they share its cores for CRF
    state: Any = None  # the PartialState when there are several processes

    @property
    def is_main(self) -> bool:
        return self.process_index == 0

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def sum(self, *counts: int) -> list[int]:
        """Counts summed over all processes (a no-op alone)."""
        if self.num_processes == 1:
            return list(counts)

        return reduce_across_processes(torch.tensor(counts, device=self.device)).tolist()


def make_runtime() -> Runtime:
    from accelerate import PartialState

    # Without CUDA, cpu=True gives gloo under torchrun (as the trainer's Accelerator does).
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes == 1:
        return Runtime(state.device)
    import torch.distributed as dist

    # Accelerate knows this process's local index; the largest one is the local process count.
    local = torch.tensor([state.local_process_index + 1], device=state.device)
    dist.all_reduce(local, op=dist.ReduceOp.MAX)
    return Runtime(state.device, state.process_index, state.num_processes, int(local.item()), state)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    card: Card
    path: Path
    how: str  # how the checkpoint was chosen (given, eval.checkpoint, newest run)
    classes: list[str] = field(init=False)  # background first
    palette: list[tuple[int, int, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.classes = ["background", *self.card.classes]
        self.palette = list(self.card.palette)

    @property
    def selection(self) -> str:
        """How the checkpoint was chosen: final, best-val (train.select), import, or unknown."""
        if self.card.imported is not None:
            return "import"
        return self.card.selection or {"best": "best-val", "final": "final"}.get(self.path.stem, "unknown")

    def selection_record(self, split: str) -> dict:
        """For protocols and metrics.json: the checkpoint rule, the student rule, and whether
        ``split``'s own pixel labels took part in the choice (best-val validated on it)."""
        val_split = (self.card.settings.get("data") or {}).get("val_split")
        kind, step = self.selection, self.card.step
        peeked = kind == "best-val" and val_split == split
        text = {
            "final": f"final checkpoint (step {step})",
            "best-val": f"best by validation on {val_split!r} (step {step}, train.select = best-val)",
            "import": "imported weights (dupl import release)",
        }.get(kind, "not recorded in the card")
        if peeked:
            text += f"; optimistic on {split!r}: its pixel labels chose this checkpoint and student"
        rule = self.card.rule
        return {"checkpoint": kind, "text": text, "student_rule": rule, "chosen_on_this_split": peeked}

    def pick(self, choice) -> StudentPick:
        """The students ``choice`` (``--student``) names in this checkpoint."""
        students = len(self.model.students)
        return choose_students(choice, self.card.student, students=students, rule=self.card.rule)


def load_for_inference(path: Path, how: str, device) -> LoadedModel:
    model, card = load_model(path, map_location=device)
    return LoadedModel(model, card, path, how)


# ---------------------------------------------------------------- the loop
@dataclass
class Item:
    """One image to predict."""

    key: Any  # unique within a run (shard index, output stem)
    name: str  # output file stem
    image: np.ndarray  # uint8 H×W×3
    labels: np.ndarray | None = None  # image-level multi-hot (CAM routes need it)
    mask: np.ndarray | None = None  # ground truth H×W (scoring)
    id: str = ""  # sample id shown in reports (default: name)

    def __post_init__(self) -> None:
        self.id = self.id or self.name


class Route(Protocol):
    """How one image becomes an output (``forward``) and the output a label (``route``)."""

    def forward(self, x: torch.Tensor, item: Item) -> torch.Tensor: ...
    def route(self, router, key, item: Item, output: torch.Tensor) -> None: ...


class Sink:
    """Receives what the loop produces; a sink overrides the hooks it needs."""

    def begin(self, item: Item) -> None:
        """Before the item is predicted (in item order)."""

    def output(self, item: Item, route: int, output: torch.Tensor) -> None:
        """A route's raw output: logits K×H×W or CAM C×H×W, on the device."""

    def label(self, item: Item, route: int, label: np.ndarray | torch.Tensor) -> None:
        """The final H×W label map (uint8 array, or an integer tensor on the device)."""


class ProgressBar:
    """A rich progress bar with ETA (silent when disabled); a context manager."""

    def __init__(self, description: str, total: int, enabled: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn())
        clock = (TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        self._bar = Progress(*columns, *clock, disable=not enabled, transient=False)
        self._task = self._bar.add_task(description, total=total)

    def __enter__(self) -> ProgressBar:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)

    def advance(self, n: int = 1) -> None:
        self._bar.advance(self._task, n)


def to_tensor(image: np.ndarray, mean, std, device) -> torch.Tensor:
    """uint8 H×W×3 → normalised 1×3×H×W float32 on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float().div_(255)
    m = torch.tensor(mean, device=device).view(3, 1, 1)
    s = torch.tensor(std, device=device).view(3, 1, 1)
    return ((x - m) / s).unsqueeze(0)


@contextmanager
def label_router(options: PredictOptions, runtime: Runtime, finish: Callable) -> Iterator:
    """The router from outputs to labels: argmax / CAM rule at once, or the dense CRF of
    ``crf.backend`` (torch on the scores' device, or a pydensecrf pool; closed on exit)."""
    pool = None
    if options.crf:
        pool = CrfRunner(options.crf_backend, options.crf_workers, local_processes=runtime.local_processes)
    try:
        yield LabelRouter(pool, finish)
    finally:
        if pool is not None:
            pool.close()


@dataclass(frozen=True)
class PredictOptions:
    mean: Sequence[float]
    std: Sequence[float]
    crf: bool = False
    crf_workers: int = 0  # 0 = this machine's cores shared among its processes
    crf_backend: str = "auto"

    @classmethod
    def from_settings(cls, settings, crf: bool) -> PredictOptions:
        mean, std = tuple(settings.data.mean), tuple(settings.data.std)
        return cls(mean, std, crf, settings.crf.workers, settings.crf.backend)


def predict(
    items: Iterable[Item],
    routes: Sequence[Route],
    sinks: Sequence[Sink],
    runtime: Runtime,
    options: PredictOptions,
    bar: ProgressBar,
) -> None:
    """Every route on every item; outputs and labels go to ``sinks`` (labels may come back later,
    from the CRF pool, so an item is held until its last label is delivered)."""
    in_flight: dict[int, list] = {}  # item number -> [item, labels still due]

    def finish(key: tuple[int, int], label) -> None:
        number, route = key
        entry = in_flight[number]
        for sink in sinks:
            sink.label(entry[0], route, label)
        entry[1] -= 1
        if entry[1] == 0:
            del in_flight[number]

    with label_router(options, runtime, finish) as router:
        for number, item in enumerate(items):
            for sink in sinks:
                sink.begin(item)
            x = to_tensor(item.image, options.mean, options.std, runtime.device)
            in_flight[number] = [item, len(routes)]
            for r, route in enumerate(routes):
                output = route.forward(x, item)
                for sink in sinks:
                    sink.output(item, r, output)
                route.route(router, (number, r), item, output)
            bar.advance()
        router.drain()


def dataset_items(shard, indices: Iterable[int] | None = None) -> Iterator[Item]:
    """Items of a (sharded) adapter, decoded one at a time; names are the split's ids."""
    ids = shard.ids
    for i in range(len(shard)) if indices is None else indices:
        sample = shard[i]
        yield Item(i, ids[i], sample.image, sample.labels, sample.mask, sample.id)
