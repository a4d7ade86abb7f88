r"""Local polarization of PbTiO3 from Born effective charges (the PTO-test's NVT observable).

For every Ti-centred perovskite cell ``m`` (Li et al., J. Phys. Chem. C 2025; the usual
"unit-cell polarization" of effective-Hamiltonian and MD studies of ferroelectrics)

.. math::

    \mathbf P_m = \frac{e}{V_c}\Big[Z_\mathrm{Ti}\,\mathbf r_\mathrm{Ti}
        + \tfrac18\sum_{k=1}^{8} Z_\mathrm{Pb}\,\mathbf r_{\mathrm{Pb},k}
        + \tfrac12\sum_{k=1}^{6} Z_\mathrm{O}\,\mathbf r_{\mathrm{O},k}\Big],

with the 8 Pb corners and 6 O face centres taken by the minimum-image convention around the Ti
and ``V_c = V_box / n_Ti``. The weights make the cell neutral
(``Z_Ti + Z_Pb + 3 Z_O = 0``), so ``P_m`` does not depend on the origin: it is evaluated with
positions relative to the Ti, and an ideal cubic cell gives exactly zero.

Default charges are the study's (``Z_Pb = 3.44``, ``Z_Ti = 5.18``, ``Z_O = -(Z_Pb + Z_Ti)/3``);
``ZHONG_1994`` are the LDA Born charges of cubic PbTiO3 (Zhong, King-Smith, Vanderbilt,
PRL 72, 3618 (1994)) with the anisotropic oxygen tensor (parallel component along the Ti-O bond). Those charges sum to
+0.01 e per cell rather than zero, so for them the Ti is the origin (as in the formula above).

Units: positions in Angstrom, result in C/m^2 (``e/A^2 = 16.02176634 C/m^2``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

E_PER_A2_TO_C_PER_M2 = 16.02176634  # e / Angstrom^2 in C / m^2

STUDY_CHARGES = {"Pb": 3.44, "Ti": 5.18, "O": -(3.44 + 5.18) / 3.0}
# Zhong, King-Smith & Vanderbilt (1994), cubic PbTiO3, LDA: O parallel / perpendicular to the Ti-O bond.
ZHONG_1994 = {"Pb": 3.90, "Ti": 7.06, "O_parallel": -5.83, "O_perpendicular": -2.56}


def born_charges(kind: str = "study") -> dict:
    """Charges by name: ``"study"`` (isotropic, the PTO-test's) or ``"zhong1994"`` (anisotropic O)."""
    key = kind.lower()
    if key == "study":
        return dict(STUDY_CHARGES)
    if key in ("zhong1994", "zhong", "lda"):
        return dict(ZHONG_1994)
    raise ValueError(f"unknown Born-charge set {kind!r}; use 'study' or 'zhong1994'")


def _minimum_image(d, cell, inv_cell):
    """Minimum-image vectors ``d`` [..., 3] for one cell (rows = lattice vectors)."""
    s = d @ inv_cell
    s = s - jnp.round(s)
    return s @ cell


def find_cell_topology(atoms) -> dict:
    """Indices of each Ti and of its 8 nearest Pb and 6 nearest O (minimum image), from ``atoms``.

    Computed once from the starting structure: in a crystal the neighbours do not change, and a
    cell whose topology changes is molten, where the polarization means nothing anyway.
    Raises ``ValueError`` if the structure is not PbTiO3-like (needs Ti, Pb, O in ratio 1:1:3).
    """
    symbols = np.asarray(atoms.get_chemical_symbols())
    ti = np.flatnonzero(symbols == "Ti")
    pb = np.flatnonzero(symbols == "Pb")
    ox = np.flatnonzero(symbols == "O")
    if len(ti) == 0 or len(pb) != len(ti) or len(ox) != 3 * len(ti):
        raise ValueError(f"polarization needs a PbTiO3 structure (Pb:Ti:O = 1:1:3); got "
                         f"{len(pb)} Pb, {len(ti)} Ti, {len(ox)} O")
    cell = np.asarray(atoms.cell)
    inv = np.linalg.inv(cell)
    pos = atoms.get_positions()
    pb_idx, o_idx, pb_img, o_img = [], [], [], []
    # Enumerate periodic images so that a 1x1x1 cell (8 corners = one Pb) also works.
    rng = np.arange(-1, 2)
    images = np.array(np.meshgrid(rng, rng, rng, indexing="ij")).reshape(3, -1).T  # [27, 3]
    for t in ti:
        for group, n_near, idx_out, img_out in ((pb, 8, pb_idx, pb_img), (ox, 6, o_idx, o_img)):
            d = pos[group] - pos[t]
            s = d @ inv
            s = s - np.round(s)  # nearest image first, then all 27 around it
            cand = (s[:, None, :] + images[None]) @ cell  # [G, 27, 3]
            dist = np.linalg.norm(cand, axis=-1)
            order = np.argsort(dist.ravel(), kind="stable")[:n_near]
            g, k = np.unravel_index(order, dist.shape)
            idx_out.append(group[g])
            # Lattice offset of the chosen image relative to the minimum image (non-zero only when
            # a direction has a single cell, where the corners are images of one atom).
            img_out.append(images[k])
    o_vec = np.stack([((pos[o] - pos[t]) @ inv - np.round((pos[o] - pos[t]) @ inv) + img) @ cell
                      for t, o, img in zip(ti, o_idx, o_img)])
    return {"ti": ti, "pb": np.array(pb_idx), "o": np.array(o_idx),
            "pb_images": np.array(pb_img), "o_images": np.array(o_img),
            # Cartesian axis of each Ti-O bond (for anisotropic O charges).
            "o_axis": np.argmax(np.abs(o_vec), axis=-1)}


def cell_polarization(positions, cell, topology: dict, charges: dict | None = None):
    """Per-cell polarization ``[R, n_Ti, 3]`` in C/m^2 (JAX; batched over replicas, jit-able).

    ``positions`` [R, N, 3] and ``cell`` [R, 3, 3] in Angstrom. Neighbour vectors are taken by the
    minimum-image convention around each Ti, plus the lattice offsets stored in ``topology`` for
    directions with a single cell (there the 8 corners are images of one Pb). With anisotropic
    charges (``ZHONG_1994``) each O carries a diagonal tensor, parallel along its Ti-O bond axis.
    """
    charges = STUDY_CHARGES if charges is None else charges
    positions = jnp.asarray(positions)
    cell = jnp.asarray(cell, positions.dtype)
    ti = jnp.asarray(topology["ti"])
    pb = jnp.asarray(topology["pb"])
    ox = jnp.asarray(topology["o"])
    pb_img = jnp.asarray(topology["pb_images"], positions.dtype)
    o_img = jnp.asarray(topology["o_images"], positions.dtype)
    n_ti = ti.shape[0]
    if "O_parallel" in charges:
        # Diagonal O tensor: the parallel component along the O's own Ti-O bond axis.
        along = np.eye(3)[np.asarray(topology["o_axis"])]  # [T, 6, 3]
        z_o = charges["O_perpendicular"] + (charges["O_parallel"] - charges["O_perpendicular"]) * along
    else:
        z_o = np.full(np.shape(topology["o"]) + (3,), charges["O"])
    z_o = jnp.asarray(z_o, positions.dtype)

    def one(pos, h):
        inv = jnp.linalg.inv(h)
        r_ti = pos[ti]  # [T, 3]
        # Minimum image of the current vectors plus the image chosen at set-up: exact for small
        # cells where a neighbour's images are distinct corners (1x1x1), identical otherwise.
        d_pb = pos[pb] - r_ti[:, None, :]
        d_o = pos[ox] - r_ti[:, None, :]
        d_pb = _minimum_image(d_pb, h, inv) + pb_img @ h
        d_o = _minimum_image(d_o, h, inv) + o_img @ h
        volume = jnp.abs(jnp.linalg.det(h)) / n_ti
        dip = charges["Pb"] / 8.0 * d_pb.sum(1) + 0.5 * jnp.sum(z_o * d_o, axis=1)
        return dip / volume * E_PER_A2_TO_C_PER_M2

    return jax.vmap(one)(positions, cell)


def mean_polarization(positions, cell, topology, charges=None):
    """Supercell-average polarization ``[R, 3]`` in C/m^2 (the mean of :func:`cell_polarization`)."""
    return jnp.mean(cell_polarization(positions, cell, topology, charges), axis=1)
