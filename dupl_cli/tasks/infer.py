"""``dupl infer``: palette PNG masks (optionally overlays and probabilities) for arbitrary image files,
sharded across processes like evaluate and pseudo-label.

No output overwrites an input: output names are unique by construction (checked against every input),
an output folder that is an input folder is refused, and ``index.csv`` maps each input to its mask.
"""

from __future__ import annotations

import csv
import errno
import glob
import io
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dupl_cli.config.presets import _refuse_url
from dupl_cli.core.atomic import atomic_write_text
from dupl_cli.core.errors import DataError, UserError, clip
from dupl_cli.core.writable import check_writable
from dupl_cli.data.images import IMAGE_EXTS, read_image
from dupl_cli.predict.loop import Item, LoadedModel, PredictOptions, ProgressBar, Runtime, predict
from dupl_cli.predict.routes import SegRoute
from dupl_cli.predict.sinks import MaskSink, OverlaySink, ProbsSink
from dupl_cli.predict.tta import TTAConfig

INDEX_FILE = "index.csv"
OUTPUT_SUFFIXES = (".png", "_overlay.jpg", "_probs.npz")
USAGE = "dupl infer CHECKPOINT|RUN_DIR IMAGES... --out FOLDER"


def is_run_dir(path: Path) -> bool:
    """A training run directory (its config plus a checkpoint, a log or rotating checkpoints)."""
    path = Path(path)
    markers = ("best.safetensors", "final.safetensors", "train.log", "checkpoints")
    return (path / "config.toml").is_file() and any((path / m).exists() for m in markers)


def _run_dir_above(path: Path) -> Path | None:
    for p in (path, *path.parents):
        if is_run_dir(p):
            return p
    return None


def check_checkpoint_arg(arg: Path) -> Path:
    """The first argument must be a checkpoint or run directory, not an image or an image folder."""
    _refuse_url(str(arg))
    arg = Path(arg).expanduser()
    if arg.is_dir():
        if (arg / "best.safetensors").is_file() or (arg / "final.safetensors").is_file():
            return arg
        raise UserError(
            f"{arg}: not a run directory (no best.safetensors or final.safetensors); "
            f"the first argument is the checkpoint: {USAGE}"
        )
    kind, why, _ = path_kind(arg)
    if kind == "odd":  # a FIFO would block the reader, a loop would fail inside it
        raise UserError(f"{arg}: {why}; the first argument is the checkpoint: {USAGE}")
    if not arg.exists():
        raise UserError(f"{arg}: checkpoint or run directory does not exist ({USAGE})")
    if arg.suffix != ".safetensors":
        raise UserError(
            f"{arg}: not a checkpoint (.safetensors) or run directory; the first argument is the checkpoint: "
            f"{USAGE}"
        )
    return arg


def describe_checkpoint(loaded: LoadedModel, limit: int = 12) -> str:
    """``PATH (step N, K classes: a, b, ...; how)`` for the line infer prints before any work."""
    names = loaded.card.classes
    shown = ", ".join(names[:limit]) + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")
    step = "?" if loaded.card.step is None else loaded.card.step
    return f"{loaded.path} (step {step}, {len(names)} classes: {shown}; {loaded.how})"


def refuse_run_dirs(paths: Iterable[str]) -> None:
    """A run directory (or a folder inside one) is not a folder of images: its PNGs are reports."""
    for raw in paths:
        p = Path(raw).expanduser()
        run = _run_dir_above(p.resolve()) if p.is_dir() else None
        if run is not None:
            inside = "" if run == p.resolve() else f" (inside {run})"
            raise UserError(
                f"{p}: is a training run directory{inside}, not a folder of images; give the run first: "
                f"{USAGE}"
            )


_ODD = (
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def path_kind(p: Path) -> tuple[str, str, str]:
    """(kind, why, label) of an input path: kind ``file`` (a readable regular file), ``dir``, ``missing``
    or ``odd``; for an odd one ``why`` says what it is in a sentence and ``label`` in a word or two."""
    try:
        st = os.stat(p)  # follows links
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(p):
            target = clip(os.readlink(p))
            return "odd", f"dangling symbolic link (its target {target} does not exist)", "dangling link"
        return "missing", "no such file or folder", ""
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "odd", "symbolic link loop (following it never reaches a file)", "symbolic link loop"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "odd", "permission denied (its folder cannot be searched)", "permission denied"
        return "odd", f"cannot be read ({exc.strerror or exc})", "unreadable"
    if stat.S_ISDIR(st.st_mode):
        if not os.access(p, os.R_OK | os.X_OK):
            return "odd", "permission denied (the folder cannot be listed)", "permission denied"
        return "dir", "", ""
    if stat.S_ISREG(st.st_mode):
        if not os.access(p, os.R_OK):
            return "odd", "permission denied (the file cannot be read)", "permission denied"
        return "file", "", ""
    what = next((name for test, name in _ODD if test(st.st_mode)), "special file")
    return "odd", f"is a {what}, not a regular file", what


def _skipped_note(where: str, skipped: Counter) -> str:
    """One line: how many entries a folder walk or a pattern left out, and why."""
    total = sum(skipped.values())
    reasons = ", ".join(f"{label} {n}" for label, n in sorted(skipped.items()))
    return (
        f"{where}: skipped {total} entr{'y' if total == 1 else 'ies'} that are not readable files ({reasons})"
    )


def _walk(folder: Path, out_abs: Path | None, skipped: Counter) -> list[Path]:
    """The images under ``folder`` (recursive, symbolic links to folders not followed, as rglob);
    image-named entries that are not readable files and folders that cannot be listed are counted."""
    found = []

    def unlisted(exc: OSError) -> None:
        skipped["permission denied" if exc.errno in (errno.EACCES, errno.EPERM) else "unreadable folder"] += 1

    for root, _, names in os.walk(folder, onerror=unlisted):
        for name in names:
            f = Path(root) / name
            if f.suffix.lower() not in IMAGE_EXTS:
                continue
            kind, _, label = path_kind(f)  # before resolve(), which raises on a link loop
            if kind == "file" and not _under(f, out_abs):
                found.append(f)
            elif kind == "odd":
                skipped[label] += 1
    return sorted(found)


def _pattern(raw: str, out_abs: Path | None, skipped: Counter) -> list[Path]:
    found = []
    for match in glob.glob(os.path.expanduser(raw), recursive=True):
        f = Path(match)
        kind, _, label = path_kind(f)
        if kind == "file" and not _under(f, out_abs):
            found.append(f)
        elif kind == "odd":
            skipped[label] += 1
    return sorted(found)


def _expand_one(raw: str, out_abs: Path | None, problems: list[str], notes: list[str]) -> list[Path]:
    """The files one input names; what it cannot give is a problem (given directly) or a note (skipped
    in a folder or a pattern)."""
    p = Path(raw).expanduser()
    kind, why, _ = path_kind(p)
    skipped: Counter = Counter()
    if kind == "dir":
        found = _walk(p, out_abs, skipped)
        if not found:
            problems.append(f"{p}: folder has no images ({', '.join(IMAGE_EXTS)})")
    elif kind == "file":
        found = [p]
    elif kind == "odd":
        problems.append(f"{p}: {why}")
        return []
    elif any(ch in raw for ch in "*?["):
        found = _pattern(raw, out_abs, skipped)
        if not found:
            problems.append(f"{raw}: pattern matches no file")
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", raw):
        problems.append(f"{raw}: URLs are not supported; download the image and give its path")
        return []
    else:
        problems.append(f"{p}: {why}")
        return []
    if skipped:
        notes.append(_skipped_note(str(p if kind == "dir" else raw), skipped))
    return found


def expand_inputs(
    paths: Iterable[str], out: Path | None = None, notes: list[str] | None = None
) -> tuple[list[Path], list[str]]:
    """Files, folders (their images, sorted, recursive) and globs → (files, problems).

    A run directory (or a folder inside one) is refused: its images are reports, not inputs. Files
    under ``out`` are left out of folders and globs, so a rerun does not segment its own masks. A FIFO,
    socket, device, symbolic link loop, dangling link or unreadable file given directly is a problem
    naming what it is; those a folder walk or a pattern skips are counted in one line per input,
    appended to ``notes``.
    """
    refuse_run_dirs(paths := list(paths))
    out_abs = Path(out).resolve() if out is not None else None
    files, problems = [], []
    notes = [] if notes is None else notes
    for raw in paths:
        files += _expand_one(raw, out_abs, problems, notes)
    by_real = {f.resolve(): f for f in reversed(files)}  # one entry per real file, first spelling kept
    unique = [by_real[r] for r in dict.fromkeys(f.resolve() for f in files)]
    return unique, problems


def _under(path: Path, folder: Path | None) -> bool:
    return folder is not None and folder in path.resolve().parents


def output_stems(files: list[Path]) -> list[str]:
    """Output names, unique by construction (case-insensitively, for macOS and Windows folders).

    The first input with a stem keeps it; a later one gets ``<stem>_<n>`` with the smallest n that no
    input's own stem and no earlier name uses, so ``x.jpg, x.png, x_1.png`` become ``x, x_2, x_1``.
    """
    taken = {f.stem.casefold() for f in files}
    used: set[str] = set()
    out = []
    for f in files:
        name = f.stem
        if name.casefold() in used:
            n = 1
            while f"{f.stem}_{n}".casefold() in taken | used:
                n += 1
            name = f"{f.stem}_{n}"
        used.add(name.casefold())
        out.append(name)
    return out


def check_outputs(files: list[Path], stems: list[str], out: Path, inputs: Iterable[str]) -> None:
    """Refuse an output folder that is an input folder, and any output file that is an input file."""
    out_abs = out.resolve()
    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir() and p.resolve() == out_abs:
            raise UserError(
                f"--out {out}: is an input folder; masks would mix with the images. Choose another folder"
            )
    inputs_abs = {f.resolve() for f in files}
    for stem in stems:
        for suffix in OUTPUT_SUFFIXES:
            target = (out_abs / f"{stem}{suffix}").resolve()
            if target in inputs_abs:
                raise UserError(
                    f"{target}: is an input and would be overwritten by its output; choose another --out"
                )
    if (out_abs / INDEX_FILE).resolve() in inputs_abs:
        raise UserError(f"{out_abs / INDEX_FILE}: is an input and would be overwritten; choose another --out")


@dataclass
class InferResult:
    written: list[Path]  # masks written by this process
    failed: list[str]  # one message per input this process could not process
    total_written: int  # over all processes
    total_failed: int


def _size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header (nothing decoded); (0, 0) when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # read_image names the problem
        return 0, 0


def too_large(path: Path, max_pixels: int) -> str | None:
    """The size policy: images above ``eval.max_pixels`` are refused before they are decoded."""
    width, height = _size(path)
    if width * height <= max_pixels:
        return None
    return (
        f"{path}: {width}x{height} = {width * height:,} pixels is above eval.max_pixels = {max_pixels:,} "
        "(time and memory grow with the image); downscale it or raise eval.max_pixels"
    )


def _file_items(
    files: list[Path], stems: list[str], failed: dict[str, str], bar, log, max_pixels: int
) -> Iterator[Item]:
    """Decoded images; an unreadable or too large file is reported, counted and skipped."""
    for path, stem in zip(files, stems, strict=True):
        try:
            problem = too_large(path, max_pixels)
            if problem:
                raise DataError(problem)
            image = read_image(path)
        except DataError as exc:
            failed[stem] = str(exc)
            log(f"skipped: {exc}")
            bar.advance()
            continue
        yield Item(stem, stem, image)


def write_index(out: Path, files: list[Path], stems: list[str], failed: dict[str, str]) -> Path:
    """``index.csv``: input (absolute), mask file name (empty when it failed), status."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["input", "mask", "status"])
    for path, stem in zip(files, stems, strict=True):
        problem = failed.get(stem)
        writer.writerow([str(path.resolve()), "" if problem else f"{stem}.png", problem or "ok"])
    atomic_write_text(out / INDEX_FILE, buf.getvalue())
    return out / INDEX_FILE


def _all_failed(runtime: Runtime, failed: dict[str, str]) -> dict[str, str]:
    if runtime.state is None:  # one process (or a test's simulated shard)
        return failed
    from accelerate.utils import gather_object

    merged: dict[str, str] = {}
    for part in gather_object([failed]):
        merged.update(part)
    return merged


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
    out = Path(out)
    notes: list[str] = []
    files, problems = expand_inputs(inputs, out, notes)
    for problem in problems if runtime.is_main else []:  # every process sees the same problems
        log(f"skipped: {problem}")
    for note in notes if runtime.is_main else []:
        log(f"note: {note}")
    stems = output_stems(files)  # unique over all inputs, before sharding
    check_outputs(files, stems, out, inputs)
    share = slice(runtime.process_index, None, runtime.num_processes)
    out.mkdir(parents=True, exist_ok=True)
    pick = loaded.pick(student)
    route = SegRoute.of(loaded.model, pick.indices, settings, tta)
    masks = MaskSink(out, loaded.palette)
    sinks = [*([ProbsSink(out, loaded.classes)] if probs else []), masks]
    sinks += [OverlaySink(out, loaded.palette, loaded.classes)] if overlay else []
    options = PredictOptions.from_settings(settings, use_crf)
    failed: dict[str, str] = {}
    with ProgressBar("infer", len(files[share]), show_progress and runtime.is_main) as bar:
        items = _file_items(files[share], stems[share], failed, bar, log, settings.eval.max_pixels)
        predict(items, [route], sinks, runtime, options, bar)
    every_failure = _all_failed(runtime, failed)
    if runtime.is_main:
        write_index(out, files, stems, every_failure)
    messages = (problems if runtime.is_main else []) + list(failed.values())
    total_written, total_failed = runtime.sum(len(masks.written), len(messages))
    return InferResult(masks.written, messages, total_written, total_failed)


def check_out_dir(out: Path) -> Path:
    """The --out folder, created and known to be writable before any model is loaded."""
    return check_writable(Path(out), "--out folder")
