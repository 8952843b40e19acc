"""Run by test_ddp.py in a fresh interpreter: forking a test process that already ran many
threaded torch ops can crash the children, so accelerate's debug_launcher starts from here."""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import save_file


def train(root: Path, out: Path, batch_size: int, tag: str) -> None:
    from accelerate import PartialState

    from dupl_cli.config.sources import load_settings
    from dupl_cli.train.trainer import Trainer, TrainOptions

    assignments = [
        f"data.root={root}", f"train.runs_root={out}", f"train.batch_size={batch_size}",
        "train.max_iters=3", "train.deterministic=true", "data.hflip=false",
        # Phase A only: its losses are means over images, so 2 x 1 image equals 1 x 2 images.
        "method.t_seg=100", "method.t_anf=100", "train.val_every=1000",
    ]  # fmt: skip
    settings = load_settings("tiny-cpu", assignments=assignments, environ={}).settings
    trainer = Trainer(settings, TrainOptions(run_dir=out / tag, quiet=True))
    trainer.run()
    rank = PartialState().process_index
    state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, str(out / f"{tag}-rank{rank}.safetensors"))


if __name__ == "__main__":
    root, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    if mode == "ddp":
        from accelerate import debug_launcher

        debug_launcher(train, args=(root, out, 1, "ddp"), num_processes=2)
    else:
        train(root, out, 2, "single")
        # The untrained start (same seed, same construction) to show that training moved the weights.
        from accelerate.utils import set_seed

        from dupl_cli.config.sources import load_settings
        from dupl_cli.models.dual import build_dual_student

        settings = load_settings("tiny-cpu", assignments=[f"data.root={root}"], environ={}).settings
        set_seed(settings.train.seed)
        start = build_dual_student(settings.model, 5, settings.data.crop_size)
        save_file({k: v.contiguous() for k, v in start.state_dict().items()}, str(out / "start.safetensors"))
