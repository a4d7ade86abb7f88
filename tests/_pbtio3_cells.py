"""The PbTiO3 test cells shared by the bridge tests (Angstrom; ASE ``Atoms``).

* :func:`pbtio3`: the 5-atom tetragonal cell (a = 3.874, c = 4.199 A, polar displacements);
* :func:`supercell`: its 2x2x2 supercell (40 atoms) with 0.05 A random displacements;
* :func:`triclinic`: a strained, rattled 2x1x1 supercell (10 atoms, all cell angles off 90);
* :func:`strained_unit_cell`: the 5-atom cell under a small upper-triangular strain (no rattle).
"""

import numpy as np
from ase import Atoms


def pbtio3() -> Atoms:
    a, c = 3.87411, 4.19948
    frac = [(0, 0, 0), (0.5, 0.5, 0.54), (0.5, 0.5, 0.11), (0.5, 0, 0.62), (0, 0.5, 0.62)]
    return Atoms("PbTiO3", scaled_positions=frac, cell=np.diag([a, a, c]), pbc=True)


def supercell(seed=0) -> Atoms:
    atoms = pbtio3().repeat((2, 2, 2))
    atoms.positions += np.random.default_rng(seed).normal(0.0, 0.05, atoms.positions.shape)
    return atoms


def triclinic(seed=1) -> Atoms:
    atoms = pbtio3().repeat((2, 1, 1))
    eps = np.array([[0.02, 0.05, -0.03], [0.01, -0.02, 0.04], [0.06, 0.03, 0.01]])
    atoms.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + eps), scale_atoms=True)
    atoms.positions += np.random.default_rng(seed).normal(0.0, 0.05, atoms.positions.shape)
    return atoms


def strained_unit_cell() -> Atoms:
    atoms = pbtio3()
    strain = np.eye(3) + np.array([[0.02, 0.03, -0.01], [0.0, -0.015, 0.04], [0.0, 0.0, 0.01]])
    atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
    return atoms
