"""Count the operations that make the host wait for the device (a "host sync"), on any device.

On an accelerator these block the Python thread until the queued kernels finish, so the next
step cannot be queued behind the current one. The counter works on CPU too, where nothing
really waits: it records what *would* sync on a GPU, so tests can hold the training step to its
budget without one. Counted:

* reading a value: ``.item()``, ``float()/int()/bool()`` of a tensor (``aten._local_scalar_dense``),
  ``aten.equal`` / ``is_nonzero``, and ``.tolist()``, ``.numpy()``, ``.cpu()``;
* ops whose output shape depends on the data: ``nonzero``, ``masked_select``, ``unique*``,
  ``bincount``, ``repeat_interleave`` without ``output_size``, indexing (read or write) with a
  boolean mask;
* copies from a non-CPU device to the host.

On CUDA, ``torch.cuda.set_sync_debug_mode`` checks the real thing; benchmarks/gpu_check.py uses it.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
_READS = {_aten._local_scalar_dense, _aten.equal, _aten.is_nonzero, _aten.allclose}
_DATA_SHAPED = {
    _aten.nonzero,
    _aten.masked_select,
    _aten.bincount,
    _aten._unique,
    _aten._unique2,
    _aten.unique_dim,
    _aten.unique_consecutive,
    _aten.unique_dim_consecutive,
}
_INDEXING = {_aten.index, _aten.index_put, _aten.index_put_, _aten._index_put_impl_}
_HOST_METHODS = {"tolist", "numpy", "cpu", "__array__"}
# Input-pipeline code (samplers, collation): its tensors live on the host on every machine.
HOST_SIDE = ("dupl_cli/data/", "torch/utils/data/", "accelerate/data_loader")


@dataclass
class SyncEvent:
    op: str
    where: str  # the innermost dupl_cli frame that issued it
    tag: object = None  # what the caller was doing (see HostSyncCounter.tag)


def _caller() -> str | None:
    """The innermost dupl_cli frame that issued the op; None for the input pipeline, which works on
    host tensors (in loader workers on a GPU machine) and so never syncs."""
    stack = traceback.extract_stack()[:-3]
    if any(part in f.filename for f in stack for part in HOST_SIDE):
        return None
    for frame in reversed(stack):
        if "dupl_cli" in frame.filename and not frame.filename.endswith("host_sync.py"):
            return f"{frame.filename.rsplit('dupl_cli', 1)[-1].lstrip('/')}:{frame.lineno} {frame.name}"
    return "outside dupl_cli"


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _is_sync(func, args, kwargs) -> bool:
    packet = func.overloadpacket
    if packet in _READS or packet in _DATA_SHAPED:
        return True
    if packet in _INDEXING:
        return _bool_index(args)
    if packet is _aten.repeat_interleave:  # tensor repeats: the output length is their sum
        return func._overloadname in ("Tensor", "self_Tensor") and kwargs.get("output_size") is None
    if packet in (_aten._to_copy, _aten.copy_):
        src = args[1] if packet is _aten.copy_ else args[0]
        dst = args[0].device if packet is _aten.copy_ else kwargs.get("device")
        return (
            isinstance(src, torch.Tensor)
            and src.device.type != "cpu"
            and dst is not None
            and (torch.device(dst).type == "cpu")
        )
    return False


class _Dispatch(TorchDispatchMode):
    def __init__(self, counter: HostSyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.counter.active and _is_sync(func, args, kwargs):
            self.counter.record(str(func.overloadpacket.__name__))
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    def __init__(self, counter: HostSyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if self.counter.active and name in _HOST_METHODS and args and isinstance(args[0], torch.Tensor):
            self.counter.record(name)
        return func(*args, **(kwargs or {}))


@dataclass
class HostSyncCounter:
    """``with HostSyncCounter() as c: ...`` then ``c.events``; set ``c.tag`` to label what follows
    (e.g. the iteration) and ``c.active = False`` to leave a stretch uncounted."""

    events: list[SyncEvent] = field(default_factory=list)
    tag: object = None
    active: bool = True

    def record(self, op: str) -> None:
        where = _caller()
        if where is not None:
            self.events.append(SyncEvent(op, where, self.tag))

    def count(self, tag: object = None) -> int:
        return sum(1 for e in self.events if tag is None or e.tag == tag)

    def __enter__(self) -> HostSyncCounter:
        self._modes = [_Function(self), _Dispatch(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
