"""``dupl infer``: palette PNG masks (optionally overlays and probabilities) for arbitrary image files,
sharded across processes like evaluate and pseudo-label."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dupl_cli.data.images import IMAGE_EXTS
from dupl_cli.engine.crf import CrfParams
from dupl_cli.engine.predict import Item, LoadedModel, PredictOptions, ProgressBar, Runtime, predict
from dupl_cli.engine.predict_heads import SegHead, seg_fn
from dupl_cli.engine.predict_sinks import MaskSink, OverlaySink, ProbsSink
from dupl_cli.engine.tta import TTAConfig, stride_of
from dupl_cli.errors import DataError, UserError


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
    written: list[Path]  # masks written by this process
    failed: list[str]  # one message per input this process could not process
    total_written: int  # over all processes
    total_failed: int


def _file_items(files: list[Path], stems: list[str], failed: list[str], bar, log) -> Iterator[Item]:
    """Decoded images; an unreadable file is reported, counted and skipped."""
    from dupl_cli.data.images import read_image

    for path, stem in zip(files, stems, strict=True):
        try:
            image = read_image(path)
        except DataError as exc:
            failed.append(str(exc))
            log(f"skipped: {exc}")
            bar.advance()
            continue
        yield Item(stem, stem, image)


def run_infer(
    loaded: LoadedModel,
    inputs: list[str],
    out: Path,
    settings,
    runtime: Runtime,
    *,
    tta: TTAConfig,
    student: str = "best",
    use_crf: bool = False,
    overlay: bool = False,
    probs: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> InferResult:


    files, problems = expand_inputs(inputs)
    failed = problems if runtime.is_main else []  # every process sees the same problems: report once
    for problem in failed:
        log(f"skipped: {problem}")
    stems = output_stems(files)  # unique over all inputs, before sharding
    share = slice(runtime.process_index, None, runtime.num_processes)
    files, stems = files[share], stems[share]
    out.mkdir(parents=True, exist_ok=True)
    pick = loaded.pick(student)
    params = CrfParams.for_segmentation(settings.crf)
    head = SegHead(seg_fn(loaded.model, pick.indices), tta, stride_of(loaded.model), params)
    masks = MaskSink(out, loaded.palette)
    sinks = [*([ProbsSink(out, loaded.classes)] if probs else []), masks]
    sinks += [OverlaySink(out, loaded.palette)] if overlay else []
    options = PredictOptions.from_settings(settings, use_crf)
    with ProgressBar("infer", len(files), show_progress and runtime.is_main) as bar:
        predict(_file_items(files, stems, failed, bar, log), [head], sinks, runtime, options, bar)
    total_written, total_failed = runtime.sum(len(masks.written), len(failed))
    return InferResult(masks.written, failed, total_written, total_failed)


def check_out_dir(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    return out
