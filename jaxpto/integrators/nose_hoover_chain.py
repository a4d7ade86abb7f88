"""Nose-Hoover chains (NVT), as ``ase.md.nose_hoover_chain.NoseHooverChainNVT``.

Equations of motion (Martyna, Klein & Tuckerman 1992) for ``N`` atoms with
``N_f = 3N`` thermostatted degrees of freedom (ASE does not remove the
centre-of-mass ones) and a chain of ``M = tchain`` thermostats:

.. math::
    \\dot r_i &= p_i / m_i \\\\
    \\dot p_i &= F_i - \\frac{p_{\\eta_1}}{Q_1} p_i \\\\
    \\dot\\eta_j &= p_{\\eta_j} / Q_j \\\\
    \\dot p_{\\eta_j} &= G_j - \\frac{p_{\\eta_{j+1}}}{Q_{j+1}} p_{\\eta_j}
        \\quad (p_{\\eta_{M+1}} \\equiv 0) \\\\
    G_1 &= \\sum_i p_i^2/m_i - N_f k_B T, \\qquad
    G_j = p_{\\eta_{j-1}}^2 / Q_{j-1} - k_B T \\ (j \\ge 2)

with masses ``Q_1 = N_f kT tau^2`` and ``Q_j = kT tau^2`` (``tau = tdamp``). The
conserved quantity (:func:`nhc_conserved_energy`, ASE's ``get_conserved_energy``) is

.. math:: H' = U + K + \\sum_j \\frac{p_{\\eta_j}^2}{2 Q_j}
          + N_f k_B T \\eta_1 + k_B T \\sum_{j \\ge 2} \\eta_j .

Liouville splitting (Tuckerman et al. 2006), one model evaluation per step::

    exp(iL dt) ~ exp(iL_NHC dt/2) exp(iL_2 dt/2) exp(iL_1 dt) exp(iL_2 dt/2) exp(iL_NHC dt/2)

``iL_1``: ``r += dt p/m``; ``iL_2``: ``p += (dt/2) F``. ``exp(iL_NHC delta)`` is
factorised with ``tloop`` sub-steps of the fourth-order Suzuki-Yoshida
weights ``w = (w_1, w_2, w_1)``, ``w_1 = 1/(2 - 2^{1/3})``,
``w_2 = -2^{1/3}/(2 - 2^{1/3})``; each sub-step of length
``d = w_k delta / tloop`` sweeps the chain ``j = M..1`` (``p_eta_j`` kicked by
``d/2 G_j`` between two ``exp(-d/4 p_eta_{j+1}/Q_{j+1})`` scalings), moves
``eta += d p_eta/Q``, scales ``p *= exp(-d p_eta_1/Q_1)`` and sweeps back
``j = 1..M``.

The chain is written once, over any "particle" momentum: the atoms' momenta
here, the cell momenta of the MTK barostats in :mod:`jaxpto.integrators.mtk`
(:class:`NoseHooverChainVariables`, :func:`chain_init`, :func:`chain_propagate`,
:func:`chain_energy`).

Units are ASE's: ``dt`` and ``tdamp`` in ASE time units (``ase.units.fs``),
temperatures in K, ``k_B`` = ``ase.units.kB`` eV/K, energies in eV.

References
----------
* G. J. Martyna, M. L. Klein, M. E. Tuckerman, J. Chem. Phys. 97, 2635 (1992).
* G. J. Martyna, D. J. Tobias, M. L. Klein, J. Chem. Phys. 101, 4177 (1994).
* M. E. Tuckerman, J. Alejandre, R. Lopez-Rendon, A. L. Jochim, G. J. Martyna,
  J. Phys. A: Math. Gen. 39, 5629 (2006).
* H. Yoshida, Phys. Lett. A 150, 262 (1990).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from ase import units
from flax import struct

from jaxpto.integrators.base import Integrator, check_timestep
from jaxpto.state import MDState, ForceFn, evaluate, kinetic_energy, per_replica

# Fourth-order Suzuki-Yoshida weights, computed exactly as ASE does.
FOURTH_ORDER_COEFFS = (
    1 / (2 - 2 ** (1 / 3)),
    -(2 ** (1 / 3)) / (2 - 2 ** (1 / 3)),
    1 / (2 - 2 ** (1 / 3)),
)


@struct.dataclass
class NoseHooverChainVariables:
    """One Nose-Hoover chain per replica (shapes ``[R, M]`` and ``[R]``).

    ``dof`` is the number of degrees of freedom the first link couples to
    (``G_1 = sum p^2/m - dof kT``; also the weight of ``eta_1`` in the energy).
    """

    eta: jax.Array  # [R, M] thermostat positions (dimensionless)
    p_eta: jax.Array  # [R, M] thermostat momenta (eV * ASE time)
    Q: jax.Array  # [R, M] thermostat masses (eV * ASE time^2)
    kT: jax.Array  # [R] target k_B T (eV)
    dof: jax.Array  # [R] degrees of freedom coupled to the first link


def _check_positive(values: jax.Array, name: str) -> None:
    arr = np.asarray(values)
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be positive, got {arr}")


def chain_init(kT: jax.Array, tau: jax.Array, tchain: int, dof, mass_dof=None) -> NoseHooverChainVariables:
    """A chain at rest: ``Q_1 = mass_dof kT tau^2``, ``Q_j = kT tau^2`` (``mass_dof`` defaults to ``dof``).

    ``kT`` and ``tau`` are ``[R]``; ``dof`` and ``mass_dof`` scalars. ASE's
    isotropic MTK barostat couples one degree of freedom but uses
    ``Q_1 = 9 kT tau^2`` (``dof=1, mass_dof=9``).
    """
    if tchain < 1:
        raise ValueError(f"the chain needs at least one thermostat, got tchain={tchain}")
    mass_dof = dof if mass_dof is None else mass_dof
    kT = jnp.asarray(kT)
    dtype = kT.dtype
    # Same operation order as ASE: (n * kT) * tau**2.
    q1 = (float(mass_dof) * kT) * tau**2
    qj = kT * tau**2
    Q = jnp.concatenate([q1[:, None], jnp.broadcast_to(qj[:, None], (kT.shape[0], tchain - 1))], axis=1)
    zeros = jnp.zeros_like(Q)
    return NoseHooverChainVariables(eta=zeros, p_eta=zeros, Q=Q, kT=kT, dof=jnp.full(kT.shape, float(dof), dtype))


def chain_energy(chain: NoseHooverChainVariables) -> jax.Array:
    """``sum_j p_eta_j^2 / (2 Q_j) + dof kT eta_1 + kT sum_{j>=2} eta_j`` per replica (eV)."""
    return (
        chain.dof * chain.kT * chain.eta[:, 0]
        + chain.kT * jnp.sum(chain.eta[:, 1:], axis=1)
        + jnp.sum(0.5 * chain.p_eta**2 / chain.Q, axis=1)
    )


def _bcast(x: jax.Array, like: jax.Array) -> jax.Array:
    """``[R]`` -> broadcastable against ``like`` ``[R, ...]``."""
    return x.reshape(x.shape + (1,) * (like.ndim - 1))


def _kick_link(p_eta, Q, kT, g1, j, half, quarter):
    """``p_eta_j``: scale by ``exp(-d/4 p_{j+1}/Q_{j+1})``, kick by ``d/2 G_j``, scale again."""
    M = len(p_eta)
    pj = p_eta[j]
    if j < M - 1:
        pj = pj * jnp.exp(-quarter * p_eta[j + 1] / Q[j + 1])
    g = g1 if j == 0 else p_eta[j - 1] ** 2 / Q[j - 1] - kT
    pj = pj + half * g
    if j < M - 1:
        pj = pj * jnp.exp(-quarter * p_eta[j + 1] / Q[j + 1])
    p_eta[j] = pj


def _chain_substep(chain: NoseHooverChainVariables, p: jax.Array, kinetic2: Callable, delta: float):
    M = chain.p_eta.shape[1]
    half = delta / 2
    quarter = delta / 4
    Q = [chain.Q[:, j] for j in range(M)]
    p_eta = [chain.p_eta[:, j] for j in range(M)]
    kT = chain.kT
    dof_kT = chain.dof * kT
    for j in reversed(range(M)):
        g1 = kinetic2(p) - dof_kT if j == 0 else None
        _kick_link(p_eta, Q, kT, g1, j, half, quarter)
    p_eta_arr = jnp.stack(p_eta, axis=1)
    eta = chain.eta + delta * p_eta_arr / chain.Q
    p = p * _bcast(jnp.exp(-delta * p_eta[0] / Q[0]), p)
    for j in range(M):
        g1 = kinetic2(p) - dof_kT if j == 0 else None
        _kick_link(p_eta, Q, kT, g1, j, half, quarter)
    return chain.replace(eta=eta, p_eta=jnp.stack(p_eta, axis=1)), p


def chain_propagate(chain: NoseHooverChainVariables, p: jax.Array, kinetic2: Callable[[jax.Array], jax.Array],
                    delta: float, nloop: int = 1):
    """``exp(iL_NHC delta)``: propagate the chain and scale the momenta ``p`` it thermostats.

    ``p`` is ``[R, ...]`` (atoms' momenta ``[R,N,3]``, a cell momentum ``[R,3,3]``,
    ``[R,3]`` or ``[R]``); ``kinetic2(p) -> [R]`` is twice its kinetic energy
    (``sum p^2/m`` or ``sum p^2/W``). ``nloop`` Suzuki-Yoshida sub-steps; all
    loops are unrolled (``delta`` and ``nloop`` are static). Returns ``(chain, p)``.
    """
    for _ in range(nloop):
        for coeff in FOURTH_ORDER_COEFFS:
            chain, p = _chain_substep(chain, p, kinetic2, coeff * delta / nloop)
    return chain, p


def atoms_kinetic2(masses: jax.Array) -> Callable[[jax.Array], jax.Array]:
    """``p -> sum_i p_i^2 / m_i`` per replica (twice the kinetic energy)."""

    def kinetic2(p):
        return jnp.sum(p**2 / masses[None, :, None], axis=(1, 2))

    return kinetic2


def thermostat_init(state: MDState, temperature_K, tdamp, tchain: int) -> NoseHooverChainVariables:
    """The atoms' thermostat chain (``dof = 3N``) with per-replica temperature (K) and ``tdamp`` (ASE time)."""
    dtype = state.positions.dtype
    R = state.n_replicas
    T = per_replica(temperature_K, R, "temperature_K", dtype)
    tau = per_replica(tdamp, R, "tdamp", dtype)
    _check_positive(T, "temperature_K")
    _check_positive(tau, "tdamp")
    kT = units.kB * T
    return chain_init(kT, tau, tchain, dof=3 * state.n_atoms)


def retarget_chain(chain: NoseHooverChainVariables, temperature_K) -> NoseHooverChainVariables:
    """The chain with a new target temperature (K, one or ``[R]``): ``kT`` and the masses ``Q`` (all
    proportional to ``kT`` at fixed damping time) rescaled; ``eta``, ``p_eta`` carry on."""
    R = chain.kT.shape[0]
    T = per_replica(temperature_K, R, "temperature_K", chain.kT.dtype)
    _check_positive(T, "temperature_K")
    kT = units.kB * T
    return chain.replace(kT=kT, Q=chain.Q * (kT / chain.kT)[:, None])


def exchange_chain(chain: NoseHooverChainVariables, perm) -> NoseHooverChainVariables:
    """A chain after replica exchange (Mori & Okamoto, J. Phys. Soc. Jpn. 79, 074001 (2010)):
    the chain's positions move with the configuration, its velocities ``p_eta / Q`` are kept (their
    distribution does not depend on T when ``Q`` is proportional to ``kT``), so ``p_eta`` is scaled by
    the ratio of the masses; ``Q``, ``kT`` and ``dof`` stay with the slot."""
    return chain.replace(eta=chain.eta[perm], p_eta=chain.p_eta[perm] * (chain.Q / chain.Q[perm]))


def nose_hoover_chain_nvt(force_fn: ForceFn, dt: float, tchain: int = 3, tloop: int = 1) -> Integrator:
    """NVT with a Nose-Hoover chain, reproducing ``ase.md.nose_hoover_chain.NoseHooverChainNVT``.

    ``dt`` in ASE time units; ``tchain`` thermostats in the chain; ``tloop``
    Suzuki-Yoshida sub-steps. ``init(state, temperature_K, tdamp)`` takes a
    scalar or one value per replica (``tdamp`` in ASE time units, typically
    ``100 * dt``); the chain starts at rest, as in ASE. ``state.variables`` is an
    :class:`NoseHooverChainVariables`.
    """
    dt = check_timestep(dt)
    tchain = int(tchain)
    tloop = int(tloop)
    if tchain < 1 or tloop < 1:
        raise ValueError(f"tchain and tloop must be >= 1, got tchain={tchain}, tloop={tloop}")

    def init(state: MDState, temperature_K, tdamp) -> MDState:
        return state.replace(variables=thermostat_init(state, temperature_K, tdamp, tchain))

    def set_parameters(state: MDState, temperature_K=None, tdamp=None) -> MDState:
        """New temperatures (K) and/or ``tdamp`` (ASE time); the chain's positions and momenta carry on."""
        chain: NoseHooverChainVariables = state.variables
        if tdamp is not None:
            T = chain.kT / units.kB if temperature_K is None else temperature_K
            fresh = thermostat_init(state, T, tdamp, tchain)
            return state.replace(variables=chain.replace(kT=fresh.kT, Q=fresh.Q))
        if temperature_K is None:
            return state
        return state.replace(variables=retarget_chain(chain, temperature_K))

    def step(state: MDState) -> MDState:
        dt2 = dt / 2
        masses = state.masses[None, :, None]
        kinetic2 = atoms_kinetic2(state.masses)
        chain, p = chain_propagate(state.variables, state.momenta, kinetic2, dt2, tloop)
        p = p + dt2 * state.forces
        positions = state.positions + dt * p / masses
        state = evaluate(state, force_fn, positions=positions)
        p = p + dt2 * state.forces
        chain, p = chain_propagate(chain, p, kinetic2, dt2, tloop)
        return state.replace(momenta=p, variables=chain, step=state.step + 1)

    return Integrator(init=init, step=step, name="NoseHooverChainNVT", set_parameters=set_parameters,
                      exchange_variables=lambda moved, chain, perm, ratio: exchange_chain(chain, perm))


def nhc_conserved_energy(state: MDState) -> jax.Array:
    """ASE's ``NoseHooverChainNVT.get_conserved_energy()`` per replica (eV): ``U + K + E_chain``."""
    return state.energy + kinetic_energy(state.momenta, state.masses) + chain_energy(state.variables)
