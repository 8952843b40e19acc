"""Dense CRF post-processing (docs/method.md §11): one API over two backends, and the router
the commands use.

Backends (``crf.backend``): ``torch`` (crf/torch_backend.py: batched mean field on a permutohedral
lattice, on the device the logits are on) and ``pydensecrf`` (crf/pydensecrf_backend.py: the C++
reference, in a process pool). ``auto`` takes torch on CUDA and ``CPU_AUTO`` on CPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from dupl_cli.core.errors import UserError
from dupl_cli.crf.params import MAX_LABELS, CrfParams
from dupl_cli.crf.pydensecrf_backend import (
    CrfPool,
    crf_cam_pseudo_label,
    crf_segmentation,
    require_pydensecrf,
    to_numpy,
)
from dupl_cli.crf.torch_backend import cam_labels, segmentation_labels

BACKENDS = ("auto", "torch", "pydensecrf")
# auto on CPU, measured with benchmarks/bench_crf.py (10 steps, 2 images, median of 3 interleaved runs)
# on a shared 2-vCPU AMD EPYC (Zen 2), images/s relative to one pydensecrf core:
#   500x375, 21 labels: pydensecrf pool (2 procs) 0.81x, torch 1 thread 0.52x, torch 2 threads 0.26x
#   640x480, 81 labels: pydensecrf pool (2 procs) 0.80x, torch 1 thread 0.40x, torch 2 threads 0.29x
# (torch is within 3x of a pydensecrf core, but slower), so CPU runs keep pydensecrf, and take torch
# only when the crf extra is not installed.
CPU_AUTO = "pydensecrf"


def pydensecrf_available() -> bool:
    try:
        require_pydensecrf()
    except UserError:
        return False
    return True


def check_backend(backend: str) -> None:
    """Fail at once (before any model work) when the configured ``crf.backend`` cannot run."""
    if backend not in BACKENDS:
        raise UserError(f"crf.backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "pydensecrf":
        require_pydensecrf()


def resolve_backend(backend: str, device_type: str) -> str:
    """``torch`` or ``pydensecrf`` for ``backend`` on a device of ``device_type`` ("cpu", "cuda", ...)."""
    if backend not in BACKENDS:
        raise UserError(f"crf.backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend != "auto":
        return backend
    if device_type != "cpu" or CPU_AUTO == "torch":
        return "torch"
    return "pydensecrf" if pydensecrf_available() else "torch"


# ------------------------------------------------------------------ public API
def _is_torch(x) -> bool:
    return hasattr(x, "detach")


def _check_pair(image, scores, what: str) -> None:
    if len(image.shape) != 3 or image.shape[2] != 3 or str(image.dtype).split(".")[-1] != "uint8":
        raise UserError(f"dense CRF: image must be uint8 H×W×3, got {image.dtype} {tuple(image.shape)}")
    if len(scores.shape) != 3 or tuple(scores.shape[1:]) != tuple(image.shape[:2]) or scores.shape[0] < 1:
        raise UserError(
            f"dense CRF: {what} must be K×H×W with H×W = the image's {tuple(image.shape[:2])}, "
            f"got {tuple(scores.shape)}"
        )
    if scores.shape[0] > MAX_LABELS:
        raise UserError(f"dense CRF: at most {MAX_LABELS} labels (uint8 label maps), got {scores.shape[0]}")


def _device_type(x) -> str:
    return x.device.type if _is_torch(x) else "cpu"


def _device(x):
    return x.device if _is_torch(x) else "cpu"


def _to_torch(images, arrays, device):
    import torch

    def conv(a):  # read-only or strided numpy (np.asarray of a PIL image) is copied, not warned about
        return (a if _is_torch(a) else torch.from_numpy(np.require(a, requirements=["C", "W"]))).to(device)

    return [conv(im) for im in images], [conv(a) for a in arrays]


def _like(labels, scores):
    """uint8 labels as numpy, or as torch on the scores' device when the scores are torch."""
    if not _is_torch(scores):
        return to_numpy(labels)
    import torch

    return labels if _is_torch(labels) else torch.from_numpy(labels).to(scores.device)


def dense_crf(image, logits, params: CrfParams, *, backend: str = "torch"):
    """H×W uint8 labels of a dense CRF on K×H×W ``logits`` (unary -log softmax) of an H×W×3 uint8 image.

    numpy or torch inputs; torch results stay on the logits' device. ``backend``: torch, pydensecrf
    or auto (see the module docstring).
    """
    return dense_crf_batch([image], [logits], params, backend=backend)[0]


def dense_crf_batch(images: Sequence, logits: Sequence, params: CrfParams, *, backend: str = "torch") -> list:
    """``dense_crf`` over lists (images may differ in size and label count); torch runs them as one batch."""
    if len(images) != len(logits):
        raise UserError(f"dense CRF: {len(images)} images but {len(logits)} logit maps")
    if not images:
        return []
    for im, lg in zip(images, logits, strict=True):
        _check_pair(im, lg, "logits")
    if resolve_backend(backend, _device_type(logits[0])) == "pydensecrf":
        pairs = zip(images, logits, strict=True)
        out = [crf_segmentation(to_numpy(im), to_numpy(lg), params) for im, lg in pairs]
    else:
        out = segmentation_labels(*_to_torch(images, logits, _device(logits[0])), params)
    return [_like(o, lg) for o, lg in zip(out, logits, strict=True)]


def cam_crf_batch(
    images: Sequence, cams: Sequence, class_ids: Sequence, params: CrfParams, tau_high: float, tau_low: float,
    *, backend: str = "torch",
) -> list:  # fmt: skip
    """CAM pseudo-labels (``crf_cam_pseudo_label``'s convention: uint8, 255 uncertain) for lists of
    H×W×3 images, P×H×W CAMs of the present classes and their P label ids."""
    if not (len(images) == len(cams) == len(class_ids)):
        raise UserError("dense CRF: images, CAMs and class ids differ in count")
    for im, cam, ids in zip(images, cams, class_ids, strict=True):
        if cam.shape[0]:
            _check_pair(im, cam, "CAMs")
        if len(ids) != cam.shape[0]:
            raise UserError(f"dense CRF: {cam.shape[0]} CAMs but {len(ids)} class ids")
    if not images:
        return []
    ids = [np.asarray(to_numpy(i), dtype=np.int64) for i in class_ids]
    if resolve_backend(backend, _device_type(cams[0])) == "pydensecrf":
        out = [crf_cam_pseudo_label(to_numpy(im), to_numpy(c), i, params, tau_high, tau_low)
               for im, c, i in zip(images, cams, ids, strict=True)]  # fmt: skip
    else:
        out = cam_labels(*_to_torch(images, cams, _device(cams[0])), ids, params, tau_high, tau_low)
    return [_like(o, c) for o, c in zip(out, cams, strict=True)]


# ------------------------------------------------------------------ runners for the router
class TorchCrf:
    """The torch backend behind the pool's interface: jobs are batched (same kind and parameters) on
    the device of their scores; results come back as (key, uint8 H×W numpy) when a batch is run."""

    PIXEL_CHANNELS = 2**25  # a batch's pixels × labels; bounds the device memory of one batch

    def __init__(self, max_batch: int = 0) -> None:
        self.max_batch = max_batch
        self._jobs: list[tuple] = []
        self._group = None
        self._load = 0

    def submit_segmentation(self, key, image, logits, params: CrfParams) -> list:
        return self._add(("seg", params, None), key, (image, logits), logits)

    def submit_cams(self, key, image, cams, class_ids, params: CrfParams, tau_high: float, tau_low: float):
        return self._add(("cam", params, (tau_high, tau_low)), key, (image, cams, class_ids), cams)

    def _add(self, group, key, job, scores) -> list:
        done = self._run() if self._jobs and group != self._group else []
        self._group = group
        self._jobs.append((key, job))
        self._load += int(np.prod(scores.shape)) * (2 if group[0] == "cam" else 1)
        limit = self.max_batch or (8 if _device_type(scores) == "cuda" else 1)
        if len(self._jobs) >= limit or self._load >= self.PIXEL_CHANNELS:
            done += self._run()
        return done

    def _run(self) -> list:
        jobs, (kind, params, taus) = self._jobs, self._group
        self._jobs, self._load = [], 0
        keys = [k for k, _ in jobs]
        cols = list(zip(*[j for _, j in jobs], strict=True))
        if kind == "seg":
            labels = dense_crf_batch(cols[0], cols[1], params, backend="torch")
        else:
            labels = cam_crf_batch(*cols, params, *taus, backend="torch")
        return [(k, to_numpy(lab)) for k, lab in zip(keys, labels, strict=True)]

    def drain(self) -> Iterator[tuple[object, np.ndarray]]:
        if self._jobs:
            yield from self._run()

    def close(self, cancel: bool = False) -> None:
        self._jobs = []


class CrfRunner:
    """``crf.backend`` resolved on the first job, by the device its scores are on (CPU or CUDA).

    ``workers`` and ``pool_options`` go to the ``CrfPool`` when that is pydensecrf."""

    def __init__(self, backend: str = "auto", workers: int = 0, **pool_options) -> None:
        check_backend(backend)
        self.backend, self.workers, self.pool_options = backend, workers, pool_options
        self._impl: CrfPool | TorchCrf | None = None

    def __enter__(self) -> CrfRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close(cancel=exc[0] is not None)

    def _for(self, scores):
        if self._impl is None:
            chosen = resolve_backend(self.backend, _device_type(scores))
            use_pool = chosen == "pydensecrf"
            self._impl = CrfPool(self.workers, **self.pool_options) if use_pool else TorchCrf()
        return self._impl

    def submit_segmentation(self, key, image, logits, params: CrfParams) -> list:
        return self._for(logits).submit_segmentation(key, image, logits, params)

    def submit_cams(self, key, image, cams, class_ids, params: CrfParams, tau_high: float, tau_low: float):
        return self._for(cams).submit_cams(key, image, cams, class_ids, params, tau_high, tau_low)

    def drain(self) -> Iterator[tuple[object, np.ndarray]]:
        return self._impl.drain() if self._impl is not None else iter(())

    def close(self, cancel: bool = False) -> None:
        if self._impl is not None:
            self._impl.close(cancel=cancel)


class LabelRouter:
    """Hands every prediction to ``finish(key, label)``: at once without CRF, or through the CRF runner
    (a ``CrfRunner``, ``CrfPool`` or ``TorchCrf``), whose results for earlier keys come back as later
    ones are submitted and at ``drain``. Scores stay where they are: the torch backend runs on their
    device, so on a GPU only labels leave it."""

    def __init__(self, pool, finish) -> None:
        self.pool, self.finish = pool, finish

    def _deliver(self, done) -> None:
        for key, label in done:
            self.finish(key, label)

    def segmentation(self, key, image: np.ndarray, logits, params: CrfParams) -> None:
        """``logits`` K×H×W (torch): argmax, or CRF on its softmax."""
        if self.pool is None:
            self.finish(key, logits.argmax(0).byte().cpu().numpy())
        else:
            self._deliver(self.pool.submit_segmentation(key, image, logits, params))

    def cams(self, key, image: np.ndarray, cam, image_labels: np.ndarray, params: CrfParams,
             tau_high: float, tau_low: float, *, without_crf) -> None:  # fmt: skip
        """``cam`` C×H×W (torch) for all classes; ``without_crf()`` gives the label when CRF is off."""
        if self.pool is None:
            self.finish(key, without_crf())
            return
        present = np.flatnonzero(image_labels > 0)
        self._deliver(self.pool.submit_cams(key, image, cam[present], present + 1, params, tau_high, tau_low))

    def drain(self) -> None:
        if self.pool is not None:
            self._deliver(self.pool.drain())
