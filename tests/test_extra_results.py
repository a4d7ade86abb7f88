"""What a calculator reports beyond energy, forces and stress reaches ``atoms.calc.results`` and the
trajectory frames through ``jaxpto.md`` as ASE writes them (issue #18): ASE's EMT's per-atom
``energies``, CHGNet's ``magmoms`` (and ``crystal_fea``), for one Atoms and for replicas.

References: ASE's own dynamics running the same calculator (keys, dtypes, shapes), and a fresh
calculator evaluated at each written configuration (values). The model contract side
(``Model.extras``, ``ModelOutput.extras``, ``MDState.extras``) is checked on the JAX EMT against
ASE's EMT, through the engine, ``JaxptoCalculator``, replica exchange and checkpoints.
"""

import contextlib
import io
import warnings

import numpy as np
import pytest
from ase import units
from ase.calculators.emt import EMT
from ase.io import read
from ase.md.langevin import Langevin as AseLangevin
from ase.md.verlet import VelocityVerlet as AseVelocityVerlet

import bridge_harness as h
import jaxpto.md as jmd
from _cu_cells import sheared_cu
from jaxpto.calculator import JaxptoCalculator
from jaxpto.model import Model, ModelOutput
from jaxpto.potentials import emt


def _quiet():
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def _layout(results: dict) -> dict:
    """``{key: (dtype, shape)}`` of a results dict, as the calculator stores it in memory."""
    return {k: (np.asarray(v).dtype, np.shape(v)) for k, v in results.items()}


def _run(make_dyn, atoms, calc, path, steps):
    """Run, recording ``atoms.calc.results`` at every observer call (in memory: the dtypes the
    calculator holds) and reading the trajectory back."""
    atoms = atoms.copy()
    atoms.calc = calc
    seen = []
    with _quiet():
        dyn = make_dyn(atoms, str(path))
        dyn.attach(lambda: seen.append(dict(atoms.calc.results)), interval=1)
        dyn.run(steps)
        dyn.close()
    return read(path, ":"), seen, dyn


def _verlet(cls):
    return lambda atoms, traj: cls(atoms, 1 * units.fs, trajectory=traj)


def _langevin(cls, **kw):
    return lambda atoms, traj: cls(atoms, 1 * units.fs, temperature_K=300, friction=0.02, trajectory=traj, **kw)


@pytest.mark.parametrize("integrator", ["VelocityVerlet", "Langevin"])
def test_emt_energies_in_results_and_frames_as_ase(tmp_path, integrator):
    atoms = sheared_cu(2, seed=3)  # 32 atoms
    if integrator == "VelocityVerlet":
        ase_dyn, jax_dyn = _verlet(AseVelocityVerlet), _verlet(jmd.VelocityVerlet)
    else:  # the random streams differ: keys and layouts compare with ASE's, values with a fresh EMT
        ase_dyn, jax_dyn = _langevin(AseLangevin, rng=np.random.default_rng(0)), _langevin(jmd.Langevin, seed=0)
    steps = 4
    ase_frames, ase_seen, _ = _run(ase_dyn, atoms, EMT(), tmp_path / "ase.traj", steps)
    jax_frames, jax_seen, dyn = _run(jax_dyn, atoms, EMT(), tmp_path / "jax.traj", steps)
    assert dyn.force_kind == "twin"
    assert "energies" in ase_seen[0]  # the reference reports them
    assert len(jax_frames) == len(ase_frames) == steps + 1 and len(jax_seen) == len(ase_seen)
    for fa, fj in zip(ase_frames, jax_frames):
        assert sorted(fj.calc.results) == sorted(fa.calc.results)
        assert _layout(fj.calc.results) == _layout(fa.calc.results)
        fresh = fj.copy()
        fresh.calc = EMT()
        fresh.get_potential_energy()
        np.testing.assert_allclose(fj.calc.results["energies"], fresh.calc.results["energies"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(fj.calc.results["energies"].sum(), fj.calc.results["energy"], rtol=0, atol=1e-10)
    for ra, rj in zip(ase_seen, jax_seen):  # in memory, during the run: same keys, dtypes, shapes
        assert _layout(rj) == _layout(ra)
    if integrator == "VelocityVerlet":  # deterministic: the two runs' frames agree too
        for fa, fj in zip(ase_frames, jax_frames):
            np.testing.assert_allclose(fj.calc.results["energies"], fa.calc.results["energies"], atol=1e-10)


def test_emt_replicas_each_get_their_own_energies(tmp_path):
    replicas = [sheared_cu(2, seed=s) for s in (1, 2)]
    for a in replicas:
        a.calc = EMT()
    with _quiet():
        dyn = jmd.VelocityVerlet(replicas, 1 * units.fs, trajectory=str(tmp_path / "md.traj"))
        dyn.run(3)
    per_replica = []
    for r, a in enumerate(replicas):
        frames = read(tmp_path / f"md_{r}.traj", ":")
        for frame in frames + [a]:
            fresh = frame.copy()
            fresh.calc = EMT()
            fresh.get_potential_energy()
            np.testing.assert_allclose(frame.calc.results["energies"], fresh.calc.results["energies"], atol=1e-10)
        per_replica.append(np.asarray(a.calc.results["energies"]))
    assert np.abs(per_replica[0] - per_replica[1]).max() > 1e-3  # different configurations, different values


def test_replica_exchange_moves_extras_with_configurations():
    replicas = [sheared_cu(2, seed=s) for s in (1, 2, 4)]
    for a in replicas:
        a.calc = EMT()
    with _quiet():
        # hot and close temperatures: swaps are accepted within a few attempts
        dyn = jmd.Langevin(replicas, 2 * units.fs, temperature_K=[300, 310, 320], friction=0.02, seed=5,
                           swap_interval=1)
        dyn.run(12)
    stats = dyn.get_exchange_statistics()
    assert sum(np.asarray(stats["acceptance"]) > 0) >= 1, stats  # some exchange happened
    for a in replicas:
        fresh = a.copy()
        fresh.calc = EMT()
        fresh.get_potential_energy()
        np.testing.assert_allclose(a.calc.results["energies"], fresh.calc.results["energies"], atol=1e-10)


def test_callback_calculator_extras_reach_results(tmp_path):
    class OwnEMT(EMT):  # not an exact EMT: called through the host callback
        pass

    atoms = sheared_cu(2, seed=2)
    ase_frames, _, _ = _run(_verlet(AseVelocityVerlet), atoms, OwnEMT(), tmp_path / "ase.traj", 2)
    jax_frames, jax_seen, dyn = _run(_verlet(jmd.VelocityVerlet), atoms, OwnEMT(), tmp_path / "jax.traj", 2)
    assert dyn.force_kind == "callback"
    for fa, fj in zip(ase_frames, jax_frames):
        assert _layout(fj.calc.results) == _layout(fa.calc.results)
        np.testing.assert_allclose(fj.calc.results["energies"], fa.calc.results["energies"], atol=1e-10)
    assert "energies" in jax_seen[-1]


def _chgnet_calculators(n, **kw):
    """``n`` CHGNetCalculators on ONE loaded CHGNet 0.3.0 (the dynamics' and the reference's)."""
    pytest.importorskip("chgnet")
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    with _quiet():
        model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        return [CHGNetCalculator(model, use_device="cpu", **kw) for _ in range(n)]


def test_chgnet_magmoms_in_results_and_frames_as_ase(tmp_path):
    calc, reference = _chgnet_calculators(2)
    atoms = h.pto10()
    ase_frames, ase_seen, _ = _run(_verlet(AseVelocityVerlet), atoms, calc, tmp_path / "ase.traj", 3)
    jax_frames, jax_seen, dyn = _run(_verlet(jmd.VelocityVerlet), atoms, calc, tmp_path / "jax.traj", 3)
    assert dyn.force_kind == "bridge"
    final = dyn.atoms
    assert sorted(final.calc.results) == sorted(ase_seen[-1])  # magmoms and crystal_fea too
    assert _layout(final.calc.results) == _layout(ase_seen[-1])  # float32 [10] magmoms, float32 [64] crystal_fea
    for ra, rj in zip(ase_seen, jax_seen):
        assert _layout(rj) == _layout(ra)
    # values: CHGNet's own calculator (not the dynamics' one, whose cache holds the written results)
    for frame, results in [(f, f.calc.results) for f in jax_frames] + [(final, final.calc.results)]:
        probe = frame.copy()
        probe.calc = reference
        reference.reset()
        probe.get_potential_energy()
        np.testing.assert_allclose(results["magmoms"], reference.results["magmoms"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(final.calc.results["crystal_fea"], reference.results["crystal_fea"], atol=1e-4)
    for fa, fj in zip(ase_frames, jax_frames):
        assert sorted(fj.calc.results) == sorted(fa.calc.results)
        np.testing.assert_allclose(fj.calc.results["magmoms"], fa.calc.results["magmoms"], atol=1e-4)


def test_chgnet_site_energies_when_the_calculator_reports_them():
    # one calculator per replica (a calculator shared by several Atoms keeps one cache: the last's)
    *calcs, reference = _chgnet_calculators(3, return_site_energies=True)
    replicas = [h.pto10(seed_rattle=s) for s in (3, 4)]
    for a, calc in zip(replicas, calcs):
        a.calc = calc
    with _quiet():
        dyn = jmd.VelocityVerlet(replicas, 1 * units.fs)
        dyn.run(1)
    for a in replicas:  # each replica's own values (one batched call)
        probe = a.copy()
        probe.calc = reference
        reference.reset()
        probe.get_potential_energy()
        np.testing.assert_allclose(a.calc.results["energies"], reference.results["energies"], atol=1e-5)
        np.testing.assert_allclose(a.calc.results["magmoms"], reference.results["magmoms"], atol=1e-5)
        assert np.asarray(a.calc.results["energies"]).dtype == np.float32


def test_jax_emt_extras_through_the_engine_and_calculator(cu_atoms):
    from jaxpto.integrators.verlet import velocity_verlet
    from jaxpto.simulate import run, state_from_atoms

    model = emt(energies=True)
    assert model.extras == ("energies",) and emt().extras == ()
    calc = JaxptoCalculator(model)
    a = cu_atoms.copy()
    a.calc = calc
    ref = cu_atoms.copy()
    ref.calc = EMT()
    np.testing.assert_allclose(a.calc.get_property("energies", a), ref.calc.get_property("energies", ref), atol=1e-10)
    batch = calc.calculate_batch([cu_atoms, ref], properties=("energy", "energies"))
    np.testing.assert_allclose(batch[0]["energies"], ref.calc.results["energies"], atol=1e-10)

    state, force_fn = state_from_atoms(cu_atoms, model)
    state, _ = run(velocity_verlet(force_fn, 1 * units.fs), state, 5)
    moved = cu_atoms.copy()
    moved.positions = np.asarray(state.positions[0])
    moved.calc = EMT()
    np.testing.assert_allclose(np.asarray(state.extras["energies"][0]), moved.get_potential_energies(), atol=1e-10)
    plain, _ = state_from_atoms(cu_atoms, emt())
    assert plain.extras == {}  # a model without extras adds nothing to the state


def test_model_extras_contract_errors(cu_atoms):
    from jaxpto.simulate import state_from_atoms

    base = emt()

    def compute(*args):
        out = base.compute(*args)
        return ModelOutput(energy=out.energy, forces=out.forces, stress=out.stress)

    liar = Model(compute=compute, cutoff=base.cutoff, name="liar", extras=("magmoms",))
    with pytest.raises(ValueError, match=r"declares extras \['magmoms'\].*returned \[\]"):
        state_from_atoms(cu_atoms, liar)
    with pytest.raises(ValueError, match="main outputs"):
        Model(compute=compute, cutoff=1.0, extras=("forces",))
    with pytest.raises(ValueError, match="distinct property names"):
        Model(compute=compute, cutoff=1.0, extras=("energies", "energies"))


def test_checkpoint_round_trips_extras_and_reads_states_without_them(tmp_path, cu_atoms):
    from jaxpto.simulate import state_from_atoms
    from jaxpto.workflows.checkpoint import describe_state, read_checkpoint, rebuild_state, write_checkpoint

    state, _ = state_from_atoms(cu_atoms, emt(energies=True))
    path = write_checkpoint(str(tmp_path / "x.checkpoint.npz"), {"what": "test"}, {}, state)
    _, _, back = read_checkpoint(path, state)
    np.testing.assert_array_equal(np.asarray(back.extras["energies"]), np.asarray(state.extras["energies"]))
    plain, _ = state_from_atoms(cu_atoms, emt())
    from jaxpto.workflows.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="extras"):  # the extras do not fit a state without them
        read_checkpoint(path, plain)
    # A checkpoint written before MDState had extras describes no such field: it still loads.
    arrays = {}
    desc = describe_state(plain, "state", arrays)
    del desc["fields"]["extras"]
    old = rebuild_state(desc, plain, "state", arrays)
    assert old.extras == {}
    np.testing.assert_array_equal(np.asarray(old.positions), np.asarray(plain.positions))
