"""NumPy's global random generator is left as a script set it (issue #18).

``import jax`` draws from ``np.random`` (``jax._src.clusters.k8s_cluster`` calls ``np.random.rand``
at import), so a script that seeds ``np.random`` before its imports got other Maxwell-Boltzmann
velocities after swapping ``from ase.md... import`` for ``from jaxpto.md import`` (first draw 0.6459
instead of 0.5488). Importing jaxpto must not change the generator, and the dynamics classes that
draw nothing in ASE (the deterministic ones) draw nothing in jaxpto either.
"""

import functools
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.build import bulk

import jaxpto.md as jmd
from jaxpto.calculator import JaxptoCalculator

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import numpy as np
np.random.seed(0)
before = np.random.get_state()
{imports}
after = np.random.get_state()
same = after[0] == before[0] and (after[1] == before[1]).all() and after[2:] == before[2:]
print(int(same), repr(np.random.random()))
"""


@functools.lru_cache(maxsize=None)  # the ASE reference is probed once per session
def _probe(imports: str):
    out = subprocess.run([sys.executable, "-c", _PROBE.format(imports=imports)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=True).stdout.split()
    return bool(int(out[0])), float(out[1])


@pytest.mark.parametrize("imports", ["import jaxpto", "import jaxpto.md",
                                     "from jaxpto.md import Langevin, NPT, VelocityVerlet",
                                     "import jaxpto.md, bridges.torch_bridge, jaxpto.simulate"])
def test_importing_jaxpto_leaves_numpy_rng_untouched(imports):
    same, first = _probe(imports)
    reference_same, reference_first = _probe("from ase.md.langevin import Langevin")  # the ASE script's import
    assert reference_same
    assert same, f"{imports!r} changed np.random's global state"
    assert first == reference_first == np.random.RandomState(0).random_sample()


def test_the_guard_is_needed():
    """The control: plain ``import jax`` does advance the generator (if a JAX release stops doing so,
    this test says so and the guard in jaxpto/__init__.py can go)."""
    same, first = _probe("import jax")
    assert not same and first != np.random.RandomState(0).random_sample()


def test_deterministic_classes_draw_nothing_from_numpy(lj_model):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.calc = JaxptoCalculator(lj_model)
    fs = units.fs
    np.random.seed(7)
    expected = np.random.RandomState(7).random_sample()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jmd.VelocityVerlet(atoms, 1 * fs)
        jmd.NoseHooverChainNVT(atoms, 1 * fs, temperature_K=300, tdamp=100 * fs)
        jmd.MTKNPT(atoms, 1 * fs, temperature_K=300, pressure_au=0.0, tdamp=100 * fs, pdamp=1000 * fs)
        jmd.NPT(atoms, 1 * fs, temperature_K=300, externalstress=0.0, ttime=25 * fs, pfactor=100.0)
    assert np.random.random() == expected
    # Langevin without seed= or rng= takes its seed from np.random (ASE's draws from it every step)
    np.random.seed(7)
    jmd.Langevin(atoms, 1 * fs, temperature_K=300, friction=0.01, fixcm=False)
    assert np.random.random() != expected
