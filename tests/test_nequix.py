"""Nequix, the JAX-native family (bridges/nequix.py): the network inside jaxpto's compiled step
equals nequix's own ASE calculator, ``NequixCalculator``, on the same weights.

The reference is ``NequixCalculator(model_path=..., use_kernel=False)`` (its graph: matscipy on
the host, padded with jraph), evaluated in JAX's float32 mode as a user runs it; the published
weights are float32. Cells: the PbTiO3 test cells of ``_pbtio3_cells`` (5-atom tetragonal,
rattled 2x2x2 supercell, strained triclinic 2x1x1), both weight files. Also: R = 3 replicas in
one call equal single calls; packing the edges (and the unpacked fallback) and the skin never
change the result; the drop-in path (``model_from_calculator``, ``bridges.from_calculator``,
``jaxpto.md``) reuses the calculator's network; site energies sum to the energy and a Nequix
network's LAMMPS bundle equals its own compute over 1 and 2 ranks; float64; a jit + lax.scan NVE
run against ASE's VelocityVerlet with ``NequixCalculator``; bad input and offline names fail fast
and clearly; ``jaxpto phonons`` (static + phonons) on both files, checked against
``NequixCalculator`` at the relaxed structures and phonopy with it.

Weights: ``<repo>/../shared/models/nequix/`` (``JAXPTO_NEQUIX_DIR`` overrides); nothing here uses
the network.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units

import nequix  # noqa: F401  (installed with --no-deps, see README; its runtime deps: jaxpto[nequix])

import jaxpto
from bridges import nequix as bn
from bridges import registry
from jaxpto import neighbors as nl
from _pbtio3_cells import pbtio3, supercell, triclinic

NEQUIX_DIR = os.environ.get("JAXPTO_NEQUIX_DIR") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "models", "nequix")
FILES = {name: os.path.join(NEQUIX_DIR, f"{name}.nqx") for name in ("nequix-mp-1", "nequix-mp-1-pft")}

pytestmark = pytest.mark.skipif(
    not all(os.path.isfile(p) for p in FILES.values()),
    reason=f"Nequix weights not found in {NEQUIX_DIR} (set JAXPTO_NEQUIX_DIR to the folder holding "
           "nequix-mp-1.nqx and nequix-mp-1-pft.nqx)")

E_TOL, F_TOL, S_TOL = 1e-5, 1e-4, 1e-5  # eV/atom, eV/A, eV/A^3
F32 = jnp.float32
CELLS = {"unit5": pbtio3, "supercell40": supercell, "triclinic10": triclinic}

_models: dict = {}
_calcs: dict = {}


def thermalise(atoms, T, seed):
    """Seeded Maxwell-Boltzmann momenta, in place (``thermalize_momenta`` from ASE 3.28 on)."""
    from ase.md import velocitydistribution as vd

    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
    thermalize(atoms, temperature_K=T, rng=np.random.default_rng(seed))


def model_for(name):
    if name not in _models:
        _models[name] = jaxpto.load_model(FILES[name])
    return _models[name]


def calc_for(name):
    if name not in _calcs:
        _calcs[name] = bn.ase_calculator(FILES[name])
    return _calcs[name]


def reference(calc, atoms):
    """NequixCalculator's energy, forces, stress (3x3), in JAX's float32 mode."""
    at = atoms.copy()
    at.calc = calc
    with jax.enable_x64(False):
        return at.get_potential_energy(), at.get_forces(), at.get_stress(voigt=False)


def native(model, atoms_list, skin=1.0, dtype=F32):
    """The native model inside jit on the engine's neighbour list (all structures as replicas)."""
    pos = jnp.asarray(np.stack([a.positions for a in atoms_list]), dtype)
    cell = jnp.asarray(np.stack([np.asarray(a.cell) for a in atoms_list]), dtype)
    nbrs = nl.allocate(pos, cell, model.cutoff, skin=skin)
    out = jax.jit(model.compute)(pos, cell, jnp.asarray(atoms_list[0].numbers), nbrs)
    return np.asarray(out.energy, float), np.asarray(out.forces, float), np.asarray(out.stress, float)


@pytest.mark.parametrize("cell_name", list(CELLS))
@pytest.mark.parametrize("name", list(FILES))
def test_matches_nequix_calculator(name, cell_name):
    atoms = CELLS[cell_name]()
    e_ref, f_ref, s_ref = reference(calc_for(name), atoms)
    energy, forces, stress = native(model_for(name), [atoms])
    n = len(atoms)
    dE, dF, dS = abs(energy[0] - e_ref) / n, np.abs(forces[0] - f_ref).max(), np.abs(stress[0] - s_ref).max()
    print(f"\n{name} {cell_name}: |dE|/atom {dE:.1e} eV, max|dF| {dF:.1e} eV/A, max|dS| {dS:.1e} eV/A^3")
    assert dE < E_TOL and dF < F_TOL and dS < S_TOL
    assert np.abs(f_ref).max() > 0.1 and np.abs(s_ref).max() > 1e-3  # the cells are far from equilibrium


def test_the_two_files_are_different_models():
    atoms = supercell(4)
    e1, f1, _ = native(model_for("nequix-mp-1"), [atoms])
    e2, f2, _ = native(model_for("nequix-mp-1-pft"), [atoms])
    assert abs(e1[0] - e2[0]) > 1e-3 and np.abs(f1 - f2).max() > 1e-3


def test_batched_replicas_equal_single_calls():
    base = pbtio3()
    reps = [base.copy() for _ in range(3)]
    reps[1].positions += np.random.default_rng(7).normal(0.0, 0.05, base.positions.shape)
    reps[2].set_cell(np.asarray(base.cell) @ (np.eye(3) + [[0.01, 0.02, 0.0], [0.0, -0.01, 0.03],
                                                            [0.02, 0.0, 0.02]]), scale_atoms=True)
    model = model_for("nequix-mp-1")
    energy, forces, stress = native(model, reps)
    assert energy.shape == (3,) and forces.shape == (3, len(base), 3) and stress.shape == (3, 3, 3)
    n = len(base)
    for r, atoms in enumerate(reps):
        e1, f1, s1 = native(model, [atoms])
        assert abs(energy[r] - e1[0]) / n < 1e-6
        assert np.abs(forces[r] - f1[0]).max() < 1e-5
        assert np.abs(stress[r] - s1[0]).max() < 1e-6
    assert len({round(float(x), 3) for x in energy}) == 3  # the replicas really differ


def test_edge_packing_fallback_and_skin_do_not_change_the_result():
    """The packed edge buffer, the unpacked fallback (taken when the buffer is too small) and a
    larger skin (more padding) give the same numbers: padding contributes exactly nothing."""
    from ase.neighborlist import neighbor_list

    atoms = triclinic()
    network, config = bn.read_nqx(FILES["nequix-mp-1"])
    inside = len(neighbor_list("i", atoms, config["cutoff"]))  # pairs the model sees
    pos = jnp.asarray(atoms.positions[None], F32)
    cell = jnp.asarray(np.asarray(atoms.cell)[None], F32)
    nbrs = nl.allocate(pos, cell, config["cutoff"], skin=1.0)
    tiny = 0.5 * inside / (len(atoms) * nbrs.capacity)
    assert bn.edge_capacity(len(atoms), nbrs, config["cutoff"], tiny) < inside  # forces the fallback
    assert inside <= bn.edge_capacity(len(atoms), nbrs, config["cutoff"]) < len(atoms) * nbrs.capacity

    default = model_for("nequix-mp-1")
    n0 = default.compute.n_unpacked
    packed = native(default, [atoms])
    small = bn.native_model(network, config["atomic_numbers"], edge_fraction=tiny)
    with pytest.warns(RuntimeWarning, match="exceed the packed edge buffer"):
        fallback = native(small, [atoms])
    assert small.compute.n_unpacked == 1 and default.compute.n_unpacked == n0  # which branch ran
    wide = native(default, [atoms], skin=2.5)
    for other in (fallback, wide):
        assert abs(other[0][0] - packed[0][0]) < 1e-5
        assert np.abs(other[1] - packed[1]).max() < 1e-5
        assert np.abs(other[2] - packed[2]).max() < 1e-6


def test_model_from_calculator_reuses_its_network():
    import copy

    from jaxpto.calculator import JaxptoCalculator

    calc = calc_for("nequix-mp-1")
    model = bn.model_from_calculator(calc)
    assert model.compute.network is calc.model  # the same loaded object, weights not copied
    assert model.cutoff == calc.cutoff == 6.0 and 82 in model.elements and 22 in model.elements
    atoms = triclinic(5)
    e_ref, f_ref, s_ref = reference(calc, atoms)
    at = atoms.copy()
    at.calc = JaxptoCalculator(model, dtype=F32)
    assert abs(at.get_potential_energy() - e_ref) / len(at) < E_TOL
    assert np.abs(at.get_forces() - f_ref).max() < F_TOL
    assert np.abs(at.get_stress(voigt=False) - s_ref).max() < S_TOL

    # Identity: the same network object and cutoff compute the same thing; another load does not.
    assert bn.model_identity(copy.copy(calc)) == bn.model_identity(calc)
    assert bn.model_identity(calc_for("nequix-mp-1-pft")) != bn.model_identity(calc)
    from ase.calculators.emt import EMT

    assert bn.model_from_calculator(EMT()) is None and bn.model_identity(EMT()) is None


def test_resolver_and_drop_in_md_run_the_calculators_network_natively():
    """``bridges.from_calculator(NequixCalculator)`` is the native model on the calculator's own network
    (kind "native"), and ``jaxpto.md.VelocityVerlet`` with that calculator takes that path and follows
    ASE's ``VelocityVerlet`` with the same calculator (float32 model on both sides)."""
    import bridges
    import jaxpto.md
    from ase.md.verlet import VelocityVerlet

    calc = calc_for("nequix-mp-1")
    resolved = bridges.from_calculator(calc)
    assert resolved.kind == "native" and resolved.model.compute.network is calc.model
    assert bridges.calculator_identity(calc) == resolved.identity
    assert bridges.calculator_identity(calc_for("nequix-mp-1-pft")) != resolved.identity

    atoms = triclinic(4)
    thermalise(atoms, 300, seed=2)
    ours, theirs = atoms.copy(), atoms.copy()
    ours.calc = theirs.calc = calc
    dyn = jaxpto.md.VelocityVerlet(ours, 2.0 * units.fs, dtype=jnp.float64)
    dyn.run(5)
    assert dyn.force_kind == "native"
    with jax.enable_x64(False):
        VelocityVerlet(theirs, 2.0 * units.fs).run(5)
    assert np.abs(ours.positions - theirs.positions).max() < 1e-5
    assert np.abs(ours.get_momenta() - theirs.get_momenta()).max() < 1e-4


def test_float64_weights_agree_with_float32():
    atoms = triclinic(2)
    m64 = bn.load(FILES["nequix-mp-1"], dtype="float64")
    assert {x.dtype for x in jax.tree.leaves(m64.compute.network) if hasattr(x, "dtype")
            and jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float64)}
    e64, f64, s64 = native(m64, [atoms], dtype=jnp.float64)
    e32, f32, s32 = native(model_for("nequix-mp-1"), [atoms])
    n = len(atoms)
    assert abs(e64[0] - e32[0]) / n < 1e-5 and np.abs(f64 - f32).max() < 1e-4 and np.abs(s64 - s32).max() < 1e-5
    with jax.enable_x64(False), pytest.raises(ValueError, match="jax_enable_x64"):
        bn.load(FILES["nequix-mp-1"], dtype="float64")
    with pytest.raises(ValueError, match="float32 or float64"):
        bn.load(FILES["nequix-mp-1"], dtype="float16")


def test_site_energies_sum_to_the_energy():
    """``Model.site_energies`` (Nequix's node energies, on the full list) sum to ``compute``'s energy
    (packed edge buffer) on the strained triclinic cell, two different replicas in one call;
    4 layers -> 4 hops; an uncovered element gives NaN (same compiled programs)."""
    model = model_for("nequix-mp-1")
    assert model.receptive_hops == len(model.compute.network.layers) == 4
    atoms = triclinic()
    reps = [atoms.copy() for _ in range(2)]
    reps[1].positions += np.random.default_rng(3).normal(0.0, 0.05, atoms.positions.shape)
    pos = jnp.asarray(np.stack([a.positions for a in reps]), F32)
    cell = jnp.asarray(np.stack([np.asarray(a.cell) for a in reps]), F32)
    nbrs = nl.allocate(pos, cell, model.cutoff, skin=1.0)
    compute, sites_fn = jax.jit(model.compute), jax.jit(model.site_energies)
    energy = np.asarray(compute(pos, cell, jnp.asarray(atoms.numbers), nbrs).energy, float)
    sites = np.asarray(sites_fn(pos, cell, jnp.asarray(atoms.numbers), nbrs), float)
    assert sites.shape == (2, len(atoms))
    assert np.abs(sites.sum(axis=1) - energy).max() / len(atoms) < 1e-6
    assert abs(energy[0] - energy[1]) > 1e-3 and np.ptp(sites[0]) > 0.1  # replicas and Pb/Ti/O sites differ
    bad = atoms.numbers.copy()
    bad[0] = 84  # Po, not covered: NaN, never a silently wrong number
    assert np.isnan(np.asarray(sites_fn(pos, cell, jnp.asarray(bad), nbrs))).all()


def test_lammps_bundle_of_a_nequix_network_equals_its_compute(tmp_path):
    """``jaxpto export-lammps``'s bundle (jax.export of the site energies) for a Nequix network: on
    LAMMPS-packed inputs over 1 and 2 ranks it gives the model's own energy and forces. A small
    random Nequix (2 layers, cutoff 3.5 A, the real one's code) keeps the ghost shell
    (n_hops x cutoff + skin) CI-sized; the real files export the same way (4 hops, 25 A shells)."""
    import equinox as eqx
    from nequix.model import Nequix

    from jaxpto.workflows import lammps_bundle as lb

    elements = [8, 22, 82]
    with jax.enable_x64(False):
        network = Nequix(key=jax.random.key(1), n_species=3, lmax=2, cutoff=3.5, hidden_irreps="8x0e + 4x1o + 4x2e",
                         n_layers=2, radial_basis_size=4, radial_mlp_size=8, radial_mlp_layers=1,
                         index_weights=False, layer_norm=True, shift=0.1, scale=0.8, avg_n_neighbors=10.0,
                         atom_energies=[-7.3, -10.3, -3.7])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(eqx.filter(network, eqx.is_inexact_array)))
    model = bn.native_model(network, elements, name="nequix-random-2")
    assert model.receptive_hops == 2 and lb.n_hops_for(model) == 2
    atoms = supercell(5)
    out = str(tmp_path / "bundle")
    types = ["O", "Ti", "Pb"]
    for ranks in (1, 2):
        caps = lb.estimate_capacities(atoms, model, skin=1.0, ranks=ranks)
        lb.export_bundle(model, out, types, caps, platform="cpu")
        check = lb.check_bundle(out, model, atoms, types, caps, skin=1.0, ranks=ranks)
        print(f"\nNequix bundle, {ranks} rank(s): |dE|/atom {check['energy_error_per_atom']:.1e} eV, "
              f"max|dF| {check['max_force_error']:.1e} eV/A")
        assert check["energy_error_per_atom"] < 1e-6 and check["max_force_error"] < 1e-5
    bundle = lb.load_bundle(os.path.join(out, "model.lammps-jax.json"))
    assert bundle["contract"]["n_hops"] == 2 and bundle["export_info"]["receptive_hops"] == 2


def _total_energy_per_atom(state):
    kinetic = 0.5 * jnp.sum(state.momenta**2 / state.masses[None, :, None], axis=(1, 2))
    return (state.energy + kinetic) / state.positions.shape[1]


@pytest.mark.slow
def test_nve_in_lax_scan_equals_ase_with_nequix_calculator():
    """Same start, 25 steps of 2 fs at 300 K (40 atoms): jaxpto's VelocityVerlet (one jit + lax.scan
    chunk, float64 state, Nequix in float32) against ASE's VelocityVerlet with NequixCalculator
    (float64 integrator, float32 model): the same trajectory and the same energy drift; with the
    float64 weights the energy history is the same again (the drift is the time step's)."""
    from ase.md.velocitydistribution import Stationary
    from ase.md.verlet import VelocityVerlet

    from jaxpto.integrators import velocity_verlet
    from jaxpto.simulate import run, state_from_atoms

    n_steps, dt = 25, 2.0 * units.fs
    atoms = supercell(9)
    thermalise(atoms, 300, seed=11)
    Stationary(atoms)

    ase_atoms = atoms.copy()
    ase_atoms.calc = calc_for("nequix-mp-1")
    etot = []
    dyn = VelocityVerlet(ase_atoms, dt)
    dyn.attach(lambda: etot.append(ase_atoms.get_total_energy() / len(ase_atoms)), interval=1)
    with jax.enable_x64(False):
        dyn.run(n_steps)
    etot = np.asarray(etot)
    drift_ase = np.abs(etot - etot[0]).max()

    def jaxpto_run(model):
        state, force_fn = state_from_atoms(atoms, model, dtype=jnp.float64)
        integ = velocity_verlet(force_fn, dt)
        state = integ.init(state)
        e0 = float(_total_energy_per_atom(state)[0])
        state, rec = run(integ, state, n_steps, record_fn=_total_energy_per_atom, record_every=1)
        rec = np.concatenate([[e0], np.asarray(rec)[:, 0]])
        assert int(state.step) == n_steps and np.all(np.isfinite(rec))
        return np.asarray(state.positions[0]), rec

    pos32, rec32 = jaxpto_run(model_for("nequix-mp-1"))
    pos64, rec64 = jaxpto_run(bn.load(FILES["nequix-mp-1"], dtype="float64"))
    drift32, drift64 = np.abs(rec32 - rec32[0]).max(), np.abs(rec64 - rec64[0]).max()
    dpos = np.abs(pos32 - ase_atoms.positions).max()
    print(f"\nNVE 40-atom PbTiO3 300 K, {n_steps} x 2 fs: max|Etot-Etot0|/atom jaxpto f32 {drift32:.2e}, "
          f"ASE f32 {drift_ase:.2e}, jaxpto f64 {drift64:.2e} eV; max|r_jaxpto - r_ASE| {dpos:.1e} A")
    assert abs(rec32[0] - etot[0]) < 1e-6  # same starting point
    assert np.abs(rec32 - etot).max() < 2e-5  # the same energy history, step by step
    assert dpos < 1e-4  # the same trajectory
    assert drift32 <= 2.0 * drift_ase + 2e-5
    # Float64 weights: the same energy history. At 2 fs the drift is the integrator's (time step),
    # float32 round-off in the forces adds nothing visible to it.
    assert np.abs(rec64 - rec32).max() < 2e-5 and abs(drift64 - drift32) < 2e-5


def test_uncovered_element_fails_before_any_step():
    from jaxpto.simulate import state_from_atoms

    model = model_for("nequix-mp-1")
    atoms = pbtio3()
    atoms.numbers[0] = 84  # Po: Nequix MP-1 covers H-Bi and Ac-Pu
    with pytest.raises(ValueError, match="Po"):
        state_from_atoms(atoms, model, dtype=F32)
    with pytest.raises(ValueError, match="Po"):
        atoms.calc = jaxpto.JaxptoCalculator(model, dtype=F32)
        atoms.get_potential_energy()
    # Called directly (the engine's check bypassed), the result is NaN, never a wrong number.
    energy, forces, stress = native(model, [atoms])
    assert np.isnan(energy).all() and np.isnan(forces).all() and np.isnan(stress).all()


def test_offline_name_fails_fast_and_says_what_to_do(tmp_path, monkeypatch):
    from nequix.calculator import NequixCalculator

    monkeypatch.setenv("HOME", str(tmp_path))  # an empty nequix cache
    # An address that refuses at once: the test never waits on (or uses) the real network.
    url = "http://127.0.0.1:9/nequix-mp-1.nqx"
    monkeypatch.setitem(NequixCalculator.URLS, "nequix-mp-1", url)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError) as err:
        jaxpto.load_model("nequix-mp-1")
    assert time.perf_counter() - t0 < 5.0
    msg = str(err.value)
    assert url in msg and bn.cache_path("nequix-mp-1") in msg and str(tmp_path) in msg
    assert "pass the .nqx file path" in msg


def test_named_model_loads_from_nequix_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cached = bn.cache_path("nequix-mp-1-pft")
    os.makedirs(os.path.dirname(cached))
    os.symlink(os.path.abspath(FILES["nequix-mp-1-pft"]), cached)
    model = jaxpto.load_model("Nequix-MP-1-PFT")  # names are case insensitive
    assert model.name == "nequix-mp-1-pft" and model.cutoff == 6.0
    ref = model_for("nequix-mp-1-pft").compute.network
    leaves = [np.asarray(x) for x in jax.tree.leaves(model.compute.network)]
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(leaves, jax.tree.leaves(ref)))
    assert bn._named_file("nequix-mp-1-pft", timeout=0.1) == cached  # what ase_calculator(name) loads too


def test_files_names_and_registry(tmp_path):
    path = FILES["nequix-mp-1"]
    assert bn.looks_like(path) and registry.detect_family(path) == "nequix"
    assert registry.is_jax_native(path) and registry.is_jax_native("nequix-mp-1") and registry.is_jax_native("lj")
    assert not registry.is_jax_native("chgnet-0.3.0")
    assert {"nequix-mp-1", "nequix-mp-1-pft"} <= set(registry.known_models())
    assert registry.KNOWN_MODELS["nequix-mp-1"][0] == "nequix"
    assert jaxpto.load_model(path, family="nequix").name == "nequix:nequix-mp-1.nqx"

    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    other_json = tmp_path / "other.nqx"
    other_json.write_bytes(b'{"cutoff": 5.0}\n\x00\x01')
    for bad in (text, other_json):
        assert not bn.looks_like(bad)
        with pytest.raises(ValueError, match="not a Nequix .nqx file"):
            bn.read_nqx(bad)
    truncated = tmp_path / "truncated.nqx"
    with open(path, "rb") as f:
        truncated.write_bytes(f.read(200_000))
    assert bn.looks_like(truncated)  # the config line is intact ...
    with pytest.raises(ValueError, match="do not fit"):  # ... the weights are not
        bn.read_nqx(truncated)
    with pytest.raises(ValueError, match="unknown Nequix model"):
        bn.load("nequix-mp-9")
    with pytest.raises(ValueError, match="belongs to family 'nequix'"):
        jaxpto.load_model("nequix-mp-1", family="mace")
    with pytest.raises(TypeError, match="unexpected arguments"):
        bn.load(path, head="x")


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """``jaxpto phonons`` (static + phonons) on both files, as a user runs it."""
    from jaxpto.cli import main

    out = {}
    for name, path in FILES.items():
        d = str(tmp_path_factory.mktemp(name))
        assert main(["phonons", "--model", path, "--out", d, "--no-progress"]) == 0
        with open(os.path.join(d, "results.json")) as f:
            (entry,) = json.load(f)["models"]
        out[name] = entry
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FILES))
def test_cli_static_and_phonons_agree_with_nequix_calculator(cli_runs, name):
    """The relaxed cells are stationary for NequixCalculator too (forces, stress, E_tet - E_cub), and
    phonopy with NequixCalculator on jaxpto's relaxed cell gives jaxpto's frequencies."""
    from jaxpto.workflows.phonons import pto_phonons
    from jaxpto.workflows.static import atoms_from_dict

    entry = cli_runs[name]
    static, phon = entry["static"], entry["phonons"]
    assert static["converged"] and static["warnings"] == []
    calc = calc_for(name)
    energies = {}
    for phase in ("tetragonal", "cubic"):
        atoms = atoms_from_dict(static["structures"][phase])
        e, f, s = reference(calc, atoms)
        energies[phase] = e
        assert np.abs(f).max() < 2e-3, (phase, np.abs(f).max())
        assert np.abs(s).max() * atoms.get_volume() / len(atoms) < 2e-3, (phase, s)  # FrechetCellFilter's measure
    assert abs((energies["tetragonal"] - energies["cubic"]) - static["delta_e_ev_per_fu"]) < 1e-4
    print(f"\n{name}: a {static['a']:.4f} c {static['c']:.4f} c/a {static['c_over_a']:.4f} "
          f"dE {static['delta_e_ev_per_fu']:.4f} eV/f.u.; phonons min {phon['min_frequency_thz']:.3f} THz at "
          f"q {phon['min_frequency_q']} (acoustic noise: {phon['min_frequency_is_acoustic_noise']}), lowest optical "
          f"{phon['lowest_optical_thz']:.3f} THz, imaginary {phon['has_imaginary']}")
    if name == "nequix-mp-1":
        # NequixCalculator + FixSymmetry + FrechetCellFilter + BFGS (../shared/models/nequix/README.md)
        assert static["a"] == pytest.approx(3.835, abs=1e-3) and static["c"] == pytest.approx(4.850, abs=1e-3)
    assert static["c_over_a"] > 1.1 and static["delta_e_ev_per_fu"] < 0  # supertetragonal, as the README says

    with jax.enable_x64(False):
        ref = pto_phonons(calc, atoms_from_dict(static["structures"]["tetragonal"]))
    assert ref["n_displacements"] == phon["n_displacements"] == 8
    np.testing.assert_allclose(phon["gamma_frequencies_thz"], ref["gamma_frequencies_thz"], atol=0.02)
    assert phon["min_frequency_thz"] == pytest.approx(ref["min_frequency_thz"], abs=0.02)
    assert phon["has_imaginary"] == ref["has_imaginary"]
