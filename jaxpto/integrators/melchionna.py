"""Melchionna NPT (Nose-Hoover thermostat + Parrinello-Rahman barostat), as ``ase.md.melchionna.MelchionnaNPT``.

This is ASE's ``NPT`` (``ase.md.npt.NPT`` is an alias), reproduced operation by
operation so that, with the same forces, positions, momenta and cell agree with
ASE's to rounding. It is the ensemble of the reference study (``ttime = 25 fs``,
``pfactor = 75**2 * units.fs``, ``externalstress = 0``, ``mask = eye(3)``, 2 fs).

Equations of motion
-------------------
Melchionna, Ciccotti & Holian, Mol. Phys. 78, 533 (1993), in the form modified
by Melchionna, Phys. Rev. E 61, 6165 (2000). Row-vector convention as in ASE:
positions ``r`` [N,3] and cell ``h`` (rows = lattice vectors) with scaled
coordinates ``q = r h^{-1} - 1/2``; ``eta`` is a triangular 3x3 strain rate (the
same triangle as ``h``), ``zeta`` the thermostat friction:

.. math::
    \\dot{\\mathbf r}_i &= \\mathbf p_i / m_i + \\mathbf r_i\\, \\eta \\\\
    \\dot{\\mathbf p}_i &= \\mathbf F_i - \\mathbf p_i\\, (\\eta + \\zeta \\mathbf 1) \\\\
    \\dot h &= h\\, \\eta \\\\
    \\dot\\zeta &= \\frac{2}{3 N k_B T \\tau_T^2} \\big(K - \\tfrac32 (N-1) k_B T\\big) \\\\
    \\dot\\eta &= -\\frac{\\det h}{\\mathrm{pfactor} \\cdot \\det h_0}\\;
        \\mathrm{mask} \\circ \\mathrm{tri}\\big(\\sigma - \\sigma_{\\rm ext}\\big)

with ``K`` the kinetic energy, ``sigma`` the instantaneous stress *including the
ideal-gas term* (``-sum_i p_i (x) p_i / m_i / V``; ASE sign, positive in tension,
so a scalar pressure ``P`` is ``sigma_ext = -P 1``), ``h_0`` the cell at
``init``, ``tri`` the Voigt 6-vector ``(xx, yy, zz, yz, xz, xy)`` placed in the
upper (or, for a lower-triangular cell, lower) triangle, ``tau_T = ttime`` and
``pfactor ~ ptime^2 B`` (bulk modulus ``B``). ``ttime=None`` sets ``zeta = 0``
(no thermostat), ``pfactor=None`` sets ``eta = 0`` (no barostat). With
``frac_traceless != 1`` the mask is ignored (as in ASE) and ``tri(.)`` is
replaced by its trace part plus ``frac_traceless`` times its traceless part.

The conserved quantity (:func:`melchionna_gibbs_energy`, ASE's
``get_gibbs_free_energy``) is

.. math::
    G = E + K - \\tfrac13 \\mathrm{tr}(\\sigma_{\\rm ext}) \\det h
        + \\tfrac32 N k_B T \\tau_T^2 \\zeta^2 + 3 (N-1) k_B T \\int_0^t \\zeta\\,dt'
        + \\tfrac{\\mathrm{pfactor} \\det h_0}{2}\\, \\eta:\\eta .

Centred-difference scheme
-------------------------
Holian, De Groot, Hoover & Hoover, Phys. Rev. A 41, 4552 (1990). All variables
live on the same time grid and are advanced with centred (three-level)
differences, ``x(t+dt) = x(t-dt) + 2 dt xdot(t)`` for ``h``, ``eta``, ``zeta``;
the scaled positions obey the Stoermer form

.. math::
    q(t{+}dt)\\,(\\mathbf 1 + \\beta) = 2 q(t) + q(t{-}dt)\\,(\\beta - \\mathbf 1)
        + dt^2\\, (F/m)\\, h^{-1}, \\qquad
    \\beta = dt\\, h (\\eta + \\tfrac12 \\zeta \\mathbf 1) h^{-1}

(evaluated with ``h, eta, zeta`` at ``t``), and the momenta are
``p(t) = m (q(t+dt) - q(t-dt)) h(t) / (2 dt)``. The scheme is not self-starting:
``init`` performs ASE's backwards step (``h(-dt) = h - dt h eta``,
``eta(-dt) = eta - dt etadot``, ``zeta(-dt) = zeta - dt zetadot`` and two
fixed-point passes for ``q(-dt)`` that reproduce the given momenta, stopping
after the first if the kinetic energy is below ``1e-5`` eV/atom).

Per step: ``h, eta, zeta`` are advanced with the stress and kinetic energy at
``t`` (the state's), the atoms are moved to ``r = (q + 1/2) h``, the model is
evaluated ONCE there, and ``q(t+2dt)`` and the momenta follow from the new forces.

Units are ASE's: ``dt``, ``ttime`` in ASE time (``units.fs``), ``pfactor`` in
eV A^-3 (ASE time)^2, ``externalstress`` in eV/A^3 (``units.GPa``), temperatures in K.
Like ASE, ``init`` removes the centre-of-mass momentum as ``p_i -= sum_j p_j / N``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from ase import units
from flax import struct

from jaxpto.integrators.base import Integrator, check_timestep
from jaxpto.sharding import to_host
from jaxpto.state import MDState, ForceFn, evaluate, per_replica


@struct.dataclass
class MelchionnaVariables:
    """Variables (``q``: scaled positions at ``t-dt, t, t+dt``; ``h(t-dt)``; ``eta``, ``zeta``) and parameters."""

    q: jax.Array  # [R, N, 3] scaled positions r h^-1 - 1/2 at t
    q_past: jax.Array  # [R, N, 3] at t - dt
    q_future: jax.Array  # [R, N, 3] at t + dt
    h_past: jax.Array  # [R, 3, 3] cell at t - dt (the cell at t is state.cell)
    eta: jax.Array  # [R, 3, 3] strain rate at t (triangular)
    eta_past: jax.Array  # [R, 3, 3]
    zeta: jax.Array  # [R] thermostat friction at t
    zeta_past: jax.Array  # [R]
    zeta_integrated: jax.Array  # [R] int_0^t zeta dt'
    # per-replica parameters
    kT: jax.Array  # [R] eV
    externalstress: jax.Array  # [R, 6] eV/A^3, Voigt (xx, yy, zz, yz, xz, xy), ASE sign
    ttime: jax.Array  # [R] ASE time (0 where the thermostat is off)
    pfactor: jax.Array  # [R] (0 where the barostat is off)
    tfact: jax.Array  # [R] 2 / (3 N kT ttime^2), 0 where off
    pfact: jax.Array  # [R] 1 / (pfactor det h_0), 0 where off
    desired_ekin: jax.Array  # [R] 1.5 (N - 1) kT
    thermostat: jax.Array  # [R] bool
    barostat: jax.Array  # [R] bool
    upper: jax.Array  # [R] bool: cell is upper-triangular (else lower)


# ----------------------------------------------------------------------------
# Parameter parsing (host side, before anything runs)
# ----------------------------------------------------------------------------


def _mask_3x3(mask) -> np.ndarray:
    """ASE's ``set_mask``: None -> all ones; 3-vector -> outer(m, m); 3x3 -> as given; as 0/1."""
    if mask is None:
        mask = np.ones((3,))
    mask = np.asarray(mask)
    if mask.shape != (3,) and mask.shape != (3, 3):
        raise ValueError(
            f"mask has shape {mask.shape}; it must be None, a 3-vector of 0/1 (e.g. (1, 1, 0) keeps the "
            "z length fixed) or a symmetric 3x3 array of 0/1 (which strain components may change)"
        )
    mask = np.not_equal(mask, 0)
    if mask.shape == (3,):
        mask = np.outer(mask, mask)
    return mask.astype(float)


def _optional_per_replica(value, n_replicas: int, name: str):
    """``None`` (off everywhere), a number, or one number-or-None per replica -> (values [R], enabled [R])."""
    if value is None:
        return np.zeros(n_replicas), np.zeros(n_replicas, bool)
    if np.ndim(value) == 0:
        items = [value] * n_replicas
    else:
        items = list(value)
        if len(items) != n_replicas:
            raise ValueError(
                f"{name} has {len(items)} values, but there are {n_replicas} replicas: give None, one value, "
                f"or exactly {n_replicas} values (number or None) one per replica."
            )
    enabled = np.array([v is not None for v in items])
    vals = np.array([float(v) if v is not None else 0.0 for v in items])
    bad = enabled & ~(np.isfinite(vals) & (vals > 0))
    if bad.any():
        raise ValueError(
            f"{name} must be positive and finite (or None to switch it off), got {vals[bad].tolist()} "
            f"in replica(s) {np.flatnonzero(bad).tolist()}"
        )
    return vals, enabled


def _voigt_from_3x3(s: np.ndarray) -> np.ndarray:
    if not np.allclose(s, np.swapaxes(s, -1, -2), rtol=0, atol=1e-12 * max(1.0, np.abs(s).max())):
        raise ValueError("The external stress must be a symmetric tensor.")
    return np.stack([s[..., 0, 0], s[..., 1, 1], s[..., 2, 2], s[..., 1, 2], s[..., 0, 2], s[..., 0, 1]], -1)


def _external_stress(value, n_replicas: int) -> np.ndarray:
    """ASE's ``set_stress`` per replica -> [R, 6] Voigt stress (ASE sign; a pressure P is (-P,-P,-P,0,0,0))."""
    R = n_replicas
    s = np.asarray(value, dtype=float)
    if s.ndim == 0:
        out = np.tile([-s, -s, -s, 0.0, 0.0, 0.0], (R, 1))
    elif s.shape == (6,):
        if R == 6:
            raise ValueError(
                "externalstress of shape (6,) with 6 replicas is ambiguous: give a [6, 6] array for one "
                "Voigt stress per replica, or a [6, 3, 3] array of per-replica pressures as -P * eye(3)"
            )
        out = np.tile(s, (R, 1))
    elif s.shape == (3, 3):
        out = np.tile(_voigt_from_3x3(s), (R, 1))
    elif s.shape == (R,):
        out = np.stack([-s, -s, -s, 0 * s, 0 * s, 0 * s], -1)
    elif s.shape == (R, 6):
        out = s.copy()
    elif s.shape == (R, 3, 3):
        out = _voigt_from_3x3(s)
    else:
        raise ValueError(
            f"externalstress has shape {s.shape}; give a pressure (scalar), a Voigt 6-vector "
            "(xx, yy, zz, yz, xz, xy) or a symmetric 3x3 tensor (eV/A^3, positive in tension), or one of "
            f"those per replica: shape [{R}], [{R}, 6] or [{R}, 3, 3]"
        )
    if not np.all(np.isfinite(out)):
        raise ValueError(f"externalstress contains non-finite values: {out}")
    return out


_TRIANGULAR_HELP = (
    "Melchionna NPT (like ASE's MelchionnaNPT/NPT) needs a triangular cell (rows = lattice vectors): "
    "upper-triangular (cell[1,0] == cell[2,0] == cell[2,1] == 0) or lower-triangular "
    "(cell[0,1] == cell[0,2] == cell[1,2] == 0). Rotate the system first, e.g. with ASE "
    "`cell, Q = atoms.cell.standard_form()` (lower-triangular by default; form='upper' for upper), then "
    "`atoms.set_cell(cell, scale_atoms=True)` and, if momenta are already set, "
    "`atoms.set_momenta(atoms.get_momenta() @ Q.T)`; for plain arrays the new positions are `positions @ Q.T`."
)


def _check_triangular(cell) -> None:
    try:
        h = to_host(cell)
    except Exception:  # traced inside jit: cannot check here
        return
    upper = (h[:, 1, 0] == 0) & (h[:, 2, 0] == 0) & (h[:, 2, 1] == 0)
    lower = (h[:, 0, 1] == 0) & (h[:, 0, 2] == 0) & (h[:, 1, 2] == 0)
    bad = ~(upper | lower)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"the cell of replica(s) {np.flatnonzero(bad).tolist()} is not triangular:\n{h[r]}\n" + _TRIANGULAR_HELP
        )


# ----------------------------------------------------------------------------
# Numerical pieces, each mirroring the ASE method of the same name
# ----------------------------------------------------------------------------


def _ase_kinetic_energy(momenta, masses):
    """``atoms.get_kinetic_energy()`` = 0.5 vdot(p, p/m), per replica."""
    return 0.5 * jnp.sum(momenta * (momenta / masses[None, :, None]), axis=(1, 2))


def _voigt(s):
    """``full_3x3_to_voigt_6_stress`` for [R,3,3]."""
    return jnp.stack(
        [s[:, 0, 0], s[:, 1, 1], s[:, 2, 2],
         (s[:, 1, 2] + s[:, 2, 1]) / 2, (s[:, 0, 2] + s[:, 2, 0]) / 2, (s[:, 0, 1] + s[:, 1, 0]) / 2],
        axis=-1,
    )


def _stress_with_ideal_gas(state: MDState):
    """``atoms.get_stress(include_ideal_gas=True)`` (Voigt) per replica: potential + kinetic part."""
    p = state.momenta
    invmass = 1.0 / state.masses[None, :, None]
    pp = jnp.einsum("rna,rnb->rab", p * invmass, p)  # sum_i p_a p_b / m
    invvol = 1.0 / jnp.abs(jnp.linalg.det(state.cell))
    kin = -jnp.stack([pp[:, 0, 0], pp[:, 1, 1], pp[:, 2, 2], pp[:, 1, 2], pp[:, 0, 2], pp[:, 0, 1]], -1)
    return _voigt(state.stress) + kin * invvol[:, None]


def _maketriangular(six, upper):
    """6-vector [R,6] -> triangular 3x3 [R,3,3], upper or lower per replica (``_maketriangular``)."""
    z = jnp.zeros_like(six[:, 0])
    up = jnp.stack([
        jnp.stack([six[:, 0], six[:, 5], six[:, 4]], -1),
        jnp.stack([z, six[:, 1], six[:, 3]], -1),
        jnp.stack([z, z, six[:, 2]], -1),
    ], axis=1)
    lo = jnp.stack([
        jnp.stack([six[:, 0], z, z], -1),
        jnp.stack([six[:, 5], six[:, 1], z], -1),
        jnp.stack([six[:, 4], six[:, 3], six[:, 2]], -1),
    ], axis=1)
    return jnp.where(upper[:, None, None], up, lo)


def _eta_increment(tri, mask, frac_traceless):
    """``mask * tri`` (frac_traceless == 1) or trace part + frac_traceless * traceless part (mask unused, as ASE)."""
    if frac_traceless == 1:
        return mask * tri
    eye = jnp.eye(3, dtype=tri.dtype)
    trace_part = ((tri[:, 0, 0] + tri[:, 1, 1] + tri[:, 2, 2]) / 3.0)[:, None, None] * eye
    return trace_part + frac_traceless * (tri - trace_part)


def _q_future(q, q_past, forces, masses, h, inv_h, eta, zeta, dt):
    """``_calculate_q_future``: solve the centred-difference equation for q(t+dt)."""
    eye = jnp.eye(3, dtype=h.dtype)
    alpha = (dt * dt) * ((forces / masses[None, :, None]) @ inv_h)
    beta = dt * (h @ ((eta + 0.5 * zeta[:, None, None] * eye) @ inv_h))
    inv_b = jnp.linalg.inv(beta + eye)
    return (2 * q + q_past @ (beta - eye) + alpha) @ inv_b


@functools.partial(jax.jit, static_argnames=("dt", "mask", "frac_traceless"))
def _initialize(state: MDState, kT, ext, ttime_a, pfactor_a, thermostat, barostat, *, dt, mask, frac_traceless):
    """ASE's ``__init__`` (centre-of-mass momentum, constants) and ``initialize()`` (the backwards step)."""
    R, N = state.n_replicas, state.n_atoms
    dtype = state.positions.dtype
    mask_j = jnp.asarray(np.reshape(mask, (3, 3)), dtype)

    # __init__: zero the centre-of-mass momentum (not mass weighted, as ASE), constants.
    p0 = state.momenta - jnp.sum(state.momenta, axis=1, keepdims=True) / N
    state = state.replace(momenta=p0)
    h = state.cell
    det_h = jnp.linalg.det(h)
    safe_ttime = jnp.where(thermostat, ttime_a, 1.0)
    tfact = jnp.where(thermostat, 2.0 / (3 * N * kT * safe_ttime * safe_ttime), 0.0)
    pfact = jnp.where(barostat, 1.0 / jnp.where(barostat, pfactor_a * det_h, 1.0), 0.0)
    desired_ekin = 1.5 * (N - 1) * kT
    upper = (h[:, 1, 0] == 0) & (h[:, 2, 0] == 0) & (h[:, 2, 1] == 0)

    # initialize(): the backwards step.
    inv_h = jnp.linalg.inv(h)
    q = state.positions @ inv_h - 0.5
    eta = jnp.zeros((R, 3, 3), dtype)
    zeta = jnp.zeros((R,), dtype)
    h_past = h - dt * (h @ eta)
    stress = _stress_with_ideal_gas(state)
    deltaeta = (-dt * pfact * det_h)[:, None] * (stress - ext)
    deltaeta = jnp.where(barostat[:, None], deltaeta, 0.0)
    eta_past = eta - _eta_increment(_maketriangular(deltaeta, upper), mask_j, frac_traceless)
    ekin = _ase_kinetic_energy(p0, state.masses)
    zeta_past = zeta - dt * tfact * (ekin - desired_ekin)

    # _calculate_q_past_and_future: two passes, the second skipped if the kinetic energy is ~0.
    m = state.masses[None, :, None]

    def one_pass(p):
        q_past = q - dt * ((p / m) @ inv_h)
        q_fut = _q_future(q, q_past, state.forces, state.masses, h, inv_h, eta, zeta, dt)
        p_new = ((q_fut - q_past) @ (h / (2 * dt))) * m
        return q_past, q_fut, p_new

    q_past0, q_fut0, p1 = one_pass(p0)
    e = 0.5 * jnp.sum(jnp.sum(p1 * p1, -1) / state.masses[None, :], axis=1) / N
    q_past1, q_fut1, _ = one_pass((p0 - p1) + p0)
    stop = (e < 1e-5)[:, None, None]
    q_past = jnp.where(stop, q_past0, q_past1)
    q_future = jnp.where(stop, q_fut0, q_fut1)

    variables = MelchionnaVariables(
        q=q, q_past=q_past, q_future=q_future, h_past=h_past,
        eta=eta, eta_past=eta_past, zeta=zeta, zeta_past=zeta_past,
        zeta_integrated=jnp.zeros((R,), dtype),
        kT=kT, externalstress=ext, ttime=ttime_a, pfactor=pfactor_a, tfact=tfact, pfact=pfact,
        desired_ekin=desired_ekin, thermostat=thermostat, barostat=barostat, upper=upper,
    )
    return state.replace(variables=variables)


def melchionna_npt(force_fn: ForceFn, dt: float, mask=None, frac_traceless: float = 1.0) -> Integrator:
    """Build Melchionna NPT (ASE's ``MelchionnaNPT``) for ``force_fn`` and time step ``dt`` (ASE units).

    ``mask`` (static, as ASE's ``set_mask``): None (fully flexible), a 3-vector of
    0/1 (``(1, 1, 0)``: the z length cannot change) or a symmetric 3x3 0/1 array of
    the strain components that may change. ``frac_traceless`` (static, ASE's
    ``set_fraction_traceless``): fraction of the traceless part of the force on
    ``eta`` that is kept (0: volume changes, shape does not).

    ``init(state, temperature_K, *, ttime, pfactor, externalstress=None)``; each may
    be one value or one per replica; ``ttime``/``pfactor`` may be ``None`` (thermostat /
    barostat off, as ASE), also per replica; ``externalstress`` is a pressure, a Voigt
    6-vector or a symmetric 3x3 (eV/A^3, ASE sign), or ``[R]``, ``[R,6]``, ``[R,3,3]``;
    it is required when a barostat is on (as in ASE) and defaults to 0 otherwise.
    """
    dt = check_timestep(dt)
    mask_np = _mask_3x3(mask)
    frac_traceless = float(frac_traceless)

    def init(state: MDState, temperature_K, *, ttime, pfactor, externalstress=None) -> MDState:
        R = state.n_replicas
        dtype = state.positions.dtype
        _check_triangular(state.cell)
        t_vals, t_on = _optional_per_replica(ttime, R, "ttime")
        p_vals, p_on = _optional_per_replica(pfactor, R, "pfactor")
        if externalstress is None:
            if p_on.any():
                raise TypeError("Missing 'externalstress' argument (required when pfactor is given, as in ASE).")
            externalstress = 0.0
        ext = jnp.asarray(_external_stress(externalstress, R), dtype)
        T = np.asarray(per_replica(temperature_K, R, "temperature_K", np.float64))
        if np.any(T < 0):
            raise ValueError(f"temperature_K must be >= 0, got {T}")
        if np.any(t_on & (T <= 0)):
            raise ValueError(f"the thermostat (ttime given) needs temperature_K > 0, got {T}")
        kT = jnp.asarray(units.kB * T, dtype)  # eV, as ASE: units.kB * temperature_K
        ttime_a = jnp.asarray(t_vals, dtype)
        pfactor_a = jnp.asarray(p_vals, dtype)
        thermostat = jnp.asarray(t_on)
        barostat = jnp.asarray(p_on)
        return _initialize(state, kT, ext, ttime_a, pfactor_a, thermostat, barostat,
                           dt=dt, mask=tuple(mask_np.ravel().tolist()), frac_traceless=frac_traceless)

    def step(state: MDState) -> MDState:
        v: MelchionnaVariables = state.variables
        mask_j = jnp.asarray(mask_np, state.positions.dtype)
        h = state.cell
        h_future = v.h_past + 2 * dt * (h @ v.eta)
        stress = _stress_with_ideal_gas(state)
        deltaeta = -2 * dt * ((v.pfact * jnp.linalg.det(h))[:, None] * (stress - v.externalstress))
        deltaeta = jnp.where(v.barostat[:, None], deltaeta, 0.0)
        eta_future = v.eta_past + _eta_increment(_maketriangular(deltaeta, v.upper), mask_j, frac_traceless)
        deltazeta = 2 * dt * v.tfact * (_ase_kinetic_energy(state.momenta, state.masses) - v.desired_ekin)
        zeta_future = v.zeta_past + deltazeta

        # advance time: h(t+dt), q(t+dt), eta, zeta; move the atoms and evaluate the model once
        inv_h = jnp.linalg.inv(h_future)
        q_past, q = v.q, v.q_future
        positions = (q + 0.5) @ h_future
        state = evaluate(state, force_fn, positions=positions, cell=h_future)
        zeta_integrated = v.zeta_integrated + dt * zeta_future
        q_future = _q_future(q, q_past, state.forces, state.masses, h_future, inv_h, eta_future, zeta_future, dt)
        momenta = ((q_future - q_past) @ (h_future / (2 * dt))) * state.masses[None, :, None]
        variables = v.replace(
            q=q, q_past=q_past, q_future=q_future, h_past=h,
            eta=eta_future, eta_past=v.eta, zeta=zeta_future, zeta_past=v.zeta,
            zeta_integrated=zeta_integrated,
        )
        return state.replace(momenta=momenta, variables=variables, step=state.step + 1)

    return Integrator(init=init, step=step, name="MelchionnaNPT", set_parameters=melchionna_set_parameters,
                      exchange_variables=melchionna_exchange_variables)


def melchionna_set_parameters(state: MDState, temperature_K=None, externalstress=None) -> MDState:
    """ASE's ``set_temperature`` and ``set_stress`` for a running state (K; eV/A^3, ASE sign).

    As ASE's ``_calculateconstants``: a new temperature recomputes ``tfact``, ``desired_ekin``
    and ``pfact = 1 / (pfactor det h)`` with the *current* cell; a new stress only replaces it.
    """
    v: MelchionnaVariables = state.variables
    R, N = state.n_replicas, state.n_atoms
    dtype = state.positions.dtype
    if externalstress is not None:
        v = v.replace(externalstress=jnp.asarray(_external_stress(externalstress, R), dtype))
    if temperature_K is not None:
        T = np.asarray(per_replica(temperature_K, R, "temperature_K", np.float64))
        if np.any(T < 0) or np.any(to_host(v.thermostat) & (T <= 0)):
            raise ValueError(f"temperature_K must be >= 0 (> 0 where the thermostat is on), got {T}")
        kT = jnp.asarray(units.kB * T, dtype)
        safe_ttime = jnp.where(v.thermostat, v.ttime, 1.0)
        tfact = jnp.where(v.thermostat, 2.0 / (3 * N * kT * safe_ttime * safe_ttime), 0.0)
        det_h = jnp.linalg.det(state.cell)
        pfact = jnp.where(v.barostat, 1.0 / jnp.where(v.barostat, v.pfactor * det_h, 1.0), 0.0)
        v = v.replace(kT=kT, tfact=tfact, pfact=pfact, desired_ekin=1.5 * (N - 1) * kT)
    return state.replace(variables=v)


def melchionna_exchange_variables(moved: MDState, v: MelchionnaVariables, perm, ratio) -> MelchionnaVariables:
    """Melchionna's variables after replica exchange (slot ``r`` receives slot ``perm[r]``'s configuration).

    The centred-difference scheme holds the atoms' velocities in ``q(t+dt) - q(t-dt)``: with
    ``s = sqrt(T_new / T_old)`` both are moved to ``q + s (q_+- - q)``, which scales the momenta by
    ``s`` as Sugita & Okamoto's rescaling (Chem. Phys. Lett. 314, 141 (1999)). The thermostat
    friction ``zeta`` (mass ~ kT: its distribution does not depend on T) is kept; the strain rate
    ``eta`` (mass ``pfactor det h_0``, independent of T) is scaled by ``s``, and with it the cell's
    past ``h(t-dt) = h + s (h_past - h)``, as Mori & Okamoto do for constant-pressure exchange
    (J. Phys. Soc. Jpn. 79, 074001 (2010)). Parameters, ``zeta_integrated`` (the slot's Gibbs
    accounting) and the cell form stay with the slot.
    """
    s = jnp.sqrt(ratio)[:, None, None]
    q = v.q[perm]
    h = moved.cell
    return v.replace(q=q, q_future=q + s * (v.q_future[perm] - q), q_past=q + s * (v.q_past[perm] - q),
                     h_past=h + s * (v.h_past[perm] - h), eta=s * v.eta[perm], eta_past=s * v.eta_past[perm],
                     zeta=v.zeta[perm], zeta_past=v.zeta_past[perm])


def melchionna_gibbs_energy(state: MDState) -> jax.Array:
    """The conserved quantity, ASE's ``MelchionnaNPT.get_gibbs_free_energy()``, per replica (eV).

    ``E + K - tr(sigma_ext)/3 det h [+ 1.5 N kT (ttime zeta)^2 + 3 (N-1) kT int zeta]
    [+ eta:eta / (2 pfact)]``; the bracketed terms only where the thermostat /
    barostat is on.
    """
    v: MelchionnaVariables = state.variables
    if not isinstance(v, MelchionnaVariables):
        raise TypeError("melchionna_gibbs_energy needs a state initialised by melchionna_npt(...).init")
    n = state.n_atoms
    contractedeta = jnp.sum(v.eta * v.eta, axis=(1, 2))
    gibbs = (state.energy + _ase_kinetic_energy(state.momenta, state.masses)
             - jnp.sum(v.externalstress[:, 0:3], axis=-1) * jnp.linalg.det(state.cell) / 3.0)
    thermo = 1.5 * n * v.kT * (v.ttime * v.zeta) ** 2 + 3 * v.kT * (n - 1) * v.zeta_integrated
    gibbs = gibbs + jnp.where(v.thermostat, thermo, 0.0)
    safe_pfact = jnp.where(v.barostat, v.pfact, 1.0)
    gibbs = gibbs + jnp.where(v.barostat, 0.5 / safe_pfact * contractedeta, 0.0)
    return gibbs
