"""Replicas over devices and processes (jaxpto.sharding), on this CPU machine.

* 4 host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``, in a fresh process): a
  sharded run of 8 replicas equals the unsharded run (float64, 1e-12 relative) for Langevin,
  Melchionna and replica exchange, and a bridged torch model is called per shard with its own 2
  replicas.
* Two processes on localhost joined with ``jax.distributed`` (gloo collectives) run one
  8-temperature NPT sweep through the CLI and write the same results.json as one process (equal to
  round-off of the reductions).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(**extra):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.update(JAX_ENABLE_X64="1", PYTHONPATH=str(ROOT), **extra)
    return env


@pytest.mark.slow
def test_sharded_runs_equal_unsharded_runs():
    script = ROOT / "tests" / "sharding_scripts" / "sharded_equals_unsharded.py"
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    for case in ("langevin", "melchionna", "replica_exchange"):
        assert out[case]["shards"] == 4, out
        assert out[case]["positions_rel"] <= 1e-12 and out[case]["energy_rel"] <= 1e-12, out
    assert out["replica_exchange"]["walkers_equal"]
    bridge = out["torch_bridge"]
    assert bridge["positions_rel"] <= 1e-12 and bridge["call_batch_sizes"] == [2], bridge  # 8 replicas / 4 shards


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _numbers_close(a, b, rel=1e-9):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_numbers_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_numbers_close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)
    return a == b


@pytest.mark.slow
def test_two_processes_give_the_results_of_one(tmp_path):
    args = [sys.executable, "-m", "jaxpto.cli", "npt-sweep", "--model", "lj", "--supercell", "2", "--steps", "40",
            "--chunk-steps", "20", "--record-every", "10", "--temperatures", "300,350,400,450,500,550,600,650",
            "--average-last-ps", "0.04", "--no-progress", "--dtype", "float64", "--replica-exchange", "10"]
    one = subprocess.run(args + ["--out", str(tmp_path / "one")], cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=1200)
    assert one.returncode == 0, one.stderr[-3000:]
    port = _free_port()
    dist = ["--out", str(tmp_path / "two"), "--coordinator", f"localhost:{port}", "--num-processes", "2",
            "--local-devices", "2"]
    procs = [subprocess.Popen(args + dist + ["--process-id", str(i)], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 0)]
    outs = [p.communicate(timeout=1200) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-3000:] for o in outs]
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert len(b["device"]["jax_devices"]) == 4 and len(a["device"]["jax_devices"]) == 1
    ma, mb = a["models"][0], b["models"][0]
    assert _numbers_close(ma["npt"], mb["npt"]) and ma["npt_replica_exchange"] == mb["npt_replica_exchange"]
    assert [r["a"] for r in ma["npt"]] == [r["a"] for r in mb["npt"]]
    assert not (tmp_path / "two" / "lj" / "npt_series.npz").stat().st_size == 0
