"""PbTiO3 structures of the PTO-test (Li, Yang, Chen, Yu, Liu, J. Phys. Chem. C 2025).

All lengths in Angstrom. The perovskite cell has Pb at the corner (0, 0, 0), Ti near the body
centre (1/2, 1/2, 1/2 + dz_Ti), the apical O near (1/2, 1/2, 0 + dz_Oap) and the two equatorial O
near (1/2, 0, 1/2 + dz_Oeq) and (0, 1/2, 1/2 + dz_Oeq); the shifts ``dz`` are fractions of c along z.

* the study's polar start (its MD and NVT runs): dz_Ti = 0.035, dz_Oap = 0.10, dz_Oeq = 0.115,
  which with the Born charges of :mod:`jaxpto.workflows.polarization` gives |P_z| ~ 0.81 C/m^2;
* the PBEsol tetragonal start of the static part: a = 3.87411, c = 4.19948 with the same shifts
  (Ti ~0.54, O ~0.11 and ~0.62 as in the study's P4mm cell);
* cubic Pm-3m: a = 3.92167, no shifts;
* the bridge check cells (:func:`bridge_check_cells`): the 5-atom P4mm cell, a rattled 2x2x2
  supercell and a strained, rattled triclinic 2x1x1 cell, on which every model bridge is compared
  with the model's own calculator (tests) and CUDA with CPU (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

# The study's starting points (PBEsol DFT) and its MD/NVT cells, Angstrom.
TETRAGONAL_A, TETRAGONAL_C = 3.87411, 4.19948
CUBIC_A = 3.92167
MD_A, MD_C = 3.90, 4.15
NVT_A, NVT_C = 3.904, 4.152
# Polar displacements along z in fractions of c (Ti, apical O, equatorial O).
POLAR_SHIFTS = (0.035, 0.10, 0.115)


def pbtio3_cell(a: float, c: float | None = None, shifts=POLAR_SHIFTS) -> Atoms:
    """One 5-atom PbTiO3 cell (Pb, Ti, O_apical, O_eq, O_eq), tetragonal ``a x a x c``.

    ``shifts = (dz_Ti, dz_Oap, dz_Oeq)`` in fractions of c; ``(0, 0, 0)`` gives the ideal
    (cubic-symmetric) positions. ``c`` defaults to ``a`` (cubic cell).
    """
    c = a if c is None else c
    if a <= 0 or c <= 0:
        raise ValueError(f"lattice constants must be positive, got a={a}, c={c}")
    dz_ti, dz_oap, dz_oeq = (float(s) for s in shifts)
    scaled = np.array([
        [0.0, 0.0, 0.0],
        [0.5, 0.5, 0.5 + dz_ti],
        [0.5, 0.5, 0.0 + dz_oap],
        [0.5, 0.0, 0.5 + dz_oeq],
        [0.0, 0.5, 0.5 + dz_oeq],
    ])
    atoms = Atoms("PbTiO3", scaled_positions=scaled % 1.0, cell=np.diag([a, a, c]), pbc=True)
    return atoms


def tetragonal_pbtio3(a: float = TETRAGONAL_A, c: float = TETRAGONAL_C, shifts=POLAR_SHIFTS) -> Atoms:
    """The study's P4mm start (PBEsol a, c; polar shifts)."""
    return pbtio3_cell(a, c, shifts)


def cubic_pbtio3(a: float = CUBIC_A) -> Atoms:
    """Cubic Pm-3m PbTiO3 (no displacements)."""
    return pbtio3_cell(a, a, (0.0, 0.0, 0.0))


def polar_supercell(n=5, a: float = MD_A, c: float = MD_C, shifts=POLAR_SHIFTS) -> Atoms:
    """``n x n x n`` (or ``n = (n1, n2, n3)``) supercell of the polar cell: the study's MD start.

    625 atoms for the default ``n = 5`` (box 19.5 x 19.5 x 20.75 A).
    """
    reps = (n, n, n) if np.isscalar(n) else tuple(int(k) for k in n)
    if any(k < 1 for k in reps):
        raise ValueError(f"supercell repetitions must be >= 1, got {reps}")
    return pbtio3_cell(a, c, shifts).repeat(reps)


# ---------------------------------------------------------------------------------------------
# The bridge check cells (tests/test_bridges_*.py, benchmarks/gpu_check.py)
# ---------------------------------------------------------------------------------------------


def check_unit_cell() -> Atoms:
    """The 5-atom tetragonal cell of the bridge checks (a = 3.874, c = 4.199 A, Ti at z = 0.54 c,
    apical O at 0.11 c, equatorial O at 0.62 c)."""
    a, c = TETRAGONAL_A, TETRAGONAL_C
    frac = [(0, 0, 0), (0.5, 0.5, 0.54), (0.5, 0.5, 0.11), (0.5, 0, 0.62), (0, 0.5, 0.62)]
    return Atoms("PbTiO3", scaled_positions=frac, cell=np.diag([a, a, c]), pbc=True)


def check_supercell(seed: int = 0) -> Atoms:
    """:func:`check_unit_cell` repeated 2x2x2 (40 atoms), every atom displaced by N(0, 0.05 A)."""
    atoms = check_unit_cell().repeat((2, 2, 2))
    atoms.positions += np.random.default_rng(seed).normal(0.0, 0.05, atoms.positions.shape)
    return atoms


def check_triclinic(seed: int = 1) -> Atoms:
    """:func:`check_unit_cell` repeated 2x1x1 (10 atoms) under a general strain (all cell angles
    off 90 degrees), atoms displaced by N(0, 0.05 A)."""
    atoms = check_unit_cell().repeat((2, 1, 1))
    eps = np.array([[0.02, 0.05, -0.03], [0.01, -0.02, 0.04], [0.06, 0.03, 0.01]])
    atoms.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + eps), scale_atoms=True)
    atoms.positions += np.random.default_rng(seed).normal(0.0, 0.05, atoms.positions.shape)
    return atoms


def check_strained_unit_cell() -> Atoms:
    """:func:`check_unit_cell` under a small upper-triangular strain (no displacements)."""
    atoms = check_unit_cell()
    strain = np.eye(3) + np.array([[0.02, 0.03, -0.01], [0.0, -0.015, 0.04], [0.0, 0.0, 0.01]])
    atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
    return atoms


def bridge_check_cells() -> dict[str, Atoms]:
    """The three PbTiO3 cells every bridge is checked on: ``{"unit": 5 atoms, "supercell": 40
    atoms, rattled, "triclinic": 10 atoms, strained and rattled}``."""
    return {"unit": check_unit_cell(), "supercell": check_supercell(), "triclinic": check_triclinic()}
