"""The two students' no-grad multi-scale CAM passes: sequential against batched alternatives (issue 13).

Times ``dual_multiscale_cam``'s work (scales 1.0/0.5/1.5, each with its flip, final and aux CAMs)
with the students run

* ``seq``: one after the other (``run_students(parallel=False)``);
* ``threads``: concurrently, one thread per student, each keeping the process's intra-op thread
  count (``run_students(parallel=True)``, what ``dual_multiscale_cam`` does where
  ``students_in_parallel``; bitwise equal to ``seq``);
* ``threads_split``: concurrently with the intra-op threads split between the students;
* ``vmap``: as one computation, ``torch.func.stack_module_state`` + ``functional_call`` + ``vmap``
  over the two students per view batch (the parameters restacked every call, as a training step would).

Models: the release fixture's DeiT-Tiny students (batch 2, 224 px; needs DUPL_RELEASE_FIXTURES or the
default fixture path) and timm ``test_vit`` (random init, batch 2, 128 px), each at every intra-op
thread count of ``--threads``. Paths alternate (the order rotates every round); each figure is the
median over rounds; ratios are against ``seq`` in the same run. Every path's CAMs are checked against
``seq`` (max abs difference printed).

Usage: python benchmarks/bench_students.py [--rounds 3] [--models fixture,test_vit] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
from torch.func import functional_call, stack_module_state, vmap

from dupl_cli.method.cam import available_cores, multiscale_cam, run_students, students_in_parallel
from dupl_cli.models.geometry import pad_to_multiple

ROOT = Path(__file__).resolve().parents[1]
SCALES = (1.0, 0.5, 1.5)


def fixture_case():
    sys.path.insert(0, str(ROOT / "tests"))
    import release_fixture as rf

    from dupl_cli.models.dual import DualStudent

    return DualStudent(rf.load_students()).eval(), rf.tensors("common")["input.weak"]


def test_vit_case():
    from dupl_cli.config.schema import ModelSettings
    from dupl_cli.models.dual import build_dual_student

    torch.manual_seed(0)
    model = build_dual_student(ModelSettings(arch="test_vit", pretrained="none"), 20, img_size=128)
    return model.eval(), torch.randn(2, 3, 128, 128)


class _Cams(torch.nn.Module):
    """``student.cams`` as a forward, for ``functional_call``."""

    def __init__(self, student) -> None:
        super().__init__()
        self.student = student

    def forward(self, x):
        return self.student.cams(x)


def vmap_path(model, images):
    """Both students' raw CAMs per view batch in one vmapped call, then the sequential merge code."""
    params, buffers = stack_module_state(list(model.students))
    wrapper = _Cams(model.students[0])
    params = {f"student.{k}": v for k, v in params.items()}
    buffers = {f"student.{k}": v for k, v in buffers.items()}
    both = vmap(lambda p, b, x: functional_call(wrapper, (p, b), (x,)), in_dims=(0, 0, None))
    stride = model.students[0].backbone.stride
    raws = [[], []]
    h, w = images.shape[-2:]
    for s in SCALES:
        x = torch.nn.functional.interpolate(images, size=(int(s * h), int(s * w)), mode="bilinear")
        if (int(s * h), int(s * w)) == (h, w):
            x = images
        cam, aux = both(params, buffers, pad_to_multiple(torch.cat([x, x.flip(-1)]), stride))
        for k in range(2):
            raws[k].append((cam[k], aux[k]))
    return _merge(model, images, raws)


def _merge(model, images, raws):
    from dupl_cli.method.cam import merge_flip, normalise_cam, view_sizes

    b, _, h, w = images.shape
    stride = model.students[0].backbone.stride
    cams, cams_aux = [], []
    for per_view in raws:
        cam = aux = 0
        for view, (raw, raw_aux) in zip(view_sizes((h, w), SCALES), per_view, strict=True):
            cam = cam + merge_flip(raw, (h, w), b, True, view=view, stride=stride)
            aux = aux + merge_flip(raw_aux, (h, w), b, True, view=view, stride=stride)
        cams.append(normalise_cam(cam))
        cams_aux.append(normalise_cam(aux))
    return cams, cams_aux


def _jobs(model, images):
    return [
        functools.partial(multiscale_cam, student, images, scales=SCALES, flip=True)
        for student in model.students
    ]


def _unzip(results):
    return [cam for cam, _ in results], [aux for _, aux in results]


def split_thread_path(model, images):
    """One thread per student with the intra-op threads split between them (``set_num_threads`` is
    process-wide for MKL, so it is restored after)."""
    total = torch.get_num_threads()
    out = [None, None]

    def run(k):
        torch.set_num_threads(max(1, total // 2))
        out[k] = multiscale_cam(model.students[k], images, scales=SCALES, flip=True)

    workers = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    torch.set_num_threads(total)
    return _unzip(out)


PATHS = {
    "seq": lambda m, x: _unzip(run_students(_jobs(m, x), parallel=False)),
    "threads": lambda m, x: _unzip(run_students(_jobs(m, x), parallel=True)),
    "threads_split": split_thread_path,
    "vmap": vmap_path,
}


def _max_diff(a, b) -> float:
    return max(
        float((x - y).abs().max()) for ka, kb in zip(a, b, strict=True) for x, y in zip(ka, kb, strict=True)
    )


@torch.no_grad()
def bench(name, model, images, rounds: int) -> None:
    ref = PATHS["seq"](model, images)
    names = list(PATHS)
    times = {n: [] for n in names}
    diffs = {n: _max_diff(PATHS[n](model, images), ref) for n in names}  # also the warm-up
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            PATHS[n](model, images)
            times[n].append(time.perf_counter() - start)
    base = statistics.median(times["seq"])
    print(f"{name}: images {tuple(images.shape)}, scales {SCALES} + flips, final and aux CAMs")
    print(f"  {'path':<13}{'s/call':>9}{'vs seq':>9}{'max |diff|':>12}   per round")
    for n in names:
        med = statistics.median(times[n])
        rounds_text = " ".join(f"{t:.3f}" for t in times[n])
        print(f"  {n:<13}{med:>9.4f}{base / med:>8.2f}x{diffs[n]:>12.2e}   {rounds_text}", flush=True)


def main() -> None:
    import warnings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", default="fixture,test_vit")
    p.add_argument("--threads", default=f"1,{torch.get_num_threads()}", help="intra-op thread counts")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*batching rule.*")  # SDPA under vmap: a per-student loop
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"({available_cores()} available); torch {torch.__version__}; {args.rounds} rounds interleaved"
    )
    cases = {"fixture": fixture_case, "test_vit": test_vit_case}
    for name in args.models.split(","):
        model, images = cases[name]()
        for threads in sorted({int(t) for t in args.threads.split(",")}):
            torch.set_num_threads(threads)
            default = "threads" if students_in_parallel(model.students, images) else "seq"
            bench(f"{name}, {threads} intra-op threads (default path: {default})", model, images, args.rounds)


if __name__ == "__main__":
    main()
