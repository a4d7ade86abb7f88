"""The MD state pytree shared by every integrator.

One :class:`MDState` holds ``R`` replicas of the same ``N`` atoms. Units are
ASE's: positions and cell in Angstrom (cell rows are lattice vectors), momenta
in amu * Angstrom / (ASE time unit), masses in amu, energy in eV, forces in
eV/A, stress in eV/A^3 (ASE sign, potential part only).

``energy``, ``forces`` and ``stress`` always belong to the current
``positions``/``cell``: every integrator evaluates the model once per step,
at the end of the step, and reuses that result at the start of the next one
(exactly what ASE's calculator cache does). ``extras`` holds what else the model computed in
that same call (``Model.extras``: e.g. per-atom ``"energies"``, CHGNet's ``"magmoms"``), each with
the leading replica axis; it is empty (no leaves, no cost) for a model without extras.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from ase import units
from flax import struct

from jaxpto.model import Model, ModelOutput
from jaxpto import neighbors as nl


@struct.dataclass
class MDState:
    positions: jax.Array  # [R, N, 3]  Angstrom
    momenta: jax.Array  # [R, N, 3]  amu A / ASE time
    cell: jax.Array  # [R, 3, 3]  Angstrom, rows = lattice vectors
    masses: jax.Array  # [N]  amu
    numbers: jax.Array  # [N]  atomic numbers
    energy: jax.Array  # [R]  eV, at the current positions/cell
    forces: jax.Array  # [R, N, 3]  eV/A
    stress: jax.Array  # [R, 3, 3]  eV/A^3, potential (virial) part, ASE sign
    neighbors: Any  # NeighborList for the model's cutoff, or None
    key: jax.Array  # [R, 2] uint32 PRNG keys, one stream per replica
    step: jax.Array  # [] int32, steps taken
    variables: Any = None  # the integrator's variables and per-replica parameters (e.g. LangevinVariables)
    active: Any = None  # [R] bool (None: all running): replicas stopped by the driver hold still
    # The model's extra results at the current positions/cell ({name: [R, N, ...] or [R, ...]}).
    extras: dict = struct.field(default_factory=dict)

    @property
    def n_replicas(self) -> int:
        return self.positions.shape[0]

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[1]

    @property
    def velocities(self) -> jax.Array:
        return self.momenta / self.masses[None, :, None]


# --------------------------------------------------------------------------
# Observables that every integrator needs (all batched over replicas).
# --------------------------------------------------------------------------


def kinetic_energy(momenta: jax.Array, masses: jax.Array) -> jax.Array:
    """``K = sum_i p_i^2 / (2 m_i)`` per replica, eV. ``momenta`` [R,N,3], ``masses`` [N]."""
    return 0.5 * jnp.sum(momenta**2 / masses[None, :, None], axis=(1, 2))


def temperature_K(momenta: jax.Array, masses: jax.Array, n_dof: int | None = None) -> jax.Array:
    """Instantaneous temperature ``2K / (n_dof k_B)`` in K, ``n_dof = 3N`` by default (ASE)."""
    if n_dof is None:
        n_dof = 3 * momenta.shape[1]
    return 2.0 * kinetic_energy(momenta, masses) / (n_dof * units.kB)


def volume(cell: jax.Array) -> jax.Array:
    """Cell volume ``|det h|`` per replica, A^3."""
    return jnp.abs(jnp.linalg.det(cell))


def kinetic_stress(momenta: jax.Array, masses: jax.Array, cell: jax.Array) -> jax.Array:
    """Ideal-gas part of the stress, ``-sum_i p_i (x) p_i / m_i / V`` (ASE sign), [R,3,3]."""
    pp = jnp.einsum("rni,rnj->rij", momenta / masses[None, :, None], momenta)
    return -pp / volume(cell)[:, None, None]


def total_stress(state: MDState) -> jax.Array:
    """``atoms.get_stress(include_ideal_gas=True)`` as a 3x3 per replica."""
    return state.stress + kinetic_stress(state.momenta, state.masses, state.cell)


# --------------------------------------------------------------------------
# Force evaluation: neighbour-list update + model call, used by all steps.
# --------------------------------------------------------------------------

ForceFn = Callable[[jax.Array, jax.Array, Any], tuple[ModelOutput, Any]]


@functools.lru_cache(maxsize=128)
def make_force_fn(model: Model, numbers: tuple[int, ...], mesh=None) -> ForceFn:
    """Return ``force_fn(positions, cell, neighbors) -> (ModelOutput, neighbors)``.

    The neighbour list (if any) is refreshed on the device when atoms moved more
    than half the skin; overflow is recorded in the list, never silently dropped.
    Cached per (model, atomic numbers, mesh), so integrators built from the same model
    and system share one compiled program. With a replica ``mesh`` the list update and the model
    call run per shard (:func:`jaxpto.sharding.sharded_force_fn`).
    """
    numbers = np.asarray(numbers, dtype=np.int32)

    def force_fn(positions, cell, neighbors):
        if neighbors is not None:
            neighbors = nl.update(neighbors, positions, cell)
        out = model(positions, cell, numbers, neighbors)
        return out, neighbors

    if mesh is not None:
        from jaxpto.sharding import sharded_force_fn

        return sharded_force_fn(force_fn, mesh)
    return force_fn


def evaluate(state: MDState, force_fn: ForceFn, positions=None, cell=None) -> MDState:
    """Move the state to ``positions``/``cell`` and refresh energy, forces, stress."""
    positions = state.positions if positions is None else positions
    cell = state.cell if cell is None else cell
    out, neighbors = force_fn(positions, cell, state.neighbors)
    return state.replace(
        positions=positions,
        cell=cell,
        energy=out.energy,
        forces=out.forces,
        stress=out.stress,
        extras=dict(out.extras),
        neighbors=neighbors,
    )


def per_replica(value, n_replicas: int, name: str, dtype) -> jax.Array:
    """Broadcast a scalar or length-R sequence to a ``[R]`` array, with a clear error."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        arr = np.full(n_replicas, float(arr))
    if arr.shape != (n_replicas,):
        raise ValueError(
            f"{name} has shape {arr.shape}, but there are {n_replicas} replicas: "
            f"give one value, or exactly {n_replicas} values (one per replica)."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values: {arr}")
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        dtype = jnp.dtype(jnp.float32)
    return jnp.asarray(arr.astype(dtype))


def create_state(
    positions,
    cell,
    numbers,
    masses,
    model: Model,
    momenta=None,
    *,
    seed: int = 0,
    skin: float = 1.0,
    dtype=None,
    neighbor_capacity_factor: float = 1.3,
    pbc=(True, True, True),
    devices=None,
) -> tuple[MDState, ForceFn]:
    """Build the initial :class:`MDState` (with energy/forces/stress) and its force function.

    ``positions`` [R,N,3] or [N,3]; ``cell`` [R,3,3] or [3,3]; ``numbers``, ``masses`` [N];
    ``momenta`` like ``positions`` (zeros if None). ``dtype`` defaults to float64
    when ``jax_enable_x64`` is on, else float32. ``devices`` (None: one device; an int, a list
    or ``"all"``) shards the replicas over devices (:mod:`jaxpto.sharding`).
    Validates input before anything runs.
    """
    from jaxpto.validation import check_system

    dtype = default_dtype() if dtype is None else jnp.dtype(dtype)
    positions, cell, numbers, masses, momenta = check_system(positions, cell, numbers, masses, momenta)
    model.check_elements(numbers)
    R = positions.shape[0]
    pos = jnp.asarray(positions, dtype)
    cel = jnp.asarray(cell, dtype)
    neighbors = None
    if model.cutoff is not None and model.cutoff > 0:
        neighbors = nl.allocate(pos, cel, model.cutoff, skin=skin, pbc=pbc,
                                capacity_factor=neighbor_capacity_factor)
    keys = jax.random.split(jax.random.PRNGKey(seed), R)
    keys = jax.random.key_data(keys) if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) else keys
    state = MDState(
        positions=pos,
        momenta=jnp.asarray(momenta, dtype),
        cell=cel,
        masses=jnp.asarray(masses, dtype),
        numbers=jnp.asarray(numbers, jnp.int32),
        energy=jnp.zeros((R,), dtype),
        forces=jnp.zeros_like(pos),
        stress=jnp.zeros((R, 3, 3), dtype),
        neighbors=neighbors,
        key=keys,
        step=jnp.zeros((), jnp.int32),
        active=jnp.ones((R,), bool),
    )
    mesh = None
    if devices is not None:
        from jaxpto.sharding import replica_mesh, shard_state

        mesh = replica_mesh(R, devices)
        state = shard_state(state, mesh)
    force_fn = make_force_fn(model, tuple(int(z) for z in numbers), mesh)
    state = _evaluate_jit(state, force_fn)
    _check_extras(model, state)
    return state, force_fn


def _check_extras(model: Model, state: MDState) -> None:
    """The model's extras are the ones it declares, each with the leading replica axis (else a clear error)."""
    got = sorted(state.extras)
    if got != sorted(model.extras):
        raise ValueError(f"model {model.name!r} declares extras {sorted(model.extras)} (Model.extras) but its "
                         f"compute returned {got}; make ModelOutput.extras and Model.extras name the same results")
    R = state.n_replicas
    for name, value in state.extras.items():
        if getattr(value, "ndim", 0) < 1 or value.shape[0] != R:
            raise ValueError(f"model {model.name!r}: extra {name!r} has shape {getattr(value, 'shape', None)}; "
                             f"give it per replica, [R, N, ...] per atom or [R, ...] per structure (R = {R})")


_evaluate_jit = jax.jit(evaluate, static_argnums=1)


def default_dtype():
    """float64 when JAX's x64 mode is on, float32 otherwise (the fast GPU default)."""
    return jnp.dtype(jnp.float64) if jax.config.jax_enable_x64 else jnp.dtype(jnp.float32)


def _per_replica_fields(state: MDState) -> dict:
    """Every per-replica part of the state (leading axis ``R``): all but ``masses``, ``numbers``, ``step``."""
    return dict(positions=state.positions, momenta=state.momenta, cell=state.cell, energy=state.energy,
                forces=state.forces, stress=state.stress, extras=state.extras, key=state.key,
                neighbors=state.neighbors, variables=state.variables, active=state.active)


def _map_replicas(fn, state: MDState, *others: MDState) -> MDState:
    """``state`` with ``fn(leaf, *other_leaves)`` applied to every per-replica leaf."""
    fields = _per_replica_fields(state)
    rest = [_per_replica_fields(o) for o in others]
    new = {}
    for name, value in fields.items():
        if value is None:
            new[name] = None
            continue
        new[name] = jax.tree_util.tree_map(fn, value, *[r[name] for r in rest])
    return state.replace(**new)


def take_replicas(state: MDState, keep) -> MDState:
    """The state of the replicas ``keep`` (indices or a boolean mask), e.g. to split a batch.

    Every array of the state is per replica (leading axis ``R``) except ``masses``, ``numbers``
    and ``step``; this holds for the neighbour list and for every integrator's variables and
    parameters (they store per-replica temperatures, pressures, couplings as ``[R]`` arrays).
    """
    R = state.n_replicas
    keep = np.asarray(keep)
    idx = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
    if idx.size == 0:
        raise ValueError("take_replicas: no replica left")
    if idx.min() < 0 or idx.max() >= R:
        raise ValueError(f"take_replicas: indices {idx.tolist()} out of range for {R} replicas")

    def take(leaf):
        if not hasattr(leaf, "shape") or leaf.ndim == 0 or leaf.shape[0] != R:
            raise ValueError(f"take_replicas: a per-replica array has shape {getattr(leaf, 'shape', None)}, "
                             f"expected leading axis {R}")
        return jnp.asarray(leaf)[idx]

    return _map_replicas(take, state)


def select_replicas(where, new: MDState, old: MDState) -> MDState:
    """Per replica: ``new`` where ``where`` ([R] bool) is True, else ``old`` (same shapes; jit-able).

    The neighbour list is taken from ``new`` for every replica when its shapes differ from
    ``old``'s (a re-allocation); it is valid for the positions it was built with either way.
    """
    where = jnp.asarray(where)

    def pick(a, b):
        if a.shape != b.shape:
            return a
        return jnp.where(where.reshape(where.shape + (1,) * (a.ndim - 1)), a, b)

    if jax.tree_util.tree_structure(new.neighbors) != jax.tree_util.tree_structure(old.neighbors) or any(
            x.shape != y.shape for x, y in zip(jax.tree_util.tree_leaves(new.neighbors),
                                              jax.tree_util.tree_leaves(old.neighbors))):
        old = old.replace(neighbors=new.neighbors)
    return _map_replicas(pick, new, old)


def hold_stopped(new: MDState, old: MDState) -> MDState:
    """One step's result with the stopped replicas (``old.active`` False) held at ``old`` (jit-able).

    The neighbour list is left as ``new`` has it: a stopped replica does not move, so a rebuild
    triggered by the others stays valid for it. Its forces are still computed (the batch keeps
    its shape: nothing recompiles), and thrown away.
    """
    if old.active is None:
        return new
    held = select_replicas(old.active, new, old.replace(neighbors=new.neighbors))
    return held.replace(step=new.step)
