"""The pydensecrf backend (the ``crf`` extra): in process, or in a process pool fed from memory.

pydensecrf holds the GIL, so parallelism needs processes. Logits travel to the workers by
pickling (no files); workers import only numpy and pydensecrf, never torch.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

from dupl_cli.core.errors import UserError
from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.crf.params import CAM_CRF_GT_PROB, CrfParams

INSTALL_HINT = 'dense CRF needs pydensecrf: pip install "dupl[crf]"'


def require_pydensecrf() -> None:
    """Fail at once (before any model work) when the extra is missing."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None


def to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def writable_image(image: np.ndarray) -> np.ndarray:
    """A C-contiguous, writable uint8 copy only when needed: pydensecrf's typed memoryviews refuse
    read-only buffers, and ``np.asarray(PIL.Image)`` is read-only."""
    return np.require(image, dtype=np.uint8, requirements=["C", "W"])


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(0, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(0, keepdims=True))


def _inference(image: np.ndarray, unary: np.ndarray, params: CrfParams) -> np.ndarray:
    import pydensecrf.densecrf as dcrf

    n, h, w = unary.shape
    crf = dcrf.DenseCRF2D(w, h, n)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(n, -1), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gauss_sxy, compat=params.gauss_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=writable_image(image),
        compat=params.bilateral_compat,
    )
    q = np.asarray(crf.inference(params.iters), dtype=np.float32).reshape(n, h, w)
    return q


def crf_segmentation(image: np.ndarray, logits: np.ndarray, params: CrfParams) -> np.ndarray:
    """Labels H×W (uint8) from K×H×W logits: unary = −log softmax, docs/method.md §11 kernels."""
    q = _inference(image, -_log_softmax(logits.astype(np.float32)), params)
    return q.argmax(0).astype(np.uint8)


def _crf_from_labels(image: np.ndarray, labels: np.ndarray, n: int, params: CrfParams) -> np.ndarray:
    from pydensecrf.utils import unary_from_labels

    unary = unary_from_labels(labels, n, gt_prob=CAM_CRF_GT_PROB, zero_unsure=False).reshape(n, *labels.shape)
    return _inference(image, unary, params).argmax(0)


def crf_cam_pseudo_label(
    image: np.ndarray,
    cams: np.ndarray,
    class_ids: np.ndarray,
    params: CrfParams,
    tau_high: float,
    tau_low: float,
) -> np.ndarray:
    """CAM pseudo-label (ToCo convention, docs/method.md §11 + §4.5): uint8 H×W, 255 uncertain.

    ``cams``: P×H×W normalised CAMs of the P present classes, ``class_ids`` their label ids (1..C).
    Two CRF passes with a constant background score tau_high and tau_low; foreground from the
    tau_high pass, background only where both passes say background, 255 elsewhere.
    """
    keys = np.concatenate([[0], np.asarray(class_ids, dtype=np.int64)])
    n = len(keys)
    if n == 1:
        return np.zeros(cams.shape[-2:] if cams.ndim == 3 else image.shape[:2], dtype=np.uint8)
    passes = []
    for tau in (tau_high, tau_low):
        stack = np.concatenate([np.full((1, *cams.shape[1:]), tau, np.float32), cams.astype(np.float32)], 0)
        passes.append(_crf_from_labels(image, stack.argmax(0), n, params))
    high, low = passes
    out = np.full(high.shape, IGNORE_INDEX, dtype=np.uint8)
    out[(high == 0) & (low == 0)] = 0
    fg = high > 0
    out[fg] = keys[high[fg]]
    return out


def _run(job: tuple) -> np.ndarray:
    kind, args = job
    return crf_segmentation(*args) if kind == "seg" else crf_cam_pseudo_label(*args)


def default_workers(requested: int = 0, local_processes: int = 1) -> int:
    """``requested`` or the cores available to this process, shared among the processes on this
    machine (their count comes from the caller's Accelerate state)."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_processes))


class CrfPool:
    """Ordered streaming map over a process pool with a bounded number of jobs in flight.

    ``submit`` returns results of earlier jobs as they become due, so the caller's GPU/TTA work
    overlaps CRF and memory stays bounded. Use as a context manager.
    """

    def __init__(self, workers: int = 0, local_processes: int = 1) -> None:
        require_pydensecrf()
        self.workers = default_workers(workers, local_processes)
        # spawn: workers never inherit torch's thread pools or a CUDA context.
        self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        self._pending: deque[tuple[object, Future]] = deque()
        self.max_pending = 2 * self.workers

    def __enter__(self) -> CrfPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close(cancel=exc[0] is not None)

    def close(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    def submit_segmentation(self, key, image: np.ndarray, logits, params: CrfParams) -> list:
        """``logits`` K×H×W, numpy or torch (copied to the host here, never in the workers)."""
        return self._submit(key, ("seg", (image, to_numpy(logits), params)))

    def submit_cams(
        self, key, image, cams, class_ids, params: CrfParams, tau_high: float, tau_low: float
    ) -> list:
        job = (image, to_numpy(cams), np.asarray(class_ids), params, tau_high, tau_low)
        return self._submit(key, ("cam", job))

    def _submit(self, key, job) -> list[tuple[object, np.ndarray]]:
        self._pending.append((key, self._pool.submit(_run, job)))
        done = []
        while len(self._pending) > self.max_pending or (self._pending and self._pending[0][1].done()):
            k, fut = self._pending.popleft()
            done.append((k, fut.result()))
        return done

    def drain(self) -> Iterator[tuple[object, np.ndarray]]:
        while self._pending:
            k, fut = self._pending.popleft()
            yield k, fut.result()

    def map_segmentation(
        self, jobs: Iterable[tuple[np.ndarray, np.ndarray]], params: CrfParams
    ) -> list[np.ndarray]:
        """All results in order (benchmarks and tests)."""
        out = []
        for i, (image, logits) in enumerate(jobs):
            out += [r for _, r in self.submit_segmentation(i, image, logits, params)]
        out += [r for _, r in self.drain()]
        return out
