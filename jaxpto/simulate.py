"""The one driver: every MD loop of jaxpto (the core's :func:`run`, the ASE layer
:mod:`jaxpto.md`, the PTO-test sweeps) runs through :func:`chunks`.

A run is a sequence of *chunks*. A chunk is one call of a compiled program that takes
``n`` steps (``n`` is a traced argument: any chunk length, one compilation) and records
``record_fn(state)`` on the device every ``record_every`` steps, without returning to
Python in between. After each chunk the host:

1. checks the neighbour list: if a build found more neighbours than allocated, or the
   cell deformed beyond what the list's image range/bins cover, the list is re-allocated
   for the chunk's *starting* configuration but sized for what the failed chunk met (its
   neighbour count and its most deformed cell, with growing head-room), and the chunk is
   taken again from its start; no pair is ever dropped;
2. checks every replica's health (:func:`blow_up_reasons`: non-finite coordinates or
   energy, a box length changed by more than 50 %, a temperature above 5x the target)
   and, by the caller's policy, *stops* an unhealthy replica (it is put back to its state
   at the start of the chunk, the last one known good, and held there while the others go
   on: same shapes, nothing recompiles), *warns* once per replica, or ignores it;
3. hands a :class:`Chunk` (state, records, what happened) to the caller, who may observe,
   checkpoint, or replace the state (an observer that moved atoms) before the next chunk.

Per-replica parameters (temperatures, frictions, pressures, couplings) live in
``state.variables``; changing them between chunks (``integrator.set_parameters``) keeps the
compiled program. Units are ASE's (eV, Angstrom, amu, ASE time units).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxpto import neighbors as nl
from jaxpto.integrators.base import Integrator, target_temperature_K
from jaxpto.sharding import shard_state, state_mesh, to_host, tree_to_host
from jaxpto.state import MDState, _evaluate_jit, hold_stopped, select_replicas, temperature_K

BLOWUP_CELL_CHANGE = 0.5  # relative box-length change
BLOWUP_TEMPERATURE_FACTOR = 5.0  # x max(target, BLOWUP_TEMPERATURE_FLOOR_K)
BLOWUP_TEMPERATURE_FLOOR_K = 50.0
MAX_REALLOCATIONS = 8


class Diverged(RuntimeError):
    """Raised by :func:`run` when every replica has non-finite positions."""


# ---------------------------------------------------------------------------------------------
# One compiled chunk
# ---------------------------------------------------------------------------------------------


def chunk_program(step: Callable, record_fn: Callable | None = None, record_every: int = 1,
                  max_records: int = 0):
    """``program(state, n_steps) -> (state, records)``: ``n_steps`` (traced) steps in one call.

    With a recorder, ``records`` is a buffer of ``max_records`` slots (static) of which the first
    ``n_steps // record_every`` are filled; without, ``None``. Replicas with
    ``state.active == False`` hold still (:func:`jaxpto.state.hold_stopped`).
    Cached per (step, recorder, interval, buffer size): repeated chunks never recompile.
    """
    if record_fn is None:
        record_every, max_records = 1, 0
    return _chunk_program(step, record_fn, int(record_every), int(max_records))


@functools.lru_cache(maxsize=64)
def _chunk_program(step, record_fn, record_every, max_records):

    def one_step(_, s):
        return hold_stopped(step(s), s)

    @jax.jit
    def program(state, n_steps):
        if record_fn is None:
            return jax.lax.fori_loop(0, n_steps, one_step, state), None
        probe = jax.eval_shape(record_fn, state)
        buffer = jax.tree_util.tree_map(lambda x: jnp.zeros((max_records,) + x.shape, x.dtype), probe)

        def record_interval(i, carry):
            s, buf = carry
            s = jax.lax.fori_loop(0, record_every, one_step, s)
            buf = jax.tree_util.tree_map(lambda b, r: b.at[i].set(r), buf, record_fn(s))
            return s, buf

        return jax.lax.fori_loop(0, n_steps // record_every, record_interval, (state, buffer))

    return program


def _overflowed(state: MDState) -> bool:
    """True if the neighbour list overflowed for a replica that is running and finite."""
    if state.neighbors is None:
        return False
    return bool(_overflow_flag(state.neighbors.did_overflow, state.positions, state.active))


@jax.jit
def _overflow_flag(did_overflow, positions, active):
    # One compiled call: eager jnp here compiled three programs at every start-up.
    bad = did_overflow & jnp.all(jnp.isfinite(positions), axis=(1, 2))
    if active is not None:
        bad = bad & active
    return jnp.any(bad)


def run_chunk(integrator: Integrator, state: MDState, n_steps: int, record_fn=None, record_every: int = 1, *,
              max_records: int | None = None):
    """Take ``n_steps`` steps in one compiled call, re-allocating the neighbour list on overflow.

    Returns ``(state, records)``; ``records`` stacks ``record_fn(state)`` every ``record_every``
    steps (device arrays, leading axis ``n_steps // record_every``), or is None.
    ``max_records`` (default: this chunk's count) sizes the compiled buffer: give the largest
    chunk's count to reuse one program for chunks of different lengths.
    """
    n_steps = int(n_steps)
    if n_steps <= 0:
        return state, None
    if record_fn is not None and n_steps % record_every:
        raise ValueError(f"chunk length {n_steps} is not a multiple of record_every={record_every}")
    n_rec = n_steps // record_every if record_fn is not None else 0
    buf = max(n_rec, int(max_records or 0)) if record_fn is not None else 0
    n = jnp.asarray(n_steps, jnp.int32)
    for attempt in range(MAX_REALLOCATIONS):
        program = chunk_program(integrator.step, record_fn, record_every, buf)
        new_state, records = program(state, n)
        if not _overflowed(new_state):
            if records is not None:
                records = jax.tree_util.tree_map(lambda r: r[:n_rec], records)
            return new_state, records
        # Sized for what the failed chunk met (its neighbour count, its most deformed cell),
        # with growing head-room; then the chunk is taken again from its start.
        mesh = state_mesh(state)
        state = state.replace(neighbors=nl.reallocate(
            tree_to_host(state.neighbors), to_host(state.positions), to_host(state.cell),
            overflowed=tree_to_host(new_state.neighbors), overflowed_cell=to_host(new_state.cell),
            headroom=0.1 * attempt))
        state = shard_state(state, mesh)
    raise RuntimeError(f"neighbour list kept overflowing after {MAX_REALLOCATIONS} re-allocations; the system is "
                       "probably collapsing (atoms far closer than the cutoff); check the time step and structure")


def refresh_forces(state: MDState, force_fn) -> MDState:
    """Energy, forces and stress at the state's positions and cell (after they were changed on the
    host, e.g. by an observer), re-allocating the neighbour list if it overflows."""
    new = _evaluate(state, force_fn)
    if new.neighbors is not None and bool(jnp.any(new.neighbors.did_overflow)):
        new = _evaluate(state.replace(neighbors=nl.reallocate(state.neighbors, state.positions, state.cell)),
                        force_fn)
    return new


# The same compiled function as :func:`jaxpto.state.create_state`'s, so a refresh after the first
# configuration (an observer moved the atoms) reuses that program instead of compiling its own.
_evaluate = _evaluate_jit


# ---------------------------------------------------------------------------------------------
# Health of the replicas
# ---------------------------------------------------------------------------------------------


@jax.jit
def _health_summary(state: MDState):
    finite = (jnp.all(jnp.isfinite(state.positions), axis=(1, 2)) & jnp.all(jnp.isfinite(state.cell), axis=(1, 2))
              & jnp.isfinite(state.energy))
    return finite, temperature_K(state.momenta, state.masses), jnp.linalg.norm(state.cell, axis=-1)


def blow_up_reason(finite: bool, temperature: float, lengths, start_lengths, target_temperature: float,
                   periodic: bool = True) -> str | None:
    """Why one replica is unphysical, or None (all in K and Angstrom).

    Non-finite coordinates or energy; a box length changed by more than ``BLOWUP_CELL_CHANGE``
    (50 %) since the start (periodic systems); a temperature above ``BLOWUP_TEMPERATURE_FACTOR``
    (5x) ``max(target, 50 K)``.
    """
    if not finite:
        return "non-finite coordinates or energy"
    if periodic:
        start = np.asarray(start_lengths, float)
        change = float(np.max(np.abs(np.asarray(lengths, float) / start - 1.0)))
        if change > BLOWUP_CELL_CHANGE:
            return f"box length changed by {100 * change:.0f}% (atoms flying apart or collapsing)"
    if not np.isfinite(temperature):
        return "non-finite temperature"
    limit = BLOWUP_TEMPERATURE_FACTOR * max(float(target_temperature), BLOWUP_TEMPERATURE_FLOOR_K)
    if temperature > limit:
        return (f"temperature {temperature:.3g} K, more than {BLOWUP_TEMPERATURE_FACTOR:g}x the target "
                f"{float(target_temperature):.0f} K (time step too large, or atoms overlapping)")
    return None


def blow_up_reasons(state: MDState, start_lengths, targets_K) -> list[str | None]:
    """:func:`blow_up_reason` for every replica of ``state`` (None where healthy)."""
    finite, temp, lengths = (to_host(x) for x in _health_summary(state))
    periodic = bool(np.all(np.abs(np.linalg.det(to_host(state.cell)[:1].astype(float))) > 1e-12))
    return [blow_up_reason(bool(finite[r]), float(temp[r]), lengths[r], start_lengths[r], float(targets_K[r]),
                           periodic) for r in range(state.n_replicas)]


# ---------------------------------------------------------------------------------------------
# The chunk loop
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Chunk:
    """What :func:`chunks` hands over after each chunk.

    ``state`` may be replaced by the caller before the loop goes on (e.g. after an observer
    moved atoms: call :func:`refresh_forces` first). ``records``: numpy arrays stacked per
    record (or None). ``done``: steps taken in this run so far. ``unhealthy``: replica index ->
    reason, for replicas found unhealthy at the end of this chunk (the first time only);
    ``stopped``: the subset stopped by the "stop" policy. ``seconds``: wall time of the chunk
    (the first chunk of a program includes its compilation).
    """

    state: MDState
    records: Any
    done: int
    unhealthy: dict
    stopped: dict
    seconds: float


def _run_reference(state: MDState):
    """Box lengths at the start and the temperature each replica should stay near: the
    thermostat's target, or the starting temperature for NVE."""
    _, temp, lengths = (to_host(x) for x in _health_summary(state))
    targets = target_temperature_K(state.variables)
    targets = temp if targets is None else to_host(targets).astype(float)
    return lengths, targets


def chunks(integrator: Integrator, state: MDState, n_steps: int, *, chunk_size: int = 1000,
           record_fn: Callable[[MDState], Any] | None = None, record_every: int = 1,
           next_stop: Callable[[int], int] | None = None, on_unhealthy: str = "warn",
           health: Callable[[MDState, MDState, Any], list] | None = None,
           reference_lengths=None, reported: set | None = None) -> Iterator[Chunk]:
    """Run ``n_steps`` steps as compiled chunks, yielding a :class:`Chunk` after each.

    ``chunk_size``: the most steps per chunk (a multiple of ``record_every`` when recording).
    ``next_stop(done) -> int``: steps done (counted from this run's start) at which the host must
    be called next (observers); chunks end there too. ``on_unhealthy``: ``"stop"`` holds an
    unhealthy replica at its last good state (sweeps), ``"warn"`` warns once per replica
    (``jaxpto.md``), ``"ignore"``. ``health(start, end, records) -> [reason or None per
    replica]`` adds the caller's own rules (e.g. the sweeps' molten check) to
    :func:`blow_up_reasons`. ``reference_lengths`` ([R,3] box lengths, A): what the box-change rule
    compares with (default: the state's at the start of this call; a resumed run passes its original
    start). ``reported``: indices of replicas already reported unhealthy, updated in place (a caller
    that runs several times, e.g. ``jaxpto.md``'s ``run`` after ``run``, passes the same set, so a
    replica is reported once). The loop ends early when no replica runs any more.
    """
    if on_unhealthy not in ("stop", "warn", "ignore"):
        raise ValueError(f"on_unhealthy must be 'stop', 'warn' or 'ignore', got {on_unhealthy!r}")
    n_steps = int(n_steps)
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if record_fn is not None:
        if record_every < 1:
            raise ValueError("record_every must be >= 1")
        if n_steps % record_every:
            raise ValueError(f"n_steps={n_steps} must be a multiple of record_every={record_every}")
        chunk_size = max(record_every, (int(chunk_size) // record_every) * record_every)
    chunk_size = max(1, int(chunk_size))
    max_records = chunk_size // record_every if record_fn is not None else 0
    start_lengths, targets = _run_reference(state)
    if reference_lengths is not None:
        start_lengths = np.asarray(reference_lengths, float)
    reported = set() if reported is None else reported
    done = 0
    while done < n_steps:
        k = min(chunk_size, n_steps - done)
        if next_stop is not None:
            k = max(1, min(k, int(next_stop(done)) - done))
        if record_fn is not None:
            k = max(record_every, (k // record_every) * record_every)
        t0 = time.perf_counter()
        start = state
        state, records = run_chunk(integrator, state, k, record_fn, record_every, max_records=max_records)
        records = None if records is None else tree_to_host(records)
        seconds = time.perf_counter() - t0
        done += k
        unhealthy = _newly_unhealthy(state, start, records, start_lengths, targets, health, reported) \
            if on_unhealthy != "ignore" else {}
        stopped = dict(unhealthy) if on_unhealthy == "stop" else {}
        if stopped:
            state = stop_replicas(state, start, sorted(stopped))
        elif unhealthy:
            for r, why in unhealthy.items():
                warnings.warn(f"replica {r} is unphysical after step {int(state.step)}: {why}; its results "
                              "from here on are not meaningful (reduce the time step, check the structure "
                              "and the model)", RuntimeWarning, stacklevel=3)
        chunk = Chunk(state=state, records=records, done=done, unhealthy=unhealthy, stopped=stopped,
                      seconds=seconds)
        yield chunk
        state = chunk.state
        if state.active is not None and not bool(np.any(to_host(state.active))):
            return


def _newly_unhealthy(state, start, records, start_lengths, targets, health, reported: set) -> dict:
    """Replica index -> reason for running replicas found unhealthy now and not reported before."""
    reasons = blow_up_reasons(state, start_lengths, targets)
    extra = health(start, state, records) if health is not None else [None] * state.n_replicas
    active = np.ones(state.n_replicas, bool) if state.active is None else to_host(state.active)
    found = {}
    for r in range(state.n_replicas):
        why = reasons[r] or extra[r]
        if why is not None and active[r] and r not in reported:
            found[r] = why
            reported.add(r)
    return found


def stop_replicas(state: MDState, start: MDState, which) -> MDState:
    """``state`` with the replicas ``which`` put back to ``start`` (their last good state) and stopped."""
    R = state.n_replicas
    stop = np.zeros(R, bool)
    stop[list(which)] = True
    keep = jnp.asarray(~stop)
    active = jnp.ones(R, bool) if state.active is None else jnp.asarray(state.active)
    state = select_replicas(keep, state, start.replace(active=state.active))
    if state.neighbors is not None:  # the stopped replicas' lists were built where they blew up
        state = state.replace(neighbors=_build_neighbors(state.neighbors, state.positions, state.cell))
    return state.replace(active=active & keep)


_build_neighbors = jax.jit(nl.build)


def run(
    integrator: Integrator,
    state: MDState,
    n_steps: int,
    *,
    chunk_size: int = 1000,
    record_fn: Callable[[MDState], Any] | None = None,
    record_every: int = 1,
    callback: Callable[[MDState, Any], MDState | None] | None = None,
    on_unhealthy: str = "warn",
):
    """Run ``n_steps`` steps in compiled chunks of ``chunk_size`` (a multiple of ``record_every``).

    ``record_fn(state)`` is evaluated on the device every ``record_every`` steps; the records of
    all chunks are concatenated (numpy) and returned with the final state: ``(state, records)``.
    ``callback(state, records_of_chunk)`` runs on the host after every chunk (progress,
    checkpoints, files: finished work is never lost); if it returns a state, that one goes on.
    ``on_unhealthy``: see :func:`chunks`. Raises :class:`Diverged` if every replica's positions
    became non-finite.
    """
    collected = []
    for chunk in chunks(integrator, state, n_steps, chunk_size=chunk_size, record_fn=record_fn,
                        record_every=record_every, on_unhealthy=on_unhealthy):
        if not bool(jnp.any(jnp.all(jnp.isfinite(chunk.state.positions), axis=(1, 2)))):
            raise Diverged(f"all replicas have non-finite positions after step {int(chunk.state.step)}; "
                           "reduce the time step or check the starting structure")
        if chunk.records is not None:
            collected.append(chunk.records)
        if callback is not None:
            replaced = callback(chunk.state, chunk.records)
            if replaced is not None:
                chunk.state = replaced
        state = chunk.state
    if not collected:
        return state, None
    return state, jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *collected)


def state_from_atoms(atoms, model, *, seed: int = 0, skin: float = 1.0, dtype=None, devices=None):
    """Build ``(state, force_fn)`` from an ASE ``Atoms`` or a list of them (one per replica).

    Momenta are taken from the atoms (zeros if unset). ``devices`` shards the replicas over
    devices (None: one device; see :mod:`jaxpto.sharding`). Units: ASE's.
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
                                   seed=seed, skin=skin, dtype=dtype, pbc=tuple(bool(p) for p in first.pbc),
                                   devices=devices)
    return state, force_fn
