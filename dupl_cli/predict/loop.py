"""The one prediction loop under evaluate, pseudo-label and infer.

    items (this process's shard) -> batches of one image size -> every route (TTA logits or CAM, or
    windows over a big image) -> sinks.output -> CRF pool or argmax / CAM rule -> sinks.label

A route turns a batch of images into outputs and then labels (``predict.routes``); sinks accumulate
confusion matrices, write PNGs or keep report samples (``predict.sinks``). The front ends only pick
items, routes and sinks and turn what the sinks hold into their typed result. Process index and count
come from Accelerate's ``PartialState``, never from rank variables.

Images of one size go through the model together, up to ``eval.batch_size`` per forward (items wait
in per-size buckets, at most a few batches' worth); labels of a batch leave the device in one copy.
An image a route slides over (``predict.slide``) goes alone, its windows batched instead.
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

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass(frozen=True)
class Prediction:
    """What a route made of a batch: ``scores`` B×K×H×W (logits or CAMs, on the device; None when
    nothing reads them) and, when the route already has them, ``labels`` B×H×W."""

    scores: torch.Tensor | None
    labels: torch.Tensor | None = None


class Route(Protocol):
    """How a batch of same-size images becomes outputs (``forward``) and the outputs labels (``route``)."""

    def slides(self, size: tuple[int, int]) -> bool: ...
    def forward(self, batch: Batch) -> Prediction: ...
    def route(self, router, keys: Sequence, items: Sequence[Item], prediction: Prediction) -> None: ...


class Sink:
    """Receives what the loop produces; a sink overrides the hooks it needs."""

    def begin(self, item: Item) -> None:
        """Before the item is predicted (items of a batch together, in their order)."""

    def output(self, item: Item, route: int, output: torch.Tensor) -> None:
        """A route's raw output: logits K×H×W or CAM C×H×W, on the device."""

    def label(self, item: Item, route: int, label: np.ndarray | torch.Tensor) -> None:
        """The final H×W label map (uint8 array, or an integer tensor on the device)."""


def reads_outputs(sink: Sink) -> bool:
    """Whether ``sink`` overrides ``output`` (a sliding route keeps the whole image's logits only then)."""
    return type(sink).output is not Sink.output


DETAIL_AFTER_S = 3.0  # an image's own progress line appears after this many seconds


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

    @contextmanager
    def detail(self, description: str, total: int, after_s: float = DETAIL_AFTER_S) -> Iterator[Callable]:
        """A second line for one long piece of work (a big image's windows), shown once it has run
        ``after_s`` seconds and removed when done; yields ``advance(n)``."""
        import time

        task = self._bar.add_task(description, total=total, visible=False)
        start = time.monotonic()

        def advance(n: int = 1) -> None:
            shown = time.monotonic() - start >= after_s
            self._bar.update(task, advance=n, visible=shown)

        try:
            yield advance
        finally:
            self._bar.remove_task(task)


def to_batch(images: Sequence[np.ndarray] | torch.Tensor, mean, std, device) -> torch.Tensor:
    """uint8 images H×W×3 (a list of one size, or a B×H×W×3 tensor) → normalised B×3×H×W float32 on
    ``device`` (channels-last strides; one float copy, normalised in place)."""
    if not torch.is_tensor(images):
        arrays = [np.ascontiguousarray(im) for im in images]
        images = torch.from_numpy(arrays[0][None] if len(arrays) == 1 else np.stack(arrays))
    x = images.to(device).permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)


def to_tensor(image: np.ndarray, mean, std, device) -> torch.Tensor:
    """uint8 H×W×3 → normalised 1×3×H×W float32 on ``device``."""
    return to_batch([image], mean, std, device)


def labels_of(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Index of the largest score along ``dim`` as uint8 (first one on ties, like ``argmax``).

    ``max(dim).indices``: on the CPU ``argmax`` over a dimension other than the last is about 7x
    slower (7 ms against 1 ms for 5×128×128 logits, torch 2.14).
    """
    return scores.max(dim).indices.to(torch.uint8)


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
    batch_size: int = 1  # images of one size per forward (eval.batch_size); windows of a big image too

    @classmethod
    def from_settings(cls, settings, crf: bool) -> PredictOptions:
        mean, std = tuple(settings.data.mean), tuple(settings.data.std)
        ev = settings.eval
        return cls(mean, std, crf, settings.crf.workers, settings.crf.backend, ev.batch_size)


@dataclass
class Batch:
    """Items of one size on their way through the routes; the normalised tensor is made once, on first
    use (a route that slides reads the uint8 image instead)."""

    items: list[Item]
    options: PredictOptions
    device: torch.device
    keep_scores: bool  # a sink or the CRF reads the routes' scores
    bar: ProgressBar | None = None
    _x: torch.Tensor | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.items[0].size

    def tensor(self) -> torch.Tensor:
        if self._x is None:
            self._x = to_batch(
                [i.image for i in self.items], self.options.mean, self.options.std, self.device
            )
        return self._x


def size_batches(
    numbered: Iterable[tuple[int, Item]], batch_size: int, alone: Callable[[tuple[int, int]], bool]
) -> Iterator[list[tuple[int, Item]]]:
    """Batches of up to ``batch_size`` same-size items. Items wait in per-size buckets; a full bucket
    goes at once, and when more than ``4 * batch_size`` items wait the oldest bucket goes. Items that
    ``alone(size)`` names go by themselves, at once. Every item is yielded exactly once."""
    buckets: dict[tuple[int, int], list[tuple[int, Item]]] = {}
    waiting = 0
    for entry in numbered:
        size = entry[1].size
        if batch_size <= 1 or alone(size):
            yield [entry]
            continue
        bucket = buckets.setdefault(size, [])
        bucket.append(entry)
        waiting += 1
        if len(bucket) >= batch_size or waiting > 4 * batch_size:
            key = size if len(bucket) >= batch_size else min(buckets, key=lambda k: buckets[k][0][0])
            waiting -= len(buckets[key])
            yield buckets.pop(key)
    yield from sorted(buckets.values(), key=lambda b: b[0][0])


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

    def alone(size: tuple[int, int]) -> bool:
        return any(route.slides(size) for route in routes)

    keep = options.crf or any(reads_outputs(s) for s in sinks)
    with label_router(options, runtime, finish) as router:
        for numbered in size_batches(enumerate(items), options.batch_size, alone):
            batch = Batch([item for _, item in numbered], options, runtime.device, keep, bar)
            for number, item in numbered:
                for sink in sinks:
                    sink.begin(item)
                in_flight[number] = [item, len(routes)]
            for r, route in enumerate(routes):
                prediction = route.forward(batch)
                if prediction.scores is not None:
                    for item, output in zip(batch.items, prediction.scores, strict=True):
                        for sink in sinks:
                            sink.output(item, r, output)
                route.route(router, [(number, r) for number, _ in numbered], batch.items, prediction)
            bar.advance(len(numbered))
        router.drain()


def dataset_items(shard, indices: Iterable[int] | None = None) -> Iterator[Item]:
    """Items of a (sharded) adapter, decoded one at a time; names are the split's ids."""
    ids = shard.ids
    for i in range(len(shard)) if indices is None else indices:
        sample = shard[i]
        yield Item(i, ids[i], sample.image, sample.labels, sample.mask, sample.id)
