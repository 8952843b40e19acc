"""Inference on arbitrary image files, plus the pieces evaluate and pseudo-label share:
loading a checkpoint for inference, choosing the student, process sharding, progress bars.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dupl_cli.data.images import IMAGE_EXTS
from dupl_cli.engine.checkpoint import atomic_write, load_model
from dupl_cli.engine.tta import TTAConfig, ensemble, stride_of, tta_logits
from dupl_cli.errors import DataError, UserError


# ---------------------------------------------------------------- shared runtime
@dataclass
class Runtime:
    """Device and process layout; rank/world from torch.distributed when launched with accelerate."""

    device: torch.device
    rank: int = 0
    world: int = 1
    accelerator: object | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


def make_runtime() -> Runtime:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from dupl_cli.engine.accel import make_accelerator

        acc = make_accelerator(precision="no")
        return Runtime(acc.device, acc.process_index, acc.num_processes, acc)
    return Runtime(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


@dataclass
class LoadedModel:
    model: torch.nn.Module
    card: dict
    path: Path
    how: str  # how the checkpoint was chosen (given, eval.checkpoint, newest run)
    classes: list[str] = field(init=False)  # background first
    palette: list[tuple[int, int, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.classes = ["background", *self.card["classes"]]
        self.palette = [tuple(c) for c in self.card["palette"]]


def load_for_inference(path: Path, how: str, device) -> LoadedModel:
    model, card = load_model(path, map_location=device)
    return LoadedModel(model, card, path, how)


def student_choice(loaded: LoadedModel, student: str) -> tuple[list[int], str]:
    """0-based student indices and a sentence saying why (never from the evaluated split's GT)."""
    count = len(loaded.model.students)
    if count == 1 and student in ("2", "ensemble"):
        raise UserError(f"{loaded.path}: holds one student; --student {student} needs two (use 1 or best)")
    if student == "ensemble":
        return [0, 1], "ensemble of both students (mean of logits)"
    if student in ("1", "2"):
        return [int(student) - 1], f"student {student} (chosen with --student)"
    chosen = int(loaded.card.get("student", 1))
    rule = loaded.card.get("student_rule", "best by validation during training")
    return [chosen - 1], f"student {chosen} ({rule}, from the checkpoint card)"


def seg_fn(model, indices: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    fns = [model.students[i].segment for i in indices]
    return fns[0] if len(fns) == 1 else ensemble(fns)


def to_tensor(image: np.ndarray, mean, std, device) -> torch.Tensor:
    """uint8 H×W×3 → normalised 1×3×H×W float32 on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float().div_(255)
    m = torch.tensor(mean, device=device).view(3, 1, 1)
    s = torch.tensor(std, device=device).view(3, 1, 1)
    return ((x - m) / s).unsqueeze(0)


def progress(description: str, total: int, enabled: bool):
    """A rich progress bar with ETA (a no-op context when disabled)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), disable=not enabled, transient=False,
    )  # fmt: skip
    task = bar.add_task(description, total=total)
    return bar, task


def crf_pool_or_none(use_crf: bool, settings):
    if not use_crf:
        return None
    from dupl_cli.engine.crf import CrfPool

    return CrfPool(settings.crf.workers)


# ---------------------------------------------------------------- dupl infer
def expand_inputs(paths: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (their images, sorted, recursive) and globs → (files, problems)."""
    files, problems = [], []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if not found:
                problems.append(f"{p}: folder has no images ({', '.join(IMAGE_EXTS)})")
            files += found
        elif p.is_file():
            files.append(p)
        elif any(ch in raw for ch in "*?["):
            found = sorted(
                Path(f) for f in glob.glob(os.path.expanduser(raw), recursive=True) if Path(f).is_file()
            )
            if not found:
                problems.append(f"{raw}: pattern matches no file")
            files += found
        else:
            problems.append(f"{p}: no such file or folder")
    unique = list(dict.fromkeys(files))
    return unique, problems


def output_stems(files: list[Path]) -> list[str]:
    """Output names: the file stem, made unique when two inputs share one."""
    seen: dict[str, int] = {}
    out = []
    for f in files:
        n = seen.get(f.stem, 0)
        seen[f.stem] = n + 1
        out.append(f.stem if n == 0 else f"{f.stem}_{n}")
    return out


@dataclass
class InferResult:
    written: list[Path]
    failed: list[str]  # one message per input that could not be processed


def run_infer(
    loaded: LoadedModel, inputs: list[str], out: Path, settings, runtime: Runtime, *,
    tta: TTAConfig, student: str = "best", use_crf: bool = False, overlay: bool = False, probs: bool = False,
    show_progress: bool = True, log: Callable[[str], None] = print,
) -> InferResult:  # fmt: skip
    from dupl_cli.data.images import read_image
    from dupl_cli.engine.crf import CrfParams, LabelRouter
    from dupl_cli.engine.visualize import overlay as make_overlay
    from dupl_cli.engine.visualize import save_mask

    files, failed = expand_inputs(inputs)
    for problem in failed:
        log(f"skipped: {problem}")
    stems = output_stems(files)
    out.mkdir(parents=True, exist_ok=True)
    indices, _ = student_choice(loaded, student)
    fn = seg_fn(loaded.model, indices)
    multiple = stride_of(loaded.model)
    params = CrfParams.for_segmentation(settings.crf)
    mean, std = settings.data.mean, settings.data.std
    written: list[Path] = []
    images: dict[str, np.ndarray] = {}

    def finish(stem: str, mask: np.ndarray) -> None:
        written.append(save_mask(out / f"{stem}.png", mask, loaded.palette))
        image = images.pop(stem)
        if overlay:
            from PIL import Image

            blended = Image.fromarray(make_overlay(image, mask, loaded.palette))
            atomic_write(
                out / f"{stem}_overlay.jpg", lambda tmp: blended.save(tmp, format="JPEG", quality=90)
            )

    pool = crf_pool_or_none(use_crf, settings)
    router = LabelRouter(pool, finish)
    bar, task = progress("infer", len(files), show_progress)
    try:
        with bar:
            for path, stem in zip(files, stems, strict=True):
                try:
                    image = read_image(path)
                except DataError as exc:
                    failed.append(str(exc))
                    log(f"skipped: {exc}")
                    bar.advance(task)
                    continue
                logits = tta_logits(fn, to_tensor(image, mean, std, runtime.device), tta, multiple=multiple)[
                    0
                ]
                if probs:
                    _save_probs(out / f"{stem}_probs.npz", logits, loaded.classes)
                images[stem] = image
                router.segmentation(stem, image, logits, params)
                bar.advance(task)
            router.drain()
    finally:
        if pool is not None:
            pool.close()
    return InferResult(written, failed)


PROBS_DOWNSCALE = 4


def _save_probs(path: Path, logits: torch.Tensor, classes: list[str]) -> None:
    """Softmax probabilities at 1/4 of the image size, float16, with the class names (.npz, no pickle)."""
    import torch.nn.functional as F

    h, w = logits.shape[-2:]
    size = (max(1, h // PROBS_DOWNSCALE), max(1, w // PROBS_DOWNSCALE))
    p = F.interpolate(logits.softmax(0)[None], size=size, mode="bilinear", align_corners=False)[0]
    arr = p.to(torch.float16).cpu().numpy()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, probs=arr, classes=np.asarray(classes, dtype=str), image_size=np.array([h, w])
            )

    atomic_write(path, write)


def check_out_dir(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    return out
