"""What every integrator module provides.

An integrator is a set of pure functions, built once from a force function and
the static settings (time step, chain lengths, ...)::

    integrator = velocity_verlet(force_fn, dt)
    state = integrator.init(state, **per_replica_parameters)
    state = integrator.step(state)          # one MD step, jit/scan/vmap friendly
    state = integrator.set_parameters(state, temperature_K=[300, 900])   # between chunks

``init`` stores the integrator's variables *and* its per-replica parameters
(temperatures, pressures, couplings) in ``state.variables`` as arrays (one
``*Variables`` pytree per integrator, e.g. :class:`~jaxpto.integrators.langevin.LangevinVariables`),
so one compiled ``step`` serves every temperature. ``set_parameters`` changes
parameters of a running state (keeping thermostat/barostat positions and momenta),
with arrays of the same shapes: changing a temperature between chunks costs no
recompilation. ``dt`` is in ASE time units (``ase.units.fs``), temperatures in K,
pressures and stresses in eV/A^3.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
from ase import units

from jaxpto.state import MDState


def _no_parameters(state: MDState, **parameters) -> MDState:
    if parameters:
        raise TypeError(f"this integrator has no per-replica parameters; got {sorted(parameters)}")
    return state


class Integrator(NamedTuple):
    init: Callable[..., MDState]
    step: Callable[[MDState], MDState]
    name: str = "integrator"
    set_parameters: Callable[..., MDState] = _no_parameters
    # ``exchange_variables(moved, variables, perm, ratio) -> variables`` for replica exchange: the
    # variables after slot ``r`` received the configuration of slot ``perm[r]`` (``moved`` is the state
    # with positions, cell and momenta already moved and rescaled, ``ratio[r] = T_r / T_perm[r]``).
    # None: the integrator has no temperature (NVE) and cannot exchange.
    exchange_variables: Callable | None = None


def check_timestep(dt: float) -> float:
    """A positive, finite time step in ASE units, or a clear error."""
    try:
        dt = float(dt)
    except (TypeError, ValueError):
        raise TypeError(f"timestep must be a number in ASE time units (e.g. 2 * ase.units.fs), got {dt!r}")
    if not math.isfinite(dt) or dt <= 0:
        raise ValueError(
            f"timestep must be positive and finite, got {dt}; give it in ASE time units, e.g. 2 * ase.units.fs"
        )
    return dt


def target_kT(variables) -> jax.Array | None:
    """The thermostat's target ``k_B T`` per replica (eV, ``[R]``), or None for NVE.

    Every thermostatted integrator's variables carry ``kT`` (the MTK barostats in their
    atoms' chain, ``variables.thermostat.kT``).
    """
    if variables is None:
        return None
    kT = getattr(variables, "kT", None)
    if kT is None:
        kT = getattr(getattr(variables, "thermostat", None), "kT", None)
    return kT


def slot_parameters_only(moved, variables, perm, ratio):
    """``exchange_variables`` of an integrator whose variables are all per-slot parameters
    (temperature, friction, coupling, accounting): nothing moves with the configuration."""
    return variables


def target_temperature_K(variables) -> jax.Array | None:
    """:func:`target_kT` in K (``[R]``), or None for NVE."""
    kT = target_kT(variables)
    return None if kT is None else kT / units.kB
