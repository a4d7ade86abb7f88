"""Replicas over devices and processes: the replica axis sharded with ``jax.sharding``.

An MD state holds ``R`` replicas along one leading axis of every per-replica array (positions,
momenta, cell, energies, neighbour list, integrator variables, PRNG keys). Sharding that axis
over ``D`` devices (``R % D == 0``) runs one program in which each device advances ``R/D``
replicas; the model is called inside ``jax.shard_map`` (see :func:`sharded_force_fn`), so each
shard evaluates its own replicas (a bridged torch model is called once per shard with that
shard's replicas), rebuilds its own neighbour lists, and only what couples replicas
(replica exchange's permutation, the driver's small health summaries) crosses devices. The
numbers equal the unsharded run's: every replica's arithmetic is the same.

Several processes (hosts, or several processes on one host) join with ``jax.distributed``
(:func:`initialize_distributed`); the mesh then spans every process's devices, each process runs
the same program on its own shards, and the host-side reads of the driver go through
:func:`to_host` (a ``process_allgather`` where an array is not fully addressable). On CPU the
cross-process collectives use gloo.

Units: none here (layout only).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

REPLICA_AXIS = "replicas"


def replica_mesh(n_replicas: int, devices=None) -> Mesh | None:
    """A 1-D mesh over the devices that share ``n_replicas`` evenly, or None for one device.

    ``devices``: a list of devices, an int (the first that many of ``jax.devices()``, which spans
    every process), ``"all"`` or None (= "all"). The largest number of them that divides
    ``n_replicas`` is used (a warning-free choice: an uneven split would need padding replicas).
    """
    if devices is None or devices == "all":
        devices = jax.devices()
    elif isinstance(devices, int):
        available = jax.devices()
        if devices < 1 or devices > len(available):
            raise ValueError(f"asked for {devices} devices, {len(available)} are visible ({available[0].platform}); "
                             "on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N gives N host devices")
        devices = available[:devices]
    devices = list(devices)
    n = max(d for d in range(1, len(devices) + 1) if n_replicas % d == 0)
    if n == 1:
        return None
    return Mesh(np.array(devices[:n]), (REPLICA_AXIS,))


def _spec(leaf, n_replicas):
    shape = getattr(leaf, "shape", ())
    if len(shape) >= 1 and shape[0] == n_replicas:
        return PartitionSpec(REPLICA_AXIS)
    return PartitionSpec()


def shard_state(state, mesh: Mesh | None):
    """``state`` with every per-replica leaf sharded over ``mesh`` (others replicated); None: as is."""
    if mesh is None:
        return state
    from jaxpto.state import _per_replica_fields  # the fields with a leading replica axis

    R = state.n_replicas
    per = _per_replica_fields(state)

    def put(leaf, spec):
        return jax.device_put(leaf, NamedSharding(mesh, spec))

    new = {}
    for name, value in per.items():
        if value is None:
            new[name] = None
            continue
        new[name] = jax.tree_util.tree_map(lambda x: put(x, _spec(x, R)), value)
    for name in ("masses", "numbers", "step"):
        new[name] = put(getattr(state, name), PartitionSpec())
    return state.replace(**new)


def state_mesh(state) -> Mesh | None:
    """The replica mesh a state is sharded over (None: one device)."""
    sharding = getattr(state.positions, "sharding", None)
    if isinstance(sharding, NamedSharding) and REPLICA_AXIS in sharding.mesh.axis_names \
            and sharding.mesh.devices.size > 1:
        return sharding.mesh
    return None


def sharded_force_fn(force_fn, mesh: Mesh):
    """``force_fn(positions, cell, neighbors)`` evaluated per shard inside ``jax.shard_map``."""
    spec = PartitionSpec(REPLICA_AXIS)
    return jax.shard_map(force_fn, mesh=mesh, in_specs=(spec, spec, spec), out_specs=(spec, spec),
                         check_vma=False)


def to_host(x) -> np.ndarray:
    """A NumPy copy of ``x``, gathered from every process if no process holds all of it."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def tree_to_host(tree):
    """:func:`to_host` over a pytree (leaves that are not arrays pass as they are)."""
    return jax.tree_util.tree_map(lambda x: to_host(x) if hasattr(x, "shape") else x, tree)


def initialize_distributed(coordinator: str, num_processes: int, process_id: int, local_devices: int | None = None):
    """Join a multi-process run (``jax.distributed.initialize``) before JAX does anything else.

    ``coordinator`` is ``host:port`` of process 0; on CPU the collectives use gloo, and
    ``local_devices`` sets the number of host devices per process. Returns ``process_id``.
    """
    import os

    if local_devices:
        flag = f"--xla_force_host_platform_device_count={int(local_devices)}"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    if not (0 <= process_id < num_processes):
        raise ValueError(f"process id {process_id} must be in 0..{num_processes - 1}")
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # a build without gloo: CPU runs stay single-process
        pass
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    return process_id


def is_main_process() -> bool:
    """True in process 0 (the one that writes files), and in single-process runs."""
    return jax.process_index() == 0
