"""Find what would break a CUDA-graph capture of a step, by running the step once on any device.

Why: a capture records device kernels only. A step that reads a tensor value on the host
(`.item()`, `int(t)`, `if t:`), produces a data-dependent shape (`nonzero`, boolean-mask
indexing), builds a tensor from Python data (a host copy the replay never repeats) or draws
random numbers (a replay repeats the captured draw) either fails to capture or replays something
other than the eager step. Those failures only show on a GPU, and GPU time is scarce (15 minutes
per session here); this check runs the same Python code on CPU tensors and names each hazard with
the line of our code that caused it, so `DiTSlots._step` and the paged decode step are checked
in CI.

What it cannot see: device-to-device copies across devices (all tensors are on one device on the
CPU) and kernels that allocate outside the graph pool. Ops run inside Triton's interpreter are the
body of one kernel launch on a GPU and are not examined.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten op -> why a capture cannot record it as the eager step runs it
_HOST_SYNC = "reads a tensor value on the host (.item(), int(t), bool(t), `if t:`): the capture fails"
_DATA_SHAPE = "has a data-dependent output shape (needs the values on the host): the capture fails"
_HOST_DATA = ("builds a tensor from Python/NumPy data: a host-to-device copy inside the capture; a "
              "replay reuses the captured values")
_RANDOM = "draws random numbers: a replay repeats the captured draw (pass noise in as an input)"
HAZARD_OPS = {
    "_local_scalar_dense": _HOST_SYNC, "is_nonzero": _HOST_SYNC, "equal": _HOST_SYNC,
    "nonzero": _DATA_SHAPE, "masked_select": _DATA_SHAPE, "_unique": _DATA_SHAPE, "_unique2": _DATA_SHAPE,
    "unique_dim": _DATA_SHAPE, "unique_consecutive": _DATA_SHAPE, "bincount": _DATA_SHAPE,
    "lift_fresh": _HOST_DATA,
    "randn": _RANDOM, "rand": _RANDOM, "randint": _RANDOM, "randperm": _RANDOM, "normal": _RANDOM,
    "normal_": _RANDOM, "uniform_": _RANDOM, "bernoulli": _RANDOM, "bernoulli_": _RANDOM,
    "multinomial": _RANDOM, "exponential_": _RANDOM, "random_": _RANDOM,
}
# Tensor methods that reach the host without an aten op on CPU tensors (on CUDA they copy + sync), and
# the scalar conversions, whose `_local_scalar_dense` skips the dispatch modes under inference_mode
HOST_METHODS = {
    "tolist": "copies a tensor to the host and waits for it: the capture fails",
    "numpy": "copies a tensor to the host and waits for it: the capture fails",
    "cpu": "copies a tensor to the host and waits for it: the capture fails",
    "__array__": "copies a tensor to the host and waits for it: the capture fails",
    "item": _HOST_SYNC, "__int__": _HOST_SYNC, "__float__": _HOST_SYNC, "__bool__": _HOST_SYNC,
    "__index__": _HOST_SYNC,
}
_LIBRARY_DIRS = ("/torch/", "\\torch\\")  # frames of torch itself are not "where" a hazard is


_gated = threading.local()  # depth of cpu_only_host_reads() scopes on this thread


@contextlib.contextmanager
def cpu_only_host_reads() -> Iterator[None]:
    """Mark host reads that the code runs only for CPU tensors (validation that is free there and
    skipped on a GPU, e.g. Step1's id range check): `graph_hazards` does not report them."""
    _gated.depth = getattr(_gated, "depth", 0) + 1
    try:
        yield
    finally:
        _gated.depth -= 1


@dataclass(frozen=True)
class GraphHazard:
    """One op of a step that a CUDA-graph capture cannot record as it runs eagerly."""

    op: str
    why: str
    where: str  # "file:line in function" of the innermost frame outside torch/this module

    def __str__(self) -> str:
        return f"{self.op} at {self.where}: {self.why}"


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.hazards: list[GraphHazard] = []
        self.in_method = 0  # inside a watched Tensor method: its own aten ops are that one hazard

    def note(self, op: str, why: str) -> None:
        if not self.in_method and not getattr(_gated, "depth", 0) and not inside_interpreted_kernel():
            self.hazards.append(GraphHazard(op, why, _caller()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in HAZARD_OPS:
            self.note(name, HAZARD_OPS[name])
        elif name in ("index", "index_put", "index_put_") and _has_bool_index(args):
            self.note(name, "indexes with a boolean mask (a hidden nonzero): " + _DATA_SHAPE)
        return func(*args, **kwargs)


def graph_hazards(step: Callable[[], Any]) -> list[GraphHazard]:
    """Run `step()` once and return every op in it that a CUDA-graph capture cannot record (empty:
    capturable as far as a CPU run can tell). The step's own effects happen as in a normal call."""
    recorder = _Recorder()
    with _watch_host_methods(recorder), recorder:
        step()
    return recorder.hazards


@contextlib.contextmanager
def _watch_host_methods(recorder: _Recorder) -> Iterator[None]:
    """Record calls of `HOST_METHODS` for the scope (they dispatch no aten op on CPU tensors)."""
    saved = {name: getattr(torch.Tensor, name) for name in HOST_METHODS}

    def watched(name: str, method):
        def call(self, *args, **kwargs):
            recorder.note(f"Tensor.{name}", HOST_METHODS[name])
            recorder.in_method += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                recorder.in_method -= 1
        return call

    for name, method in saved.items():
        setattr(torch.Tensor, name, watched(name, method))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (indices or ()))


def inside_interpreted_kernel() -> bool:
    """Whether the caller runs inside a Triton-interpreter kernel launch (one launch on a GPU)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "triton" in name and "interpreter" in name:
            return True
        frame = frame.f_back
    return False


def _caller() -> str:
    """The innermost frame of the step's own code (not torch's, not this module's)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if frame.filename != __file__ and not any(part in frame.filename for part in _LIBRARY_DIRS) \
                and not frame.filename.endswith(("contextlib.py", "functools.py")):
            return f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name}"
    return "?"
