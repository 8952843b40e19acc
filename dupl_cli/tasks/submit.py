"""``dupl submit``: PASCAL VOC 2012 test-server results for a split without masks.

The server takes an archive holding ``results/VOC2012/Segmentation/comp6_test_cls/<id>.png``: one
palette PNG per test image, the image's size, pixel value = class id (0 background, 1..20). comp6 is
the competition for methods trained with data beyond VOC (DuPL: ImageNet pre-training, SBD).
Predictions go through ``dupl infer``'s path (same TTA, CRF and student choice); the archive lists
exactly the split's ids and is written atomically.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dupl_cli.core.atomic import atomic_write
from dupl_cli.core.errors import UserError
from dupl_cli.data.palette import VOC_CLASSES
from dupl_cli.tasks.infer import run_infer

RESULTS = Path("results") / "VOC2012" / "Segmentation" / "comp6_test_cls"
ARCHIVE = "results.tar.gz"


@dataclass
class SubmissionResult:
    folder: Path  # the PNGs
    archive: Path
    images: int


def split_images(adapter) -> tuple[list[str], list[Path]]:
    """Ids and image paths of the split; an image whose file name is not its id would be misnamed."""
    ids = [adapter.sample_id(i) for i in range(len(adapter))]
    paths = [Path(adapter.path_of(i)) for i in range(len(adapter))]
    for sample_id, path in zip(ids, paths, strict=True):
        if not path.is_file():
            raise UserError(f"{path}: test image of id {sample_id!r} does not exist")
        if path.stem != sample_id:
            raise UserError(f"{path}: file name differs from its id {sample_id!r}")
    if len(set(ids)) != len(ids):
        raise UserError(f"{adapter.source}: the split lists an id twice")
    return ids, paths


def check_masks(folder: Path, ids: list[str], paths: list[Path], num_classes: int) -> None:
    """Every id has a palette PNG of its image's size holding only class ids."""
    for sample_id, image_path in zip(ids, paths, strict=True):
        png = folder / f"{sample_id}.png"
        if not png.is_file():
            raise UserError(f"{png}: no prediction written for id {sample_id!r}")
        with Image.open(image_path) as image, Image.open(png) as mask:
            size, mode, values = image.size, mask.mode, np.asarray(mask)
        if mask.size != size or mode != "P" or int(values.max()) > num_classes:
            raise UserError(f"{png}: not a {size[0]}x{size[1]} palette PNG of class ids 0..{num_classes}")


def pack(out: Path, folder: Path, ids: list[str]) -> Path:
    """``out/results.tar.gz`` with the results/ tree and exactly the ids' PNGs."""
    archive = out / ARCHIVE

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w:gz") as tar:
            for depth in range(1, len(RESULTS.parts) + 1):  # directory entries, as `tar czf results` has
                tar.add(
                    out / Path(*RESULTS.parts[:depth]),
                    arcname=str(Path(*RESULTS.parts[:depth])),
                    recursive=False,
                )
            for sample_id in ids:
                tar.add(folder / f"{sample_id}.png", arcname=str(RESULTS / f"{sample_id}.png"))

    atomic_write(archive, write)
    return archive


def run_submission(
    loaded,
    adapter,
    settings,
    runtime,
    *,
    out: Path,
    tta,
    student: str,
    use_crf: bool,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> SubmissionResult:
    if loaded.classes[1:] != list(VOC_CLASSES):
        raise UserError(
            f"{loaded.path}: not a PASCAL VOC model (its classes are not VOC's 20); nothing to submit"
        )
    out = Path(out)
    folder = out / RESULTS
    if (out / "results").exists() or (out / ARCHIVE).exists():
        raise UserError(f"{out}: already holds a submission (results/ or {ARCHIVE}); choose another --out")
    ids, paths = split_images(adapter)
    result = run_infer(
        loaded,
        [str(p) for p in paths],
        folder,
        settings,
        runtime,
        tta=tta,
        student=student,
        use_crf=use_crf,
        show_progress=show_progress,
        log=log,
    )
    runtime.barrier()
    if result.failed:
        raise UserError(
            f"{len(result.failed)} test image(s) could not be segmented; no archive written", exit_code=1
        )
    archive = out / ARCHIVE
    if runtime.is_main:
        check_masks(folder, ids, paths, len(VOC_CLASSES))
        archive = pack(out, folder, ids)
    runtime.barrier()
    return SubmissionResult(folder, archive, len(ids))
