"""Bussi stochastic velocity rescaling (NVT), exactly as ``ase.md.bussi.Bussi``.

Before each velocity-Verlet step the momenta are scaled by :math:`\\alpha`
(Bussi, Donadio & Parrinello, J. Chem. Phys. 126, 014101 (2007), Eq. A7):

.. math::
    \\alpha^2 = e^{-dt/\\tau} + \\frac{\\bar K}{N_f K}(1 - e^{-dt/\\tau})
       \\Big(R_1^2 + \\sum_{i=2}^{N_f} R_i^2\\Big)
       + 2 R_1 \\sqrt{e^{-dt/\\tau} \\frac{\\bar K}{N_f K}(1 - e^{-dt/\\tau})}

with :math:`\\bar K = N_f k_B T / 2`, :math:`N_f = 3N`, :math:`R_1 \\sim N(0,1)`
and :math:`\\sum_{i\\ge2} R_i^2 \\sim \\chi^2_{N_f-1} = 2\\,\\Gamma((N_f-1)/2)`.
``transferred_energy`` accumulates :math:`(\\alpha^2-1)K` as in ASE.
Per-replica temperature and coupling time ``taut`` (ASE time units).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from ase import units
from flax import struct

from jaxpto.integrators.base import Integrator, check_timestep, slot_parameters_only
from jaxpto.integrators.verlet import velocity_verlet
from jaxpto.state import MDState, ForceFn, kinetic_energy, per_replica


@struct.dataclass
class BussiVariables:
    kT: jax.Array  # [R] eV
    taut: jax.Array  # [R] ASE time
    transferred_energy: jax.Array  # [R] eV


def bussi(force_fn: ForceFn, dt: float) -> Integrator:
    dt = check_timestep(dt)
    vv = velocity_verlet(force_fn, dt)

    def variables(state: MDState, temperature_K, taut, transferred_energy) -> BussiVariables:
        R = state.n_replicas
        dtype = state.positions.dtype
        t = per_replica(temperature_K, R, "temperature_K", dtype)
        tau = per_replica(taut, R, "taut", dtype)
        if bool(jnp.any(t < 0)):
            raise ValueError(f"temperature_K must be >= 0, got {t}")
        if bool(jnp.any(tau <= 0)):
            raise ValueError(f"taut must be positive (ASE time units), got {tau}")
        return BussiVariables(kT=units.kB * t, taut=tau, transferred_energy=transferred_energy)

    def init(state: MDState, temperature_K, taut) -> MDState:
        ke = kinetic_energy(state.momenta, state.masses)
        if bool(jnp.any(jnp.abs(ke) <= 1e-12)):
            raise ValueError(
                "Initial kinetic energy is zero in replica(s) "
                f"{jnp.flatnonzero(jnp.abs(ke) <= 1e-12).tolist()}. Please set the initial velocities "
                "(e.g. MaxwellBoltzmannDistribution) before running Bussi NVT."
            )
        zeros = jnp.zeros(state.n_replicas, state.positions.dtype)
        return state.replace(variables=variables(state, temperature_K, taut, zeros))

    def set_parameters(state: MDState, temperature_K=None, taut=None) -> MDState:
        """New temperatures (K) and/or ``taut`` (ASE time) for a running state; the transferred energy carries on."""
        v: BussiVariables = state.variables
        t = v.kT / units.kB if temperature_K is None else temperature_K
        return state.replace(variables=variables(state, t, v.taut if taut is None else taut, v.transferred_energy))

    def step(state: MDState) -> MDState:
        p: BussiVariables = state.variables
        ndof = 3 * state.n_atoms
        dtype = state.positions.dtype
        exp_term = jnp.exp(-dt / p.taut)
        ke = kinetic_energy(state.momenta, state.masses)
        target = 0.5 * p.kT * ndof
        energy_scaling = (1 - exp_term) * target / ke / ndof
        keys = jax.vmap(lambda k: jax.random.split(k, 3))(state.key)
        r1 = jax.vmap(lambda k: jax.random.normal(k, (), dtype))(keys[:, 1])
        chi2 = 2.0 * jax.vmap(lambda k: jax.random.gamma(k, 0.5 * (ndof - 1), (), dtype))(keys[:, 2])
        alpha = jnp.sqrt(exp_term + energy_scaling * (chi2 + r1**2)
                         + 2 * r1 * jnp.sqrt(exp_term * energy_scaling))
        state = state.replace(
            momenta=alpha[:, None, None] * state.momenta,
            key=keys[:, 0],
            variables=p.replace(transferred_energy=p.transferred_energy + (alpha**2 - 1.0) * ke),
        )
        return vv.step(state)

    return Integrator(init=init, step=step, name="Bussi", set_parameters=set_parameters,
                      exchange_variables=slot_parameters_only)
