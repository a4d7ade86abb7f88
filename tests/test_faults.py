"""Faults and bad input (issue #17): nothing silently wrong, clear errors instead of raw tracebacks.

Each test is a reproduction from the issue at CI size. The references: a fresh ASE calculator
on the same positions (different models per replica), the blow-up rules' thresholds (runaway
heating), the data written before a fault (checkpoints), and the error text the user must see.
"""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

import jaxpto.md as jmd
from jaxpto import JaxptoCalculator
from jaxpto.model import Model, ModelOutput
from jaxpto.potentials import emt, lennard_jones


def _argon():
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True) * (2, 2, 2)
    atoms.rattle(0.02, seed=0)
    return atoms


def _copper(temperature_K=None, seed=0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    if temperature_K is not None:
        with warnings.catch_warnings():  # ASE 3.29 renamed it
            warnings.simplefilter("ignore", DeprecationWarning)
            MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    return atoms


def _runtime_warnings(record, text):
    return [w for w in record if issubclass(w.category, RuntimeWarning) and text in str(w.message)]


# ---------------------------------------------------------------------------------------------
# 1. Different models per replica: refused before any step
# ---------------------------------------------------------------------------------------------


def test_replicas_with_different_lj_parameters_are_refused_before_any_step():
    a1, a2 = _argon(), _argon()
    a1.calc = LennardJones(sigma=3.4, epsilon=0.0104, rc=8.5)
    a2.calc = LennardJones(sigma=3.0, epsilon=0.02, rc=8.5)
    start = a2.positions.copy()
    dyn = jmd.Langevin([a1, a2], units.fs, temperature_K=[0, 0], friction=0, seed=0)
    with pytest.raises(ValueError, match=r"replica\(s\) \[1\] compute something different"):
        dyn.run(1)
    assert dyn.nsteps == 0
    np.testing.assert_array_equal(a2.positions, start)
    # what replica 1 must report if it ever runs: its own LJ, not replica 0's (the issue's numbers)
    ref = a2.copy()
    ref.calc = LennardJones(sigma=3.0, epsilon=0.02, rc=8.5)
    other = a2.copy()
    other.calc = LennardJones(sigma=3.4, epsilon=0.0104, rc=8.5)
    assert abs(ref.get_potential_energy() - other.get_potential_energy()) > 0.5


def test_replicas_with_different_jaxpto_models_are_refused():
    c1, c2 = _copper(), _copper()
    c1.calc = JaxptoCalculator(emt())
    c2.calc = JaxptoCalculator(lennard_jones(sigma=2.3, epsilon=0.4, rc=6.0))
    with pytest.raises(ValueError, match="one batched program needs one model"):
        jmd.VelocityVerlet([c1, c2], units.fs).run(1)


def test_replicas_with_equal_lj_parameters_run_each_with_its_own_energy():
    """The positive control: separate calculator objects with equal parameters share one model, and
    every replica reports the energy ASE's LennardJones gives at its own positions."""
    a1, a2 = _argon(), _argon()
    a2.rattle(0.05, seed=3)
    for a in (a1, a2):
        a.calc = LennardJones(sigma=3.4, epsilon=0.0104, rc=8.5)
    jmd.Langevin([a1, a2], units.fs, temperature_K=[0, 0], friction=0, seed=0).run(2)
    for a in (a1, a2):
        ref = a.copy()
        ref.calc = LennardJones(sigma=3.4, epsilon=0.0104, rc=8.5)
        assert a.get_potential_energy() == pytest.approx(ref.get_potential_energy(), rel=1e-8, abs=1e-10)


# ---------------------------------------------------------------------------------------------
# 2. Runs that explode without NaN: one warning per replica
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, kwargs", [(jmd.Langevin, dict(temperature_K=300, friction=0.01)),
                                         (jmd.VelocityVerlet, {})])
def test_exploding_run_warns_once(cls, kwargs):
    atoms = _copper(300)
    atoms.calc = EMT()
    dyn = cls(atoms, 50 * units.fs, **kwargs)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dyn.run(100)
        dyn.run(20)  # still hot: not reported again
    hits = _runtime_warnings(record, "unphysical")
    assert len(hits) == 1, [str(w.message) for w in record]
    assert "temperature" in str(hits[0].message) and "time step" in str(hits[0].message)
    assert atoms.get_temperature() > 5 * 300


def test_sane_run_does_not_warn():
    atoms = _copper(300)
    atoms.calc = EMT()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        jmd.Langevin(atoms, 2 * units.fs, temperature_K=300, friction=0.01, seed=1).run(100)
    assert not _runtime_warnings(record, "unphysical")
    assert atoms.get_temperature() < 5 * 300


def _heated_replica(model, reference, replica, rate):
    """``model`` plus an anti-restoring force ``rate * (r - reference)`` (eV/A^2) on one replica only:
    that replica heats up exponentially (finite numbers all the way), the others are untouched."""
    ref = jnp.asarray(reference)

    def compute(positions, cell, numbers, neighbors):
        out = model.compute(positions, cell, numbers, neighbors)
        push = jnp.zeros_like(positions).at[replica].set(rate * (positions[replica] - ref))
        return ModelOutput(energy=out.energy, forces=out.forces + push, stress=out.stress)

    return Model(compute=compute, cutoff=model.cutoff, elements=model.elements, name="heated")


def test_sweep_stops_a_runaway_replica_by_the_temperature_rule():
    """T > 5x target without any NaN: that replica alone is stopped (status blew_up, reason temperature)."""
    from jaxpto.workflows.dynamics import run_sweep, study_nvt
    from jaxpto.workflows.structures import polar_supercell

    lj = lennard_jones(sigma=1.8, epsilon=0.02, rc=4.5, smooth=True)
    p = study_nvt(temperatures_k=(300.0, 300.0), supercell=2, steps=60, chunk_steps=10, record_every=5,
                  average_last_ps=0.06, skin=0.5)
    ref = polar_supercell(2, p.a, p.c, p.shifts).positions
    res = run_sweep(_heated_replica(lj, ref, 1, 20.0), p, progress=False, dtype=np.float64)
    calm, hot = res["replicas"]
    assert calm["status"] == "ok"
    assert hot["status"] == "blew_up" and "temperature" in hot["reason"], hot
    assert hot["stopped_at_step"] < 60
    assert np.all(np.isfinite(res["series"]["temperature"][:, 0]))


# ---------------------------------------------------------------------------------------------
# 3. NaN states
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, kwargs", [
    (jmd.VelocityVerlet, {}),
    (jmd.NPT, dict(temperature_K=300, externalstress=0.0, ttime=25 * units.fs, pfactor=75.0**2 * units.fs)),
])
def test_coincident_atoms_are_a_clear_error_before_any_step(cls, kwargs):
    atoms = _copper()
    atoms.positions[1] = atoms.positions[0]
    atoms.calc = EMT()
    dyn = cls(atoms, units.fs, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's divide-by-zero inside ASE's EMT
        with pytest.raises(ValueError, match=r"non-finite energy or forces at the starting configuration.*"
                                             r"atoms 0 and 1 are 0 A apart"):
            dyn.run(20)
    assert dyn.nsteps == 0


class _EMTThatBreaks(EMT):
    """ASE's EMT, but NaN forces once an atom moved more than ``limit`` A from where it started, as an
    ML model does on a configuration it never saw. At NaN positions it returns EMT's own (finite,
    meaningless) numbers, as ASE's EMT does: NaN > limit is False."""

    limit = 0.05

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        super().calculate(atoms, properties, system_changes)
        if not hasattr(self, "start"):
            self.start = self.atoms.positions.copy()
        if np.max(np.linalg.norm(self.atoms.positions - self.start, axis=1)) > self.limit:
            self.results["forces"] = np.full_like(self.results["forces"], np.nan)


def _breaks_when_far(model, reference, limit):
    ref = jnp.asarray(reference)

    def compute(positions, cell, numbers, neighbors):
        out = model.compute(positions, cell, numbers, neighbors)
        far = jnp.max(jnp.linalg.norm(positions - ref[None], axis=-1), axis=1) > limit
        bad = jnp.where(far, jnp.nan, 1.0)
        return ModelOutput(energy=out.energy * bad, forces=out.forces * bad[:, None, None],
                           stress=out.stress * bad[:, None, None])

    return Model(compute=compute, cutoff=model.cutoff, elements=model.elements, name="emt-breaks")


NPT_KW = dict(temperature_K=300, externalstress=0.0, ttime=25 * units.fs, pfactor=75.0**2 * units.fs)


@pytest.mark.parametrize("cls, kwargs", [(jmd.VelocityVerlet, {}), (jmd.NPT, NPT_KW)])
@pytest.mark.parametrize("kind", ["callback", "jaxpto"])
def test_replica_that_goes_nan_reports_nan_once(cls, kwargs, kind):
    """Mid-run NaN: one RuntimeWarning, then NaN energy/forces from atoms.get_* (not a finite energy
    recomputed at NaN positions, not a false 'You have modified the atoms', no crash inside the callback)."""
    atoms = _copper(600)
    atoms.calc = _EMTThatBreaks() if kind == "callback" else \
        JaxptoCalculator(_breaks_when_far(emt(), atoms.positions, 0.05))
    dyn = cls(atoms, 2 * units.fs, **kwargs)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dyn.run(30)
        dyn.run(5)
    assert dyn.force_kind == kind
    hits = _runtime_warnings(record, "unphysical")
    assert len(hits) == 1 and "non-finite" in str(hits[0].message), [str(w.message) for w in record]
    assert not np.all(np.isfinite(atoms.positions))
    assert np.isnan(atoms.get_potential_energy())
    assert np.all(np.isnan(atoms.get_forces()))
    # the user's calculator is kept, and takes over again at finite coordinates
    assert isinstance(atoms.calc, jmd.NonFiniteStateCalculator)
    fresh = _copper()
    atoms.set_positions(fresh.positions)
    atoms.set_cell(fresh.cell)
    ref = fresh.copy()
    ref.calc = EMT()
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), rel=1e-6)


@pytest.mark.parametrize("cls, kwargs", [
    (jmd.Bussi, dict(taut=100 * units.fs)),
    (jmd.Langevin, dict(friction=0.01)),
    (jmd.NoseHooverChainNVT, dict(tdamp=25 * units.fs)),
    (jmd.NPT, dict(externalstress=0.0, ttime=25 * units.fs, pfactor=75.0**2 * units.fs)),
    (jmd.MTKNPT, dict(pressure_au=0.0, tdamp=25 * units.fs, pdamp=100 * units.fs)),
])
def test_negative_temperature_is_a_clear_error(cls, kwargs):
    atoms = _copper(300)
    atoms.calc = EMT()
    start = atoms.positions.copy()
    with pytest.raises(ValueError, match=r"temperature_K must be"):
        cls(atoms, units.fs, temperature_K=-300, **kwargs).run(2)
    np.testing.assert_array_equal(atoms.positions, start)


# ---------------------------------------------------------------------------------------------
# Bad structures: clear errors
# ---------------------------------------------------------------------------------------------


def test_emt_with_an_atomic_number_that_is_no_element():
    atoms = _copper()
    atoms.numbers[0] = 200
    atoms.calc = JaxptoCalculator(emt())
    with pytest.raises(ValueError, match=r"atomic number\(s\) \[200\] of the atoms given to JaxptoCalculator "
                                         r"are not elements \(1-118\)"):
        atoms.get_potential_energy()
    with pytest.raises(ValueError, match=r"Z=200 \(not an element\).*it covers: .*Cu"):
        emt().check_elements(atoms.numbers)
    with pytest.raises(ValueError, match=r"atomic number\(s\) \[200\] of the atoms are not elements"):
        jmd.VelocityVerlet(atoms, units.fs)


def test_empty_atoms_through_the_calculator():
    atoms = Atoms(cell=np.eye(3) * 5.0, pbc=True)
    atoms.calc = JaxptoCalculator(emt())
    with pytest.raises(ValueError, match="has no atoms"):
        atoms.get_potential_energy()
    with pytest.raises(ValueError, match="no atoms"):
        JaxptoCalculator(emt()).calculate_batch([atoms])
