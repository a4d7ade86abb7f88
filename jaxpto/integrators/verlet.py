"""Velocity Verlet (NVE), as ``ase.md.verlet.VelocityVerlet``.

.. math::
    p(t + dt/2) &= p(t) + \\tfrac{dt}{2} F(t) \\\\
    r(t + dt)   &= r(t) + dt\\, p(t + dt/2) / m \\\\
    p(t + dt)   &= p(t + dt/2) + \\tfrac{dt}{2} F(t + dt)

Swope, Andersen, Berens & Wilson, J. Chem. Phys. 76, 637 (1982).
One model evaluation per step (forces at ``t`` are carried in the state).
"""

from __future__ import annotations

from jaxpto.integrators.base import Integrator, check_timestep
from jaxpto.state import MDState, ForceFn, evaluate


def velocity_verlet(force_fn: ForceFn, dt: float) -> Integrator:
    dt = check_timestep(dt)

    def init(state: MDState) -> MDState:
        return state.replace(variables=None)

    def step(state: MDState) -> MDState:
        masses = state.masses[None, :, None]
        p = state.momenta + 0.5 * dt * state.forces
        positions = state.positions + dt * p / masses
        state = evaluate(state, force_fn, positions=positions)
        p = p + 0.5 * dt * state.forces
        return state.replace(momenta=p, step=state.step + 1)

    return Integrator(init=init, step=step, name="VelocityVerlet")
