"""Langevin NVT, exactly as ``ase.md.langevin.Langevin`` (ASE >= 3.23, ``_lgv_version = 5``).

The quasi-symplectic propagator of Vanden-Eijnden & Ciccotti, Chem. Phys.
Lett. 429, 310 (2006), Eq. 23. With friction :math:`\\gamma`, temperature
:math:`k_BT` and :math:`\\sigma = \\sqrt{2 k_B T \\gamma / m}` per atom:

.. math::
    c_1 &= \\tfrac{dt}{2} - \\tfrac{dt^2 \\gamma}{8}, \\quad
    c_2 = \\tfrac{dt\\gamma}{2} - \\tfrac{dt^2\\gamma^2}{8}, \\quad
    c_3 = \\tfrac{\\sqrt{dt}\\,\\sigma}{2} - \\tfrac{dt^{3/2}\\gamma\\sigma}{8}, \\\\
    c_5 &= \\tfrac{dt^{3/2}\\sigma}{2\\sqrt 3}, \\quad c_4 = \\tfrac{\\gamma}{2} c_5 \\\\
    v &\\leftarrow v + c_1 F/m - c_2 v + (c_3 \\xi - c_4 \\eta) \\\\
    r &\\leftarrow r + dt\\, v + c_5 \\eta \\\\
    v &\\leftarrow v + c_1 F(r)/m - c_2 v + (c_3 \\xi - c_4 \\eta)

with :math:`\\xi, \\eta \\sim N(0, 1)` drawn once per step. ``fixcm=True``
(ASE's default) removes the centre-of-mass part of both random terms and
rescales them by :math:`\\sqrt{N/(N-1)}`, exactly as ASE does.

Each replica has its own temperature, friction and random stream. Units:
``dt`` and ``1/friction`` in ASE time units, temperature in K.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from ase import units
from flax import struct

from jaxpto.integrators.base import Integrator, check_timestep, slot_parameters_only
from jaxpto.state import MDState, ForceFn, evaluate, per_replica


@struct.dataclass
class LangevinVariables:
    kT: jax.Array  # [R] eV
    friction: jax.Array  # [R] 1 / ASE time


def langevin_coefficients(params: LangevinVariables, masses, dt: float):
    """``c1 .. c5`` of the module docstring per replica and atom (``[R, N, 1]``), as ASE's ``updatevars``."""
    fr = params.friction[:, None, None]
    sigma = jnp.sqrt(2 * params.kT[:, None, None] * fr / masses[None, :, None])
    c1 = dt / 2.0 - dt * dt * fr / 8.0
    c2 = dt * fr / 2 - dt * dt * fr * fr / 8.0
    c3 = jnp.sqrt(dt) * sigma / 2.0 - dt**1.5 * fr * sigma / 8.0
    c5 = dt**1.5 * sigma / (2 * jnp.sqrt(3.0))
    c4 = fr / 2.0 * c5
    return c1, c2, c3, c4, c5


def langevin(force_fn: ForceFn, dt: float, fixcm: bool = True) -> Integrator:
    dt = check_timestep(dt)

    def variables(state: MDState, temperature_K, friction) -> LangevinVariables:
        R = state.n_replicas
        dtype = state.positions.dtype
        t = per_replica(temperature_K, R, "temperature_K", dtype)
        fr = per_replica(friction, R, "friction", dtype)
        if bool(jnp.any(t < 0)):
            raise ValueError(f"temperature_K must be >= 0, got {t}")
        if bool(jnp.any(fr < 0)):
            raise ValueError(f"friction must be >= 0 (1/ASE time units, e.g. 0.01 / units.fs), got {fr}")
        return LangevinVariables(kT=units.kB * t, friction=fr)

    def init(state: MDState, temperature_K, friction) -> MDState:
        if fixcm and state.n_atoms < 2:
            raise ValueError("fixcm=True needs at least 2 atoms; use fixcm=False for a single atom")
        return state.replace(variables=variables(state, temperature_K, friction))

    def set_parameters(state: MDState, temperature_K=None, friction=None) -> MDState:
        """New temperatures (K) and/or frictions (1/ASE time) for a running state; the rest carries on."""
        v: LangevinVariables = state.variables
        t = v.kT / units.kB if temperature_K is None else temperature_K
        return state.replace(variables=variables(state, t, v.friction if friction is None else friction))

    def step(state: MDState) -> MDState:
        masses = state.masses[None, :, None]
        n = state.n_atoms
        c1, c2, c3, c4, c5 = langevin_coefficients(state.variables, state.masses, dt)
        keys = jax.vmap(lambda k: jax.random.split(k, 3))(state.key)
        shape = state.positions.shape[1:]
        xi = jax.vmap(lambda k: jax.random.normal(k, shape, state.positions.dtype))(keys[:, 1])
        eta = jax.vmap(lambda k: jax.random.normal(k, shape, state.positions.dtype))(keys[:, 2])
        rnd_pos = c5 * eta
        rnd_vel = c3 * xi - c4 * eta
        if fixcm:
            factor = jnp.sqrt(n / (n - 1.0))
            rnd_pos = rnd_pos - jnp.sum(rnd_pos, axis=1, keepdims=True) / n
            rnd_vel = rnd_vel - jnp.sum(rnd_vel * masses, axis=1, keepdims=True) / (masses * n)
            rnd_pos = rnd_pos * factor
            rnd_vel = rnd_vel * factor
        v = state.momenta / masses
        v = v + (c1 * state.forces / masses - c2 * v + rnd_vel)
        x = state.positions
        new_x = x + dt * v + rnd_pos
        # ASE recomputes v from the displacement (the RATTLE hook); keep its rounding.
        v = (new_x - x - rnd_pos) / dt
        state = evaluate(state, force_fn, positions=new_x)
        v = v + (c1 * state.forces / masses - c2 * v + rnd_vel)
        return state.replace(momenta=v * masses, key=keys[:, 0], step=state.step + 1)

    return Integrator(init=init, step=step, name="Langevin", set_parameters=set_parameters,
                      exchange_variables=slot_parameters_only)
