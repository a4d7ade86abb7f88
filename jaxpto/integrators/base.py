"""What every integrator module provides.

An integrator is a pair of pure functions, built once from a force function and
the static settings (time step, chain lengths, ...)::

    integrator = velocity_verlet(force_fn, dt)
    state = integrator.init(state, **per_replica_parameters)
    state = integrator.step(state)          # one MD step, jit/scan/vmap friendly

``init`` stores the integrator's variables *and* its per-replica parameters
(temperatures, pressures, couplings) in ``state.integrator`` as arrays, so one
compiled ``step`` serves every temperature and changing a temperature between
chunks costs no recompilation. ``dt`` is in ASE time units (``ase.units.fs``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from jaxpto.state import MDState


class Integrator(NamedTuple):
    init: Callable[..., MDState]
    step: Callable[[MDState], MDState]
    name: str = "integrator"


def check_timestep(dt: float) -> float:
    """A positive, finite time step in ASE units, or a clear error."""
    import math

    try:
        dt = float(dt)
    except (TypeError, ValueError):
        raise TypeError(f"timestep must be a number in ASE time units (e.g. 2 * ase.units.fs), got {dt!r}")
    if not math.isfinite(dt) or dt <= 0:
        raise ValueError(
            f"timestep must be positive and finite, got {dt}; give it in ASE time units, e.g. 2 * ase.units.fs"
        )
    return dt
