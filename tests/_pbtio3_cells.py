"""The PbTiO3 test cells shared by the bridge tests (Angstrom; ASE ``Atoms``).

They live in :mod:`jaxpto.workflows.structures` (the GPU check kit uses them too):

* :func:`pbtio3`: the 5-atom tetragonal cell (a = 3.874, c = 4.199 A, polar displacements);
* :func:`supercell`: its 2x2x2 supercell (40 atoms) with 0.05 A random displacements;
* :func:`triclinic`: a strained, rattled 2x1x1 supercell (10 atoms, all cell angles off 90);
* :func:`strained_unit_cell`: the 5-atom cell under a small upper-triangular strain (no rattle).
"""

from jaxpto.workflows.structures import check_strained_unit_cell as strained_unit_cell  # noqa: F401
from jaxpto.workflows.structures import check_supercell as supercell  # noqa: F401
from jaxpto.workflows.structures import check_triclinic as triclinic  # noqa: F401
from jaxpto.workflows.structures import check_unit_cell as pbtio3  # noqa: F401
