"""``dupl submit``: the PASCAL VOC 2012 test-server archive of a checkpoint's predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dupl_cli.cli.common import CheckpointArg, ConfigOpt, PresetOpt, SetOpt, console, global_options
from dupl_cli.cli.prediction import CrfOpt, MultiscaleOpt, StudentOpt, build_adapter, prepare

SUBMIT_HELP = (
    "Segment the VOC test split and pack results/VOC2012/Segmentation/comp6_test_cls/<id>.png (palette "
    "PNGs, class ids) as OUT/results.tar.gz for the evaluation server; the PNGs stay in OUT/results/.\n\n"
    "The paper's test numbers use --multiscale --crf. The split needs no masks; data.root must hold its "
    "images (JPEGImages/<id>.jpg) and ImageSets/Segmentation/<split>.txt. OUT must not hold a submission yet."
)


def submit(
    ctx: typer.Context,
    checkpoint: CheckpointArg = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: <run>/submission/<split>).")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="The split submitted.")] = "test",
    multiscale: MultiscaleOpt = False,
    crf: CrfOpt = False,
    student: StudentOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    settings, runtime, loaded, student_name = prepare(ctx, preset, config, sets, checkpoint, student, crf)
    # here, not at the top: it loads torch, which `dupl --help` must not
    from dupl_cli.predict.tta import TTAConfig

    # here, not at the top: it loads torch, which `dupl --help` must not
    from dupl_cli.tasks.submit import run_submission

    out = out or loaded.path.parent / "submission" / split
    con = console(ctx)
    con.print(f"checkpoint: {loaded.path} ({loaded.how})", markup=False, soft_wrap=True)
    result = run_submission(
        loaded,
        build_adapter(settings, split),
        settings,
        runtime,
        out=out,
        tta=TTAConfig.from_settings(settings.eval, multiscale=multiscale),
        student=student_name,
        use_crf=crf,
        show_progress=global_options(ctx).verbosity >= 0,
        log=lambda msg: console(None, stderr=True).print(msg, markup=False),
    )
    con.print(
        f"wrote {result.images} masks to {result.folder} and {result.archive}", markup=False, soft_wrap=True
    )
