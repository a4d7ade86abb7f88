"""How JAX and a CUDA PyTorch model share one GPU's memory.

Why this exists. JAX's GPU client reserves 75 % of the device's memory for its own pool at its
first use (``XLA_PYTHON_CLIENT_PREALLOCATE`` defaults to true, ``XLA_PYTHON_CLIENT_MEM_FRACTION``
to 0.75). A bridged PyTorch model (``bridges.torch_bridge``) allocates its graphs, activations and
autograd buffers with torch's own caching allocator on the same device, so it gets at most the
remaining quarter, less the two CUDA contexts; on an 80 GB card that is ~18 GB, which a
message-passing network on 8 replicas of 625 atoms can exceed. The engine's own arrays (positions,
momenta, neighbour lists, the model's inputs and outputs) are a few MB to a few hundred MB.

jaxpto's choice. When a torch model is set up to run on CUDA and JAX's GPU client has not started
yet, :func:`share_gpu_with_torch` sets ``XLA_PYTHON_CLIENT_PREALLOCATE=false``: JAX then takes
memory as its arrays need it (still pooled by its BFC allocator, which keeps what it took) and
torch takes what its model needs. The environment variable is read when JAX creates its GPU
client, so this must happen before the first JAX computation; ``jaxpto.load_model`` (before it
asks JAX for its backend), the torch bridge's constructor, the PTO-test workflow, the benchmark
suite and the GPU check kit call it there. Nothing is changed

* when the user chose: any of ``XLA_PYTHON_CLIENT_PREALLOCATE``, ``XLA_PYTHON_CLIENT_MEM_FRACTION``
  or ``XLA_PYTHON_CLIENT_ALLOCATOR`` is set, or ``JAXPTO_GPU_PREALLOCATE=1`` (keep JAX's default);
* when the torch model runs on the CPU, and for JAX-native models (no torch on the device:
  JAX's preallocation is then the fastest choice);
* when JAX's GPU client already exists: it has taken its pool, and the setting can no longer act.
  A warning says so, once, with the fix (load the torch model before running JAX, or set
  ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` in the environment).

:data:`status` records what was decided and why (the GPU check kit and the suite report it).
``benchmarks/gpu_check.py`` measures the effect on a GPU: JAX's pool and torch's reservation
under this setting, and what JAX reserves by default in a separate process.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Mapping

PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
USER_SETTINGS = (PREALLOCATE, "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_ALLOCATOR")
OPT_OUT = "JAXPTO_GPU_PREALLOCATE"

#: What :func:`share_gpu_with_torch` decided last in this process.
status: dict = {"action": "not run", "reason": "no CUDA torch model set up yet"}
_warned = False


def decide(torch_on_cuda: bool, env: Mapping[str, str], jax_gpu_started: bool) -> dict:
    """The decision alone, from its three inputs (no side effects).

    Returns ``{"action": "set" | "keep" | "too_late", "reason": str, "env": {name: value}}``,
    ``env`` holding the variables to set (only for ``"set"``).
    """
    if not torch_on_cuda:
        return {"action": "keep", "reason": "the torch model runs on the CPU", "env": {}}
    if env.get(OPT_OUT, "").strip().lower() in ("1", "true", "yes", "on"):
        return {"action": "keep", "reason": f"{OPT_OUT}=1: JAX's default preallocation kept", "env": {}}
    chosen = [k for k in USER_SETTINGS if k in env]
    if chosen:
        return {"action": "keep", "reason": "the user's settings: " + ", ".join(f"{k}={env[k]}" for k in chosen),
                "env": {}}
    if jax_gpu_started:
        return {"action": "too_late", "env": {},
                "reason": "JAX's GPU client had started before the CUDA torch model was set up: JAX holds its "
                          "preallocated pool (75 % of the GPU by default) and torch gets the rest"}
    return {"action": "set", "env": {PREALLOCATE: "false"},
            "reason": "a CUDA torch model shares the GPU: JAX allocates on demand instead of reserving 75 %"}


def jax_gpu_client_started() -> bool:
    """True when this process's JAX has already created a GPU (CUDA/ROCm) client; never starts one."""
    xb = sys.modules.get("jax._src.xla_bridge")
    if xb is None:
        return False
    backends = getattr(xb, "_backends", None) or {}
    return any(str(name).lower() in ("cuda", "rocm", "gpu") for name in backends)


def torch_device_is_cuda(device) -> bool:
    """Whether a bridge given ``device`` ("cuda", "cuda:1", a torch.device, or None/"auto" for
    CUDA where torch has it) runs its torch model on a GPU."""
    if device is None or str(device) == "auto":
        try:
            import torch
        except ImportError:
            return False
        return bool(torch.cuda.is_available())
    return str(device).startswith(("cuda", "hip"))


def share_gpu_with_torch(device=None, env=None) -> dict:
    """Apply :func:`decide` for a torch model about to run on ``device`` (see the module
    docstring); returns and records in :data:`status` what was done. ``env``: the mapping to read
    and update (default ``os.environ``). Safe to call any number of times."""
    global status, _warned
    env = os.environ if env is None else env
    decision = decide(torch_device_is_cuda(device), env, jax_gpu_client_started())
    for key, value in decision["env"].items():
        env[key] = value
    if decision["action"] == "keep" and status.get("action") in ("set", "too_late"):
        return status  # an earlier CUDA model's decision stands (a later CPU model changes nothing)
    status = {"action": decision["action"], "reason": decision["reason"], "set": dict(decision["env"])}
    if decision["action"] == "too_late" and not _warned:
        _warned = True
        warnings.warn(decision["reason"] + ". Fix: load the torch model (jaxpto.load_model) before running any "
                      f"JAX computation, or start Python with {PREALLOCATE}=false (or "
                      "XLA_PYTHON_CLIENT_MEM_FRACTION=0.3).", stacklevel=3)
    return status
