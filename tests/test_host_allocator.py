"""glibc malloc settings applied where a CPU torch model is set up (jaxpto/host_allocator.py).

The independent reference is glibc's own account of its heaps (``malloc_info(3)``), read in a
fresh process that built a torch bridge and then ran a JAX host callback (which runs on one of
XLA's threads, as the bridge's torch calls do) allocating a 64 MB block and keeping it: tuned,
that block comes from the one main heap; with glibc's defaults (``JAXPTO_TUNE_MALLOC=0``, the
negative control) it is ``mmap``-ed and XLA's threads have arenas of their own.
"""

import os
import platform
import re
import subprocess
import sys
import textwrap

import pytest

from jaxpto import host_allocator

glibc_linux = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                 reason="mallopt/malloc_info are glibc's")

_PROBE = textwrap.dedent("""
    import ctypes, json, os, sys, tempfile
    if os.environ.get("PROBE_JAX_FIRST"):
        import jax, jax.numpy as jnp
        jax.block_until_ready(jnp.ones(8) + 1)
    import jaxpto
    assert jaxpto.host_allocator.status["reason"] == "not run"  # importing jaxpto alone tunes nothing
    from bridges.torch_bridge import TorchBridge

    class NoModel:
        cutoff = 1.0

    TorchBridge(NoModel())  # a CPU torch model is set up: tune() runs here
    import jax, jax.numpy as jnp
    import numpy as np

    kept = []

    def host(x):
        kept.append(np.ones(8 << 20))  # 64 MB, allocated on an XLA thread and kept alive
        return x

    f = jax.jit(lambda x: jax.pure_callback(host, jax.ShapeDtypeStruct(x.shape, x.dtype), x))
    jax.block_until_ready(f(jnp.ones(4)))
    libc = ctypes.CDLL("libc.so.6")
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    path = os.path.join(tempfile.mkdtemp(), "malloc_info.xml")
    fp = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    status = {k: v for k, v in jaxpto.host_allocator.status.items() if k != "accepted"}
    print(json.dumps({"status": status, "xml": open(path).read(), "n_kept": len(kept)}))
""")


def _probe(**env):
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD", "JAXPTO_TUNE_MALLOC")}
    full.update(JAX_PLATFORMS="cpu", **env)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=full, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    rec = json.loads(out.stdout.strip().splitlines()[-1])
    xml = rec["xml"]
    heaps = re.findall(r'<heap nr="(\d+)">', xml)
    # mmap-ed bytes now: a few hundred kB were mapped at interpreter start, before any tuning.
    mmap_bytes = int(re.search(r'<total type="mmap" count="\d+" size="(\d+)"', xml).group(1))
    return rec["status"], len(heaps), mmap_bytes


@glibc_linux
def test_import_jaxpto_puts_xla_thread_allocations_on_the_main_heap():
    block = 64 << 20
    status, heaps, mmap_bytes = _probe()
    assert status["applied"] and status["reason"] == "tuned", status
    assert status["jax_backend_already_started"] is False
    assert heaps == 1 and mmap_bytes < block, (heaps, mmap_bytes)

    # Negative control: glibc's defaults give XLA's threads their own arenas and mmap the block.
    status0, heaps0, mmap_bytes0 = _probe(JAXPTO_TUNE_MALLOC="0")
    assert not status0["applied"] and status0["reason"] == "JAXPTO_TUNE_MALLOC=0"
    assert heaps0 > 1 and mmap_bytes0 >= block, (heaps0, mmap_bytes0)


@glibc_linux
def test_jax_used_before_jaxpto_is_recorded():
    status, _, _ = _probe(PROBE_JAX_FIRST="1")
    assert status["applied"] and status["jax_backend_already_started"] is True


@pytest.mark.parametrize("env, reason", [
    ({"JAXPTO_TUNE_MALLOC": "0"}, "JAXPTO_TUNE_MALLOC=0"),
    ({"MALLOC_ARENA_MAX": "4"}, "allocator settings already in the environment (MALLOC_ARENA_MAX)"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "allocator settings already in the environment (GLIBC_TUNABLES)"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "another allocator is preloaded (LD_PRELOAD=/usr/lib/libjemalloc.so.2)"),
    ({"JAX_PLATFORMS": "cuda"}, "JAX_PLATFORMS=cuda (not the CPU)"),
])
@glibc_linux
def test_user_choices_and_gpu_runs_are_left_alone(env, reason):
    assert host_allocator._reason_to_skip(env) == reason
    # Forcing it on still respects an allocator the user chose.
    forced = dict(env, JAXPTO_TUNE_MALLOC="1") if "JAXPTO_TUNE_MALLOC" not in env else env
    if "JAX_PLATFORMS" in env:
        assert host_allocator._reason_to_skip(forced) is None
    else:
        assert host_allocator._reason_to_skip(forced) == reason


@glibc_linux
def test_cpu_run_is_tuned_unless_a_gpu_plugin_is_installed(monkeypatch):
    monkeypatch.setattr(host_allocator, "_gpu_jax_installed", lambda: False)
    assert host_allocator._reason_to_skip({}) is None
    assert host_allocator._reason_to_skip({"JAX_PLATFORMS": "cpu"}) is None
    monkeypatch.setattr(host_allocator, "_gpu_jax_installed", lambda: True)
    assert "GPU plugin" in host_allocator._reason_to_skip({})
    assert host_allocator._reason_to_skip({"JAX_PLATFORMS": "cpu"}) is None
