"""jaxpto.md as a drop-in replacement for ASE's dynamics classes (change one import)."""

import io
import warnings

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.io import Trajectory, read
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

import jaxpto.md as jmd
from jaxpto import simulate
from jaxpto.calculator import JaxptoCalculator
from _cu_cells import sheared_cu


_cell = sheared_cu


def _rel(x, ref):
    x, ref = np.asarray(x), np.asarray(ref)
    return float(np.abs(x - ref).max() / max(np.abs(ref).max(), 1e-300))


def _max_dev(a, b):
    return max(_rel(a.positions, b.positions), _rel(a.get_momenta(), b.get_momenta()),
               _rel(a.cell.array, b.cell.array))


def test_npt_reference_script_only_import_changed(lj_model, tmp_path):
    from ase.md.npt import NPT as AseNPT
    from jaxpto.md import NPT as JaxNPT

    def script(NPT, fname):  # the reference study's script; only the NPT import differs
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
        atoms.rattle(0.05, seed=1)
        atoms.calc = JaxptoCalculator(lj_model)
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(5))
        dyn = NPT(atoms, 2 * units.fs, temperature_K=300, externalstress=0, ttime=25 * units.fs,
                  pfactor=75.0**2 * units.fs, mask=np.eye(3))
        traj = Trajectory(fname, "w", atoms)
        dyn.attach(traj.write, interval=10)
        dyn.run(200)
        traj.close()
        return atoms

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a_ase = script(AseNPT, tmp_path / "ase.traj")
        a_jax = script(JaxNPT, tmp_path / "jax.traj")
    frames_ase = read(tmp_path / "ase.traj", ":")
    frames_jax = read(tmp_path / "jax.traj", ":")
    assert len(frames_ase) == len(frames_jax) == 21
    devs = [_max_dev(fj, fa) for fa, fj in zip(frames_ase, frames_jax)]
    assert max(devs) <= 1e-8, devs
    # energies/stresses written into the frames are the simulated ones
    assert abs(frames_jax[-1].get_potential_energy() - frames_ase[-1].get_potential_energy()) < 1e-8
    np.testing.assert_allclose(frames_jax[-1].get_stress(), frames_ase[-1].get_stress(), atol=1e-10)
    assert _max_dev(a_jax, a_ase) <= 1e-8
    assert abs(a_jax.get_volume() - frames_ase[0].get_volume()) > 1e-3  # the cell did move


def _observed_steps(cls, atoms, runs):
    dyn = cls(atoms, 1.0 * units.fs)
    seen3, seen7, seen1 = [], [], []
    dyn.attach(lambda: seen3.append(dyn.nsteps), interval=3)
    dyn.attach(lambda: seen7.append(dyn.nsteps), interval=-7)
    dyn.attach(lambda: seen1.append(dyn.nsteps), -0)
    for n in runs:
        dyn.run(n)
    return seen3, seen7, seen1, dyn


def test_observers_fire_at_ase_steps(lj_model):
    from ase.md.verlet import VelocityVerlet as AseVV

    atoms = _cell()
    atoms.calc = JaxptoCalculator(lj_model)
    a_ase, a_jax = atoms.copy(), atoms.copy()
    a_ase.calc = JaxptoCalculator(lj_model)
    a_jax.calc = JaxptoCalculator(lj_model)
    ref = _observed_steps(AseVV, a_ase, [10, 8])
    got = _observed_steps(jmd.VelocityVerlet, a_jax, [10, 8])
    assert got[:3] == ref[:3]
    assert ref[0] == [0, 3, 6, 9, 12, 15, 18] and ref[1] == [7]
    assert got[3].nsteps == 18 and got[3].get_time() == pytest.approx(18 * units.fs)
    assert _max_dev(a_jax, a_ase) <= 1e-10


@pytest.mark.parametrize("kind", ["VelocityVerlet", "Langevin"])
def test_observer_changes_are_honoured(lj_model, kind):
    from ase.md.langevin import Langevin as AseLangevin
    from ase.md.verlet import VelocityVerlet as AseVV

    atoms = _cell()
    results = []
    for module in ("ase", "jax"):
        a = atoms.copy()
        a.calc = JaxptoCalculator(lj_model)
        if kind == "VelocityVerlet":
            dyn = (AseVV if module == "ase" else jmd.VelocityVerlet)(a, 2 * units.fs)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dyn = (AseLangevin if module == "ase" else jmd.Langevin)(a, 2 * units.fs, temperature_K=0,
                                                                        friction=0.01 / units.fs)

        def kick(a=a):
            a.set_momenta(1.7 * a.get_momenta())
            a.positions[0] += 0.01

        dyn.attach(kick, interval=-50)
        dyn.run(100)
        results.append(a)
    assert _max_dev(results[1], results[0]) <= 1e-8


def test_logfile_lines_equal_ase(lj_model, tmp_path):
    from ase.md.verlet import VelocityVerlet as AseVV

    atoms = _cell()
    texts = []
    for cls, name in ((AseVV, "ase.log"), (jmd.VelocityVerlet, "jax.log")):
        a = atoms.copy()
        a.calc = JaxptoCalculator(lj_model)
        with cls(a, 2 * units.fs, logfile=str(tmp_path / name), loginterval=5) as dyn:
            dyn.run(30)
        texts.append((tmp_path / name).read_text())
    assert texts[0].count("\n") == 8  # header + steps 0, 5, ..., 30
    assert texts[1] == texts[0]
    # a stream logfile, and trajectory= with loginterval
    buf = io.StringIO()
    a = atoms.copy()
    a.calc = JaxptoCalculator(lj_model)
    with jmd.VelocityVerlet(a, 2 * units.fs, logfile=buf, trajectory=str(tmp_path / "t.traj"),
                            loginterval=10) as dyn:
        dyn.run(20)
    assert buf.getvalue().count("\n") == 4
    frames = read(tmp_path / "t.traj", ":")
    assert len(frames) == 3 and _max_dev(frames[-1], a) == 0.0


def test_unknown_keyword_and_missing_arguments_raise_like_ase(lj_model):
    from ase.md.langevin import Langevin as AseLangevin
    from ase.md.verlet import VelocityVerlet as AseVV

    atoms = _cell()
    atoms.calc = JaxptoCalculator(lj_model)
    for cls in (AseVV, jmd.VelocityVerlet):
        with pytest.raises(TypeError):
            cls(atoms, 1 * units.fs, frobnicate=3)
    for cls in (AseLangevin, jmd.Langevin):
        with pytest.raises(TypeError):
            cls(atoms, 1 * units.fs, temperature_K=300)  # no friction
    for cls in (jmd.NPT, jmd.MelchionnaNPT):
        with pytest.raises(TypeError):
            cls(atoms, 1 * units.fs, temperature_K=300, pfactor=1.0)  # no externalstress
        with pytest.raises(TypeError):
            cls(atoms, 1 * units.fs, temperature_K=300, friction=1.0)


def test_list_of_atoms_per_replica_temperatures(lj_model):
    temps = [100.0, 600.0, 1500.0]
    replicas = [_cell(seed=s) for s in (1, 2, 3)]
    for a in replicas:
        a.calc = JaxptoCalculator(lj_model)
    before = [a.positions.copy() for a in replicas]
    dyn = jmd.Langevin(replicas, 2 * units.fs, temperature_K=temps, friction=0.05 / units.fs, seed=3)
    seen = []
    dyn.attach(lambda: seen.append([a.get_temperature() for a in replicas]), interval=100)
    dyn.run(300)
    assert len(seen) == 4
    for a, b in zip(replicas, before):
        assert np.abs(a.positions - b).max() > 0.01
    # hotter targets end hotter, and the cached results are the simulated ones
    t_end = np.mean(seen[1:], axis=0)
    assert t_end[0] < t_end[1] < t_end[2]
    calc = JaxptoCalculator(lj_model)
    for a in replicas:
        cached_e, cached_f = a.get_potential_energy(), a.get_forces()
        b = a.copy()
        b.calc = calc
        assert abs(b.get_potential_energy() - cached_e) < 1e-9
        np.testing.assert_allclose(b.get_forces(), cached_f, atol=1e-9)

    # NPT with a list and per-replica external stress
    reps = [_cell(seed=s) for s in (4, 5)]
    for a in reps:
        a.calc = JaxptoCalculator(lj_model)
    npt = jmd.NPT(reps, 2 * units.fs, temperature_K=[300, 300], externalstress=[0.0, 1.0 * units.GPa],
                  ttime=25 * units.fs, pfactor=75.0**2 * units.fs)
    v0 = [a.get_volume() for a in reps]
    npt.run(100)
    dv = [a.get_volume() - v for a, v in zip(reps, v0)]
    assert dv[1] < dv[0]


def test_ase_emt_swapped_and_callback_match_ase(tmp_path):
    from ase.calculators.emt import EMT
    from ase.md.verlet import VelocityVerlet as AseVV

    class MyEMT(EMT):  # not recognised: goes through jax.pure_callback
        pass

    atoms = _cell()
    a_ase = atoms.copy()
    a_ase.calc = EMT()
    AseVV(a_ase, 2 * units.fs).run(40)

    a = atoms.copy()
    a.calc = EMT()
    calc = a.calc
    dyn = jmd.VelocityVerlet(a, 2 * units.fs)
    dyn.run(40)
    assert dyn.force_kind == "twin" and a.calc is calc
    assert _max_dev(a, a_ase) <= 1e-9
    assert abs(a.get_potential_energy() - a_ase.get_potential_energy()) < 1e-9

    b = atoms.copy()
    b.calc = MyEMT()
    dyn = jmd.VelocityVerlet(b, 2 * units.fs)
    with pytest.warns(UserWarning, match="pure_callback"):
        dyn.run(40)
    assert dyn.force_kind == "callback"
    assert _max_dev(b, a_ase) <= 1e-11


def test_repeated_runs_do_not_recompile(lj_model):
    atoms = _cell()
    atoms.calc = JaxptoCalculator(lj_model)
    dyn = jmd.VelocityVerlet(atoms, 1 * units.fs)
    seen = []
    dyn.attach(lambda: seen.append(atoms.get_potential_energy()), interval=5)
    dyn.run(5)
    misses = simulate._chunk_program.cache_info().misses
    program = simulate.chunk_program(dyn._integrator.step)  # the driver's program (no recorder)
    assert program._cache_size() == 1
    for n in (5, 5, 5, 5, 1, 7, 3):  # repeated run(5), and other lengths: still one compiled program
        dyn.run(n)
    assert simulate._chunk_program.cache_info().misses == misses
    assert program._cache_size() == 1
    assert dyn.nsteps == 36 and len(seen) == 8


def test_npt_modified_atoms_raise_like_ase(lj_model):
    from ase.md.npt import NPT as AseNPT

    for cls in (AseNPT, jmd.NPT):
        a = _cell()
        a.calc = JaxptoCalculator(lj_model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dyn = cls(a, 2 * units.fs, temperature_K=300, externalstress=0, ttime=25 * units.fs,
                      pfactor=75.0**2 * units.fs)
            dyn.run(3)
            a.positions[0] += 0.1
            with pytest.raises(NotImplementedError):
                dyn.run(3)


@pytest.mark.parametrize("name", ["NoseHooverChainNVT", "MTKNPT", "IsotropicMTKNPT", "MelchionnaNPT"])
def test_other_deterministic_classes_match_ase(lj_model, name):
    from ase.md import melchionna, nose_hoover_chain

    fs = units.fs
    mtk = dict(temperature_K=300.0, pressure_au=0.0, tdamp=50 * fs, pdamp=250 * fs)
    kwargs = {"NoseHooverChainNVT": dict(temperature_K=300, tdamp=50 * fs), "MTKNPT": mtk, "IsotropicMTKNPT": mtk,
              "MelchionnaNPT": dict(temperature_K=300, externalstress=0, ttime=25 * fs, pfactor=75.0**2 * fs)}[name]
    ase_cls = getattr(melchionna if name == "MelchionnaNPT" else nose_hoover_chain, name)
    atoms = _cell()
    out = []
    for cls in (ase_cls, getattr(jmd, name)):
        a = atoms.copy()
        a.calc = JaxptoCalculator(lj_model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dyn = cls(a, 2 * fs, **kwargs)
            dyn.run(30)
        out.append(a)
    assert _max_dev(out[1], out[0]) <= 1e-8


def test_bussi_runs_and_checks_kinetic_energy(lj_model):
    atoms = _cell()
    atoms.calc = JaxptoCalculator(lj_model)
    dyn = jmd.Bussi(atoms, 2 * units.fs, temperature_K=300, taut=50 * units.fs, seed=1)
    dyn.run(20)
    assert np.isfinite(dyn.transferred_energy) and atoms.get_temperature() > 0
    cold = _cell()
    cold.set_momenta(np.zeros((len(cold), 3)))
    cold.calc = JaxptoCalculator(lj_model)
    with pytest.raises(ValueError):
        jmd.Bussi(cold, 2 * units.fs, temperature_K=300, taut=50 * units.fs)
