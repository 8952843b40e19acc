"""Run by test_validation_ddp.py in a fresh interpreter: validation over 2 CPU processes (gloo, accelerate's
debug launcher), each on its shard, against one process over the whole split; writes the scores as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def validate_split(root: Path, out: Path, tag: str) -> None:
    import torch
    from accelerate import PartialState

    from dupl_cli.config.sources import load_settings
    from dupl_cli.data.base import shard
    from dupl_cli.data.loader import eval_loader
    from dupl_cli.models.dual import build_dual_student
    from dupl_cli.plugins import DATASETS, load
    from dupl_cli.train.validation import validate

    state = PartialState(cpu=not torch.cuda.is_available())  # without CUDA, cpu=True makes it gloo
    settings = load_settings("tiny-cpu", assignments=[f"data.root={root}"], environ={}).settings
    adapter = load(DATASETS, "demo")(settings.data, settings.data.val_split)
    torch.manual_seed(0)
    model = build_dual_student(settings.model, len(adapter.classes), settings.data.crop_size)
    own_part = shard(adapter, state.process_index, state.num_processes)
    scores = validate(
        model, eval_loader(own_part, settings.data, size=settings.data.crop_size, batch_size=2),
        num_classes=len(adapter.classes), class_names=adapter.classes,
        cam_scales=settings.method.cam_scales, cam_threshold=settings.eval.cam_threshold, device="cpu",
    )  # fmt: skip
    record = {"scores": scores, "images": len(own_part), "world": state.num_processes}
    (out / f"{tag}-rank{state.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    root, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    if mode == "ddp":
        from accelerate import debug_launcher

        debug_launcher(validate_split, args=(root, out, "ddp"), num_processes=2)
    else:
        validate_split(root, out, "single")
