"""Martyna-Tobias-Klein NPT, as ASE's ``MTKNPT``, ``MaskedMTKNPT`` and ``IsotropicMTKNPT``.

Both integrators couple the atoms to a Nose-Hoover chain thermostat (``tchain``
links, ``tloop`` Suzuki-Yoshida sub-steps) and the cell momentum to a second
chain (``pchain``, ``ploop``); the chain algorithm is the one of
:mod:`jaxpto.integrators.nose_hoover_chain` applied to the cell momentum.
``N_f = 3N`` (ASE keeps the centre-of-mass degrees of freedom), ``P`` is the
external pressure (eV/A^3, ``pressure_au``), and the internal pressure tensor
includes the ideal-gas term, ``P_int = -(sigma + sigma_kin)`` with ASE's stress
sign and ``sigma_kin = -sum_i p_i (x) p_i / (m_i V)`` evaluated with the momenta
*current at that point of the splitting* (ASE's
``get_stress(include_ideal_gas=True)``).

Full cell, :func:`mtk_npt` (MTK 1994; cell rows ``h``, symmetric ``p_g``)
--------------------------------------------------------------------------

.. math::
    \\dot r_i &= p_i/m_i + (p_g/W)\\, r_i \\\\
    \\dot p_i &= F_i - (p_g/W)\\, p_i - \\frac{\\mathrm{Tr}\\, p_g}{N_f W} p_i
                - \\frac{p_{\\eta_1}}{Q_1} p_i \\\\
    \\dot h &= h\\, p_g / W \\\\
    \\dot p_g &= V (P_{int} - P\\,\\mathbb 1) + \\frac{1}{N_f}\\sum_i \\frac{p_i^2}{m_i}\\mathbb 1
                - \\frac{p_{\\xi_1}}{R_1} p_g

``W = (N + 1) kT tau_p^2``; barostat chain ``R_1 = d kT tau_p^2``,
``R_j = kT tau_p^2``, ``G_{xi_1} = sum p_g^2 / W - d kT`` with ``d = 9`` cell
degrees of freedom. Conserved energy (:func:`mtk_conserved_energy`)

.. math:: H' = U + K + \\frac{\\mathrm{Tr}(p_g^T p_g)}{2W} + P V + E_{NHC}(\\eta) + E_{NHC}(\\xi).

Liouville splitting (ASE, after MTK 1994), one model evaluation per step::

    exp(iL dt) ~ exp(iL_baro dt/2) exp(iL_NHC dt/2) exp(iL_g2 dt/2) exp(iL_2 dt/2)
                 exp(iL_1 dt) exp(iL_g1 dt)
                 exp(iL_2 dt/2) exp(iL_g2 dt/2) exp(iL_NHC dt/2) exp(iL_baro dt/2)

In the eigenbasis ``p_g = U diag(lambda) U^T`` (``x = r U``, ``y = p U``,
``f = F U``), exactly:

* ``iL_1``: ``x_k <- x_k exp(lambda_k d/W) + d y_k/m exprel(lambda_k d/W)``;
* ``iL_2``: ``y_k <- y_k exp(-kappa_k d/W) + d f_k exprel(-kappa_k d/W)``,
  ``kappa_k = lambda_k + Tr p_g / N_f``;
* ``iL_g1``: ``h <- h U diag(exp(lambda d/W)) U^T``;
* ``iL_g2``: ``p_g <- p_g + d G`` with ``G = V (P_int - P 1) + (sum p^2/m / N_f) 1``.

``exprel(x) = (e^x - 1)/x`` (:func:`exprel`).

Masked cell (``mask=(a, b, c)``, ASE's ``MaskedMTKNPT``): the cell momentum
is ``p_g = sum_c p_c e_c (x) e_c`` along the initial unit lattice directions
``e_c``; only the masked ``p_c`` move, with ``G_c = e_c^T [V (P_int - P 1)] e_c
+ sum p^2/m / N_f``; ``d = sum(mask)``; kinetic energy ``sum p_c^2 / 2W``.

Isotropic cell, :func:`isotropic_mtk_npt` (MTK 1994, Tuckerman et al. 2006)
----------------------------------------------------------------------------

``h = h_0 e^{epsilon}``, ``V = V_0 e^{3 epsilon}``:

.. math::
    \\dot r_i &= p_i/m_i + (p_\\epsilon/W) r_i \\\\
    \\dot p_i &= F_i - (1 + 1/N)(p_\\epsilon/W) p_i - \\frac{p_{\\eta_1}}{Q_1} p_i \\\\
    \\dot\\epsilon &= p_\\epsilon / W \\\\
    \\dot p_\\epsilon &= 3V (P_{int} - P) + \\frac{1}{N}\\sum_i \\frac{p_i^2}{m_i}
                        - \\frac{p_{\\xi_1}}{R_1} p_\\epsilon

with ``P_int = -Tr(sigma + sigma_kin)/3``, ``W = (3N + 3) kT tau_p^2``; ASE's
barostat chain has ``R_1 = 9 kT tau_p^2`` (kept for bit-compatibility) with
``G_{xi_1} = p_eps^2/W - kT``; conserved energy
``U + K + p_eps^2/2W + P V + E_NHC(eta) + kT sum xi + sum p_xi^2 / 2R``. Same
splitting as above with scalar exponentials.

Units: ASE's (``dt``, ``tdamp``, ``pdamp`` in ASE time units, ``pressure_au``
in eV/A^3, e.g. ``1.0 * ase.units.GPa``; temperatures in K). ASE suggests
``tdamp ~ 100 dt`` and ``pdamp ~ 1000 dt``.

References
----------
* G. J. Martyna, M. L. Klein, M. E. Tuckerman, J. Chem. Phys. 97, 2635 (1992).
* G. J. Martyna, D. J. Tobias, M. L. Klein, J. Chem. Phys. 101, 4177 (1994).
* M. E. Tuckerman, J. Alejandre, R. Lopez-Rendon, A. L. Jochim, G. J. Martyna,
  J. Phys. A: Math. Gen. 39, 5629 (2006).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase import units
from flax import struct

from jaxpto.integrators.base import Integrator, check_timestep
from jaxpto.integrators.nose_hoover_chain import (
    NoseHooverChainVariables,
    _check_positive,
    atoms_kinetic2,
    chain_energy,
    chain_init,
    chain_propagate,
    thermostat_init,
    retarget_chain,
    exchange_chain,
)
from jaxpto.sharding import to_host
from jaxpto.state import MDState, ForceFn, evaluate, kinetic_energy, kinetic_stress, per_replica, volume

# ---------------------------------------------------------------------------
# exprel
# ---------------------------------------------------------------------------

_EXPREL_SERIES_MAX = 0.0625  # |x| below which the Taylor series is used


def exprel(x: jax.Array) -> jax.Array:
    """``(exp(x) - 1)/x`` with ``exprel(0) = 1``, accurate to a few ulp in float32 and float64.

    A degree-8 Taylor series (Horner) for ``|x| < 1/16`` (truncation
    ``< 5e-18`` relative), ``expm1(x)/x`` elsewhere (``scipy.special.exprel``).
    Gradients at 0 are not NaN-safe (not needed by the integrators).
    """
    x = jnp.asarray(x)
    small = jnp.abs(x) < _EXPREL_SERIES_MAX
    xs = jnp.where(small, x, jnp.zeros_like(x))
    # sum_{k=0}^{8} x^k / (k+1)!
    series = jnp.ones_like(xs) / 362880.0
    for fact in (40320.0, 5040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0):
        series = series * xs + 1.0 / fact
    xl = jnp.where(small, jnp.ones_like(x), x)
    return jnp.where(small, series, jnp.expm1(xl) / xl)


# ---------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------


@struct.dataclass
class MTKVariables:
    """``state.variables`` of :func:`mtk_npt` (full and masked cell)."""

    thermostat: NoseHooverChainVariables  # atoms' chain (dof 3N)
    barostat: NoseHooverChainVariables  # cell chain (dof 9, or sum(mask))
    p_cell: jax.Array  # [R,3,3] p_g (full) or [R,3] p_c (masked), eV * ASE time
    W: jax.Array  # [R] cell mass, (N + 1) kT tau_p^2
    pressure: jax.Array  # [R] external pressure, eV/A^3
    basis: jax.Array | None = None  # [R,3,3] masked only: initial unit lattice vectors (rows)


@struct.dataclass
class IsotropicMTKVariables:
    """``state.variables`` of :func:`isotropic_mtk_npt`."""

    thermostat: NoseHooverChainVariables
    barostat: NoseHooverChainVariables  # dof 1, R_1 = 9 kT tau_p^2 (ASE)
    eps: jax.Array  # [R] (1/3) ln(V / V0)
    p_eps: jax.Array  # [R]
    W: jax.Array  # [R] (3N + 3) kT tau_p^2
    pressure: jax.Array  # [R] eV/A^3
    cell0: jax.Array  # [R,3,3]
    volume0: jax.Array  # [R]


def _npt_parameters(state: MDState, temperature_K, pressure_au, tdamp, pdamp):
    dtype = state.positions.dtype
    R = state.n_replicas
    T = per_replica(temperature_K, R, "temperature_K", dtype)
    P = per_replica(pressure_au, R, "pressure_au", dtype)
    tau_t = per_replica(tdamp, R, "tdamp", dtype)
    tau_p = per_replica(pdamp, R, "pdamp", dtype)
    _check_positive(T, "temperature_K")
    _check_positive(tau_t, "tdamp")
    _check_positive(tau_p, "pdamp")
    return units.kB * T, P, tau_p


def _check_cell(state: MDState) -> None:
    cell = to_host(state.cell)
    if np.any(np.abs(np.linalg.det(cell)) < 1e-12):
        raise ValueError("NPT needs a periodic cell with three independent lattice vectors (non-zero volume)")


def _eig(p_g):
    """Eigen-decomposition of the symmetric ``[R,3,3]`` cell momentum (``U`` columns = eigenvectors)."""
    return jnp.linalg.eigh(p_g)


# ---------------------------------------------------------------------------
# Pieces of the full / masked cell step (mask: None or three booleans)
# ---------------------------------------------------------------------------


def _full_p_g(v: MTKVariables, mask):
    if mask is None:
        return v.p_cell
    # sum_c p_c e_c (x) e_c  ==  ASE's (p_c * h0.T) @ h0
    return jnp.einsum("rc,rca,rcb->rab", v.p_cell, v.basis, v.basis)


def _cell_kinetic2(v: MTKVariables):
    axes = tuple(range(1, v.p_cell.ndim))
    return lambda p: jnp.sum(p**2, axis=axes) / v.W


def _integrate_p_cell(state: MDState, v: MTKVariables, p, delta, mask):
    """``p_g += delta G`` (exp(iL_g2 delta)); stress at the current positions/cell and momenta ``p``."""
    masses = state.masses[None, :, None]
    pressure_tensor = -(state.stress + kinetic_stress(p, state.masses, state.cell))
    V = volume(state.cell)
    kinetic_term = jnp.sum(p**2 / masses, axis=(1, 2)) / (3 * state.n_atoms)
    eye = jnp.eye(3, dtype=p.dtype)
    pv = V[:, None, None] * (pressure_tensor - v.pressure[:, None, None] * eye)
    if mask is None:
        G = pv + kinetic_term[:, None, None] * eye
        return v.replace(p_cell=v.p_cell + delta * G)
    gc = jnp.einsum("rca,rab,rcb->rc", v.basis, pv, v.basis) + kinetic_term[:, None]
    return v.replace(p_cell=jnp.where(np.asarray(mask)[None, :], v.p_cell + delta * gc, v.p_cell))


def _integrate_p(p, forces, lam, U, p_g, W, n_atoms, delta):
    kappas = lam + jnp.trace(p_g, axis1=1, axis2=2)[:, None] / (3 * n_atoms)
    a = (-kappas * delta / W[:, None])[:, None, :]
    y = p @ U
    sol = y * jnp.exp(a) + delta * (forces @ U) * exprel(a)
    return sol @ jnp.swapaxes(U, 1, 2)


def _integrate_q(q, p, masses, lam, U, W, delta):
    a = (lam * delta / W[:, None])[:, None, :]
    x = q @ U
    y = p @ U
    sol = x * jnp.exp(a) + delta * y / masses * exprel(a)
    return sol @ jnp.swapaxes(U, 1, 2)


def _integrate_h(h, lam, U, W, delta):
    n = h @ U
    sol = n * jnp.exp(lam * delta / W[:, None])[:, None, :]
    return sol @ jnp.swapaxes(U, 1, 2)


def mtk_set_parameters(state: MDState, temperature_K=None, pressure_au=None) -> MDState:
    """New temperatures (K) and/or pressures (eV/A^3) for a running MTK state: chain masses and the
    cell mass ``W`` (all proportional to ``kT``) rescaled; positions and momenta of chains and cell
    carry on. (Both MTK variants.)"""
    v = state.variables
    if temperature_K is not None:
        thermostat = retarget_chain(v.thermostat, temperature_K)
        ratio = thermostat.kT / v.thermostat.kT
        barostat = v.barostat.replace(kT=thermostat.kT, Q=v.barostat.Q * ratio[:, None])
        v = v.replace(thermostat=thermostat, barostat=barostat, W=v.W * ratio)
    if pressure_au is not None:
        v = v.replace(pressure=per_replica(pressure_au, state.n_replicas, "pressure_au", v.W.dtype))
    return state.replace(variables=v)


def _exchange_full(moved, v: MTKVariables, perm, ratio):
    """Replica exchange: chains as :func:`exchange_chain`; the cell velocity ``p_cell / W`` kept (``W`` ~ kT)."""
    scale = (v.W / v.W[perm]).reshape((-1,) + (1,) * (v.p_cell.ndim - 1))
    return v.replace(thermostat=exchange_chain(v.thermostat, perm), barostat=exchange_chain(v.barostat, perm),
                     p_cell=v.p_cell[perm] * scale, basis=None if v.basis is None else v.basis[perm])


def _exchange_isotropic(moved, v: IsotropicMTKVariables, perm, ratio):
    """Replica exchange: chains as :func:`exchange_chain`; ``eps`` and its reference cell move with the
    configuration, the velocity ``p_eps / W`` is kept (``W`` ~ kT)."""
    return v.replace(thermostat=exchange_chain(v.thermostat, perm), barostat=exchange_chain(v.barostat, perm),
                     eps=v.eps[perm], p_eps=v.p_eps[perm] * (v.W / v.W[perm]), cell0=v.cell0[perm],
                     volume0=v.volume0[perm])


# ---------------------------------------------------------------------------
# Full / masked cell
# ---------------------------------------------------------------------------


def mtk_npt(force_fn: ForceFn, dt: float, tchain: int = 3, pchain: int = 3, tloop: int = 1,
            ploop: int = 1, mask: tuple[bool, bool, bool] | None = None) -> Integrator:
    """MTK NPT with a fully flexible cell, reproducing ``ase.md.nose_hoover_chain.MTKNPT``.

    With ``mask=(a, b, c)`` (booleans) only the selected cell axes fluctuate
    (their lengths, along the initial lattice directions), reproducing
    ``MaskedMTKNPT(..., mask=mask)``; note ``mask=(True, True, True)`` (3 cell
    degrees of freedom) differs from ``mask=None`` (9).

    ``init(state, temperature_K, pressure_au, tdamp, pdamp)``: scalars or one
    value per replica (K, eV/A^3, ASE time units); thermostat, barostat and cell
    momenta start at rest, as in ASE. The system must be periodic in 3D.
    """
    dt = check_timestep(dt)
    tchain, pchain, tloop, ploop = int(tchain), int(pchain), int(tloop), int(ploop)
    if min(tchain, pchain, tloop, ploop) < 1:
        raise ValueError(f"tchain, pchain, tloop, ploop must be >= 1, got {tchain}, {pchain}, {tloop}, {ploop}")
    if mask is not None:
        mask = tuple(bool(m) for m in mask)
        if len(mask) != 3:
            raise ValueError(f"mask must have three booleans (a, b, c), got {mask}")
        cell_dof = sum(mask)
        if cell_dof == 0:
            raise ValueError("mask=(False, False, False) freezes the cell: use nose_hoover_chain_nvt instead")
    else:
        cell_dof = 9

    def init(state: MDState, temperature_K, pressure_au, tdamp, pdamp) -> MDState:
        _check_cell(state)
        kT, P, tau_p = _npt_parameters(state, temperature_K, pressure_au, tdamp, pdamp)
        thermostat = thermostat_init(state, temperature_K, tdamp, tchain)
        barostat = chain_init(kT, tau_p, pchain, dof=cell_dof)
        W = (float(state.n_atoms + 1) * kT) * tau_p**2
        R = state.n_replicas
        dtype = state.positions.dtype
        if mask is None:
            p_cell = jnp.zeros((R, 3, 3), dtype)
            basis = None
        else:
            p_cell = jnp.zeros((R, 3), dtype)
            basis = state.cell / jnp.linalg.norm(state.cell, axis=2)[:, :, None]
        variables = MTKVariables(thermostat=thermostat, barostat=barostat, p_cell=p_cell, W=W,
                                 pressure=P, basis=basis)
        return state.replace(variables=variables)

    def step(state: MDState) -> MDState:
        dt2 = dt / 2
        v: MTKVariables = state.variables
        masses = state.masses[None, :, None]
        kin2 = atoms_kinetic2(state.masses)
        N = state.n_atoms

        barostat, p_cell = chain_propagate(v.barostat, v.p_cell, _cell_kinetic2(v), dt2, ploop)
        v = v.replace(barostat=barostat, p_cell=p_cell)
        thermostat, p = chain_propagate(v.thermostat, state.momenta, kin2, dt2, tloop)
        v = v.replace(thermostat=thermostat)
        v = _integrate_p_cell(state, v, p, dt2, mask)

        p_g = _full_p_g(v, mask)
        lam, U = _eig(p_g)  # p_g is constant from here until the second iL_g2
        p = _integrate_p(p, state.forces, lam, U, p_g, v.W, N, dt2)
        q = _integrate_q(state.positions, p, masses, lam, U, v.W, dt)
        h = _integrate_h(state.cell, lam, U, v.W, dt)
        state = evaluate(state, force_fn, positions=q, cell=h)
        p = _integrate_p(p, state.forces, lam, U, p_g, v.W, N, dt2)

        v = _integrate_p_cell(state, v, p, dt2, mask)
        thermostat, p = chain_propagate(v.thermostat, p, kin2, dt2, tloop)
        v = v.replace(thermostat=thermostat)
        barostat, p_cell = chain_propagate(v.barostat, v.p_cell, _cell_kinetic2(v), dt2, ploop)
        v = v.replace(barostat=barostat, p_cell=p_cell)
        return state.replace(momenta=p, variables=v, step=state.step + 1)

    name = "MTKNPT" if mask is None else f"MaskedMTKNPT{mask}"
    return Integrator(init=init, step=step, name=name, set_parameters=mtk_set_parameters,
                      exchange_variables=_exchange_full)


# ---------------------------------------------------------------------------
# Isotropic cell
# ---------------------------------------------------------------------------


def isotropic_mtk_npt(force_fn: ForceFn, dt: float, tchain: int = 3, pchain: int = 3, tloop: int = 1,
                      ploop: int = 1) -> Integrator:
    """MTK NPT with isotropic volume fluctuations, reproducing ``ase.md.nose_hoover_chain.IsotropicMTKNPT``.

    ``init(state, temperature_K, pressure_au, tdamp, pdamp)``: scalars or one
    value per replica (K, eV/A^3, ASE time units). The reference cell
    ``h0`` and volume ``V0`` are the cell at ``init``; ``h = h0 exp(eps)``.
    """
    dt = check_timestep(dt)
    tchain, pchain, tloop, ploop = int(tchain), int(pchain), int(tloop), int(ploop)
    if min(tchain, pchain, tloop, ploop) < 1:
        raise ValueError(f"tchain, pchain, tloop, ploop must be >= 1, got {tchain}, {pchain}, {tloop}, {ploop}")

    def init(state: MDState, temperature_K, pressure_au, tdamp, pdamp) -> MDState:
        _check_cell(state)
        kT, P, tau_p = _npt_parameters(state, temperature_K, pressure_au, tdamp, pdamp)
        thermostat = thermostat_init(state, temperature_K, tdamp, tchain)
        barostat = chain_init(kT, tau_p, pchain, dof=1, mass_dof=9)
        W = (float(3 * state.n_atoms + 3) * kT) * tau_p**2
        zeros = jnp.zeros_like(kT)
        variables = IsotropicMTKVariables(thermostat=thermostat, barostat=barostat, eps=zeros, p_eps=zeros,
                                          W=W, pressure=P, cell0=state.cell, volume0=volume(state.cell))
        return state.replace(variables=variables)

    def integrate_p_cell(state: MDState, v: IsotropicMTKVariables, p, delta):
        masses = state.masses[None, :, None]
        stress = state.stress + kinetic_stress(p, state.masses, state.cell)
        p_int = -jnp.trace(stress, axis1=1, axis2=2) / 3
        V = v.volume0 * jnp.exp(3 * v.eps)
        G = 3 * V * (p_int - v.pressure) + jnp.sum(p**2 / masses, axis=(1, 2)) / state.n_atoms
        return v.replace(p_eps=v.p_eps + delta * G)

    def step(state: MDState) -> MDState:
        dt2 = dt / 2
        v: IsotropicMTKVariables = state.variables
        masses = state.masses[None, :, None]
        kin2 = atoms_kinetic2(state.masses)
        N = state.n_atoms
        r3 = (slice(None), None, None)

        barostat, p_eps = chain_propagate(v.barostat, v.p_eps, lambda pe: pe**2 / v.W, dt2, ploop)
        v = v.replace(barostat=barostat, p_eps=p_eps)
        thermostat, p = chain_propagate(v.thermostat, state.momenta, kin2, dt2, tloop)
        v = v.replace(thermostat=thermostat)
        v = integrate_p_cell(state, v, p, dt2)

        def integrate_p(p, forces, delta):
            x = ((1 + 1 / N) * v.p_eps * delta / v.W)[r3]
            return p * jnp.exp(-x) + delta * forces * exprel(-x)

        p = integrate_p(p, state.forces, dt2)
        x = (dt * v.p_eps / v.W)[r3]
        q = state.positions * jnp.exp(x) + p * dt / masses * exprel(x)
        eps = v.eps + dt * v.p_eps / v.W
        v = v.replace(eps=eps)
        state = evaluate(state, force_fn, positions=q, cell=v.cell0 * jnp.exp(eps)[r3])
        p = integrate_p(p, state.forces, dt2)

        v = integrate_p_cell(state, v, p, dt2)
        thermostat, p = chain_propagate(v.thermostat, p, kin2, dt2, tloop)
        v = v.replace(thermostat=thermostat)
        barostat, p_eps = chain_propagate(v.barostat, v.p_eps, lambda pe: pe**2 / v.W, dt2, ploop)
        v = v.replace(barostat=barostat, p_eps=p_eps)
        return state.replace(momenta=p, variables=v, step=state.step + 1)

    return Integrator(init=init, step=step, name="IsotropicMTKNPT", set_parameters=mtk_set_parameters,
                      exchange_variables=_exchange_isotropic)


# ---------------------------------------------------------------------------
# Conserved energy
# ---------------------------------------------------------------------------


def mtk_conserved_energy(state: MDState) -> jax.Array:
    """ASE's ``get_conserved_energy()`` of ``MTKNPT``/``MaskedMTKNPT``/``IsotropicMTKNPT``, per replica (eV)."""
    v = state.variables
    if not isinstance(v, (IsotropicMTKVariables, MTKVariables)):
        raise TypeError(f"state.variables is {type(v).__name__}, not an MTK integrator's variables "
                        "(initialise the state with mtk_npt(...).init or isotropic_mtk_npt(...).init)")
    base = state.energy + kinetic_energy(state.momenta, state.masses) + chain_energy(v.thermostat)
    base = base + chain_energy(v.barostat)
    if isinstance(v, IsotropicMTKVariables):
        V = v.volume0 * jnp.exp(3 * v.eps)
        return base + v.p_eps * v.p_eps / (2 * v.W) + v.pressure * V
    axes = tuple(range(1, v.p_cell.ndim))
    return base + jnp.sum(v.p_cell**2, axis=axes) / (2 * v.W) + v.pressure * volume(state.cell)
