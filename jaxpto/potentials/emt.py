r"""Effective medium theory (EMT) in pure JAX, identical to ``ase.calculators.emt.EMT``.

Units are ASE's: eV and Angstrom (the parameter table is in Bohr units, as in
ASE, and converted with ``ase.units.Bohr``).

Energy
------

Following Jacobsen, Stoltze and Norskov [1]_ in ASE's formulation, the energy of
atom :math:`i` (element parameters :math:`E_0, s_0, V_0, \eta_2, \kappa, \lambda, n_0`)
is a cohesive function of the neutral-sphere radius :math:`s_i` plus an
atomic-sphere pair correction, measured from the bulk reference :math:`E_0`:

.. math::

    E = \sum_i \Big[ E_c(s_i) + E_{AS,i} - E_{0,i} \Big]

.. math::

    \sigma_{1,i} = \sum_{j} \chi_{ij}\, e^{-\eta_{2,j} (r_{ij} - \beta s_{0,j})}\, w(r_{ij}),
    \qquad
    s_i - s_{0,i} = -\frac{1}{\beta \eta_{2,i}} \ln \frac{\sigma_{1,i}}{12 \gamma_{1,i}}

.. math::

    E_c(s_i) = E_{0,i} \big(1 + \lambda_i (s_i - s_{0,i})\big) e^{-\lambda_i (s_i - s_{0,i})}
               + 6 V_{0,i}\, e^{-\kappa_i (s_i - s_{0,i})}

.. math::

    E_{AS,i} = \frac12 \sum_j \Big[
      -\frac{V_{0,i}}{2\gamma_{2,i}} \chi_{ij}\, e^{-\kappa_j (r_{ij}/\beta - s_{0,j})}
      -\frac{V_{0,j}}{2\gamma_{2,j}} \chi_{ij}^{-1} e^{-\kappa_i (r_{ij}/\beta - s_{0,i})}
    \Big] w(r_{ij})

with :math:`\chi_{ij} = n_{0,j} / n_{0,i}`, :math:`\beta = 1.809` (ASE's rounding of
:math:`(16\pi/3)^{1/3}/\sqrt 2`) and the sums over every neighbour (all periodic
images) with :math:`r_{ij} < r_{list}`. An atom without neighbours contributes
:math:`-E_{0,i}` (ASE skips it; this is also the limit :math:`\sigma_1 \to 0`).

Cutoff (ASE's conventions)
--------------------------

The logistic cutoff :math:`w(r) = 1 / (1 + e^{a (r - r_c)})` is built from the
largest :math:`s_0` of a set of elements: :math:`r_{1nn} = \beta \max s_0` (the fcc
nearest-neighbour distance), :math:`r_c = r_{1nn} (\sqrt3 + 2)/2` (between the 3rd
and 4th fcc shells), :math:`a = \ln(10^4 - 1)/(2 r_{1nn} - r_c)` (so that
:math:`w = 10^{-4}` at the 4th shell). Pairs are cut hard at :math:`r_{list}`
(:math:`r_c + 0.5` A, or :math:`1.045\,r_c` with ``asap_cutoff=True``). The
normalisations :math:`\gamma_{1}, \gamma_{2}` sum the first three fcc shells
(12, 6, 24 neighbours at :math:`\beta s_0 \sqrt{1,2,3}`) with weights :math:`w`:

.. math:: \gamma_1 = \sum_{k} \frac{n_k w(r_k)}{12} e^{-\eta_2 (r_k - \beta s_0)}, \qquad
          \gamma_2 = \sum_{k} \frac{n_k w(r_k)}{12} e^{-\kappa (r_k - \beta s_0)/\beta}

Which elements set the cutoff:

* ``asap_cutoff=False`` (ASE's default): the *whole* parameter table (its largest
  :math:`s_0` is Ag's), whatever the system holds. The cutoff is then a constant
  (:math:`r_c \approx 5.377` A, :math:`r_{list} \approx 5.877` A) and this model
  equals ASE for every composition.
* ``asap_cutoff=True``: ASE takes the elements *present in the system*. Here the
  energy function computes :math:`r_c, a, r_{list}, \gamma_1, \gamma_2` inside the
  traced code from the ``numbers`` it is given, so it equals ASE for every
  composition too; the static neighbour-list cutoff (``model.cutoff``) is the
  largest :math:`r_{list}` over the covered ``elements``. Restrict ``elements`` to
  the elements of your system (e.g. ``emt(atoms.numbers, asap_cutoff=True)``) to
  get the shortest neighbour lists.

Forces :math:`-\partial E/\partial r` and the stress :math:`V^{-1}\partial E/\partial\varepsilon`
come from automatic differentiation (:func:`jaxpto.model.site_energy_model`). The bracket above is
the site energy of atom :math:`i` (``Model.site_energies``, one neighbour hop), except with
``asap_cutoff=True``, where the cutoff depends on every element present (not local: no site
energies).

.. [1] K. W. Jacobsen, P. Stoltze and J. K. Norskov, Surf. Sci. 366, 394 (1996).
"""

from __future__ import annotations

import math
from typing import Iterable

import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from ase.units import Bohr

from jaxpto.model import Model, per_atom_energy_model, site_energy_model
from jaxpto.neighbors import pair_vectors

#: ASE's EMT parameter table (``ase.calculators.emt.parameters``), in its units:
#: E0 (eV), s0 (bohr), V0 (eV), eta2 (1/bohr), kappa (1/bohr), lambda (1/bohr), n0 (1/bohr^3).
PARAMETERS = {
    'Al': (-3.28, 3.00, 1.493, 1.240, 2.000, 1.169, 0.00700),
    'Cu': (-3.51, 2.67, 2.476, 1.652, 2.740, 1.906, 0.00910),
    'Ag': (-2.96, 3.01, 2.132, 1.652, 2.790, 1.892, 0.00547),
    'Au': (-3.80, 3.00, 2.321, 1.674, 2.873, 2.182, 0.00703),
    'Ni': (-4.44, 2.60, 3.673, 1.669, 2.757, 1.948, 0.01030),
    'Pd': (-3.90, 2.87, 2.773, 1.818, 3.107, 2.155, 0.00688),
    'Pt': (-5.85, 2.90, 4.067, 1.812, 3.145, 2.192, 0.00802),
    # ASE's "extra parameters - just for fun": not for serious use.
    'H': (-3.21, 1.31, 0.132, 2.652, 2.790, 3.892, 0.00547),
    'C': (-3.50, 1.81, 0.332, 1.652, 2.790, 1.892, 0.01322),
    'N': (-5.10, 1.88, 0.132, 1.652, 2.790, 1.892, 0.01222),
    'O': (-4.60, 1.95, 0.332, 1.652, 2.790, 1.892, 0.00850),
}

#: ``(16 pi / 3)**(1/3) / sqrt(2)`` with ASE's historical rounding.
BETA = 1.809

#: Atomic numbers EMT has parameters for.
EMT_ELEMENTS = frozenset(atomic_numbers[s] for s in PARAMETERS)

_NZ = 119  # table rows, indexed by atomic number
_FIELDS = ("E0", "s0", "V0", "eta2", "kappa", "lambda", "n0")


def _si_table() -> dict[str, np.ndarray]:
    """Per-atomic-number parameter arrays in eV / Angstrom (NaN where EMT has none)."""
    table = {f: np.full(_NZ, np.nan) for f in _FIELDS}
    for sym, p in PARAMETERS.items():
        z = atomic_numbers[sym]
        table["E0"][z] = p[0]
        table["s0"][z] = p[1] * Bohr
        table["V0"][z] = p[2]
        table["eta2"][z] = p[3] / Bohr
        table["kappa"][z] = p[4] / Bohr
        table["lambda"][z] = p[5] / Bohr
        table["n0"][z] = p[6] / Bohr**3
    return table


def _cutoff(max_s0, asap_cutoff: bool):
    """``rc``, ``rc_list``, ``acut`` from the largest s0 (Angstrom), as ASE's ``_calc_cutoff``."""
    r1nn = BETA * max_s0
    rc = r1nn * 0.5 * (math.sqrt(3.0) + 2.0)
    r4nn = r1nn * 2.0
    acut = math.log(1.0 / 1e-4 - 1.0) / (r4nn - rc)
    rc_list = rc * 1.045 if asap_cutoff else rc + 0.5
    return rc, rc_list, acut


def _gammas(s0, eta2, kappa, rc, acut, xp=np):
    """ASE's ``_calc_gammas`` vectorised over elements (any array shape)."""
    n = xp.asarray([12.0, 6.0, 24.0])
    shells = xp.sqrt(xp.asarray([1.0, 2.0, 3.0]))
    s0, eta2, kappa = s0[..., None], eta2[..., None], kappa[..., None]
    r = BETA * s0 * shells
    w = 1.0 / (1.0 + xp.exp(acut * (r - rc)))
    x = n * w / 12.0
    gamma1 = xp.sum(x * xp.exp(-eta2 * (r - BETA * s0)), axis=-1)
    gamma2 = xp.sum(x * xp.exp(-kappa / BETA * (r - BETA * s0)), axis=-1)
    return gamma1, gamma2


def _as_numbers(elements) -> frozenset[int]:
    """Atomic numbers from numbers and/or symbols (any iterable, e.g. ``atoms.numbers``)."""
    if isinstance(elements, (str, int, np.integer)):
        elements = [elements]
    out = set()
    for e in np.asarray(elements, dtype=object).ravel():
        if isinstance(e, str):
            if e not in atomic_numbers:
                raise ValueError(f"unknown element symbol {e!r}")
            out.add(atomic_numbers[e])
        else:
            out.add(int(e))
    return frozenset(out)


def emt(elements: Iterable[int | str] | None = None, asap_cutoff: bool = False, energies: bool = False) -> Model:
    """EMT exactly as ``ase.calculators.emt.EMT(asap_cutoff=...)`` (see module docstring).

    Parameters
    ----------
    elements:
        Atomic numbers or symbols the model should cover (duplicates are fine, so
        ``atoms.numbers`` can be passed); default: all 11 elements EMT has
        parameters for (Al, Cu, Ag, Au, Ni, Pd, Pt and the "just for fun" H, C, N,
        O). An element outside EMT's table raises ``ValueError``. Systems with
        other elements are refused by ``Model.check_elements``.
    asap_cutoff:
        ASE's option. ``False`` (default): the cutoff comes from the whole
        parameter table, as in ASE. ``True``: it comes from the elements present
        in the evaluated system (computed inside the energy function), as in
        ASE; the neighbour-list cutoff is then the largest over ``elements``.
    energies:
        Also return the per-atom energies (the bracket of the module docstring, summing to
        the energy) as the extra ``"energies"`` [R, N] (``Model.extras``), as ASE's EMT reports
        them in ``calc.results["energies"]``; they come from the same pass as the forces.
        ``False`` (default): energy, forces and stress only.

    Notes
    -----
    Element coverage is checked on the host (``Model.check_elements``, called by
    ``JaxptoCalculator``); the traced ``model.compute`` does not check and returns
    NaN for atoms of an element outside EMT's table.
    """
    covered = EMT_ELEMENTS if elements is None else _as_numbers(elements)
    unknown = sorted(covered - EMT_ELEMENTS)
    if unknown:
        names = ", ".join(f"{chemical_symbols[z]} (Z={z})" if 0 < z < len(chemical_symbols)
                          else f"Z={z}" for z in unknown)
        raise ValueError(f"EMT has no parameters for {names}; it covers: "
                         + ", ".join(chemical_symbols[z] for z in sorted(EMT_ELEMENTS)))
    if not covered:
        raise ValueError("emt() needs at least one element")
    asap_cutoff = bool(asap_cutoff)
    table = _si_table()

    if asap_cutoff:
        list_cutoff = _cutoff(max(table["s0"][z] for z in covered), True)[1]
        static = None
    else:
        rc, rc_list, acut = _cutoff(np.nanmax(table["s0"]), False)
        g1, g2 = _gammas(table["s0"], table["eta2"], table["kappa"], rc, acut)
        static = dict(rc=rc, rc_list=rc_list, acut=acut,
                      inv12gamma1=1.0 / (12.0 * g1), neghalfv0overgamma2=-0.5 * table["V0"] / g2)
        list_cutoff = rc_list

    def atom_energies(positions, cell, numbers, nbrs):
        dtype = positions.dtype
        tab = {k: jnp.asarray(v, dtype) for k, v in table.items()}
        per_atom = {k: v[numbers] for k, v in tab.items()}  # [N]
        if static is None:
            # ASE's asap_cutoff=True: cutoff from the largest s0 of the elements present.
            rc, rc_list, acut = _cutoff(jnp.max(per_atom["s0"]), True)
            g1, g2 = _gammas(per_atom["s0"], per_atom["eta2"], per_atom["kappa"], rc, acut, xp=jnp)
            per_atom["inv12gamma1"] = 1.0 / (12.0 * g1)
            per_atom["neghalfv0overgamma2"] = -0.5 * per_atom["V0"] / g2
        else:
            rc, rc_list, acut = static["rc"], static["rc_list"], static["acut"]
            for k in ("inv12gamma1", "neghalfv0overgamma2"):
                per_atom[k] = jnp.asarray(static[k], dtype)[numbers]

        # Neighbour parameters; the padding slot (j = N) gets harmless ones.
        def nb(name):
            padded = jnp.concatenate([per_atom[name], jnp.ones((1,), dtype)])
            return padded[nbrs.idx]  # [N,K]

        def me(name):
            return per_atom[name][:, None]  # [N,1]

        d, mask = pair_vectors(nbrs, positions, cell)
        r2 = jnp.where(mask, jnp.sum(d * d, axis=-1), 1.0)
        inside = mask & (r2 < rc_list * rc_list)
        # Padding and pairs beyond the cutoff are evaluated at r = rc (finite values and
        # gradients, no overflow for any skin) and then dropped by the `where`s below.
        r = jnp.sqrt(jnp.where(inside, r2, rc * rc))
        w = 1.0 / (1.0 + jnp.exp(acut * (r - rc)))
        chi = nb("n0") / me("n0")

        # Neutral-sphere radius from sigma1 and the cohesive function E_c.
        dsigma1 = jnp.exp(-nb("eta2") * (r - BETA * nb("s0"))) * chi * w
        sigma1 = jnp.sum(jnp.where(inside, dsigma1, 0.0), axis=-1)  # [N]
        has_neighbours = sigma1 > 0.0
        sigma1 = jnp.where(has_neighbours, sigma1, 1.0)
        e0, lmd, kappa = per_atom["E0"], per_atom["lambda"], per_atom["kappa"]
        ds = -jnp.log(sigma1 * per_atom["inv12gamma1"]) / (BETA * per_atom["eta2"])
        e_c = e0 * (1.0 + lmd * ds) * jnp.exp(-lmd * ds) + 6.0 * per_atom["V0"] * jnp.exp(-kappa * ds)
        e_c = jnp.where(has_neighbours, e_c, 0.0)

        # Atomic-sphere pair correction.
        es = me("neghalfv0overgamma2") * jnp.exp(-nb("kappa") * (r / BETA - nb("s0"))) * chi * w
        eo = nb("neghalfv0overgamma2") * jnp.exp(-me("kappa") * (r / BETA - me("s0"))) / chi * w
        e_as = 0.5 * jnp.sum(jnp.where(inside, es + eo, 0.0), axis=-1)

        return e_c + e_as - e0  # [N] per-atom energies

    name = "emt" + ("(asap_cutoff)" if asap_cutoff else "")
    if asap_cutoff:
        # The cutoff depends on every element present: not a local site energy (a LAMMPS rank
        # would see only its own atoms), so no site_energies.
        return per_atom_energy_model(atom_energies, cutoff=list_cutoff, elements=covered, name=name,
                                     report_energies=bool(energies))
    return site_energy_model(atom_energies, cutoff=list_cutoff, receptive_hops=1, elements=covered, name=name,
                             report_energies=bool(energies))
