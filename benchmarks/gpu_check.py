"""The GPU figures of issue 13 in one run (`make gpu-check`, <= 5 minutes on one GPU).

For ViT-B/16 (deit_base, random init) at 448 px, batch 4, bf16, without and with ``train.compile``:
seconds per training step per phase (forward, losses, backward, AdamW), peak GPU memory, images/s of a
200-iteration real ``dupl train`` run with data loading (demo data at 448), evaluation images/s
single-scale and multi-scale + flip, and the projected VOC schedule (20k iterations). ``--dry`` runs
every part at toy size on the CPU (test_vit with a 16-channel head at 64 px, one CAM scale, one
timed step per phase, a 2-iteration ``dupl train`` on 8 demo images, 2 evaluation images, dynamo's
``eager`` compile backend: graph capture only, one intra-op thread) in well under a minute, so a test
keeps the script from rotting; its figures mean nothing.

Usage: python benchmarks/gpu_check.py [--dry] [--iters 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_precision import precision_report
from bench_validation import report as validation_report
from bench_validation import validation_share
from step_timing import synthetic_batch, timed_steps

from dupl_cli.config.method_params import step_config
from dupl_cli.config.schema import DuplSettings, ModelSettings
from dupl_cli.data.demo import write_demo
from dupl_cli.method.params import PhaseSchedule
from dupl_cli.models.dual import build_dual_student
from dupl_cli.train.compile import compile_students
from dupl_cli.train.optim import build_optimizer

VOC = PhaseSchedule()  # t_seg 2000, t_anf 8000, 20000 iterations
PHASES = {"A": 0, "B": VOC.t_seg, "C": VOC.t_anf + 1}


def step_times(
    arch: str, size: int, batch: int, device, *, compile_backend: str | None, steps: int, toy: bool
) -> dict:
    """Median seconds per step per phase and the peak GPU memory (GiB; nan on CPU)."""
    model = ModelSettings(arch=arch, pretrained="none", head_channels=16 if toy else 512)
    # toy: one CAM scale (with its flip), so compilation captures few shapes
    settings = DuplSettings(model=model, method={"cam_scales": (1.0,)} if toy else {})
    torch.manual_seed(0)
    model = build_dual_student(settings.model, 20, img_size=size).to(device).train()
    if compile_backend:
        compile_students(model, backend=compile_backend)
    opt = build_optimizer(model, settings.train)
    config = step_config(settings)
    data = synthetic_batch(batch, size, device)
    gen = torch.Generator().manual_seed(0)
    cuda = device.type == "cuda"
    out = {}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for phase, t in PHASES.items():
        # warm-up (two on the GPU): compilation of every shape of the phase
        times = timed_steps(model, data, t, config, opt, gen, steps=steps, warmup=1 if toy else 2, bf16=cuda)
        out[phase] = statistics.median(times)
    out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return out


def _dupl(*args: str) -> float:
    """Wall seconds of one ``dupl`` command (fails loudly)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dupl_cli", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"dupl {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - start


def trainer_and_eval(
    tmp: Path, *, arch: str, size: int, batch: int, iters: int, n_val: int, dry: bool
) -> dict:
    data = tmp / "data"
    n_train = batch * 4 if dry else max(batch * 4, 16)
    write_demo(data, size=size, n_train=n_train, n_val=n_val)
    opts = [
        "--set",
        f"data.options.size={size}",
        "--set",
        f"data.options.n_train={n_train}",
        "--set",
        f"data.options.n_val={n_val}",
    ]
    common = [
        "--preset",
        "demo",
        "--set",
        f"data.root={data}",
        "--set",
        f"data.crop_size={size}",
        *opts,
        "--set",
        f"model.arch={arch}",
        "--set",
        f"model.head_channels={16 if dry else 512}",
    ]
    train = [
        *common,
        "--set",
        f"train.max_iters={iters}",
        "--set",
        f"train.batch_size={batch}",
        "--set",
        f"train.reference_batch={batch}",
        "--set",
        f"train.val_every={iters * 10}",
        "--set",
        f"train.ckpt_every={iters * 10}",
        "--set",
        "method.t_seg=1",
        "--set",
        "method.t_anf=2",
        "--set",
        f"train.precision={'no' if dry else 'bf16'}",
        "--set",
        f"data.num_workers={min(8, os.cpu_count())}",
    ]
    run = tmp / "run"
    seconds = _dupl("train", *train, "--run-dir", str(run))
    out = {"train_images_s": iters * batch / seconds}
    for name, ms in (("single", "false"), ("ms_flip", "true")):
        flag = ["--multiscale"] if ms == "true" else []
        seconds = _dupl("evaluate", str(run), *common, *flag, "--out", str(tmp / f"eval-{name}"))
        out[f"eval_{name}_images_s"] = n_val / seconds
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="toy sizes on the CPU (checks the script, not the GPU)")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    cuda = torch.cuda.is_available() and not args.dry
    if not cuda and not args.dry:
        raise SystemExit("gpu_check: no CUDA device (use --dry to check the script on the CPU)")
    device = torch.device("cuda" if cuda else "cpu")
    if args.dry:  # toy ops gain nothing from intra-op threads, and lose much on a busy machine
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"  # the dupl subprocesses
    arch, size, batch = ("deit_base_patch16_224", 448, 4) if cuda else ("test_vit", 64, 2)
    iters, steps = (args.iters, args.steps) if cuda else (2, 1)
    name = torch.cuda.get_device_name() if cuda else "CPU (dry run: figures mean nothing)"
    print(f"gpu-check: {name}; {arch} at {size} px, batch {batch}, {'bf16' if cuda else 'fp32'}")
    rows = {}
    for label, backend in (("eager", None), ("compiled", "inductor" if cuda else "eager")):
        rows[label] = step_times(
            arch, size, batch, device, compile_backend=backend, steps=steps, toy=not cuda
        )
        r = rows[label]
        mean = statistics.mean(r[k] for k in PHASES)
        voc = VOC.t_seg * r["A"] + (VOC.t_anf - VOC.t_seg) * r["B"] + (VOC.max_iters - VOC.t_anf) * r["C"]
        print(
            f"{label:>9}: s/step A {r['A']:.4f}  B {r['B']:.4f}  C {r['C']:.4f}  (mean {mean:.4f}); "
            f"peak {r['peak_gib']:.2f} GiB; VOC 20k-iteration schedule {voc / 60:.1f} min (steps only)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        f = trainer_and_eval(
            Path(tmp), arch=arch, size=size, batch=batch, iters=iters, n_val=100 if cuda else 2, dry=args.dry
        )
    print(
        f"trainer: {f['train_images_s']:.1f} images/s over a {iters}-iteration `dupl train` run "
        f"(data loading, start-up and the final validation included)"
    )
    print(
        f"evaluate: {f['eval_single_images_s']:.1f} images/s single-scale, "
        f"{f['eval_ms_flip_images_s']:.1f} images/s multi-scale + flip (start-up included)"
    )
    print("validation share of a VOC run (bench_validation.py):")
    share = validation_share(arch, size, device, repeats=1 if args.dry else 3, ranks=8)
    for line in validation_report(share, 8):
        print("  " + line)
    print("bf16 autocast vs fp32 (bench_precision.py):")
    for line in precision_report(arch, size, 2 if args.dry else 8, device, repeats=1 if args.dry else 5):
        print("  " + line)


if __name__ == "__main__":
    main()
