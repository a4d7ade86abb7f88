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


def test_random_file_loaded_as_chgnet_names_the_file_and_family(tmp_path):
    from jaxpto import load_model

    junk = tmp_path / "model.pth.tar"
    junk.write_bytes(b"\x13" + np.random.default_rng(0).bytes(4095))
    with pytest.raises(ValueError, match=r"model\.pth\.tar.* is not a chgnet model file"):
        load_model(str(junk), family="chgnet")
    # starts like a pickle: the family's loader fails, and the error still names the file and family
    junk.write_bytes(b"\x80\x02" + np.random.default_rng(1).bytes(4094))
    with pytest.raises(ValueError, match=r"could not load .*model\.pth\.tar.* as a chgnet model"):
        load_model(str(junk), family="chgnet")


def test_unknown_model_name_suggests_the_closest():
    from jaxpto import load_model

    with pytest.raises(ValueError, match=r"unknown model 'chgnet-0\.3'.*did you mean chgnet-0\.3\.0"):
        load_model("chgnet-0.3")
    with pytest.raises(ValueError, match=r"did you mean orb-v2"):
        load_model("orbv2")


# ---------------------------------------------------------------------------------------------
# 4. Checkpoints: data only, checked on load, written atomically
# ---------------------------------------------------------------------------------------------

SWEEP_LJ = lennard_jones(sigma=1.8, epsilon=0.02, rc=4.5, smooth=True)


def _sweep(**kw):
    from jaxpto.workflows.dynamics import study_npt

    base = dict(temperatures_k=(300.0, 600.0), supercell=2, steps=40, chunk_steps=10, record_every=5,
                average_last_ps=0.04, skin=0.5)
    base.update(kw)
    return study_npt(**base)


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    """A checkpoint of an NPT sweep after 2 of its 4 chunks, and the uninterrupted run's series."""
    from jaxpto.workflows.dynamics import run_sweep

    path = str(tmp_path_factory.mktemp("ckpt") / "npt.ckpt")
    part = run_sweep(SWEEP_LJ, _sweep(), progress=False, dtype=np.float64, checkpoint=path, stop_after_chunks=2)
    assert part["done_steps"] == 20
    with open(path, "rb") as fh:
        return fh.read()


def _damaged(kind, good: bytes) -> bytes:
    import pickle

    if kind == "empty":
        return b""
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "random":
        return np.random.default_rng(2).bytes(len(good))
    if kind == "wrong-type":  # another program's pickle (the old format was a pickle)
        return pickle.dumps(["not", "a", "checkpoint"])
    if kind == "json":
        return b'{"schema": "jaxpto.pto-test/1", "models": []}'
    if kind == "flipped-bit":
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0x10
        return bytes(bad)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "wrong-type", "json", "flipped-bit"])
def test_damaged_checkpoint_is_a_clear_error_naming_the_file(kind, saved_checkpoint, tmp_path):
    from jaxpto.workflows.dynamics import run_sweep

    path = tmp_path / f"damaged-{kind}.ckpt"
    path.write_bytes(_damaged(kind, saved_checkpoint))
    with pytest.raises(ValueError, match=rf"checkpoint {path}.*delete it to restart the sweep"):
        run_sweep(SWEEP_LJ, _sweep(), progress=False, dtype=np.float64, checkpoint=str(path))


def _rewrite(path, good: bytes, change):
    """The checkpoint ``good`` with ``change(members)`` applied, re-packed as a valid zip (what an edit
    or a bit flip before the archive's CRCs were computed produces); header and checksum kept."""
    import io

    with np.load(io.BytesIO(good), allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files}
    change(members)
    with open(path, "wb") as fh:
        np.savez(fh, **members)


def test_checkpoint_with_a_flipped_bit_in_the_integrator_variables_fails_its_checksum(saved_checkpoint, tmp_path):
    from jaxpto.workflows.dynamics import run_sweep

    def flip(members):
        zeta = members["state.variables.zeta"].copy()
        zeta.view(np.uint64)[0] ^= np.uint64(1 << 40)
        members["state.variables.zeta"] = zeta

    path = tmp_path / "flipped.ckpt"
    _rewrite(path, saved_checkpoint, flip)
    with pytest.raises(ValueError, match=r"fails its SHA-256 checksum"):
        run_sweep(SWEEP_LJ, _sweep(), progress=False, dtype=np.float64, checkpoint=str(path))


def test_checkpoint_that_does_not_fit_the_sweep(saved_checkpoint, tmp_path):
    """Intact file, other state layout (float32 run resumed as float64): named, not a crash later on."""
    from jaxpto.workflows.checkpoint import CheckpointError, read_checkpoint
    from jaxpto.workflows.dynamics import _initial

    path = tmp_path / "ok.ckpt"
    path.write_bytes(saved_checkpoint)
    _, state64, _ = _initial(SWEEP_LJ, _sweep(), np.float64)
    header, arrays, state = read_checkpoint(str(path), state64)
    assert header["done_steps"] == 20 and header["version"] == 2
    np.testing.assert_array_equal(np.asarray(state.variables.zeta), arrays_zeta(saved_checkpoint))
    _, state32, _ = _initial(SWEEP_LJ, _sweep(), np.float32)
    with pytest.raises(CheckpointError, match=r"does not fit this sweep's state: state.positions is float64 in the "
                                              r"checkpoint, float32 in this sweep"):
        read_checkpoint(str(path), state32)


def arrays_zeta(good: bytes):
    import io

    with np.load(io.BytesIO(good), allow_pickle=False) as npz:
        return npz["state.variables.zeta"]


def test_checkpoint_is_data_only(saved_checkpoint, tmp_path):
    """Every member loads with allow_pickle=False (no object arrays), the header is JSON."""
    import io
    import json

    with np.load(io.BytesIO(saved_checkpoint), allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files}
    assert all(m.dtype != object for m in members.values())
    header = json.loads(members["header"].tobytes())
    assert header["format"] == "jaxpto.sweep-checkpoint" and header["state"]["class"] == "MDState"
    assert len(members["checksum"].tobytes()) == 64  # SHA-256, hex


def test_full_disk_keeps_the_old_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno
    import os

    from jaxpto.workflows.checkpoint import read_header
    from jaxpto.workflows.dynamics import run_sweep

    path = tmp_path / "npt.ckpt"
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= 2:  # the second checkpoint hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match=rf"could not write {path}: No space left on device"):
        run_sweep(SWEEP_LJ, _sweep(), progress=False, dtype=np.float64, checkpoint=str(path))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["npt.ckpt"]
    assert read_header(str(path))["done_steps"] == 10


def test_results_writer_leaves_no_temporary_file(tmp_path):
    from jaxpto.workflows.pto_test import SCHEMA, write_results

    write_results(str(tmp_path), {"schema": SCHEMA, "models": []})
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(TypeError):
        write_results(str(tmp_path), {"schema": SCHEMA, "models": [object()]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    assert (tmp_path / "results.json").read_text() == before


# ---------------------------------------------------------------------------------------------
# 5./6. Several parts in one --out, averaging windows; the command line
# ---------------------------------------------------------------------------------------------

LJ_ARGS = ["--model", "lj", "--supercell", "2", "--chunk-steps", "10", "--record-every", "5", "--no-progress",
           "--dtype", "float64"]


def test_each_part_keeps_its_own_protocol(tmp_path, capsys):
    """npt-sweep (40 steps, 300/600 K) then nvt-polarization (20 steps, 900 K) into one --out: each part's
    results carry the protocol they ran with, the report's sections say so; the default 50 ps window
    is cut to the short runs with a loud warning."""
    import json

    from jaxpto.cli import main

    out = str(tmp_path / "out")
    with pytest.warns(RuntimeWarning, match="averaging window cut"):
        assert main(["npt-sweep", *LJ_ARGS, "--steps", "40", "--temperatures", "300,600", "--out", out]) == 0
    with pytest.warns(RuntimeWarning, match="averaging window cut"):
        assert main(["nvt-polarization", *LJ_ARGS, "--steps", "20", "--temperatures", "900", "--out", out]) == 0
    (m,) = json.load(open(f"{out}/results.json"))["models"]
    npt, nvt = m["parts"]["npt"]["protocol"]["npt"], m["parts"]["nvt"]["protocol"]["nvt"]
    assert (npt["steps"], npt["temperatures_k"]) == (40, [300.0, 600.0])
    assert (nvt["steps"], nvt["temperatures_k"]) == (20, [900.0])
    assert [r["temperature_k"] for r in m["npt"]] == [300.0, 600.0]
    assert m["npt_averaging_window_ps"] == pytest.approx(0.04) and "50 ps were asked for" in m["npt_averaging_note"]
    report = open(f"{out}/report.md").read()
    npt_section = report[report.index("## NPT sweep"):report.index("## NVT polarization")]
    nvt_section = report[report.index("## NVT polarization"):]
    assert "40 steps of 2.0 fs, T = 300, 600 K" in npt_section and "20 steps" not in npt_section
    assert "20 steps of 2.0 fs, T = 900 K" in nvt_section and "40 steps" not in nvt_section
    assert "averaging window cut" in npt_section and "averaging window cut" in nvt_section


def test_explicit_averaging_window_longer_than_the_run_is_refused(tmp_path, capsys):
    from jaxpto.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["nvt-polarization", *LJ_ARGS, "--steps", "50", "--average-last-ps", "1000", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--average-last-ps 1000 is longer than the run" in err and "0.1 ps" in err
    assert not list(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize("flag, value, text", [("--seed", "-1", "--seed: expected a non-negative integer"),
                                               ("--steps", "0", "--steps: expected a positive integer"),
                                               ("--timestep", "-2", "--timestep: expected a positive number"),
                                               ("--temperatures", "300,-5", "temperatures must be positive")])
def test_invalid_flag_values_name_the_flag(flag, value, text, tmp_path, capsys):
    from jaxpto.cli import main

    with pytest.raises(SystemExit):
        main(["npt-sweep", "--model", "lj", "--out", str(tmp_path), flag, value])
    assert text in capsys.readouterr().err


def test_huge_supercell_is_refused_with_a_memory_estimate(tmp_path, capsys):
    from jaxpto.cli import console_main

    rc = console_main(["npt-sweep", "--model", "lj", "--supercell", "1000", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "5,000,000,000 atoms" in err and "GiB" in err and "--supercell" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_unwritable_out_is_found_before_anything_runs(tmp_path, capsys):
    import os
    import stat

    from jaxpto.cli import console_main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc = console_main(["npt-sweep", "--model", "lj", "--out", str(blocker / "out")])
    assert rc == 2 and "is not writable" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes into read-only directories
        ro = tmp_path / "read-only"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        rc = console_main(["npt-sweep", "--model", "lj", "--out", str(ro)])
        assert rc == 2 and "is not writable" in capsys.readouterr().err


def test_command_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    from jaxpto.cli import console_main

    rc = console_main(["relax", "--model", "chgnet-0.3", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("jaxpto relax: error: unknown model 'chgnet-0.3'")
    assert "did you mean chgnet-0.3.0" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="unknown model"):
        console_main(["relax", "--model", "chgnet-0.3", "--out", str(tmp_path), "--debug"])
    monkeypatch.setenv("JAXPTO_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown model"):
        console_main(["relax", "--model", "chgnet-0.3", "--out", str(tmp_path)])


def test_checkpoint_round_trip_of_a_reallocated_neighbour_list(tmp_path):
    """A list re-allocated during the run (other capacity, a static field) is restored as saved, bit for
    bit, on the fresh state's template."""
    from jaxpto import neighbors as nl
    from jaxpto.workflows.checkpoint import read_checkpoint, write_checkpoint
    from jaxpto.workflows.dynamics import _initial

    _, template, _ = _initial(SWEEP_LJ, _sweep(), np.float64)
    grown = nl.allocate(template.positions, template.cell, template.neighbors.cutoff, skin=template.neighbors.skin,
                        pbc=template.neighbors.pbc, min_capacity=template.neighbors.capacity + 7)
    state = template.replace(neighbors=grown)
    path = str(tmp_path / "grown.ckpt")
    write_checkpoint(path, {"note": "test"}, {"extra": np.arange(3)}, state)
    header, arrays, back = read_checkpoint(path, template)
    assert header["note"] == "test" and arrays["extra"].tolist() == [0, 1, 2]
    assert back.neighbors.capacity == grown.capacity != template.neighbors.capacity
    for a, b in zip(jax_leaves(back), jax_leaves(state)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def jax_leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)
