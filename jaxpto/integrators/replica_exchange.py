"""Temperature replica exchange (parallel tempering) inside the compiled step, for any thermostatted integrator.

``replica_exchange(integrator, swap_interval)`` wraps an NVT or NPT integrator: the ``R`` replicas
are *slots*, each with its own temperature (and pressure), and every ``swap_interval`` steps
neighbouring temperatures propose to exchange their configurations, alternately the pairs
``(0,1), (2,3), ...`` and ``(1,2), (3,4), ...`` of the temperature-sorted slots. A swap of the
configurations ``a`` (in slot ``i``) and ``b`` (in slot ``j``) is accepted with the Metropolis
probability ``min(1, exp(Delta))``,

.. math::
    \\Delta = (\\beta_i - \\beta_j)(U_a - U_b) + (\\beta_i P_i - \\beta_j P_j)(V_a - V_b),

the NVT rule of Sugita & Okamoto (Chem. Phys. Lett. 314, 141 (1999)) with the ``P dV`` term of
the isobaric-isothermal ensemble (Okabe, Kawata, Okamoto & Mikami, Chem. Phys. Lett. 335, 435
(2001)); ``U`` is the potential energy, ``V`` the volume, ``P`` the slot's hydrostatic external
pressure (``-tr(sigma_ext)/3`` for Melchionna, ``pressure_au`` for MTK; 0 for NVT). The uniform
numbers are drawn on the device from the wrapper's own key: no host round trip per swap.

On acceptance the momenta of the configuration entering slot ``r`` are rescaled by
``sqrt(T_r / T_old)`` (Sugita & Okamoto), so the kinetic terms cancel from ``Delta``; thermostat
and barostat variables follow Mori & Okamoto (J. Phys. Soc. Jpn. 79, 074001 (2010)): each
integrator's ``exchange_variables`` moves the extended positions with the configuration, keeps the
velocities whose mass is proportional to ``kT`` and rescales by ``sqrt(T_r/T_old)`` those whose mass
is not (see :func:`~jaxpto.integrators.melchionna.melchionna_exchange_variables`,
:func:`~jaxpto.integrators.nose_hoover_chain.exchange_chain`). Parameters (temperature, friction,
pressure, couplings) and the random streams stay with the slots: a slot's records are the series
*of its temperature*; ``variables.walker[r]`` says which walker (starting slot) is in slot ``r``.

Bookkeeping in :class:`ReplicaExchangeVariables` is all per slot (``[R]`` arrays indexed by slot,
so the state keeps one leading replica axis and a stopped slot's entries simply hold still): the
attempts and acceptances of the pair (slot, next-hotter slot), each slot's own random key, and,
moving with the configurations, the walker's id, the last end it visited and its completed round
trips (lowest -> highest -> lowest temperature). Stopped replicas (``state.active`` False) take
part in no swap.
Units are ASE's (eV, A^3, eV/A^3, K).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase import units
from flax import struct

from jaxpto.integrators.base import Integrator, target_kT
from jaxpto.sharding import to_host
from jaxpto.state import MDState, volume


@struct.dataclass
class ReplicaExchangeVariables:
    """The wrapped integrator's variables plus the exchange's bookkeeping (all ``[R]``)."""

    inner: object  # the wrapped integrator's *Variables
    key: jax.Array  # [R, 2] uint32: slot r draws the acceptance number of its pair with the next-hotter slot
    walker: jax.Array  # [R] int32: the walker (starting slot) now in each slot
    attempts: jax.Array  # [R] int32: attempts of the pair (slot, next-hotter slot); 0 for the hottest
    accepted: jax.Array  # [R] int32
    last_end: jax.Array  # [R] int32, moves with the walker: -1 visited the lowest T last, +1 the highest
    round_trips: jax.Array  # [R] int32, moves with the walker: lowest -> highest -> lowest completed
    last_delta: jax.Array  # [R] Delta of the pair's last proposal (NaN: no proposal), for diagnostics
    last_accepted: jax.Array  # [R] bool

    @property
    def kT(self):  # what the driver's health check and the thermostat targets read
        return target_kT(self.inner)

    @property
    def thermostat(self):
        return getattr(self.inner, "thermostat", None)


def slot_pressure(variables) -> jax.Array:
    """The hydrostatic external pressure of each slot (eV/A^3), 0 where no barostat acts."""
    ext = getattr(variables, "externalstress", None)
    if ext is not None:  # Melchionna: -tr(sigma_ext) / 3 where the barostat is on
        return jnp.where(variables.barostat, -jnp.mean(ext[:, :3], axis=-1), 0.0)
    p = getattr(variables, "pressure", None)  # MTK
    if p is not None:
        return p
    return jnp.zeros_like(target_kT(variables))


def log_acceptance(energy, vol, kT, pressure, i, j):
    """``Delta`` of swapping the configurations in slots ``i`` and ``j`` (arrays of slot indices)."""
    beta = 1.0 / kT
    return ((beta[i] - beta[j]) * (energy[i] - energy[j])
            + (beta[i] * pressure[i] - beta[j] * pressure[j]) * (vol[i] - vol[j]))


def _pair_permutation(accept, order):
    """Slot permutation ``perm`` (slot ``r`` receives slot ``perm[r]``) from accepted rank pairs."""
    R = order.shape[0]
    k = jnp.arange(R)
    down = jnp.concatenate([accept, jnp.zeros((1,), bool)])  # rank k swaps with k+1
    up = jnp.concatenate([jnp.zeros((1,), bool), accept])  # rank k swaps with k-1
    rank_src = jnp.where(down, k + 1, jnp.where(up, k - 1, k))
    perm = jnp.zeros((R,), order.dtype).at[order].set(order[rank_src])
    return perm


def _move_configurations(state: MDState, perm, ratio) -> MDState:
    """Positions, cell, energies (and the model's extras) and the neighbour list rows of slot ``perm[r]`` into slot ``r``, momenta
    rescaled by ``sqrt(ratio)``."""
    s = jnp.sqrt(ratio)[:, None, None]
    nbrs = None if state.neighbors is None else jax.tree_util.tree_map(lambda x: x[perm], state.neighbors)
    return state.replace(positions=state.positions[perm], momenta=state.momenta[perm] * s, cell=state.cell[perm],
                         energy=state.energy[perm], forces=state.forces[perm], stress=state.stress[perm],
                         extras=jax.tree_util.tree_map(lambda x: x[perm], state.extras), neighbors=nbrs)


def _update_round_trips(v: ReplicaExchangeVariables, order):
    """The walkers now in the lowest / highest temperature slot; a round trip is completed at the
    lowest end after a visit to the highest."""
    low, high = order[0], order[-1]
    completed = v.last_end[low] == 1
    round_trips = v.round_trips.at[low].add(completed.astype(v.round_trips.dtype))
    last_end = v.last_end.at[low].set(-1).at[high].set(1)
    return v.replace(round_trips=round_trips, last_end=last_end)


def replica_exchange(integrator: Integrator, swap_interval: int, seed: int = 0) -> Integrator:
    """``integrator`` with temperature exchanges every ``swap_interval`` steps (see the module doc).

    ``init(state, *args, **kw)`` initialises the wrapped integrator with ``args``/``kw`` (one
    temperature per replica: the slots) and the exchange's bookkeeping, whose acceptance numbers
    come from ``seed``; ``set_parameters`` goes to the wrapped integrator. The integrator must be
    thermostatted (``exchange_variables``).
    """
    swap_interval = int(swap_interval)
    if swap_interval < 1:
        raise ValueError(f"swap_interval must be >= 1 step, got {swap_interval}")
    if integrator.exchange_variables is None:
        raise ValueError(f"{integrator.name} has no temperature to exchange (NVE); replica exchange needs a "
                         "thermostat: Langevin, Bussi, NoseHooverChainNVT, MelchionnaNPT or an MTK NPT")

    def init(state: MDState, *args, **kw) -> MDState:
        state = integrator.init(state, *args, **kw)
        R = state.n_replicas
        if R < 2:
            raise ValueError("replica exchange needs at least 2 replicas (temperatures)")
        keys = jax.random.split(jax.random.PRNGKey(seed), R)
        keys = jax.random.key_data(keys) if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) else keys
        zeros = jnp.zeros((R,), jnp.int32)
        v = ReplicaExchangeVariables(inner=state.variables, key=keys,
                                     walker=jnp.arange(R, dtype=jnp.int32), attempts=zeros, accepted=zeros,
                                     last_end=zeros, round_trips=zeros,
                                     last_delta=jnp.full((R,), jnp.nan, state.positions.dtype),
                                     last_accepted=jnp.zeros((R,), bool))
        temps = to_host(target_kT(state.variables)) / units.kB
        if len(np.unique(temps)) < R:
            raise ValueError(f"replica exchange needs a different temperature per replica, got {temps.tolist()} K")
        return state.replace(variables=_update_round_trips(v, jnp.argsort(target_kT(state.variables))))

    def attempt(state: MDState) -> MDState:
        v: ReplicaExchangeVariables = state.variables
        kT = target_kT(v.inner)
        R = kT.shape[0]
        order = jnp.argsort(kT)
        parity = (state.step // swap_interval - 1) % 2
        k = jnp.arange(R - 1)
        i, j = order[:-1], order[1:]
        active = jnp.ones((R,), bool) if state.active is None else state.active
        candidate = (k % 2 == parity) & active[i] & active[j]
        delta = log_acceptance(state.energy, volume(state.cell), kT, slot_pressure(v.inner), i, j)
        keys = jax.vmap(jax.random.split)(v.key)  # [R, 2, 2]: every slot's stream advances
        u = jax.vmap(lambda key: jax.random.uniform(key, (), delta.dtype))(keys[i, 1])
        accept = candidate & (jnp.log(u) < delta)
        perm = _pair_permutation(accept, order)
        ratio = kT / kT[perm]
        moved = _move_configurations(state, perm, ratio)
        inner = integrator.exchange_variables(moved, v.inner, perm, ratio)
        v = v.replace(inner=inner, key=keys[:, 0], walker=v.walker[perm], last_end=v.last_end[perm],
                      round_trips=v.round_trips[perm], attempts=v.attempts.at[i].add(candidate.astype(jnp.int32)),
                      accepted=v.accepted.at[i].add(accept.astype(jnp.int32)),
                      last_delta=jnp.full_like(v.last_delta, jnp.nan).at[i].set(jnp.where(candidate, delta, jnp.nan)),
                      last_accepted=jnp.zeros_like(v.last_accepted).at[i].set(accept))
        return moved.replace(variables=_update_round_trips(v, order))

    def step(state: MDState) -> MDState:
        v: ReplicaExchangeVariables = state.variables
        new = integrator.step(state.replace(variables=v.inner))
        new = new.replace(variables=v.replace(inner=new.variables))
        return jax.lax.cond(new.step % swap_interval == 0, attempt, lambda s: s, new)

    def set_parameters(state: MDState, **parameters) -> MDState:
        v: ReplicaExchangeVariables = state.variables
        inner = integrator.set_parameters(state.replace(variables=v.inner), **parameters).variables
        return state.replace(variables=v.replace(inner=inner))

    return Integrator(init=init, step=step, name=f"ReplicaExchange({integrator.name}, every {swap_interval})",
                      set_parameters=set_parameters)


def exchange_statistics(state: MDState, timestep: float | None = None) -> dict:
    """Host-side summary of a replica-exchange state: temperatures in rank order, acceptance per pair,
    walker in each slot, round trips per walker (and, with ``timestep`` in ASE time units, the mean
    round-trip time in ps over all walkers: elapsed time x walkers / completed trips)."""
    from jaxpto.sharding import tree_to_host

    if not isinstance(state.variables, ReplicaExchangeVariables):
        raise TypeError("exchange_statistics needs a state initialised by replica_exchange(...).init")
    v: ReplicaExchangeVariables = tree_to_host(state.variables)  # gathered from every device/process
    kT = np.asarray(target_kT(v.inner), float)
    order = np.argsort(kT)
    attempts = np.asarray(v.attempts)[order[:-1]]  # pair k = (rank k, rank k+1), stored at rank k's slot
    accepted = np.asarray(v.accepted)[order[:-1]]
    walker = np.asarray(v.walker)
    trips_per_walker = np.zeros(len(kT), int)
    trips_per_walker[walker] = np.asarray(v.round_trips)
    out = {"temperatures_k": np.round(kT[order] / units.kB, 6).tolist(), "slot_order": order.tolist(),
           "attempts": attempts.tolist(), "accepted": accepted.tolist(),
           "acceptance": [float(a / n) if n else None for a, n in zip(accepted, attempts)],
           "walker_in_slot": walker.tolist(), "round_trips": trips_per_walker.tolist()}
    trips = int(np.sum(v.round_trips))
    if timestep is not None:
        elapsed_ps = int(state.step) * float(timestep) / (1000 * units.fs)
        out["mean_round_trip_ps"] = elapsed_ps * len(kT) / trips if trips else None
    return out
