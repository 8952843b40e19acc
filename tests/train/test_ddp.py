"""Two-process data parallel on CPU (gloo) through accelerate's debug launcher."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _train(root: Path, out: Path, batch_size: int, tag: str) -> None:
    from accelerate import PartialState

    from dupl_cli.config.sources import load_settings
    from dupl_cli.engine.trainer import Trainer, TrainOptions

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


def test_two_process_cpu_ddp_matches_one_process(tiny_data, tmp_path):
    from accelerate import debug_launcher

    debug_launcher(_train, args=(tiny_data, tmp_path, 1, "ddp"), num_processes=2)
    rank0 = load_file(str(tmp_path / "ddp-rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp-rank1.safetensors"))
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"ranks diverged at {key}"

    _train(tiny_data, tmp_path, 2, "single")
    single = load_file(str(tmp_path / "single-rank0.safetensors"))
    initial_gap = 0.0
    for key in rank0:
        diff = (rank0[key] - single[key]).abs().max().item()
        initial_gap = max(initial_gap, diff)
    assert initial_gap < 1e-4, f"2 processes x 1 image differ from 1 process x 2 images by {initial_gap}"
