"""PbTiO3 structures of the PTO-test (Li, Yang, Chen, Yu, Liu, J. Phys. Chem. C 2025).

All lengths in Angstrom. The perovskite cell has Pb at the corner (0, 0, 0), Ti near the body
centre (1/2, 1/2, 1/2 + dz_Ti), the apical O near (1/2, 1/2, 0 + dz_Oap) and the two equatorial O
near (1/2, 0, 1/2 + dz_Oeq) and (0, 1/2, 1/2 + dz_Oeq); the shifts ``dz`` are fractions of c along z.

* the study's polar start (its MD and NVT runs): dz_Ti = 0.035, dz_Oap = 0.10, dz_Oeq = 0.115,
  which with the Born charges of :mod:`jaxpto.workflows.polarization` gives |P_z| ~ 0.81 C/m^2;
* the PBEsol tetragonal start of the static part: a = 3.87411, c = 4.19948 with the same shifts
  (Ti ~0.54, O ~0.11 and ~0.62 as in the study's P4mm cell);
* cubic Pm-3m: a = 3.92167, no shifts.
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
