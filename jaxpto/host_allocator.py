"""Host (CPU) memory-allocator settings for PyTorch models called from inside jit.

Why this exists. A bridged PyTorch model (``bridges.torch_bridge``) runs on one of XLA's
threads, not on Python's main thread. glibc's ``malloc`` gives every such thread its own
arena, whose heaps are at most 64 MB and are handed back to the kernel as soon as they empty;
blocks over the (dynamic, at most 32 MB) mmap threshold are ``mmap``-ed and ``munmap``-ed on
every call. A message-passing network allocates tens to hundreds of MB of edge tensors per
call, so on CPU each call page-faults all of them afresh: for MACE-MP-0b-medium at 135 atoms
that was 1.1-1.5 s of system time on top of 1.1 s of user time per step, measured (README,
Benchmarks). The main thread does not see it once its ``sbrk`` heap has grown,
so the same model called directly (or by ASE) was up to 2.5x faster than inside an MD step.

The remedy is four ``mallopt(3)`` settings: one arena for all threads (``M_ARENA_MAX = 1``),
no ``mmap`` for large blocks (``M_MMAP_MAX = 0``; they come from the one ``sbrk`` heap), freed
memory kept for reuse up to 2 GiB (``M_TRIM_THRESHOLD``) and the heap grown 256 MiB at a time
(``M_TOP_PAD``). Measured (MACE-medium, 135 atoms, 2-core VM): bridged step 1.1-2.3 s with
1-2 s system time -> 0.58-0.69 s with ~0 system time, equal to the direct call.

They must be in force before XLA's threads allocate anything (a thread is bound to an arena at
its first ``malloc``), so :func:`tune` runs where a torch model is set up for the CPU, before
JAX is used: ``jaxpto.load_model`` (before it asks JAX for its backend), the torch bridge's
constructor, the PTO-test workflow and the benchmark suite. If JAX had already run, the settings
still apply to new memory but not to the threads' arenas, and the bridge's first CPU call warns.
A process that runs only JAX-native potentials is left alone: one arena for all threads makes
XLA's (multi-threaded) compilation ~15-20 % slower here (two test files: 88 s -> 105 s, system
time 5.6 s -> 15 s, from lock contention; ``M_MMAP_MAX = 0`` alone costs nothing).
It is applied only where it helps and is known not to hurt:

* Linux with glibc (``mallopt`` is glibc's);
* JAX set to run on the CPU: ``JAX_PLATFORMS`` unset or ``cpu`` and no JAX GPU plugin installed
  (on a GPU the tensors live in device memory, and one arena for all of a busy runtime's
  threads could contend);
* the user has not chosen an allocator: no ``MALLOC_*``/``GLIBC_TUNABLES`` settings in the
  environment and no jemalloc/tcmalloc/mimalloc in ``LD_PRELOAD``;
* ``JAXPTO_TUNE_MALLOC`` is not ``0`` (set it to ``0`` to keep glibc's defaults, or to ``1`` to
  apply the settings even on a GPU machine).

The cost: freed host memory up to 2 GiB is kept by the process instead of returned to the OS,
and memory freed below the heap's top stays in the process (peak RSS is what a run keeps).
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
M_ARENA_MAX = -8

SETTINGS = (
    ("M_ARENA_MAX", M_ARENA_MAX, 1),
    ("M_MMAP_MAX", M_MMAP_MAX, 0),
    ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, 2**31 - 1),
    ("M_TOP_PAD", M_TOP_PAD, 256 << 20),
)

_PRELOADED_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

#: What :func:`tune` decided in this process: ``{"applied": bool, "reason": str, ...}``.
status: dict = {"applied": False, "reason": "not run"}


def _gpu_jax_installed() -> bool:
    """True when a JAX GPU plugin (CUDA or ROCm) is installed, without importing JAX."""
    from importlib import metadata

    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith(("jax-cuda", "jax-rocm", "jaxlib-cuda", "jaxlib-rocm")):
            return True
    return False


def _reason_to_skip(env) -> str | None:
    choice = env.get("JAXPTO_TUNE_MALLOC", "").strip().lower()
    if choice in ("0", "false", "no", "off"):
        return "JAXPTO_TUNE_MALLOC=0"
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    import platform

    if platform.libc_ver()[0] != "glibc":
        return "not glibc"
    chosen = sorted(k for k in env if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")
    if chosen:
        return f"allocator settings already in the environment ({', '.join(chosen)})"
    preload = env.get("LD_PRELOAD", "")
    if any(a in preload for a in _PRELOADED_ALLOCATORS):
        return f"another allocator is preloaded (LD_PRELOAD={preload})"
    if choice in ("1", "true", "yes", "on"):
        return None
    platforms = env.get("JAX_PLATFORMS", "").strip().lower()
    if platforms and platforms.split(",")[0] != "cpu":
        return f"JAX_PLATFORMS={platforms} (not the CPU)"
    if not platforms and _gpu_jax_installed():
        return "a JAX GPU plugin is installed (set JAX_PLATFORMS=cpu or JAXPTO_TUNE_MALLOC=1 to tune)"
    return None


def tune(env=None) -> dict:
    """Apply the settings above once per process (see the module docstring); returns and
    records in :data:`status` what was done and why. Safe to call more than once."""
    global status
    if status["reason"] != "not run":
        return status
    env = os.environ if env is None else env
    skip = _reason_to_skip(env)
    if skip is not None:
        status = {"applied": False, "reason": skip}
        return status
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError as exc:  # pragma: no cover - glibc without the usual soname
        status = {"applied": False, "reason": f"libc.so.6 not loadable: {exc}"}
        return status
    # If JAX's CPU client exists already, its threads have their arenas: say so in the status.
    jax_started = False
    xb = sys.modules.get("jax._src.xla_bridge")
    if xb is not None:
        jax_started = bool(getattr(xb, "_backends", None))
    results = {name: bool(libc.mallopt(param, value)) for name, param, value in SETTINGS}
    status = {"applied": all(results.values()), "reason": "tuned" if all(results.values()) else "mallopt refused",
              "settings": {name: value for name, _, value in SETTINGS}, "accepted": results,
              "jax_backend_already_started": jax_started}
    return status
