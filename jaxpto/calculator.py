"""``JaxptoCalculator``: an ASE calculator around any jaxpto :class:`~jaxpto.model.Model`.

ASE optimizers, phonopy and users' own tools get the engine's models through it,
and the test-suite uses it to give ASE's integrators exactly the same forces as
jaxpto's. Units are ASE's (eV, eV/A, eV/A^3 with ASE's stress sign).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from jaxpto import neighbors as nl
from jaxpto.model import Model
from jaxpto.state import default_dtype


_update = jax.jit(nl.update)


class JaxptoCalculator(Calculator):
    """ASE calculator evaluating a jaxpto model (energy, free_energy, forces, stress).

    Parameters
    ----------
    model:
        A :class:`jaxpto.model.Model`.
    dtype:
        Floating type of the evaluation; float64 when JAX x64 mode is on, else float32.
    skin:
        Neighbour-list skin in Angstrom: the device list is reused between calls on the
        same atoms and rebuilt only when atoms moved more than half the skin.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: Model, dtype=None, skin: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.dtype = dtype
        self.skin = skin
        self._nbrs = None
        self._compute = jax.jit(model.compute)

    def _evaluate(self, positions, cell, numbers, pbc):
        dtype = self.dtype or default_dtype()
        pos = jnp.asarray(positions, dtype)
        cel = jnp.asarray(cell, dtype)
        nbrs = self._nbrs
        # Reuse the device list (same atoms, pbc, dtype): refreshed on the device, re-allocated on overflow.
        if nbrs is not None and nbrs.reference_positions.shape == pos.shape and nbrs.pbc == tuple(pbc) \
                and nbrs.reference_positions.dtype == pos.dtype:
            nbrs = _update(nbrs, pos, cel)
            if bool(jnp.any(nbrs.did_overflow)):
                nbrs = None
        else:
            nbrs = None
        if nbrs is None:
            nbrs = nl.allocate(pos, cel, self.model.cutoff, skin=self.skin, pbc=pbc)
        self._nbrs = nbrs
        return self._compute(pos, cel, jnp.asarray(numbers), nbrs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        self.model.check_elements(atoms.numbers)
        out = self._evaluate(atoms.positions[None], np.asarray(atoms.cell)[None], atoms.numbers,
                             tuple(bool(p) for p in atoms.pbc))
        energy = float(out.energy[0])
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = np.asarray(out.forces[0], dtype=float)
        if atoms.cell.rank == 3 and all(atoms.pbc):
            self.results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(out.stress[0], dtype=float))
