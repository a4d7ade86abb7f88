r"""Pair potentials in pure JAX: Lennard-Jones and Morse, identical to ASE's calculators.

Units are ASE's: energies in eV, lengths in Angstrom. Both potentials are
written as a per-replica energy

.. math:: E = \frac12 \sum_i \sum_{j \ne i} u(r_{ij}),
          \qquad r_{ij} = |\mathbf r_j + S h - \mathbf r_i|

over the *full* neighbour list (:mod:`jaxpto.neighbors`, ASE's ``'ijS'``
convention, every periodic image included). Each potential is a function
:math:`u(x)` of the squared distance :math:`x = r^2`; :func:`pair_model` takes
its derivative :math:`u'(x)` element by element (forward-mode autodiff) and sums
forces and virial along the rows of the full list,

.. math:: \mathbf F_i = 2 \sum_j u'(r_{ij}^2)\, \mathbf d_{ij}, \qquad
          \sigma_{ab} = \frac{1}{V} \sum_i \sum_j u'(r_{ij}^2)\, d_{ij,a} d_{ij,b}

(ASE's sign: :math:`\sigma = V^{-1}\partial E/\partial\varepsilon`), so no
scatter-add is needed (the backward pass of a gather, slow on CPUs); the result
equals autodiff of :math:`E` (tested). The neighbour list holds pairs up to
``cutoff + skin``; each potential applies its own cutoff, and padded slots
(``j = N``) and pairs beyond the cutoff contribute exactly zero, with
NaN-free gradients (the squared distance is replaced by a harmless value with
``jnp.where`` before any division or square root). The site energies
:math:`e_i = \frac12 \sum_j u(r_{ij})` (``Model.site_energies``, one neighbour hop) split
:math:`E` over atoms, as a LAMMPS rank needs (:mod:`jaxpto.workflows.lammps_bundle`).

Lennard-Jones (:func:`lennard_jones`, as ``ase.calculators.lj.LennardJones``)
------------------------------------------------------------------------------

.. math:: u_{LJ}(r) = 4\epsilon\left[\left(\frac{\sigma}{r}\right)^{12}
                      - \left(\frac{\sigma}{r}\right)^{6}\right], \qquad r < r_c

with :math:`r_c = 3\sigma` by default. Two cutoff modes:

* ``smooth=False``: shifted energy :math:`u = u_{LJ}(r) - u_{LJ}(r_c)` for
  :math:`r < r_c` (energy continuous, forces jump at :math:`r_c`);
* ``smooth=True``: :math:`u = u_{LJ}(r)\,f_c(r^2)` with ASE's (JAX-MD's) cutoff,
  written in the squared distance :math:`x = r^2`, :math:`x_o = r_o^2`,
  :math:`x_c = r_c^2` (:math:`r_o = 0.66\,r_c` by default):

  .. math:: f_c(x) = \begin{cases} 1 & x < x_o \\
            \dfrac{(x_c - x)^2 (x_c + 2x - 3x_o)}{(x_c - x_o)^3} & x_o \le x < x_c \\
            0 & x \ge x_c \end{cases}

  (energy and forces continuous).

Reference: J. E. Lennard-Jones, Proc. R. Soc. Lond. A 106, 463 (1924).

Morse (:func:`morse`, as ``ase.calculators.morse.MorsePotential``)
-----------------------------------------------------------------

.. math:: u(r) = \epsilon\left[e^{-2\rho_0 (r/r_0 - 1)} - 2 e^{-\rho_0 (r/r_0 - 1)}\right]
                 f_{cut}(r)

(minimum :math:`-\epsilon` at :math:`r_0`, curvature
:math:`2\epsilon(\rho_0/r_0)^2`), with JuLIP's quintic smoothstep cutoff between
:math:`r_1 = \mathrm{rcut1}\,r_0` and :math:`r_2 = \mathrm{rcut2}\,r_0`
(``rcut1``, ``rcut2`` are in units of :math:`r_0`):

.. math:: s = 1 - \frac{r - r_1}{r_2 - r_1}, \qquad
          f_{cut} = \begin{cases} 1 & s \ge 1 \\ 6s^5 - 15s^4 + 10s^3 & 0 < s < 1 \\
          0 & s \le 0 \end{cases}

Reference: P. M. Morse, Phys. Rev. 34, 57 (1929).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxpto.model import Model, ModelOutput
from jaxpto.neighbors import pair_components


PAIR_EXTRAS = ("energies", "stresses")


def pair_model(pair_energy: Callable[[jax.Array], jax.Array], cutoff: float, name: str,
               extras: tuple[str, ...] = ()) -> Model:
    r"""A batched :class:`Model` from an element-wise pair energy ``u(x)`` of ``x = r^2``.

    ``pair_energy`` maps squared distances (A^2, any shape) to pair energies (eV) element by
    element, exactly zero with zero derivative at and beyond the cutoff, finite everywhere
    for ``x > 0`` (padded slots get ``x = 1``). Forces and stress follow the module
    docstring's row sums; ``u'(x)`` is the forward-mode derivative with unit tangent, which
    is exact because the Jacobian of an element-wise function is diagonal.

    ``extras`` (from the same pass, as ASE's ``LennardJones`` reports them): ``"energies"``,
    :math:`e_i = \tfrac12 \sum_j u(r_{ij}^2)` [R, N], and ``"stresses"``, the per-atom virial
    :math:`\sigma_i = V^{-1} \sum_j u'(r_{ij}^2)\, d_{ij} \otimes d_{ij}` [R, N, 3, 3] (each pair
    split half and half between its atoms; :math:`\sum_i \sigma_i` is the stress).
    """
    extras = tuple(extras)
    unknown = sorted(set(extras) - set(PAIR_EXTRAS))
    if unknown:
        raise ValueError(f"pair potential {name!r} has no extra result {unknown}; it can give {list(PAIR_EXTRAS)}")

    def single(positions, cell, numbers, nbrs):
        # Component arrays [N,K] (see pair_components: ~4x faster on CPU than [N,K,3]).
        dx, dy, dz, mask = pair_components(nbrs, positions, cell)
        x = jnp.where(mask, dx * dx + dy * dy + dz * dz, 1.0)
        u, du = jax.jvp(pair_energy, (x,), (jnp.ones_like(x),))
        u = jnp.where(mask, u, 0.0)
        du = jnp.where(mask, du, 0.0)
        energy = 0.5 * jnp.sum(u)
        wx, wy, wz = du * dx, du * dy, du * dz
        forces = 2.0 * jnp.stack([wx.sum(axis=1), wy.sum(axis=1), wz.sum(axis=1)], axis=-1)
        xy, xz, yz = (wx * dy).sum(), (wx * dz).sum(), (wy * dz).sum()
        virial = jnp.stack([jnp.stack([(wx * dx).sum(), xy, xz]),
                            jnp.stack([xy, (wy * dy).sum(), yz]),
                            jnp.stack([xz, yz, (wz * dz).sum()])])
        volume = jnp.abs(jnp.linalg.det(cell))
        # Non-periodic systems may have no cell: report zero stress rather than inf/NaN.
        safe = jnp.where(volume > 0, volume, 1.0)
        stress = jnp.where(volume > 0, virial / safe, 0.0)
        more = {}
        if "energies" in extras:
            more["energies"] = 0.5 * jnp.sum(u, axis=1)
        if "stresses" in extras:
            sxy, sxz, syz = (wx * dy).sum(1), (wx * dz).sum(1), (wy * dz).sum(1)
            more["stresses"] = jnp.stack([jnp.stack([(wx * dx).sum(1), sxy, sxz], -1),
                                          jnp.stack([sxy, (wy * dy).sum(1), syz], -1),
                                          jnp.stack([sxz, syz, (wz * dz).sum(1)], -1)], -2)
            more["stresses"] = jnp.where(volume > 0, more["stresses"] / safe, 0.0)
        return energy, forces, stress, more

    def compute(positions, cell, numbers, neighbors):
        energy, forces, stress, more = jax.vmap(single, in_axes=(0, 0, None, 0))(positions, cell, numbers, neighbors)
        return ModelOutput(energy=energy, forces=forces, stress=stress, extras=more)

    def site(positions, cell, numbers, nbrs):
        # e_i = 1/2 sum_j u(r_ij) over atom i's row of the full list.
        dx, dy, dz, mask = pair_components(nbrs, positions, cell)
        x = jnp.where(mask, dx * dx + dy * dy + dz * dz, 1.0)
        return 0.5 * jnp.sum(jnp.where(mask, pair_energy(x), 0.0), axis=1)

    def site_energies(positions, cell, numbers, neighbors):
        return jax.vmap(site, in_axes=(0, 0, None, 0))(positions, cell, numbers, neighbors)

    return Model(compute=compute, cutoff=float(cutoff), elements=None, name=name,
                 site_energies=site_energies, receptive_hops=1, extras=extras)


def lennard_jones(sigma: float = 1.0, epsilon: float = 1.0, rc: float | None = None,
                  ro: float | None = None, smooth: bool = False, extras: tuple[str, ...] = ()) -> Model:
    """Lennard-Jones exactly as ``ase.calculators.lj.LennardJones`` (see module docstring).

    Parameters
    ----------
    sigma:
        Length scale in Angstrom; the minimum is at ``2**(1/6) * sigma``.
    epsilon:
        Well depth in eV.
    rc:
        Cutoff in Angstrom, ``3 * sigma`` if ``None``; also the model's neighbour cutoff.
    ro:
        Onset of the smooth cutoff function (``smooth=True`` only), ``0.66 * rc`` if ``None``.
    smooth:
        ``False``: energy shifted to zero at ``rc``; ``True``: ASE's smooth cutoff function.
    """
    sigma = float(sigma)
    epsilon = float(epsilon)
    rc = 3.0 * sigma if rc is None else float(rc)
    ro = 0.66 * rc if ro is None else float(ro)
    smooth = bool(smooth)
    if sigma <= 0 or rc <= 0:
        raise ValueError(f"sigma and rc must be positive, got sigma={sigma}, rc={rc}")
    if smooth and not 0 <= ro < rc:
        raise ValueError(f"the smooth cutoff needs 0 <= ro < rc, got ro={ro}, rc={rc}")
    rc2, ro2 = rc * rc, ro * ro
    e_rc = 4.0 * epsilon * ((sigma / rc) ** 12 - (sigma / rc) ** 6)  # u_LJ(rc)

    def pair_energy(r2):
        inside = r2 <= rc2  # ASE zeroes pairs with r2 > rc2
        r2 = jnp.where(inside, r2, rc2)  # dropped pairs: finite values and derivatives
        c6 = (sigma * sigma / r2) ** 3
        u = 4.0 * epsilon * (c6 * c6 - c6)
        if smooth:
            fc = jnp.where(r2 < ro2, 1.0,
                           jnp.where(r2 < rc2, (rc2 - r2) ** 2 * (rc2 + 2.0 * r2 - 3.0 * ro2)
                                     / (rc2 - ro2) ** 3, 0.0))
            u = u * fc
        else:
            u = u - e_rc
        return jnp.where(inside, u, 0.0)

    name = f"lennard-jones(sigma={sigma}, epsilon={epsilon}, rc={rc}" + (
        f", ro={ro}, smooth)" if smooth else ", shifted)")
    return pair_model(pair_energy, cutoff=rc, name=name, extras=extras)


def morse(epsilon: float = 1.0, r0: float = 1.0, rho0: float = 6.0, rcut1: float = 1.9,
          rcut2: float = 2.7, extras: tuple[str, ...] = ()) -> Model:
    """Morse potential exactly as ``ase.calculators.morse.MorsePotential`` (see module docstring).

    Parameters (ASE's names and defaults)
    -------------------------------------
    epsilon:
        Well depth in eV.
    r0:
        Position of the minimum in Angstrom.
    rho0:
        Dimensionless exponential prefactor (stiffness).
    rcut1, rcut2:
        Start and end of the smooth cutoff, in units of ``r0``; the model's
        neighbour cutoff is ``rcut2 * r0``.
    """
    epsilon, r0, rho0 = float(epsilon), float(r0), float(rho0)
    if r0 <= 0:
        raise ValueError(f"r0 must be positive, got {r0}")
    r_on, r_cut = float(rcut1) * r0, float(rcut2) * r0  # Angstrom
    if not 0 <= r_on < r_cut:
        raise ValueError(f"the Morse cutoff needs 0 <= rcut1 < rcut2, got {rcut1}, {rcut2}")

    def pair_energy(r2):
        inside = r2 < r_cut * r_cut
        r = jnp.sqrt(jnp.where(inside, r2, r_cut * r_cut))  # dropped pairs: finite values and derivatives
        expf = jnp.exp(rho0 * (1.0 - r / r0))
        u = epsilon * expf * (expf - 2.0)
        s = 1.0 - (r - r_on) / (r_cut - r_on)
        fcut = jnp.where(s >= 1.0, 1.0,
                         jnp.where(s > 0.0, s**3 * (6.0 * s * s - 15.0 * s + 10.0), 0.0))
        return jnp.where(inside, u * fcut, 0.0)

    name = f"morse(epsilon={epsilon}, r0={r0}, rho0={rho0}, rcut1={rcut1}, rcut2={rcut2})"
    return pair_model(pair_energy, cutoff=r_cut, name=name, extras=extras)
