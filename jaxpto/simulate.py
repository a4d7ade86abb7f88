"""Driving integrators: compiled ``lax.scan`` chunks, recording, overflow handling.

A run is a sequence of chunks. Each chunk is one compiled call that takes
``n`` steps with ``jax.lax.scan`` and records ``record_fn(state)`` every
``record_every`` steps, without returning to Python in between. After each
chunk the host checks two things:

* neighbour-list overflow (a build found more neighbours than allocated, or
  the cell changed so much that the image range/bins no longer cover the
  cutoff): the list is re-allocated for the chunk's starting configuration
  and the chunk is run again, so no pair is ever dropped;
* non-finite positions: replicas that blew up are reported.

Compiled chunk functions are cached per (integrator, chunk length, recorder),
so repeated calls do not recompile.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxpto import neighbors as nl
from jaxpto.integrators.base import Integrator
from jaxpto.state import MDState


class Diverged(RuntimeError):
    """Raised when every replica has non-finite positions."""


@functools.lru_cache(maxsize=64)
def _chunk_fn(step: Callable, n_steps: int, record_fn: Callable | None, record_every: int):
    if record_fn is not None and n_steps % record_every:
        raise ValueError(f"chunk length {n_steps} is not a multiple of record_every={record_every}")

    def advance(state, k):
        return jax.lax.fori_loop(0, k, lambda _, s: step(s), state)

    @jax.jit
    def run_chunk(state):
        if record_fn is None:
            return jax.lax.fori_loop(0, n_steps, lambda _, s: step(s), state), None

        def body(s, _):
            s = advance(s, record_every)
            return s, record_fn(s)

        return jax.lax.scan(body, state, None, length=n_steps // record_every)

    return run_chunk


def run_chunk(integrator: Integrator, state: MDState, n_steps: int, record_fn=None, record_every: int = 1):
    """Take ``n_steps`` steps in one compiled call, re-allocating the neighbour list on overflow.

    Returns ``(state, records)``; records stack ``record_fn(state)`` every ``record_every`` steps.
    """
    if n_steps <= 0:
        return state, None
    for attempt in range(8):
        fn = _chunk_fn(integrator.step, int(n_steps), record_fn, int(record_every))
        new_state, records = fn(state)
        nbrs = new_state.neighbors
        if nbrs is None or not bool(jnp.any(nbrs.did_overflow)):
            return new_state, records
        # A replica that blew up (non-finite positions) overflows its list; re-running cannot
        # help it, and the caller drops it. Re-run only for overflows of healthy replicas.
        blown = ~jnp.all(jnp.isfinite(new_state.positions), axis=(1, 2))
        if not bool(jnp.any(nbrs.did_overflow & ~blown)):
            return new_state, records
        # Re-allocate for the chunk's starting configuration, sized for what the failed chunk
        # met (its neighbour count and its deformed cell, with growing head-room), and take
        # the chunk again from its start.
        state = state.replace(neighbors=nl.reallocate(
            state.neighbors, state.positions, state.cell, overflowed=nbrs, overflowed_cell=new_state.cell,
            headroom=0.1 * attempt))
    raise RuntimeError("neighbour list kept overflowing after 8 re-allocations; the system is probably "
                       "collapsing (atoms far closer than the cutoff); check the time step and structure")


def run(
    integrator: Integrator,
    state: MDState,
    n_steps: int,
    *,
    chunk_size: int = 1000,
    record_fn: Callable[[MDState], Any] | None = None,
    record_every: int = 1,
    callback: Callable[[MDState, Any], None] | None = None,
):
    """Run ``n_steps`` steps in compiled chunks of ``chunk_size`` (a multiple of ``record_every``).

    ``record_fn(state)`` is evaluated on the device every ``record_every`` steps and the
    results are concatenated (as numpy) and returned with the final state.
    ``callback(state, records_of_chunk)`` runs on the host after every chunk
    (progress, checkpoints, writing files), so finished work is never lost.
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if record_fn is not None:
        if record_every < 1:
            raise ValueError("record_every must be >= 1")
        if n_steps % record_every:
            raise ValueError(f"n_steps={n_steps} must be a multiple of record_every={record_every}")
        chunk_size = max(record_every, (chunk_size // record_every) * record_every)
    collected = []
    done = 0
    while done < n_steps:
        k = min(chunk_size, n_steps - done)
        state, records = run_chunk(integrator, state, k, record_fn, record_every)
        done += k
        bad = ~jnp.all(jnp.isfinite(state.positions), axis=(1, 2))
        if bool(jnp.all(bad)):
            raise Diverged(f"all replicas have non-finite positions after step {int(state.step)}; "
                           "reduce the time step or check the starting structure")
        if records is not None:
            collected.append(jax.tree_util.tree_map(np.asarray, records))
        if callback is not None:
            callback(state, records)
    if record_fn is None:
        return state, None
    if not collected:
        return state, None
    return state, jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *collected)


def state_from_atoms(atoms, model, *, seed: int = 0, skin: float = 1.0, dtype=None):
    """Build ``(state, force_fn)`` from an ASE ``Atoms`` or a list of them (one per replica).

    Momenta are taken from the atoms (zeros if unset). Units: ASE's.
    """
    from jaxpto.state import create_state
    from jaxpto.validation import check_same_atoms

    atoms_list = list(atoms) if isinstance(atoms, (list, tuple)) else [atoms]
    if not atoms_list:
        raise ValueError("no Atoms given")
    check_same_atoms(atoms_list)
    positions = np.stack([a.get_positions() for a in atoms_list])
    cell = np.stack([np.asarray(a.cell) for a in atoms_list])
    momenta = np.stack([a.get_momenta() for a in atoms_list])
    first = atoms_list[0]
    state, force_fn = create_state(positions, cell, first.numbers, first.get_masses(), model, momenta,
                                   seed=seed, skin=skin, dtype=dtype, pbc=tuple(bool(p) for p in first.pbc))
    return state, force_fn
