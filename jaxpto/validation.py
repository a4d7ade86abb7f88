"""Input checks that run before any step, with errors that name the problem and the fix."""

from __future__ import annotations

import numpy as np


def check_system(positions, cell, numbers, masses, momenta=None):
    """Validate and broadcast a system to ``[R,N,3]``, ``[R,3,3]``, ``[N]``, ``[N]``, ``[R,N,3]`` (numpy).

    Raises ``ValueError`` for non-finite positions or momenta, shapes that do
    not agree between replicas, non-positive masses and degenerate cells.
    """
    positions = np.asarray(positions, dtype=float)
    if positions.ndim == 2:
        positions = positions[None]
    if positions.ndim != 3 or positions.shape[-1] != 3:
        raise ValueError(f"positions must have shape [N,3] or [R,N,3], got {positions.shape}")
    R, N = positions.shape[:2]
    if N == 0:
        raise ValueError("the system has no atoms")
    bad = ~np.isfinite(positions)
    if bad.any():
        r, i = np.argwhere(bad.any(-1))[0]
        raise ValueError(f"positions contain NaN/inf (replica {r}, atom {i}); fix the input structure")
    cell = np.asarray(cell, dtype=float)
    if cell.shape == (3, 3):
        cell = np.broadcast_to(cell, (R, 3, 3)).copy()
    if cell.shape != (R, 3, 3):
        raise ValueError(f"cell must have shape [3,3] or [R,3,3] with R={R} replicas, got {cell.shape}")
    if not np.all(np.isfinite(cell)):
        raise ValueError("cell contains NaN/inf")
    numbers = np.asarray(numbers)
    if numbers.shape != (N,):
        raise ValueError(f"numbers must have shape [N] = [{N}] (one atomic number per atom), got {numbers.shape}")
    check_atomic_numbers(numbers)
    masses = np.asarray(masses, dtype=float)
    if masses.shape != (N,):
        raise ValueError(f"masses must have shape [N] = [{N}], got {masses.shape}")
    if not np.all(masses > 0):
        raise ValueError(f"all masses must be positive (amu); atoms {np.flatnonzero(~(masses > 0))[:10].tolist()} are not")
    if momenta is None:
        momenta = np.zeros_like(positions)
    momenta = np.asarray(momenta, dtype=float)
    if momenta.ndim == 2:
        momenta = np.broadcast_to(momenta, positions.shape).copy()
    if momenta.shape != positions.shape:
        raise ValueError(f"momenta must have the shape of positions {positions.shape}, got {momenta.shape}")
    if not np.all(np.isfinite(momenta)):
        raise ValueError("momenta contain NaN/inf")
    return positions, cell, numbers, masses, momenta


def check_same_atoms(atoms_list):
    """Replicas must be the same atoms (species, order, count); cells and positions may differ."""
    first = atoms_list[0]
    for k, a in enumerate(atoms_list[1:], start=1):
        if len(a) != len(first) or not np.array_equal(a.numbers, first.numbers):
            raise ValueError(
                f"replica {k} has different atoms than replica 0 ({a.get_chemical_formula()} vs "
                f"{first.get_chemical_formula()}); all replicas must have the same species in the same order"
            )
        if not np.array_equal(a.pbc, first.pbc):
            raise ValueError(f"replica {k} has pbc={a.pbc.tolist()} but replica 0 has {first.pbc.tolist()}")
        if not np.allclose(a.get_masses(), first.get_masses()):
            raise ValueError(f"replica {k} has different masses than replica 0")


def check_atomic_numbers(numbers, what: str = "the system") -> None:
    """Atomic numbers must be elements, 1-118 (0, ASE's ghost atom 'X', is allowed), or a clear error."""
    numbers = np.asarray(numbers)
    bad = sorted({int(z) for z in numbers[(numbers < 0) | (numbers > 118)]})
    if bad:
        raise ValueError(f"atomic number(s) {bad[:10]} of {what} are not elements (1-118); fix atoms.numbers")
