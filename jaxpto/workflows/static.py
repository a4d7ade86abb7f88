r"""Static part of the PTO-test: symmetry-keeping variable-cell relaxations of PbTiO3.

Reproduces the static protocol of Li, Yang, Chen, Yu, Liu, "Are foundational atomistic models
reliable for finite-temperature molecular dynamics?", J. Phys. Chem. C (2025): the tetragonal
(P4mm, PBEsol start a = 3.87411, c = 4.19948 A) and cubic (Pm-3m, a = 3.92167 A) 5-atom cells are
relaxed with ASE's ``FrechetCellFilter`` + ``BFGS`` to ``fmax = 1e-3`` (eV/A for the atoms; the
filter scales the cell's generalized forces the same way), and the model's lattice constants,
tetragonality c/a and the energy difference

.. math:: \Delta E = E_\mathrm{tet}/n_\mathrm{fu} - E_\mathrm{cub}/n_\mathrm{fu}
          \quad (\mathrm{eV\ per\ formula\ unit;\ negative:\ the\ polar\ tetragonal\ phase\ is\ stable})

are reported.

Symmetry. The relaxation keeps the space group of the start with
:class:`ase.constraints.FixSymmetry` (spglib ``symprec``, default 1e-3 A): forces and stress are
symmetrized and every BFGS step is projected onto the symmetric subspace, so a float32 model's
round-off cannot break P4mm or Pm-3m on the way (it would otherwise let the cubic cell drift into
a lower-symmetry minimum or leave the tetragonal cell slightly triclinic, which later makes phonopy
find almost no symmetry; see :mod:`jaxpto.workflows.phonons`). The start is first made exactly
symmetric with :func:`ase.spacegroup.symmetrize.refine_symmetry` (spglib's refined cell rotated
back onto the input's orientation, atom order kept) because FixSymmetry only keeps the symmetry
the start already has. Keeping P4mm does not force a polar answer: P4mm contains the
centrosymmetric cubic structure as a special case, so a model whose tetragonal minimum does not
exist relaxes to c/a = 1 with zero polar displacements, which :func:`pto_static` detects and
reports (``tetragonal_relaxed_to_cubic``).

Units: eV, Angstrom, eV/A^3 (ASE's stress sign, positive in tension); volumes in A^3 per 5-atom
(one formula unit) cell.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from functools import reduce

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from jaxpto.calculator import JaxptoCalculator
from jaxpto.model import Model
from jaxpto.workflows.structures import TETRAGONAL_A, TETRAGONAL_C, cubic_pbtio3, tetragonal_pbtio3

__all__ = ["relax", "pto_static", "limit_blas_threads", "atoms_to_dict", "atoms_from_dict", "space_group",
           "plot_static", "REFERENCE_PBESOL", "REFERENCE_EXPERIMENT"]

# Reference points of the study: PBEsol DFT lattice of tetragonal PbTiO3 and experiment at room
# temperature (c/a = 1.06).
REFERENCE_PBESOL = {"a": TETRAGONAL_A, "c": TETRAGONAL_C, "c_over_a": TETRAGONAL_C / TETRAGONAL_A}
REFERENCE_EXPERIMENT = {"c_over_a": 1.06}

_EV_A3_TO_GPA = 160.21766208


@contextlib.contextmanager
def limit_blas_threads(n: int | None = 1):
    """Limit numpy/scipy's BLAS (OpenBLAS/MKL) to ``n`` threads inside the block; ``None``: no change.

    Why: the optimizer (BFGS on a (3N+9)-square Hessian, FrechetCellFilter's 3x3 matrix
    logarithm/exponential derivatives) and phonopy's per-q eigenproblems work on tiny matrices,
    where BLAS threads only add synchronisation; on a loaded 2-core machine (idle-spinning
    OpenBLAS threads competing with torch and XLA threads) they made a 5-atom relaxation ten
    times slower (2.8 s -> 20-28 s for CHGNet PbTiO3). Torch's and XLA's own thread pools are
    not touched. Uses ``threadpoolctl`` when it is installed, else does nothing.
    """
    if n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it the BLAS keeps its own thread count
        yield
        return
    with threadpool_limits(limits=int(n), user_api="blas"):
        yield


def as_calculator(model_or_calc, dtype=None) -> Calculator:
    """A :class:`JaxptoCalculator` for a :class:`Model`; an ASE calculator is returned as it is."""
    if isinstance(model_or_calc, Model):
        return JaxptoCalculator(model_or_calc, dtype=dtype)
    if isinstance(model_or_calc, Calculator) or hasattr(model_or_calc, "get_potential_energy"):
        return model_or_calc
    raise TypeError(f"expected a jaxpto Model or an ASE calculator, got {type(model_or_calc).__name__}")


def model_name(model_or_calc) -> str:
    """Name of a Model (``model.name``) or of an ASE calculator (its class name)."""
    if isinstance(model_or_calc, Model):
        return model_or_calc.name
    inner = getattr(model_or_calc, "model", None)
    if isinstance(inner, Model):
        return inner.name
    return type(model_or_calc).__name__


def space_group(atoms: Atoms, symprec: float = 1e-3) -> dict:
    """International symbol and number of ``atoms``' space group (spglib, ``symprec`` in A)."""
    import spglib

    cell = (np.asarray(atoms.cell), atoms.get_scaled_positions(wrap=True), atoms.numbers)
    ds = spglib.get_symmetry_dataset(cell, symprec=symprec)
    if ds is None:
        return {"symbol": "unknown", "number": 0, "symprec": symprec}
    return {"symbol": str(ds.international), "number": int(ds.number), "symprec": symprec}


def atoms_to_dict(atoms: Atoms) -> dict:
    """JSON-ready plain lists: ``cell`` (A, rows), ``scaled_positions``, ``numbers``, ``pbc``, ``symbols``."""
    return {
        "cell": np.asarray(atoms.cell, float).tolist(),
        "scaled_positions": atoms.get_scaled_positions(wrap=False).tolist(),
        "numbers": [int(z) for z in atoms.numbers],
        "symbols": atoms.get_chemical_symbols(),
        "pbc": [bool(p) for p in atoms.pbc],
    }


def atoms_from_dict(d: dict) -> Atoms:
    """Inverse of :func:`atoms_to_dict`."""
    return Atoms(numbers=d["numbers"], cell=d["cell"], scaled_positions=d["scaled_positions"],
                 pbc=d.get("pbc", True))


def _formula_units(atoms: Atoms) -> int:
    """Number of formula units in the cell: the gcd of the element counts (1 for a 5-atom PbTiO3)."""
    counts = np.unique(atoms.numbers, return_counts=True)[1]
    return int(reduce(math.gcd, (int(c) for c in counts)))


def _lattice_record(atoms: Atoms) -> dict:
    a, b, c, alpha, beta, gamma = (float(x) for x in atoms.cell.cellpar())
    return {"a": a, "b": b, "c": c, "alpha": alpha, "beta": beta, "gamma": gamma,
            "volume": float(atoms.get_volume())}


def relax(model_or_calc, atoms: Atoms, fmax: float = 1e-3, steps: int = 1000, keep_symmetry: bool = True,
          symprec: float = 1e-3, cell_filter: bool = True, logfile=None, dtype=None, blas_threads: int | None = 1):
    """Variable-cell relaxation with ASE's ``FrechetCellFilter`` + ``BFGS``, keeping the symmetry.

    Parameters
    ----------
    model_or_calc:
        A jaxpto :class:`Model` (wrapped into a :class:`JaxptoCalculator`) or any ASE calculator
        (used as it is: this is how the tests run the same relaxation on ASE's own potentials).
    atoms:
        Start structure (not modified).
    fmax:
        Convergence threshold of BFGS (eV/A): the largest force on an atom and the largest
        generalized force on the cell (FrechetCellFilter: virial over its ``exp_cell_factor``,
        i.e. ``V sigma / N``) must both drop below it.
    steps:
        Largest number of BFGS steps.
    keep_symmetry:
        Refine the start to its space group (spglib, ``symprec``) and hold it with
        :class:`ase.constraints.FixSymmetry` (see the module docstring for why).
    symprec:
        Symmetry tolerance in Angstrom for the refinement and FixSymmetry.
    cell_filter:
        ``False`` relaxes the positions only (fixed cell).
    logfile:
        BFGS log (``None``: silent; ``"-"``: stdout).
    dtype:
        Float type of a :class:`JaxptoCalculator` built here (default: JAX's default).
    blas_threads:
        numpy/scipy BLAS threads during the relaxation (see :func:`limit_blas_threads`;
        ``None`` leaves them alone, e.g. for BFGS on thousands of atoms).

    Returns
    -------
    (Atoms, dict)
        The relaxed structure (a copy, no calculator or constraint attached) and its record:
        ``energy`` (eV), ``energy_per_atom``, ``energy_per_fu`` (eV per formula unit),
        ``n_formula_units``, lattice ``a, b, c`` (A), ``alpha, beta, gamma`` (deg), ``volume``
        (A^3, whole cell), ``steps``, ``converged``, ``max_force`` (eV/A, unsymmetrized raw forces),
        ``max_stress`` (eV/A^3, largest |component| of the raw stress) and ``max_stress_gpa``,
        ``space_group_start``/``space_group`` (spglib at ``symprec``) and the settings used.
    """
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    calc = as_calculator(model_or_calc, dtype=dtype)
    work = atoms.copy()
    work.set_constraint()
    work.calc = calc
    sg_start = space_group(work, symprec)
    if keep_symmetry:
        from ase.spacegroup.symmetrize import refine_symmetry

        refine_symmetry(work, symprec=symprec)
        work.set_constraint(FixSymmetry(work, symprec=symprec))
    target = FrechetCellFilter(work) if cell_filter else work
    with warnings.catch_warnings(), limit_blas_threads(blas_threads):
        # ASE warns when the relaxation ends unconverged; the record says so.
        warnings.simplefilter("ignore", UserWarning)
        opt = BFGS(target, logfile=logfile)
        converged = bool(opt.run(fmax=fmax, steps=steps))
    energy = float(work.get_potential_energy())
    forces = work.get_forces(apply_constraint=False)
    record = {
        "energy": energy,
        "energy_per_atom": energy / len(work),
        "n_formula_units": _formula_units(work),
        "energy_per_fu": energy / _formula_units(work),
        **_lattice_record(work),
        "steps": int(opt.nsteps),
        "converged": converged,
        "max_force": float(np.linalg.norm(forces, axis=1).max()),
        "fmax": float(fmax),
        "keep_symmetry": bool(keep_symmetry),
        "symprec": float(symprec),
        "space_group_start": sg_start,
    }
    if cell_filter and all(work.pbc):
        stress = work.get_stress(voigt=True, apply_constraint=False)
        record["max_stress"] = float(np.abs(stress).max())
        record["max_stress_gpa"] = record["max_stress"] * _EV_A3_TO_GPA
    relaxed = Atoms(numbers=work.numbers, cell=work.cell.array.copy(), positions=work.positions.copy(),
                    pbc=work.pbc, masses=work.get_masses())
    record["space_group"] = space_group(relaxed, symprec)
    return relaxed, record


def _origin_on_first_atom(atoms: Atoms) -> Atoms:
    """Translate the crystal so that atom 0 (Pb) sits at the origin, as in the study's cells.

    FixSymmetry lets the whole polar crystal slide along the polar axis (a free parameter of
    P4mm), so the relaxed Pb may end anywhere on the z axis; a rigid translation changes no
    energy, force or symmetry and makes the reported fractional coordinates comparable.
    """
    out = atoms.copy()
    frac = out.get_scaled_positions(wrap=False)
    frac = (frac - frac[0]) % 1.0
    # Round-off dust (1e-35 off-diagonals, 0.9999999999 coordinates) only hurts readability.
    frac[np.abs(frac - 1.0) < 1e-9] = 0.0
    frac[np.abs(frac) < 1e-12] = 0.0
    cell = out.cell.array.copy()
    cell[np.abs(cell) < 1e-12 * np.abs(cell).max()] = 0.0
    out.set_cell(cell, scale_atoms=False)
    out.set_scaled_positions(frac)
    return out


def pto_static(model, tetragonal_start: Atoms | None = None, cubic_start: Atoms | None = None,
               fmax: float = 1e-3, steps: int = 1000, keep_symmetry: bool = True, symprec: float = 1e-3,
               cubic_tolerance: float = 2e-3, logfile=None, dtype=None, blas_threads: int | None = 1) -> dict:
    """Relax tetragonal and cubic PbTiO3 (or the given starts) and report the static results.

    Parameters
    ----------
    model:
        A jaxpto :class:`Model` or an ASE calculator (both phases use the same calculator).
    tetragonal_start, cubic_start:
        Start structures; default the study's PBEsol cells
        (:func:`~jaxpto.workflows.structures.tetragonal_pbtio3`, :func:`cubic_pbtio3`).
        The polar (c) axis of the tetragonal start must be its third cell vector.
    fmax, steps, keep_symmetry, symprec, logfile, dtype, blas_threads:
        See :func:`relax` (the study: fmax = 1e-3 eV/A).
    cubic_tolerance:
        The relaxed "tetragonal" cell counts as cubic when ``|c/a - 1|`` is below this and
        spglib finds a cubic space group at 10 x ``symprec`` (so a few 1e-3 A of leftover
        polar displacement from a flat energy surface do not count as a polar phase).

    Returns
    -------
    dict
        ``a``, ``c`` (A; a = mean of the two in-plane lengths), ``c_over_a``, ``volume`` (A^3 per
        5-atom formula-unit cell), ``delta_e_ev_per_fu`` (E_tet - E_cub per formula unit, eV;
        negative: tetragonal stable), ``tetragonal_relaxed_to_cubic`` (bool), ``converged``
        (both phases), ``tetragonal`` and ``cubic`` records (see :func:`relax`, plus
        ``c_over_a`` and ``volume_per_fu``), ``structures`` ({phase: :func:`atoms_to_dict`},
        rebuild with :func:`atoms_from_dict`; Pb moved to the origin), ``model``, ``protocol``
        (settings) and ``warnings`` (human-readable notes, e.g. unconverged relaxations).
    """
    calc = as_calculator(model, dtype=dtype)
    starts = {"tetragonal": tetragonal_pbtio3() if tetragonal_start is None else tetragonal_start,
              "cubic": cubic_pbtio3() if cubic_start is None else cubic_start}
    records, structures, notes = {}, {}, []
    for phase, start in starts.items():
        relaxed, rec = relax(calc, start, fmax=fmax, steps=steps, keep_symmetry=keep_symmetry,
                             symprec=symprec, logfile=logfile, blas_threads=blas_threads)
        rec["a_inplane"] = 0.5 * (rec["a"] + rec["b"])
        rec["c_over_a"] = rec["c"] / rec["a_inplane"]
        rec["volume_per_fu"] = rec["volume"] / rec["n_formula_units"]
        records[phase] = rec
        structures[phase] = atoms_to_dict(_origin_on_first_atom(relaxed))
        if not rec["converged"]:
            max_stress = rec.get("max_stress", float("nan"))
            notes.append(f"{phase} relaxation did not converge to fmax={fmax} eV/A in {steps} steps "
                         f"(max force {rec['max_force']:.2e} eV/A, max stress {max_stress:.2e} eV/A^3)")
        if rec["space_group"]["number"] != rec["space_group_start"]["number"]:
            notes.append(f"{phase}: space group changed from {rec['space_group_start']['symbol']} to "
                         f"{rec['space_group']['symbol']} during the relaxation")
    tet, cub = records["tetragonal"], records["cubic"]
    tet_atoms = atoms_from_dict(structures["tetragonal"])
    loose = space_group(tet_atoms, 10 * symprec)
    collapsed = bool(abs(tet["c_over_a"] - 1.0) < cubic_tolerance and loose["number"] >= 195)
    if collapsed:
        notes.append(f"the tetragonal start relaxed to the cubic structure (c/a = {tet['c_over_a']:.5f}, "
                     f"space group {loose['symbol']} at symprec {10 * symprec:g} A): this model has no polar "
                     "tetragonal minimum")
    if abs(cub["c_over_a"] - 1.0) > cubic_tolerance:
        notes.append(f"the cubic start did not stay cubic (c/a = {cub['c_over_a']:.5f})")
    return {
        "model": model_name(model),
        "a": tet["a_inplane"],
        "c": tet["c"],
        "c_over_a": tet["c_over_a"],
        "volume": tet["volume_per_fu"],
        "delta_e_ev_per_fu": tet["energy_per_fu"] - cub["energy_per_fu"],
        "cubic_a": cub["volume_per_fu"] ** (1.0 / 3.0),
        "tetragonal_relaxed_to_cubic": collapsed,
        "tetragonal_space_group_loose": loose,
        "converged": bool(tet["converged"] and cub["converged"]),
        "tetragonal": tet,
        "cubic": cub,
        "structures": structures,
        "protocol": {"optimizer": "BFGS", "filter": "FrechetCellFilter", "fmax_ev_per_a": fmax, "steps": steps,
                     "keep_symmetry": keep_symmetry, "symmetry_method": "refine_symmetry + FixSymmetry (spglib)",
                     "symprec_a": symprec, "cubic_tolerance": cubic_tolerance},
        "warnings": notes,
    }


# ----------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------


def _new_figure(figsize):
    """A figure on the Agg canvas without touching pyplot's global backend (safe in libraries)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_static(results_by_model: dict, path, title: str | None = "PbTiO$_3$, relaxed 5-atom cells") -> str:
    """Lattice constants, c/a and the tetragonal-cubic energy difference per model (PNG/PDF/SVG).

    ``results_by_model``: ``{model name: pto_static dict}``. Panels: (a) a and c with the PBEsol
    values of the study's start (a = 3.87411, c = 4.19948 A) as reference lines; (b) c/a with the
    experimental room-temperature c/a = 1.06 and PBEsol 1.084; (c) Delta E = E_tet - E_cub in meV
    per formula unit (negative: tetragonal ground state). Returns the path written.
    """
    names = list(results_by_model)
    if not names:
        raise ValueError("plot_static needs at least one model's results")
    x = np.arange(len(names))
    fig = _new_figure((max(7.5, 1.6 * len(names) + 5.5), 3.4))
    ax_l, ax_r, ax_e = fig.subplots(1, 3)
    a = [results_by_model[n]["a"] for n in names]
    c = [results_by_model[n]["c"] for n in names]
    r = [results_by_model[n]["c_over_a"] for n in names]
    de = [1e3 * results_by_model[n]["delta_e_ev_per_fu"] for n in names]

    ax_l.plot(x, a, "o", color="C0", ms=7, label="$a$ (model)")
    ax_l.plot(x, c, "s", color="C3", ms=7, label="$c$ (model)")
    ax_l.axhline(REFERENCE_PBESOL["a"], color="C0", ls="--", lw=1, label=f"$a$ PBEsol {REFERENCE_PBESOL['a']:.3f}")
    ax_l.axhline(REFERENCE_PBESOL["c"], color="C3", ls="--", lw=1, label=f"$c$ PBEsol {REFERENCE_PBESOL['c']:.3f}")
    ax_l.set_ylabel("Lattice constant (\u00c5)")
    ax_l.set_title("(a) lattice constants")

    ax_r.bar(x, r, color="C2", width=0.6, label="model")
    ax_r.axhline(REFERENCE_EXPERIMENT["c_over_a"], color="k", ls="-", lw=1.2, label="experiment (RT) 1.06")
    ax_r.axhline(REFERENCE_PBESOL["c_over_a"], color="C1", ls="--", lw=1.2,
                 label=f"PBEsol {REFERENCE_PBESOL['c_over_a']:.3f}")
    ax_r.set_ylim(min(0.98, min(r) - 0.01), max(max(r), 1.09) + 0.03)
    ax_r.set_ylabel("$c/a$")
    ax_r.set_title("(b) tetragonality")

    ax_e.bar(x, de, color=["C0" if v < 0 else "C3" for v in de], width=0.6)
    ax_e.axhline(0.0, color="k", lw=0.8)
    ax_e.set_ylabel("$E_\\mathrm{tet} - E_\\mathrm{cub}$ (meV/f.u.)")
    ax_e.set_title("(c) energy difference")
    for ax in (ax_l, ax_r, ax_e):
        ax.set_xticks(x, names, rotation=30 if len(names) > 2 else 0, ha="right" if len(names) > 2 else "center")
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    ax_l.legend(fontsize=7, loc="best")
    ax_r.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.savefig(path)
    return str(path)
