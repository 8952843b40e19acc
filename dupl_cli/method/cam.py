"""Multi-scale, flip-merged, min-max normalised CAMs (docs/method.md §4.1), batched per scale."""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

from dupl_cli.models.geometry import pad_to_multiple, padded_size, resample_view


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def normalise_cam(cam: torch.Tensor) -> torch.Tensor:
    """Per image and class: (M - min M) / (max(M - min M) + 1e-5), in fp32."""
    cam = cam.float()
    cam = cam - cam.amin(dim=(-2, -1), keepdim=True)
    return cam / (cam.amax(dim=(-2, -1), keepdim=True) + 1e-5)


def merge_flip(
    raw: torch.Tensor, size: tuple[int, int], batch: int, flip: bool, *, view=None, stride: int = 1
) -> torch.Tensor:
    """Raw CAM of ``cat([x, hflip(x)])`` (or of x alone) -> upsampled, flip-merged by max, ReLU.

    ``view``: the size of x before it was padded to a multiple of ``stride`` (``models.geometry``);
    the CAM of its content is then mapped exactly onto ``size``.
    """
    up = raw.float()
    if view is None:
        up = _resize(up, size)
    else:
        up = resample_view(up, size, view=view, padded=padded_size(view, stride))
    if flip:
        up = torch.maximum(up[:batch], up[batch:].flip(-1))
    return up.relu()


def view_sizes(size: tuple[int, int], scales) -> list[tuple[int, int]]:
    """The release's ``int(s * side)`` view size per scale."""
    return [(int(s * size[0]), int(s * size[1])) for s in scales]


def backbone_stride(student) -> int:
    return int(getattr(student.backbone, "stride", 1) or 1)


def raw_cams_at_scales(
    student, images: torch.Tensor, scales, flip: bool, *, final: bool = True, forward=None
):
    """For each scale, ``student.cams`` of the resized batch (with its hflip appended when ``flip``),
    zero-padded at the bottom/right to a multiple of the backbone stride.

    ``forward``: the student's output on ``images`` itself (a training forward); the un-flipped view
    at the input size is then read from its feature maps instead of being run again.
    ``final=False``: the aux CAM only (the final one is None).
    """
    h, w = images.shape[-2:]
    stride = backbone_stride(student)
    out = []
    for view in view_sizes((h, w), scales):
        if forward is not None and view == (h, w):
            fmap = forward.features.detach() if final else None
            cam, cam_aux = student.raw_cams(fmap, forward.aux_features.detach())
            if flip:
                cam_f, cam_aux_f = student.cams(pad_to_multiple(images.flip(-1), stride), final=final)
                cam = None if cam is None else torch.cat([cam, cam_f])
                cam_aux = torch.cat([cam_aux, cam_aux_f])
            out.append((cam, cam_aux))
            continue
        x = _resize(images, view)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        out.append(student.cams(pad_to_multiple(x, stride), final=final))
    return out


def _random_in_training(module: nn.Module) -> bool:
    """A dropout or timm DropPath with a non-zero rate in training mode (it draws from the global RNG)."""
    if not module.training:
        return False
    if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
        return True
    return float(getattr(module, "drop_prob", 0.0) or 0.0) > 0


def forward_is_reusable(student, output) -> bool:
    """Whether a training forward gives the maps a no-grad pass of the same input would: nothing
    random (dropout, drop-path) and nothing batch-dependent (batch-norm statistics) runs in training mode."""
    if output is None or getattr(output, "aux_features", None) is None:
        return False
    for module in student.modules():
        if module.training and isinstance(module, nn.modules.batchnorm._BatchNorm):
            return False
        if _random_in_training(module):
            return False
    return True


@torch.no_grad()
def multiscale_cam(
    student, images: torch.Tensor, *, scales: tuple[float, ...], flip: bool, final: bool = True, forward=None
):
    """(cam, cam_aux), both B×C×H×W in [0, 1]: ReLU-summed over scales, normalised per image and class.

    ``final=False`` skips the final-map CAM (returned as None); ``forward`` as in
    :func:`raw_cams_at_scales`, used only when :func:`forward_is_reusable`.
    """
    b, _, h, w = images.shape
    forward = forward if forward_is_reusable(student, forward) else None
    cam = cam_aux = None
    stride = backbone_stride(student)
    raws = raw_cams_at_scales(student, images, scales, flip, final=final, forward=forward)
    for view, (raw, raw_aux) in zip(view_sizes((h, w), scales), raws, strict=True):
        a = merge_flip(raw_aux, (h, w), b, flip, view=view, stride=stride)
        cam_aux = a if cam_aux is None else cam_aux + a
        if final:
            c = merge_flip(raw, (h, w), b, flip, view=view, stride=stride)
            cam = c if cam is None else cam + c
    return (normalise_cam(cam) if final else None), normalise_cam(cam_aux)


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def students_in_parallel(students, images: torch.Tensor) -> bool:
    """Whether the students' CAM passes run concurrently, one thread each: on the CPU when the
    intra-op threads leave a core set per student idle (1.78x measured with one intra-op thread on two
    cores otherwise idle; with every core in intra-op use, no reliable gain: benchmarks/bench_students.py).
    Each thread keeps the process's intra-op thread count, so the CAMs are bitwise those of the
    sequential loop. Not with random modules in training mode (the global RNG's draw order would
    depend on the threads' timing) nor with compiled backbones (their graphs stay on one thread)."""
    if len(students) < 2 or images.device.type != "cpu":
        return False
    if len(students) * torch.get_num_threads() > available_cores():
        return False
    for student in students:
        if getattr(student.backbone, "_compiled_call_impl", None) is not None:
            return False
        if any(_random_in_training(m) for m in student.modules()):
            return False
    return True


def run_students(jobs, *, parallel: bool, device_type: str = "cpu") -> list:
    """Each job's result, in order; with ``parallel`` all but the first on their own threads, which
    inherit the caller's autocast state (grad mode is set by the jobs themselves)."""
    if not parallel or len(jobs) < 2:
        return [job() for job in jobs]
    enabled = torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type)

    def in_callers_autocast(job):
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            return job()

    with ThreadPoolExecutor(max_workers=len(jobs) - 1) as pool:
        rest = [pool.submit(in_callers_autocast, job) for job in jobs[1:]]
        first = jobs[0]()
        return [first, *(f.result() for f in rest)]


@torch.no_grad()
def dual_multiscale_cam(
    model, images: torch.Tensor, *, scales: tuple[float, ...], flip: bool, final: bool = True, forwards=None
):
    """Multi-scale CAMs of every student of ``model``: lists ``[cam_k]``, ``[cam_aux_k]``.

    Each student sees all flips of a scale in one batch; the students have separate weights, so
    they run one after the other, or concurrently where :func:`students_in_parallel` says it pays
    (batching them into one ``vmap`` computation was slower: benchmarks/bench_students.py).
    ``images``: the batch every student sees, or a list of each student's own view (diff_aug).
    ``final``/``forwards`` (per student, its training forward on its images): see :func:`multiscale_cam`.
    """
    students = list(model.students)
    views = list(images) if isinstance(images, list | tuple) else [images] * len(students)
    forwards = forwards or [None] * len(students)
    jobs = [
        functools.partial(multiscale_cam, s, x, scales=scales, flip=flip, final=final, forward=f)
        for s, x, f in zip(students, views, forwards, strict=True)
    ]
    parallel = students_in_parallel(students, views[0])
    results = run_students(jobs, parallel=parallel, device_type=views[0].device.type)
    return [cam for cam, _ in results], [cam_aux for _, cam_aux in results]
