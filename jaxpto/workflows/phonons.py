r"""Phonons of the PTO-test: phonopy finite displacements with all supercells in one batched call.

Protocol of Li, Yang, Chen, Yu, Liu, J. Phys. Chem. C (2025): the relaxed tetragonal 5-atom cell,
a 2x2x2 supercell, phonopy's default displacement 0.01 A, band structure along
G-X-M-G-Z-R-A-Z of the simple tetragonal zone with 101 points per segment.

Steps of :func:`phonon_bands`
-----------------------------
1. **Refine the cell to its space group** (:func:`ase.spacegroup.symmetrize.refine_symmetry`,
   spglib at ``symprec``, default 1e-3 A). A relaxation with a float32 model leaves the cell off
   P4mm by ~1e-6..1e-4 A; phonopy (symprec 1e-5) then finds almost no symmetry (30 displacements
   instead of 8 for CHGNet 0.3.0) and the unsymmetrized force constants interpolate into
   spurious imaginary modes (-1.4 THz at q = (1/4, 1/4, 1/2) seen here). Refinement keeps the atom
   order and the cell's orientation.
2. **Displacements** (phonopy, ``is_plusminus='auto'``: +/- pairs where the site symmetry does not
   relate them, as along the polar axis of P4mm).
3. **One batch**: all displaced supercells go to :meth:`JaxptoCalculator.calculate_batch`, i.e.
   ONE model call with R replicas (an ASE calculator without ``calculate_batch`` is looped).
4. **Force constants** from phonopy's symmetry-expanded finite differences, then
   ``symmetrize_force_constants()``: translational invariance (acoustic sum rule, so the acoustic
   branches are exactly zero at Gamma) and index-permutation symmetry.
5. **Bands** through the given path (``primitive_matrix="P"``: q-points are fractions of the
   reciprocal vectors of the cell you pass; for P4mm PbTiO3 the 5-atom cell is primitive).

Imaginary-mode verdict
----------------------
Frequencies follow phonopy's convention: an imaginary frequency ``i|nu|`` is reported as
``-|nu|`` (THz). Two sources of small negative values are not instabilities:

* acoustic branches close to Gamma: there ``nu ~ v |q|`` is tiny and a 2x2x2 supercell's
  interpolation error (a few 0.1 THz for a float32 model; -0.17 THz at q = (0.05, 0, 0) seen
  for CHGNet 0.3.0) can push it below zero;
* round-off of a float32 model anywhere, of order 0.01-0.1 THz.

A mode (q, branch) is *flagged* imaginary when

* it is acoustic-like near Gamma -- the reduced distance from q to the nearest reciprocal lattice
  point (max over the three components) is at most ``acoustic_q_window`` (0.15: 30 % of the way to
  the zone boundary) and its eigenvector's translational weight
  ``w = sum_a |sum_j sqrt(m_j) e_ja|^2 / sum_j m_j`` is at least 0.5 (``w = 1`` for a rigid
  translation; an optical mode at Gamma has ``w = 0``) -- and ``nu < -acoustic_tol_thz``
  (0.5 THz); or
* otherwise, ``nu < -imaginary_tol_thz`` (0.2 THz = 6.7 cm^-1).

Soft optical modes of ~20 cm^-1 (0.6 THz), 3x the optical tolerance, are therefore caught
anywhere in the zone, including at Gamma itself (the ferroelectric soft mode of cubic PbTiO3 is
optical: ``w = 0``), while interpolation noise of the acoustic branches near Gamma is not.
``has_imaginary`` is True when any mode is flagged. The raw lowest frequency is reported as well
(``min_frequency_thz``), with its q-point and whether it was acoustic noise.

Units: THz (1 THz = 33.356 cm^-1 = 4.1357 meV), Angstrom, amu (ASE's masses are given to phonopy).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from jaxpto.workflows.static import (_new_figure, as_calculator, atoms_from_dict, limit_blas_threads, model_name,
                                     space_group)

__all__ = ["P4MM_SPECIAL_POINTS", "THZ_TO_CM1", "phonon_bands", "pto_phonons", "flag_imaginary_modes",
           "acoustic_weight", "make_phonopy", "supercell_forces", "plot_phonon_bands"]

THZ_TO_CM1 = 33.35641  # 1 THz / c in cm^-1
# High-symmetry points of the simple tetragonal zone (P4mm), fractions of the reciprocal vectors.
P4MM_SPECIAL_POINTS = {
    "G": (0.0, 0.0, 0.0),
    "X": (0.0, 0.5, 0.0),
    "M": (0.5, 0.5, 0.0),
    "Z": (0.0, 0.0, 0.5),
    "R": (0.0, 0.5, 0.5),
    "A": (0.5, 0.5, 0.5),
}


def _to_phonopy_atoms(atoms: Atoms):
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=np.asarray(atoms.cell),
                        scaled_positions=atoms.get_scaled_positions(), masses=atoms.get_masses())


def _to_ase_atoms(patoms) -> Atoms:
    return Atoms(symbols=patoms.symbols, cell=patoms.cell, scaled_positions=patoms.scaled_positions,
                 masses=patoms.masses, pbc=True)


def make_phonopy(atoms: Atoms, supercell=(2, 2, 2), distance: float = 0.01, symprec: float = 1e-3,
                 refine: bool = True):
    """Phonopy object with displacements generated, after refining ``atoms`` to its space group.

    Returns ``(phonon, unit_cell, info)``: ``unit_cell`` is the (refined) cell used, ``info`` has
    the space group before (spglib at 1e-5 A, what phonopy would see unrefined) and after.
    """
    from phonopy import Phonopy

    cell = Atoms(numbers=atoms.numbers, cell=np.asarray(atoms.cell), positions=atoms.positions,
                 masses=atoms.get_masses(), pbc=True)
    info = {"space_group_unrefined": space_group(cell, 1e-5)}
    if refine:
        from ase.spacegroup.symmetrize import refine_symmetry

        refine_symmetry(cell, symprec=symprec)
    info["space_group"] = space_group(cell, 1e-5)
    info["refined"] = bool(refine)
    smat = np.diag(supercell) if np.ndim(supercell) == 1 else np.asarray(supercell)
    # symprec 1e-5: after refinement the cell is symmetric to round-off; unrefined, this is what
    # phonopy's default sees (the trap described in the module docstring).
    # primitive_matrix="P": the band path is in the reciprocal basis of the cell given (phonopy 4's
    # None/'auto' would switch to a standardized primitive cell and reinterpret the q-points).
    phonon = Phonopy(_to_phonopy_atoms(cell), supercell_matrix=smat, primitive_matrix="P", symprec=1e-5)
    phonon.generate_displacements(distance=distance)
    return phonon, cell, info


def supercell_forces(calc, phonon, max_batch: int | None = None) -> np.ndarray:
    """Forces [n_displacements, N_supercell, 3] (eV/A) of phonopy's displaced supercells.

    With a calculator that has ``calculate_batch`` (:class:`JaxptoCalculator`) all supercells are
    evaluated in ONE model call (or chunks of ``max_batch``); otherwise one call each.
    """
    images = [_to_ase_atoms(sc) for sc in phonon.supercells_with_displacements]
    if hasattr(calc, "calculate_batch"):
        results = calc.calculate_batch(images, properties=("forces",), max_batch=max_batch)
        return np.stack([r["forces"] for r in results])
    forces = []
    for at in images:
        at.calc = calc
        forces.append(np.array(at.get_forces(), dtype=float))
    return np.stack(forces)


def _parse_path(path: str, special_points: dict):
    """'GXMGZRAZ' -> [[G,X],[X,M],...]; ',' starts a disconnected piece ('GXM,ZR')."""
    segments, labels, connections = [], [], []
    for piece in path.split(","):
        piece = piece.strip()
        if len(piece) < 2:
            raise ValueError(f"band path piece {piece!r} needs at least two points (path {path!r})")
        for ch in piece:
            if ch not in special_points:
                raise ValueError(f"unknown special point {ch!r} in path {path!r}; known: {''.join(special_points)}")
        for k in range(len(piece) - 1):
            segments.append([special_points[piece[k]], special_points[piece[k + 1]]])
            labels.append((piece[k], piece[k + 1]))
            connections.append(k < len(piece) - 2)
    return segments, labels, connections


def acoustic_weight(eigenvectors: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Translational weight of each mode, ``w = sum_a |sum_j sqrt(m_j) e_ja|^2 / sum_j m_j``.

    ``eigenvectors`` [..., 3n, n_modes] (phonopy: columns are the mass-weighted eigenvectors,
    atom-major ``(j, a)`` rows). ``w = 1`` for a rigid translation (acoustic at Gamma), 0 for a
    mode orthogonal to all translations (every optical mode at Gamma).
    """
    ev = np.asarray(eigenvectors)
    n = len(masses)
    ev = ev.reshape(ev.shape[:-2] + (n, 3, ev.shape[-1]))
    proj = np.einsum("j,...jam->...am", np.sqrt(np.asarray(masses, float)), ev)
    return np.sum(np.abs(proj) ** 2, axis=-2) / float(np.sum(masses))


def flag_imaginary_modes(qpoints: np.ndarray, frequencies: np.ndarray, weights: np.ndarray,
                         imaginary_tol_thz: float = 0.2, acoustic_tol_thz: float = 0.5,
                         acoustic_q_window: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Which modes are imaginary (see the module docstring for the criterion).

    ``qpoints`` [nq,3] (reduced), ``frequencies`` [nq,nb] (THz, imaginary as negative),
    ``weights`` [nq,nb] translational weights (:func:`acoustic_weight`).
    Returns ``(flagged [nq,nb] bool, acoustic_noise [nq,nb] bool)``: the second marks modes
    treated as acoustic interpolation noise near Gamma (negative but tolerated).
    """
    q = np.asarray(qpoints, float)
    f = np.asarray(frequencies, float)
    near_gamma = np.max(np.abs(q - np.round(q)), axis=-1) <= acoustic_q_window + 1e-12  # [nq]
    acoustic = near_gamma[:, None] & (np.asarray(weights) >= 0.5)
    flagged = np.where(acoustic, f < -abs(acoustic_tol_thz), f < -abs(imaginary_tol_thz))
    noise = acoustic & (f < 0) & ~flagged
    return flagged, noise


def phonon_bands(model_or_calc, atoms: Atoms, supercell=(2, 2, 2), distance: float = 0.01,
                 symprec: float = 1e-3, path: str = "GXMGZRAZ", npoints: int = 101,
                 special_points: dict | None = None, refine: bool = True, imaginary_tol_thz: float = 0.2,
                 acoustic_tol_thz: float = 0.5, acoustic_q_window: float = 0.15, max_listed: int = 50,
                 max_batch: int | None = None, dtype=None, blas_threads: int | None = 1) -> dict:
    """Finite-displacement phonon band structure of ``atoms`` with a jaxpto model (or ASE calculator).

    Parameters
    ----------
    model_or_calc:
        A jaxpto :class:`Model` or an ASE calculator (:class:`JaxptoCalculator`'s batch is used).
    atoms:
        The relaxed unit cell (Atoms, or a dict from :func:`jaxpto.workflows.static.atoms_to_dict`).
    supercell:
        Supercell repetitions (3 ints) or a 3x3 supercell matrix.
    distance:
        Displacement amplitude in A (phonopy's default 0.01).
    symprec:
        spglib tolerance (A) of the refinement of ``atoms`` to its space group.
    path, npoints, special_points:
        Band path as special-point letters ('GXMGZRAZ'; ',' breaks the path), points per segment
        (both ends included) and the letters' reduced coordinates (default :data:`P4MM_SPECIAL_POINTS`).
    refine:
        Refine the cell to its space group first (strongly advised; ``False`` only to show the trap).
    imaginary_tol_thz, acoustic_tol_thz, acoustic_q_window:
        Imaginary-mode criterion (module docstring).
    max_listed:
        At most this many flagged modes are listed (lowest first); ``n_imaginary`` counts all.
    max_batch:
        Replicas per model call (``None``: all displaced supercells in one call).
    dtype, blas_threads:
        Float type of the calculator built for a Model; numpy/scipy BLAS threads while phonopy
        works (default 1, see :func:`jaxpto.workflows.static.limit_blas_threads`).

    Returns
    -------
    dict
        ``min_frequency_thz`` (raw lowest along the path), ``min_frequency_q``,
        ``min_frequency_is_acoustic_noise``, ``has_imaginary``, ``n_imaginary`` (flagged
        (q, branch) pairs, each distinct q-point counted once), ``imaginary_modes`` (list of
        ``{q, segment, distance, branch, frequency_thz, frequency_cm1, acoustic_weight}``,
        lowest first), ``lowest_optical_thz``
        (lowest frequency of the modes not treated as acoustic near Gamma), ``n_displacements``,
        ``space_group`` / ``space_group_unrefined`` (spglib at 1e-5 A), ``bands`` (``distances``
        [segment][point], ``frequencies`` [segment][point][branch] THz, ``qpoints``, ``labels``
        per segment, ``tick_distances``/``tick_labels`` for plotting, ``connections``),
        ``gamma_frequencies_thz``, ``unit_cell`` (the refined cell as plain lists), ``protocol``.
    """
    if isinstance(atoms, dict):
        atoms = atoms_from_dict(atoms)
    special_points = P4MM_SPECIAL_POINTS if special_points is None else special_points
    calc = as_calculator(model_or_calc, dtype=dtype)
    with limit_blas_threads(blas_threads):
        out = _phonon_bands(calc, atoms, supercell, distance, symprec, path, npoints, special_points, refine,
                            imaginary_tol_thz, acoustic_tol_thz, acoustic_q_window, max_listed, max_batch)
    return {"model": model_name(model_or_calc), **out}


def _phonon_bands(calc, atoms, supercell, distance, symprec, path, npoints, special_points, refine,
                  imaginary_tol_thz, acoustic_tol_thz, acoustic_q_window, max_listed, max_batch) -> dict:
    phonon, cell, info = make_phonopy(atoms, supercell=supercell, distance=distance, symprec=symprec,
                                      refine=refine)
    phonon.forces = supercell_forces(calc, phonon, max_batch=max_batch)
    phonon.produce_force_constants(show_drift=False)
    phonon.symmetrize_force_constants(show_drift=False)

    from phonopy.phonon.band_structure import get_band_qpoints

    segments, seg_labels, connections = _parse_path(path, special_points)
    qpaths = get_band_qpoints(segments, npoints=npoints)
    phonon.run_band_structure(qpaths, with_eigenvectors=True, path_connections=connections,
                              labels=None)
    bs = phonon.band_structure
    masses = np.asarray(phonon.primitive.masses, float)
    freqs = [np.asarray(f, float) for f in bs.frequencies]
    qs = [np.asarray(q, float) for q in bs.qpoints]
    dists = [np.asarray(d, float) for d in bs.distances]
    weights = [acoustic_weight(e, masses) for e in bs.eigenvectors]

    f_all = np.concatenate(freqs)
    q_all = np.concatenate(qs)
    d_all = np.concatenate(dists)
    w_all = np.concatenate(weights)
    seg_all = np.concatenate([np.full(len(f), k) for k, f in enumerate(freqs)])
    flagged, noise = flag_imaginary_modes(q_all, f_all, w_all, imaginary_tol_thz, acoustic_tol_thz,
                                          acoustic_q_window)
    # Segment ends are shared (G ends M-G and starts G-Z): count each q-point once.
    _, first = np.unique(np.round(q_all, 9), axis=0, return_index=True)
    unique_q = np.zeros(len(q_all), bool)
    unique_q[first] = True
    flagged &= unique_q[:, None]
    near_gamma = np.max(np.abs(q_all - np.round(q_all)), axis=-1) <= acoustic_q_window + 1e-12
    acoustic_like = near_gamma[:, None] & (w_all >= 0.5)
    iq, ib = np.unravel_index(int(np.argmin(f_all)), f_all.shape)
    modes = []
    order = np.argsort(f_all[flagged])
    fq, fb = np.nonzero(flagged)
    for k in order[:max_listed]:
        i, b = int(fq[k]), int(fb[k])
        s = int(seg_all[i])
        modes.append({"q": q_all[i].tolist(), "segment": "-".join(seg_labels[s]), "distance": float(d_all[i]),
                      "branch": b, "frequency_thz": float(f_all[i, b]),
                      "frequency_cm1": float(f_all[i, b] * THZ_TO_CM1), "acoustic_weight": float(w_all[i, b])})
    optical = np.where(acoustic_like, np.inf, f_all)

    # Tick positions: start of each segment plus the end of the last one of each connected piece.
    ticks, tick_labels = [], []
    for k, (d, (a, b)) in enumerate(zip(dists, seg_labels)):
        if k == 0 or not connections[k - 1]:
            if ticks and abs(ticks[-1] - d[0]) < 1e-12:
                tick_labels[-1] = f"{tick_labels[-1]}|{a}"
            else:
                ticks.append(float(d[0]))
                tick_labels.append(a)
        ticks.append(float(d[-1]))
        tick_labels.append(b)

    at_gamma = phonon.run_qpoints([[0.0, 0.0, 0.0]])
    gamma = np.asarray(at_gamma.frequencies[0] if at_gamma is not None  # phonopy >= 3 returns the result
                       else phonon.get_qpoints_dict()["frequencies"][0], float)
    return {
        "min_frequency_thz": float(f_all[iq, ib]),
        "min_frequency_cm1": float(f_all[iq, ib] * THZ_TO_CM1),
        "min_frequency_q": q_all[iq].tolist(),
        "min_frequency_is_acoustic_noise": bool(noise[iq, ib]),
        "lowest_optical_thz": float(np.min(optical)),
        "has_imaginary": bool(flagged.any()),
        "n_imaginary": int(flagged.sum()),
        "imaginary_modes": modes,
        "n_displacements": int(len(phonon.displacements)),
        "n_supercell_atoms": int(len(phonon.supercell)),
        "space_group": info["space_group"],
        "space_group_unrefined": info["space_group_unrefined"],
        "gamma_frequencies_thz": gamma.tolist(),
        "bands": {
            "distances": [d.tolist() for d in dists],
            "frequencies": [f.tolist() for f in freqs],
            "qpoints": [q.tolist() for q in qs],
            "labels": ["-".join(lab) for lab in seg_labels],
            "connections": [bool(c) for c in connections],
            "tick_distances": ticks,
            "tick_labels": tick_labels,
        },
        "unit_cell": {"cell": np.asarray(cell.cell).tolist(), "scaled_positions": cell.get_scaled_positions().tolist(),
                      "numbers": [int(z) for z in cell.numbers], "pbc": [True, True, True]},
        "protocol": {"supercell": np.asarray(phonon.supercell_matrix).tolist(), "distance_a": distance,
                     "symprec_a": symprec, "refined": refine, "path": path, "npoints": npoints,
                     "special_points": {k: list(v) for k, v in special_points.items()},
                     "force_constants": "phonopy finite differences + symmetrize_force_constants()",
                     "imaginary_tol_thz": imaginary_tol_thz, "acoustic_tol_thz": acoustic_tol_thz,
                     "acoustic_q_window": acoustic_q_window, "batched": hasattr(calc, "calculate_batch")},
    }


def pto_phonons(model, relaxed_tetragonal_atoms, supercell=(2, 2, 2), distance: float = 0.01,
                symprec: float = 1e-3, path: str = "GXMGZRAZ", npoints: int = 101, **kwargs) -> dict:
    """The study's phonon protocol on the relaxed tetragonal PbTiO3 cell (P4mm special points).

    ``relaxed_tetragonal_atoms``: Atoms, or the dict ``pto_static(...)["structures"]["tetragonal"]``.
    The polar axis must be the third cell vector (as :func:`pto_static` returns it) for the
    P4mm labels (X = (0, 1/2, 0), Z = (0, 0, 1/2), ...) to mean what they say; a cell whose c is
    not the unique axis gets a warning in ``warnings``. Other keywords go to :func:`phonon_bands`.
    """
    atoms = atoms_from_dict(relaxed_tetragonal_atoms) if isinstance(relaxed_tetragonal_atoms, dict) \
        else relaxed_tetragonal_atoms
    out = phonon_bands(model, atoms, supercell=supercell, distance=distance, symprec=symprec, path=path,
                       npoints=npoints, special_points=P4MM_SPECIAL_POINTS, **kwargs)
    lengths = np.linalg.norm(np.asarray(out["unit_cell"]["cell"]), axis=1)
    notes = []
    if abs(lengths[0] - lengths[1]) > 1e-6 * lengths[0]:
        notes.append(f"a != b ({lengths[0]:.6f}, {lengths[1]:.6f} A): the cell is not tetragonal with c as the "
                     "unique axis, so the P4mm path labels do not apply as named")
    out["warnings"] = notes
    return out


def plot_phonon_bands(results_by_model: dict, path, title: str | None = "PbTiO$_3$ phonons (2$\\times$2$\\times$2)",
                      ylim=None) -> str:
    """Overlaid phonon band structures, one colour per model, with high-symmetry labels.

    ``results_by_model``: ``{model name: phonon dict}`` (from :func:`pto_phonons`). Each model's
    segments are mapped linearly onto the first model's segment lengths, so different lattices
    share one horizontal axis with the special points aligned. Imaginary frequencies are drawn
    as negative; a zero line marks the stability limit; the right axis gives cm^-1.
    """
    names = list(results_by_model)
    if not names:
        raise ValueError("plot_phonon_bands needs at least one model's results")
    ref = results_by_model[names[0]]["bands"]
    fig = _new_figure((7.0, 4.6))
    ax = fig.subplots()
    fmin, fmax = 0.0, 0.0
    for k, name in enumerate(names):
        bands = results_by_model[name]["bands"]
        if len(bands["distances"]) != len(ref["distances"]):
            raise ValueError(f"model {name!r} has a different band path from {names[0]!r}")
        color = f"C{k % 10}"
        for s, (d, f) in enumerate(zip(bands["distances"], bands["frequencies"])):
            d = np.asarray(d)
            r0, r1 = ref["distances"][s][0], ref["distances"][s][-1]
            x = r0 + (d - d[0]) / max(d[-1] - d[0], 1e-300) * (r1 - r0)
            f = np.asarray(f)
            lines = ax.plot(x, f, color=color, lw=1.0, alpha=0.9)
            if s == 0:
                lines[0].set_label(name)  # one legend entry per model, not per branch
            fmin, fmax = min(fmin, f.min()), max(fmax, f.max())
    for t in ref["tick_distances"]:
        ax.axvline(t, color="0.6", lw=0.6)
    ax.axhline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(ref["tick_distances"], [lab.replace("G", "\u0393") for lab in ref["tick_labels"]])
    ax.set_xlim(ref["tick_distances"][0], ref["tick_distances"][-1])
    span = fmax - fmin
    ax.set_ylim(ylim if ylim is not None else (fmin - 0.05 * span, fmax + 0.05 * span))
    ax.set_ylabel("Frequency (THz)")
    ax.set_xlabel("Wave vector")
    sec = ax.secondary_yaxis("right", functions=(lambda f: f * THZ_TO_CM1, lambda w: w / THZ_TO_CM1))
    sec.set_ylabel("Frequency (cm$^{-1}$)")
    ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    if title:
        ax.set_title(title)
    fig.savefig(path)
    return str(path)
