"""The students' CAM passes run concurrently (one thread per student) with the sequential loop's results."""

from __future__ import annotations

import functools
import threading

import pytest
import torch
from test_step import _model

from dupl_cli.method import cam as cam_module
from dupl_cli.method.cam import dual_multiscale_cam, multiscale_cam, run_students, students_in_parallel

SCALES = (1.0, 0.5, 1.5)


def _images(b=2, size=64):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(4))


def _jobs(model, images, final, forwards):
    return [
        functools.partial(multiscale_cam, s, images, scales=SCALES, flip=True, final=final, forward=f)
        for s, f in zip(model.students, forwards, strict=True)
    ]


@pytest.mark.parametrize("final", [True, False])
def test_concurrent_students_give_the_sequential_cams_bitwise(final):
    """Training mode, the training forwards reused, as the step calls it: each thread runs exactly the
    sequential ops with the same intra-op thread count, so the maps are identical, not merely close."""
    model = _model(seed=2).train()
    images = _images()
    forwards = [s(images) for s in model.students]
    seq = run_students(_jobs(model, images, final, forwards), parallel=False)
    par = run_students(_jobs(model, images, final, forwards), parallel=True)
    assert not torch.equal(seq[0][1], seq[1][1])  # two different students: an order swap would show
    for (c_seq, a_seq), (c_par, a_par) in zip(seq, par, strict=True):
        assert torch.equal(a_seq, a_par)
        assert (c_seq is None and c_par is None) if not final else torch.equal(c_seq, c_par)


def test_concurrent_students_run_in_the_callers_autocast():
    model = _model(seed=2).eval()
    images = _images()
    forwards = [None, None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        seq = run_students(_jobs(model, images, True, forwards), parallel=False)
        par = run_students(_jobs(model, images, True, forwards), parallel=True)
    fp32 = run_students(_jobs(model, images, True, forwards), parallel=False)
    assert not torch.equal(seq[1][0], fp32[1][0])  # bf16 changes the maps: the check below means something
    for a, b in zip(seq, par, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_dual_multiscale_cam_runs_each_student_on_its_own_thread(monkeypatch):
    model = _model(seed=2).eval()
    images = _images()
    ref = dual_multiscale_cam(model, images, scales=SCALES, flip=True)
    seen = {}
    for k, student in enumerate(model.students):
        inner = student.backbone.forward

        def wrapped(x, _inner=inner, _k=k):
            seen.setdefault(_k, set()).add(threading.get_ident())
            return _inner(x)

        monkeypatch.setattr(student.backbone, "forward", wrapped)
    monkeypatch.setattr(cam_module, "students_in_parallel", lambda students, images: True)
    got = dual_multiscale_cam(model, images, scales=SCALES, flip=True)
    assert len(seen[0]) == len(seen[1]) == 1 and seen[0] != seen[1]
    for kind in (0, 1):
        for g, r in zip(got[kind], ref[kind], strict=True):
            assert torch.equal(g, r)


def test_parallel_only_with_a_core_per_student_thread_and_no_random_module(monkeypatch):
    model = _model(seed=2).train()
    images = _images()
    threads = torch.get_num_threads()
    monkeypatch.setattr(cam_module, "available_cores", lambda: 2 * threads)
    assert students_in_parallel(model.students, images)
    assert not students_in_parallel(model.students[:1], images)
    monkeypatch.setattr(cam_module, "available_cores", lambda: 2 * threads - 1)
    assert not students_in_parallel(model.students, images)
    monkeypatch.setattr(cam_module, "available_cores", lambda: 2 * threads)
    model.students[1].backbone.vit.blocks[0].drop_path1 = torch.nn.Dropout(0.1)  # draws from the global RNG
    assert not students_in_parallel(model.students, images)
    model.eval()  # no draw in eval mode
    assert students_in_parallel(model.students, images)
    model.students[0].backbone.compile(backend="eager")  # lazy: nothing is traced here
    assert not students_in_parallel(model.students, images)
