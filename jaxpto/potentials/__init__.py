"""JAX-native reference potentials, equal to ASE's calculators in float64.

* :func:`lennard_jones` -- ``ase.calculators.lj.LennardJones``;
* :func:`morse` -- ``ase.calculators.morse.MorsePotential``;
* :func:`emt` -- ``ase.calculators.emt.EMT``.

Each returns a :class:`jaxpto.model.Model` (forces and stress by autodiff).
"""

from jaxpto.potentials.emt import emt
from jaxpto.potentials.pair import lennard_jones, morse

__all__ = ["emt", "lennard_jones", "morse"]
