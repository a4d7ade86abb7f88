"""The DLPack bridge: a PyTorch energy/forces/stress model called from inside compiled JAX.

Torch-side contract (a "torch EFS" object)
------------------------------------------
Attributes ``cutoff`` (float, Angstrom), ``elements`` (frozenset of atomic numbers, or ``None``
for every element) and ``name`` (str), and a call

``efs(positions [R,N,3], cell [R,3,3], numbers [N] int64, edge_src [R,E] int64,
edge_dst [R,E] int64, edge_shift [R,E,3], edge_mask [R,E] bool) -> (energy [R], forces [R,N,3],
stress [R,3,3])``

with torch tensors in and out (eV, eV/A, eV/A^3 with ASE's sign, positive in tension).
Optional: an attribute ``extras``, ``{ASE property name: ("atom" | "structure", trailing shape)}``
(e.g. CHGNet's ``{"magmoms": ("atom", ())}``), for results the model computes in the same call;
``efs`` then returns a fourth item, ``{name: tensor [R, N, *shape] or [R, *shape]}``, which the
bridge passes on as the model's extras (:attr:`jaxpto.model.Model.extras`).
``edge_shift`` has the float dtype of ``positions`` and integer values (image offsets ``S``);
``edge_src`` is the centre ``i`` and ``edge_dst`` the neighbour ``j`` of a directed edge with
vector ``d = positions[r, dst] - positions[r, src] + edge_shift[r] @ cell[r]``. Edge indices are
per replica (``0 <= src, dst < N``). Only edges with ``edge_mask`` True are real; the bridge has
already dropped every pair at or beyond ``cutoff`` (masked slots hold ``src = dst = i`` and a zero
shift, i.e. a zero vector: a model must drop them, not evaluate them). The list is *full* (both
``i->j`` and ``j->i``). All ``R`` replicas arrive in one call and should go to the model as one
batched graph.

JAX side
--------
:func:`as_jax_model` wraps such an object into a :class:`jaxpto.model.Model`. The model's
``compute`` builds the edge arrays from the engine's device neighbour list
(:func:`jaxpto.neighbors.as_pairs`), then calls out through
``jax.experimental.buffer_callback.buffer_callback`` (JAX >= 0.6.1), so it works inside ``jit``
and ``lax.scan``. The callback receives XLA's own device buffers; they are wrapped as torch
tensors without copying (``torch.from_dlpack``), the torch model runs, and its results are copied
straight into XLA's output buffers (``torch.from_dlpack(out).copy_(...)``). On CUDA, torch runs on
XLA's stream (``ctx.stream`` through ``torch.cuda.ExternalStream``), so the work is ordered with
XLA's without a device-wide synchronisation. On older JAX the bridge falls back to
``jax.pure_callback`` (inputs and outputs then go through host memory).

Integer inputs: JAX without x64 has no int64, so indices travel as int32 and are widened to int64
on the torch side (a small copy); positions, cell, shifts and mask are zero-copy.

This module owns the bridge (:func:`as_jax_model`, :class:`TorchBridge`), the edges of the
contract (:func:`edges_from_neighbors`, the one cutoff filter) and the one rule for a torch
model's float dtype and device (:func:`torch_float_dtype`, :func:`resolve_device`: the model
follows JAX's platform unless the user says otherwise), which the registry and every family use.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpto import neighbors as nl
from jaxpto.model import Model, ModelOutput

try:  # JAX >= 0.6.1
    from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except Exception:  # pragma: no cover - exercised only on old JAX
    _buffer_callback = None

__all__ = ["as_jax_model", "edges_from_neighbors", "resolve_device", "torch_float_dtype", "TorchBridge"]

_DL_CUDA, _DL_ROCM = 2, 10  # DLPack device types


def _torch():
    import torch
    return torch


def torch_float_dtype(dtype, family: str = "the model", default=None):
    """The torch float dtype a bridge or a family's model computes in: float32 or float64.

    ``None`` -> ``default`` (``None``: the caller's own default, e.g. the JAX arrays' dtype in
    the bridge, the model's own precision in a family's loader); a torch dtype, a numpy/JAX
    dtype or a name ("float64", "torch.float64") -> ``torch.float32``/``torch.float64``. Anything
    else is a ``ValueError`` naming ``family``.
    """
    if dtype is None:
        return default
    torch = _torch()
    if isinstance(dtype, torch.dtype):
        out = dtype
    else:
        try:
            name = dtype.removeprefix("torch.") if isinstance(dtype, str) else np.dtype(dtype).name
        except TypeError:
            name = None
        out = {"float32": torch.float32, "float64": torch.float64}.get(name)
    if out not in (torch.float32, torch.float64):
        raise ValueError(f"unsupported dtype {dtype!r} for {family}; use float32 or float64")
    return out


def resolve_device(device=None):
    """The torch device a model runs on: the user's ``device`` ("cpu", "cuda:1", a ``torch.device``),
    else (``None``/``"auto"``) JAX's platform: CUDA when JAX runs on a GPU and torch has CUDA,
    else the CPU. One rule for the registry, every family's loader and the bridge.

    For a CPU model the host allocator is tuned first (:func:`jaxpto.host_allocator.tune`, before
    asking JAX for its backend starts XLA's threads; a no-op where it does not apply).
    """
    from jaxpto import host_allocator

    torch = _torch()
    if device is None or device == "auto":
        host_allocator.tune()
        on_gpu = jax.default_backend() in ("gpu", "cuda", "rocm")
        return torch.device("cuda" if on_gpu and torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cpu":
        host_allocator.tune()
    return device


def edges_from_neighbors(positions, cell, neighbors, cutoff: float):
    """Edge arrays of the torch contract from the engine's neighbour list (JAX, jit-able).

    Returns ``src, dst`` [R,E] int32, ``shift`` [R,E,3] (positions' dtype) and ``mask`` [R,E]
    bool, True only for real pairs with ``|d| < cutoff`` (the engine stores pairs up to
    cutoff + skin). Masked slots get ``dst = src`` and a zero shift.
    """
    i, j, shifts, mask = nl.as_pairs(neighbors)
    jj = jnp.where(mask, j, i)
    pi = jnp.take_along_axis(positions, i[..., None], axis=1)
    pj = jnp.take_along_axis(positions, jj[..., None], axis=1)
    d = pj - pi + nl.image_displacements(shifts, cell[:, None])
    within = mask & (jnp.sum(d * d, axis=-1) < jnp.asarray(cutoff, d.dtype) ** 2)
    dst = jnp.where(within, j, i)
    shift = jnp.where(within[..., None], shifts, jnp.zeros((), shifts.dtype))
    return i, dst, shift.astype(positions.dtype), within


_allocator_warning_given = False


def _warn_if_allocator_untuned():
    """CPU torch calls run on XLA's threads; if JAX had run before the first torch model was
    loaded, those threads kept glibc's per-thread arenas and the model pays its page faults on
    every call (``jaxpto/host_allocator.py``). Said once per process."""
    global _allocator_warning_given
    from jaxpto import host_allocator

    if host_allocator.status.get("jax_backend_already_started") and not _allocator_warning_given:
        _allocator_warning_given = True
        warnings.warn("JAX had run computations before this torch model was loaded, so XLA's threads keep "
                      "glibc's per-thread malloc arenas and a CPU torch model may run up to ~2.5x slower inside "
                      "MD than when called directly. Fix: load the model (jaxpto.load_model / as_jax_model) or "
                      "call jaxpto.host_allocator.tune() before using JAX, or start Python with "
                      "MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 (or jemalloc/tcmalloc in LD_PRELOAD).", stacklevel=2)


class TorchBridge:
    """The callable behind ``Model.compute`` for a torch EFS (see the module docstring).

    Attributes for diagnostics: ``n_calls`` (torch calls so far), ``torch_seconds`` (wall time
    spent inside them), ``trace`` (set it to a list to record, per ``buffer_callback`` call, the
    zero-copy evidence: ``inputs``/``outputs`` as ``(torch data_ptr, XLA buffer address)`` pairs,
    ``devices`` of those tensors, ``prepared`` ``(data_ptr, device, dtype)`` of what the model
    receives after the bridge's casts, and on a GPU ``stream``: XLA's stream and torch's current
    stream inside the call), ``mode`` (``"buffer_callback"`` or ``"pure_callback"``).
    """

    def __init__(self, torch_efs, *, device=None, dtype=None, force_pure_callback: bool = False):
        self.efs = torch_efs
        self.cutoff = float(torch_efs.cutoff)
        self.device = None if device is None else _torch().device(device)
        if self.device is None or self.device.type == "cpu":
            from jaxpto import host_allocator

            host_allocator.tune()  # effective only if JAX has not run yet; else the first call warns
        if self.device is None or self.device.type == "cuda":
            from bridges import gpu_memory

            gpu_memory.share_gpu_with_torch(self.device)  # effective only before JAX's GPU client starts
        self.dtype = torch_float_dtype(dtype, "the torch bridge")
        self.extras = _extras_spec(torch_efs)
        self.n_calls = 0
        self.torch_seconds = 0.0
        self.trace: list | None = None
        if _buffer_callback is None or force_pure_callback:
            if not force_pure_callback:
                warnings.warn("jax.experimental.buffer_callback is unavailable (JAX < 0.6.1): the torch bridge "
                              "falls back to jax.pure_callback, which copies through host memory", stacklevel=3)
            self.mode = "pure_callback"
        else:
            self.mode = "buffer_callback"

    # ------------------------------------------------------------------ torch side
    def _prepare(self, tensors):
        """Cast/move the wrapped inputs as the torch EFS expects them."""
        torch = _torch()
        pos, cell, numbers, src, dst, shift, mask = tensors
        fdt = self.dtype or pos.dtype
        dev = self.device or pos.device
        pos = pos.to(device=dev, dtype=fdt)
        cell = cell.to(device=dev, dtype=fdt)
        shift = shift.to(device=dev, dtype=fdt)
        numbers = numbers.to(device=dev, dtype=torch.int64)
        src = src.to(device=dev, dtype=torch.int64)
        dst = dst.to(device=dev, dtype=torch.int64)
        mask = mask.to(device=dev, dtype=torch.bool)
        return pos, cell, numbers, src, dst, shift, mask

    def _evaluate(self, tensors, record=None):
        torch = _torch()
        t0 = time.perf_counter()
        prepared = self._prepare(tensors)
        if record is not None:  # what the model itself receives: the same memory unless cast/moved
            record["prepared"] = [(t.data_ptr(), str(t.device), str(t.dtype).removeprefix("torch."))
                                  for t in prepared]
        with torch.enable_grad():
            out = self.efs(*prepared)
        energy, forces, stress = out[:3]
        more = []
        if self.extras:
            got = out[3] if len(out) > 3 else {}
            missing = sorted(set(self.extras) - set(got))
            if missing:
                raise RuntimeError(f"torch model {self.efs.name!r} declares extras {sorted(self.extras)} but "
                                   f"returned no {missing}")
            more = [got[k].detach() for k in self.extras]
        if self.n_calls == 0 and energy.device.type == "cpu":
            _warn_if_allocator_untuned()
        self.n_calls += 1
        self.torch_seconds += time.perf_counter() - t0
        return (energy.detach(), forces.detach(), stress.detach(), *more)

    def _buffer_host(self, ctx, outs, *bufs):
        torch = _torch()
        dev_type, dev_id = bufs[0].__dlpack_device__()
        on_gpu = int(dev_type) in (_DL_CUDA, _DL_ROCM)
        if on_gpu:
            # Run torch on XLA's stream: ordered with XLA's work, no device-wide sync needed.
            stream = torch.cuda.ExternalStream(int(ctx.stream), device=torch.device("cuda", int(dev_id)))
            with torch.cuda.device(int(dev_id)), torch.cuda.stream(stream):
                self._run_buffers(outs, bufs, gpu=True, xla_stream=int(ctx.stream))
        else:
            self._run_buffers(outs, bufs, gpu=False)

    def _run_buffers(self, outs, bufs, gpu: bool, xla_stream=None):
        torch = _torch()
        tensors = [torch.from_dlpack(b) for b in bufs]
        out_t = [torch.from_dlpack(o) for o in outs]
        record = None
        if self.trace is not None:
            def addr(b):
                return (b.__cuda_array_interface__["data"][0] if gpu
                        else np.asarray(b).__array_interface__["data"][0])
            record = {
                "inputs": [(t.data_ptr(), addr(b)) for t, b in zip(tensors, bufs)],
                "outputs": [(t.data_ptr(), addr(o)) for t, o in zip(out_t, outs)],
                "devices": sorted({str(t.device) for t in tensors + out_t}),
            }
            if gpu:  # torch's current stream inside the callback next to XLA's
                record["stream"] = {"xla": xla_stream, "torch": int(torch.cuda.current_stream().cuda_stream)}
            self.trace.append(record)
        for o, x in zip(out_t, self._evaluate(tensors, record)):
            o.copy_(x.reshape(o.shape))

    def _pure_host(self, *arrays):
        torch = _torch()
        out_dtype = np.asarray(arrays[0]).dtype
        tensors = [torch.from_numpy(np.array(a)) for a in arrays]
        return tuple(np.asarray(x.cpu().numpy(), dtype=out_dtype) for x in self._evaluate(tensors))

    # ------------------------------------------------------------------ JAX side
    def _torch_lacks_gpu(self) -> bool:
        torch = _torch()
        lacks = not torch.cuda.is_available() or (self.device is not None and self.device.type == "cpu")
        if lacks and not getattr(self, "_warned_host", False):
            self._warned_host = True
            warnings.warn(f"JAX runs on {jax.default_backend()} but the torch model {self.efs.name!r} runs on the "
                          "CPU: the bridge copies through host memory (jax.pure_callback)", stacklevel=4)
        return lacks

    def __call__(self, positions, cell, numbers, neighbors) -> ModelOutput:
        if neighbors is None:
            raise ValueError(f"model {self.efs.name!r} needs a neighbour list (cutoff {self.cutoff} A)")
        R, N = positions.shape[:2]
        dt = positions.dtype
        src, dst, shift, mask = edges_from_neighbors(positions, cell, neighbors, self.cutoff)
        numbers = jnp.asarray(numbers).astype(jnp.int32)
        shapes = (jax.ShapeDtypeStruct((R,), dt), jax.ShapeDtypeStruct((R, N, 3), dt),
                  jax.ShapeDtypeStruct((R, 3, 3), dt)) + tuple(
                      jax.ShapeDtypeStruct((R, N, *shape) if per == "atom" else (R, *shape), dt)
                      for per, shape in self.extras.values())
        args = (positions, cell.astype(dt), numbers, src, dst, shift, mask)
        mode = self.mode
        if mode == "buffer_callback" and jax.default_backend() != "cpu" and self._torch_lacks_gpu():
            mode = "pure_callback"  # XLA's GPU buffers cannot become tensors of a CPU-only torch
        if mode == "buffer_callback":
            fn = _buffer_callback(self._buffer_host, shapes, vmap_method="sequential")
        else:
            fn = lambda *a: jax.pure_callback(self._pure_host, shapes, *a, vmap_method="sequential")  # noqa: E731
        energy, forces, stress, *more = fn(*args)
        return ModelOutput(energy=energy, forces=forces, stress=stress, extras=dict(zip(self.extras, more)))


def _extras_spec(torch_efs) -> dict:
    """The torch EFS's ``extras`` as ``{name: ("atom" | "structure", shape tuple)}``, checked."""
    spec = {}
    for name, (per, shape) in dict(getattr(torch_efs, "extras", None) or {}).items():
        if per not in ("atom", "structure"):
            raise ValueError(f"torch model {getattr(torch_efs, 'name', '?')!r}: extra {name!r} is per {per!r}; "
                             "give 'atom' ([R, N, ...]) or 'structure' ([R, ...])")
        spec[str(name)] = (per, tuple(int(n) for n in shape))
    return spec


def as_jax_model(torch_efs: Any, *, device=None, dtype=None) -> Model:
    """Wrap a torch EFS object (see the module docstring) into a :class:`jaxpto.model.Model`.

    Parameters
    ----------
    torch_efs:
        Object with ``cutoff``, ``elements``, ``name`` and the ``__call__`` of the contract.
    device:
        Torch device the inputs are handed to the model on. ``None`` (default): where XLA's
        buffers live (CPU buffers -> CPU tensors, CUDA buffers -> CUDA tensors, zero-copy).
        A different device costs a copy each way; the model itself is not moved.
    dtype:
        Float dtype of ``positions``/``cell``/``edge_shift`` given to the model. ``None``
        (default): the JAX arrays' dtype (zero-copy). Results are cast back to the JAX dtype.

    The returned model's ``compute`` is a :class:`TorchBridge` (counters ``n_calls``,
    ``torch_seconds``, ``trace`` for the zero-copy check).
    """
    bridge = TorchBridge(torch_efs, device=device, dtype=dtype)
    elements = getattr(torch_efs, "elements", None)
    return Model(
        compute=bridge,
        cutoff=float(torch_efs.cutoff),
        elements=None if elements is None else frozenset(int(z) for z in elements),
        name=str(getattr(torch_efs, "name", "torch-model")),
        extras=tuple(bridge.extras),
    )
