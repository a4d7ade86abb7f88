"""Velocity Verlet, Langevin and Bussi against ASE; replica batching; the chunked driver."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from ase import units
from ase.md.bussi import Bussi as AseBussi
from ase.md.langevin import Langevin as AseLangevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet as AseVelocityVerlet

from jaxpto import neighbors as nl
from jaxpto.calculator import JaxptoCalculator
from jaxpto.integrators.bussi import bussi
from jaxpto.integrators.langevin import langevin
from jaxpto.integrators.verlet import velocity_verlet
from jaxpto.simulate import run, state_from_atoms
from jaxpto.state import kinetic_energy, temperature_K


def thermalised(atoms, T=300.0, seed=0):
    atoms = atoms.copy()
    MaxwellBoltzmannDistribution(atoms, temperature_K=T, rng=np.random.default_rng(seed))
    Stationary(atoms)
    return atoms


def max_rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def compare_with_ase(ase_dyn, ase_atoms, integrator, state, n_blocks=5, block=100):
    worst = 0.0
    for _ in range(n_blocks):
        ase_dyn.run(block)
        state, _ = run(integrator, state, block)
        worst = max(worst,
                    max_rel(state.positions[0], ase_atoms.positions),
                    max_rel(state.momenta[0], ase_atoms.get_momenta()),
                    max_rel(state.cell[0], ase_atoms.cell.array))
    return worst, state


def test_velocity_verlet_equals_ase(lj_model, cu_atoms):
    atoms = thermalised(cu_atoms, 300)
    ase_atoms = atoms.copy()
    ase_atoms.calc = JaxptoCalculator(lj_model)
    dt = 2 * units.fs
    state, force_fn = state_from_atoms(atoms, lj_model)
    vv = velocity_verlet(force_fn, dt)
    worst, state = compare_with_ase(AseVelocityVerlet(ase_atoms, dt), ase_atoms, vv, vv.init(state))
    assert worst < 1e-8, worst
    assert int(state.step) == 500
    # NVE: the total energy is conserved to the level of the time step error.
    e_tot = float(state.energy[0] + kinetic_energy(state.momenta, state.masses)[0])
    assert e_tot == pytest.approx(ase_atoms.get_total_energy(), abs=1e-8)


def test_langevin_at_zero_temperature_equals_ase(lj_model, cu_atoms):
    atoms = thermalised(cu_atoms, 300)
    ase_atoms = atoms.copy()
    ase_atoms.calc = JaxptoCalculator(lj_model)
    dt = 2 * units.fs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ASE deprecates fixcm=True
        ase_dyn = AseLangevin(ase_atoms, dt, temperature_K=0.0, friction=0.01 / units.fs, fixcm=True)
    state, force_fn = state_from_atoms(atoms, lj_model)
    integ = langevin(force_fn, dt, fixcm=True)
    state = integ.init(state, temperature_K=0.0, friction=0.01 / units.fs)
    worst, _ = compare_with_ase(ase_dyn, ase_atoms, integ, state)
    assert worst < 1e-8, worst


@pytest.mark.parametrize("fixcm", [False, True])
def test_langevin_temperature_statistics(lj_model, cu_atoms, fixcm):
    """Mean and std of T over many replicas and steps: <T> = T0, std = T0 sqrt(2/df) (as ASE's tests)."""
    T0 = np.array([200.0, 300.0, 450.0, 600.0])
    reps = [thermalised(cu_atoms, t, seed=k) for k, t in enumerate(T0)]
    state, force_fn = state_from_atoms(reps, lj_model, seed=3)
    dt = 4 * units.fs
    integ = langevin(force_fn, dt, fixcm=fixcm)
    state = integ.init(state, temperature_K=T0, friction=0.02 / units.fs)
    state, _ = run(integ, state, 500)  # equilibrate
    state, temps = run(integ, state, 6000, record_fn=lambda s: temperature_K(s.momenta, s.masses),
                       record_every=5)
    n = state.n_atoms
    df = 3 * (n - 1) if fixcm else 3 * n
    if fixcm:
        temps = temps * n / (n - 1)  # COM is not thermalised, as ASE's own test corrects
    mean, std = temps.mean(axis=0), temps.std(axis=0)
    # 1200 samples correlated over ~10 samples: ~1.5% statistical error on the mean.
    np.testing.assert_allclose(mean, T0, rtol=0.05)
    np.testing.assert_allclose(std, T0 * np.sqrt(2.0 / df), rtol=0.15)


def test_bussi_statistics_and_energy_bookkeeping(lj_model, cu_atoms):
    T0 = np.array([250.0, 500.0])
    reps = [thermalised(cu_atoms, 300, seed=k) for k in range(2)]
    state, force_fn = state_from_atoms(reps, lj_model, seed=5)
    dt = 2 * units.fs
    integ = bussi(force_fn, dt)
    state = integ.init(state, temperature_K=T0, taut=50 * units.fs)
    conserved0 = state.energy + kinetic_energy(state.momenta, state.masses)

    def record(s):
        return temperature_K(s.momenta, s.masses), s.energy + kinetic_energy(s.momenta, s.masses) \
            - s.variables.transferred_energy

    state, (temps, conserved) = run(integ, state, 8000, record_fn=record, record_every=4)
    # E_total - transferred energy is a constant of motion up to the Verlet error (~5 meV here),
    # while the thermostat moves ~1 eV in and out of these systems.
    assert np.abs(conserved - np.asarray(conserved0)).max() < 2e-2
    assert np.abs(np.asarray(state.variables.transferred_energy)).max() > 0.3
    temps = temps[200:]
    np.testing.assert_allclose(temps.mean(axis=0), T0, rtol=0.05)
    np.testing.assert_allclose(temps.std(axis=0), T0 * np.sqrt(2 / (3 * state.n_atoms)), rtol=0.2)


def test_bussi_transferred_energy_is_exact_at_tiny_timestep(lj_model, cu_atoms):
    """ASE's test_bussi_transfered_energy_conservation: with dt -> 0 only the thermostat acts."""
    state, force_fn = state_from_atoms(thermalised(cu_atoms, 300, seed=2), lj_model, seed=1)
    integ = bussi(force_fn, 1.0e-5 * units.fs)
    state = integ.init(state, temperature_K=300, taut=100 * units.fs)

    def conserved(s):
        return s.energy + kinetic_energy(s.momenta, s.masses) - s.variables.transferred_energy

    start = np.asarray(conserved(state))
    state, values = run(integ, state, 100, record_fn=conserved)
    assert np.abs(values - start).max() < 1e-10
    assert abs(float(state.variables.transferred_energy[0])) > 1e-6


def test_bussi_rejects_zero_kinetic_energy_like_ase(lj_model, cu_atoms):
    state, force_fn = state_from_atoms(cu_atoms, lj_model)
    with pytest.raises(ValueError, match="kinetic energy is zero"):
        bussi(force_fn, units.fs).init(state, temperature_K=300, taut=100 * units.fs)
    ase_atoms = cu_atoms.copy()
    ase_atoms.calc = JaxptoCalculator(lj_model)
    with pytest.raises(ValueError):
        AseBussi(ase_atoms, units.fs, 300, 100 * units.fs)


def test_replicas_in_one_program_equal_separate_runs(lj_model, cu_atoms):
    temps = [100.0, 400.0, 800.0]
    reps = [thermalised(cu_atoms, 300, seed=k) for k in range(3)]
    for k, a in enumerate(reps):
        a.rattle(0.02, seed=10 + k)
    dt = 2 * units.fs
    # Deterministic integrators: batch == separate runs to rounding.
    state, force_fn = state_from_atoms(reps, lj_model)
    vv = velocity_verlet(force_fn, dt)
    batched, _ = run(vv, vv.init(state), 300)
    singles = [state_from_atoms(a, lj_model)[0] for a in reps]
    vv1 = velocity_verlet(force_fn, dt)  # one compiled program serves every single-replica run
    for k, s1 in enumerate(singles):
        single, _ = run(vv1, vv1.init(s1), 300)
        assert max_rel(batched.positions[k], single.positions[0]) < 1e-10
        assert max_rel(batched.momenta[k], single.momenta[0]) < 1e-10
    # Stochastic integrator: each replica has its own key stream, so a batched run equals
    # separate runs that are given the same per-replica keys and temperatures.
    state, force_fn = state_from_atoms(reps, lj_model, seed=11)
    lg = langevin(force_fn, dt, fixcm=False)
    batched, _ = run(lg, lg.init(state, temperature_K=temps, friction=0.01 / units.fs), 300)
    lg1 = langevin(force_fn, dt, fixcm=False)
    for k, s1 in enumerate(singles):
        s1 = s1.replace(key=state.key[k:k + 1])
        single, _ = run(lg1, lg1.init(s1, temperature_K=temps[k], friction=0.01 / units.fs), 300)
        assert max_rel(batched.positions[k], single.positions[0]) < 1e-10
        assert max_rel(batched.momenta[k], single.momenta[0]) < 1e-10


def test_driver_reallocates_on_overflow_and_matches_a_roomy_list(lj_model, cu_atoms):
    atoms = thermalised(cu_atoms, 2500, seed=4)  # hot: neighbour counts fluctuate
    dt = 2 * units.fs
    tight, force_fn = state_from_atoms(atoms, lj_model, skin=0.2)
    tight = tight.replace(neighbors=nl.allocate(tight.positions, tight.cell, lj_model.cutoff, skin=0.2,
                                                capacity=int(tight.neighbors.max_count[0])))
    vv = velocity_verlet(force_fn, dt)
    chunks = []
    tight_end, _ = run(vv, vv.init(tight), 400, chunk_size=50,
                       callback=lambda s, r: chunks.append(s.neighbors.capacity))
    assert chunks[-1] > tight.neighbors.capacity, "the run never overflowed its tight list; the test lost its point"
    roomy, f2 = state_from_atoms(atoms, lj_model, skin=0.2)
    roomy = roomy.replace(neighbors=nl.allocate(roomy.positions, roomy.cell, lj_model.cutoff, skin=0.2,
                                                capacity=200))
    vv2 = velocity_verlet(f2, dt)
    roomy_end, _ = run(vv2, vv2.init(roomy), 400)
    assert max_rel(tight_end.positions, roomy_end.positions) < 1e-9


def test_bad_input_is_rejected_before_any_step(lj_model, cu_atoms):
    state, force_fn = state_from_atoms(cu_atoms, lj_model)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="timestep"):
            velocity_verlet(force_fn, bad)
    with pytest.raises(ValueError, match="replicas"):
        langevin(force_fn, units.fs).init(state, temperature_K=[300, 400], friction=0.01)
    with pytest.raises(ValueError, match="temperature_K must be >= 0"):
        langevin(force_fn, units.fs).init(state, temperature_K=-5, friction=0.01)
    broken = cu_atoms.copy()
    broken.positions[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        state_from_atoms(broken, lj_model)
    other = cu_atoms.copy()
    other.numbers[0] = 79
    with pytest.raises(ValueError, match="same species"):
        state_from_atoms([cu_atoms, other], lj_model)
