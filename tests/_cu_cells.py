"""The sheared, rattled fcc Cu cell with 300 K momenta that the drop-in tests run (shared by
test_ase_dropin.py and test_ase_class_surface.py)."""

import warnings

import numpy as np
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution


def sheared_cu(size=2, seed=1):
    """``size``^3 conventional Cu cells (a = 3.61 A), cell rows sheared (h01 = 0.15, h12 = -0.1 A),
    positions rattled by 0.05 A and Maxwell-Boltzmann momenta at 300 K, both seeded by ``seed``."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (size, size, size)
    cell = atoms.cell.array.copy()
    cell[0, 1] = 0.15
    cell[1, 2] = -0.1
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ASE 3.29 deprecates MaxwellBoltzmannDistribution
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    return atoms
