"""matgl torch EFS (bridges.matgl): M3GNet's graphs built in torch from the engine's edges vs matgl's own.

No weights are downloaded: a small randomly initialised M3GNet of the real architecture (elements
O/Ti/Pb, extensive energy, 2 blocks, widths 16, cutoffs 5 A / 4 A three-body) is wrapped in matgl's
``Potential(calc_stresses=True)`` with element references, saved with ``Potential.save`` to a
temporary directory and loaded back through ``load_model``. Its weights are drawn from U(-0.5, 0.5)
so that forces (~0.3 eV/A) and stresses (~0.03 eV/A^3) are of the size real models give, and the
comparisons below mean something. References: matgl's ``PESCalculator`` (pymatgen neighbour list,
numpy line graph, ``Potential.forward``) on PbTiO3 cells, float32; ``Potential.forward`` on matgl's
own graph in float64 for the float64 path.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from ase import units

import matgl  # installed by the test extra
from matgl.apps.pes import Potential
from matgl.ext.ase import PESCalculator
from matgl.models import M3GNet, TensorNet

import bridge_harness as h
import jaxpto
from bridge_harness import call_efs as call
from bridge_harness import engine_edges, reference
from bridges.matgl import (MODEL_NAMES, MatglEFS, ModelUnavailableError, efs_from_calculator, load, looks_like,
                           three_body_graph)
from _pbtio3_cells import pbtio3, supercell, triclinic

TOL = h.FLOAT32  # 1e-5 eV/atom, 1e-4 eV/A, 1e-5 eV/A^3
E_TOL, F_TOL, S_TOL = TOL
F32 = np.float32


CELLS = {"unit5": pbtio3, "supercell40": supercell, "triclinic10": triclinic}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny graphs: one intra-op thread is as fast, and on a shared 2-core machine two OpenMP
    threads contending with other processes made single calls take seconds instead of ~20 ms."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomise(model, seed, amp=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.copy_(torch.empty_like(p).uniform_(-amp, amp, generator=g))


def tiny_m3gnet_potential(seed=0) -> Potential:
    torch.manual_seed(seed)
    model = M3GNet(element_types=("O", "Ti", "Pb"), is_intensive=False, dim_node_embedding=16,
                   dim_edge_embedding=16, units=16, nblocks=2, max_n=3, max_l=3, cutoff=5.0, threebody_cutoff=4.0)
    _randomise(model, seed)
    return Potential(model=model, calc_stresses=True, element_refs=np.array([-4.9, -7.8, -3.7]),
                     data_std=5.0, data_mean=0.3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("m3gnet_tiny")
    tiny_m3gnet_potential().save(path)
    return path


@pytest.fixture(scope="module")
def efs(model_dir):
    return load(model_dir, device="cpu")


@pytest.fixture(scope="module")
def calc(model_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PESCalculator(matgl.load_model(model_dir), stress_unit="eV/A3")


# ----------------------------------------------------------------------------- torch side


@pytest.mark.parametrize("cell_name", list(CELLS))
def test_matches_pes_calculator(efs, calc, cell_name):
    atoms = CELLS[cell_name]()
    # the comparison means something: real forces and stresses, not zeros
    h.assert_efs_agrees(efs, calc, atoms, TOL, f"{cell_name} (float32)")
    f_ref = reference(calc, atoms)[1]
    if cell_name != "unit5":
        assert np.abs(f_ref).max() > 0.05


def _sets_from_graph(src, dst, image, line):
    keys = [(int(i), int(j), tuple(int(x) for x in s)) for i, j, s in zip(src, dst, image)]
    assert len(set(keys)) == len(keys), "duplicate directed edges"
    triples = [(keys[a], keys[b]) for a, b in zip(line[0].tolist(), line[1].tolist())]
    assert len(set(triples)) == len(triples), "duplicate triples"
    return set(keys), set(triples)


@pytest.mark.parametrize("cell_name", list(CELLS))
def test_graphs_equal_matgl_converter_and_line_graph(efs, cell_name):
    """Atom graph = matgl's Atoms2Graph (pymatgen); line graph = matgl's create_line_graph on it."""
    from matgl.ext.ase import Atoms2Graph
    from matgl.graph._compute import compute_pair_vector_and_distance, create_line_graph

    from bridges.matgl import build_graph

    atoms = CELLS[cell_name]()
    # matgl's own graph and line graph (numpy, host)
    g, lat, _ = Atoms2Graph(efs.element_types, efs.cutoff).get_graph(atoms)
    lat64 = torch.as_tensor(np.asarray(atoms.cell), dtype=torch.float64)
    pos64 = torch.as_tensor(atoms.positions)
    img = g.pbc_offset.double()
    _, dist = compute_pair_vector_and_distance(pos64, g.edge_index.long(), img @ lat64)
    ref_lg = create_line_graph(g.edge_index.long(), dist, None, None, len(atoms), efs.threebody_cutoff)
    ref = _sets_from_graph(g.edge_index[0], g.edge_index[1], np.rint(img.numpy()), ref_lg["line_edge_index"])
    # ours, from the engine's list with a 1 A skin
    e = engine_edges([atoms], efs.cutoff)
    src, dst, rep, shift = build_graph(e["positions"], e["cell"], e["edge_src"], e["edge_dst"], e["edge_shift"],
                                       e["edge_mask"])
    _, d = compute_pair_vector_and_distance(e["positions"][0], torch.stack([src, dst]), shift @ e["cell"][0])
    lg = three_body_graph(src, d, len(atoms), efs.threebody_cutoff)
    mine = _sets_from_graph(src, dst, np.rint(shift.numpy()), lg["line_edge_index"])
    assert mine[0] == ref[0], f"edges: {len(mine[0] - ref[0])} extra, {len(ref[0] - mine[0])} missing"
    assert mine[1] == ref[1], f"triples: {len(mine[1] - ref[1])} extra, {len(ref[1] - mine[1])} missing"
    assert len(mine[1]) > 0 and int(lg["n_triple_ij"].sum()) == len(mine[1])
    # some bonds lie between the two cutoffs: the parent/pruned bond-id distinction is exercised
    assert 0 < lg["kept_edge_ids"].numel() < src.numel()
    assert torch.equal(lg["kept_edge_ids"], torch.nonzero(d <= efs.threebody_cutoff).squeeze(1))


def test_three_body_graph_small_case():
    """Hand-checkable: centre 0 with bonds a, b (inside 4 A) and c (outside); centre 1 with one bond."""
    src = torch.tensor([0, 1, 0, 0])
    dist = torch.tensor([1.0, 2.0, 4.5, 3.9])
    lg = three_body_graph(src, dist, 2, 4.0)
    assert lg["kept_edge_ids"].tolist() == [0, 1, 3]
    assert sorted(map(tuple, lg["line_edge_index"].T.tolist())) == [(0, 3), (3, 0)]
    assert lg["n_triple_ij"].tolist() == [1, 0, 0, 1]


def test_skin_does_not_change_results(efs):
    atoms = triclinic()
    r0 = call(efs, [atoms], skin=0.0)
    r1 = call(efs, [atoms], skin=2.0)
    for a, b in zip(r0, r1):
        assert np.abs(a - b).max() < 1e-5


def test_batched_replicas_equal_single_calls(efs):
    h.assert_batched_equals_single(lambda s: call(efs, s), h.three_structures(supercell(3)),
                                   h.Tolerance(1e-6, 1e-5, 1e-6), distinct_digits=4)


def test_float64(model_dir):
    """float64 EFS vs matgl's Potential.forward in float64 on matgl's own graph (tight)."""
    from matgl.ext.ase import Atoms2Graph

    efs64 = load(model_dir, device="cpu", dtype="float64")
    assert efs64.dtype == torch.float64
    pot = matgl.load_model(model_dir).double().eval()
    for atoms in (triclinic(), supercell(2)):
        g, _, _ = Atoms2Graph(efs64.element_types, efs64.cutoff).get_graph(atoms)
        g.frac_coords = torch.as_tensor(atoms.get_scaled_positions(False))  # float64, not matgl's float32 copy
        lat = torch.as_tensor(np.asarray(atoms.cell))[None]
        e_ref, f_ref, s_ref, _ = pot(g, lat)
        s_ref = s_ref.detach().numpy() / 160.21766208  # GPa -> eV/A^3 (matgl's constant)
        energy, forces, stress = call(efs64, [atoms])
        n = len(atoms)
        de = abs(energy[0] - float(e_ref.detach())) / n
        df = np.abs(forces[0] - f_ref.detach().numpy()).max()
        ds = np.abs(stress[0] - s_ref).max()
        print(f"\nfloat64 {n} atoms: |dE|/N {de:.1e}, max|dF| {df:.1e}, max|dS| {ds:.1e}")
        assert de < 1e-10 and df < 1e-9 and ds < 1e-10


def test_tensornet(tmp_path):
    """TensorNet (two-body, no line graph) through the same EFS."""
    torch.manual_seed(1)
    model = TensorNet(element_types=("O", "Ti", "Pb"), is_intensive=False, units=16, nblocks=2, num_rbf=8,
                      cutoff=5.0, use_warp=False)
    _randomise(model, 1)
    Potential(model=model, calc_stresses=True, data_std=5.0).save(tmp_path)
    tn = load(tmp_path / "model.pt", device="cpu")
    assert tn.threebody_cutoff is None and "TensorNet" in repr(tn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_calc = PESCalculator(matgl.load_model(tmp_path), stress_unit="eV/A3")
    atoms = triclinic(4)
    e_ref, f_ref, s_ref = reference(ref_calc, atoms)
    energy, forces, stress = call(tn, [atoms])
    assert abs(energy[0] - e_ref) / len(atoms) < E_TOL
    assert np.abs(forces[0] - f_ref).max() < F_TOL
    assert np.abs(stress[0] - s_ref).max() < S_TOL
    assert np.abs(f_ref).max() > 1e-2


# ----------------------------------------------------------------------------- loading


def test_looks_like(model_dir, tmp_path):
    assert looks_like(model_dir) and looks_like(str(model_dir / "model.json")) and looks_like(model_dir / "model.pt")
    assert not looks_like(tmp_path) and not looks_like(tmp_path / "nothing.pt")
    other = tmp_path / "other"
    other.mkdir()
    for f in ("model.pt", "state.pt"):
        (other / f).write_bytes(b"\0")
    (other / "model.json").write_text('{"@class": "Foo", "@module": "somebody.else"}')
    assert not looks_like(other) and not looks_like(other / "model.json")
    assert not looks_like("\0bad")


def test_load_errors(model_dir, tmp_path):
    with pytest.raises(ValueError, match="float32 or float64"):
        load(model_dir, dtype="float16")
    with pytest.raises(ValueError, match="not a matgl model directory"):
        load(tmp_path)
    with pytest.raises(TypeError, match="unexpected keyword"):
        load(model_dir, modal="PBE")


def _fake_hub_cache(cache: "os.PathLike", repo_id: str, model_dir) -> None:
    """huggingface_hub's cache layout (refs/main -> snapshots/<rev>/<files>) holding ``model_dir``'s files."""
    import shutil

    root = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    rev = "0" * 40
    snap = os.path.join(root, "snapshots", rev)
    os.makedirs(snap)
    os.makedirs(os.path.join(root, "refs"))
    with open(os.path.join(root, "refs", "main"), "w") as f:
        f.write(rev)
    for fn in ("model.pt", "state.pt", "model.json"):
        shutil.copy(os.path.join(model_dir, fn), os.path.join(snap, fn))


def test_pretrained_name_offline(model_dir, tmp_path, monkeypatch):
    """Names resolve through matgl's cache without network; absent weights fail fast and clearly."""
    import matgl.config

    monkeypatch.setattr(matgl.config, "MATGL_CACHE", tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert MODEL_NAMES["m3gnet-mp-2021.2.8-pes"] == "M3GNet-MP-2021.2.8-PES"
    # Not cached, offline: an immediate, explicit error (through the registry as well).
    for loader in (lambda: load("m3gnet-mp-2021.2.8-pes"), lambda: jaxpto.load_model("M3GNet-MP-2021.2.8-PES")):
        h.assert_fails_fast(loader, ModelUnavailableError, r"M3GNet-MP-2021\.2\.8-PES.*not in the local cache")
    # Hub unreachable without the offline flag (a closed local port): still fast.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    h.assert_fails_fast(lambda: load("m3gnet-mp-2021.2.8-pes", download_timeout=2.0), ModelUnavailableError,
                        "unreachable")
    # Hub reachable but matgl finds no such repo (e.g. a name matgl >= 3 did not re-release).
    import bridges._download

    def missing(name, **kw):
        raise ValueError(f"No valid model found locally or at Hugging Face repo 'materialyze/{name}'.")

    monkeypatch.setattr(bridges._download, "unreachable_reason", lambda url, timeout: None)
    monkeypatch.setattr(matgl, "load_model", missing)
    with pytest.raises(ModelUnavailableError, match="re-released.*m3gnet-pes-matpes-pbe-2025.2"):
        load("m3gnet-mp-2021.2.8-pes")
    monkeypatch.undo()
    monkeypatch.setattr(matgl.config, "MATGL_CACHE", tmp_path)
    # Cached (the layout huggingface_hub writes): loads with no network at all.
    _fake_hub_cache(tmp_path, "materialyze/M3GNet-MP-2021.2.8-PES", model_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cached = load("M3GNet-MP-2021.2.8-pes", device="cpu")
    assert cached.name == "m3gnet-mp-2021.2.8-pes" and isinstance(cached, MatglEFS)
    atoms = triclinic()
    assert np.allclose(call(cached, [atoms])[0], call(load(model_dir, device="cpu"), [atoms])[0], atol=1e-6)


# ----------------------------------------------------------------------------- through the JAX bridge


def test_load_model_in_jit(model_dir, calc):
    from bridges.registry import load_model

    model = load_model(str(model_dir / "model.json"), family="matgl", device="cpu")
    detected = load_model(str(model_dir / "model.json"), device="cpu")  # family from looks_like
    assert type(detected.compute.efs) is MatglEFS
    assert model.cutoff == 5.0 and model.elements == frozenset({8, 22, 82})
    assert model.name == f"matgl:{model_dir.name}"
    for cell_name in ("supercell40", "triclinic10"):
        atoms = CELLS[cell_name]()
        e_ref, f_ref, s_ref = reference(calc, atoms)
        e, f, s = h.evaluate(model, [atoms])
        n = len(atoms)
        assert abs(float(e[0]) - e_ref) / n < E_TOL
        assert np.abs(f[0] - f_ref).max() < F_TOL
        assert np.abs(s[0] - s_ref).max() < S_TOL


def test_uncovered_element_fails_before_any_step(model_dir):
    model = jaxpto.load_model(str(model_dir / "model.pt"), family="matgl", device="cpu")
    atoms = pbtio3()
    atoms.numbers[0] = 38  # Sr: not among O, Ti, Pb
    h.assert_refuses_element(model, atoms, engine_match="Sr", efs_match=r"\[38\]", dtype=F32)


@pytest.mark.slow
def test_nve_energy_conservation_vs_ase(model_dir, calc):
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = triclinic(5)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(11))
    Stationary(atoms)
    model = jaxpto.load_model(str(model_dir / "model.json"), family="matgl", device="cpu")
    run = h.nve_against_ase(model, calc, atoms, 40, 1.0 * units.fs, dtype=F32)
    run.report("10-atom PbTiO3 300 K, random M3GNet float32, 1 fs")
    assert run.steps_done == 40
    assert abs(run.jax_energy[0] - run.ase_energy[0]) / run.n_atoms < 1e-5  # same starting point
    assert run.drift("jax", per_atom=True) <= 2.0 * run.drift("ase", per_atom=True) + 2e-5
    assert np.abs(run.jax_positions - run.ase_positions).max() < 1e-3  # same trajectory


# ----------------------------------------------------------------------------- calculator swap (jaxpto.md)


def test_calculator_swapped_for_bridge_matches_ase(calc):
    dyn, atoms, ase_positions = h.calculator_swap(calc, h.pto10, 10)
    efs = dyn._model_obj.compute.efs
    assert efs.potential is calc.potential  # the calculator's own loaded network, not a second load
    assert np.abs(atoms.positions - ase_positions).max() <= 1e-4
    # the calculator still works on its own afterwards and agrees with the written-back forces
    h.assert_calculator_still_agrees(calc, atoms, 1e-4)


def test_efs_from_calculator_keeps_its_stress_unit(calc):
    """matgl's default PESCalculator reports GPa; the swapped EFS reproduces that calculator."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gpa = PESCalculator(calc.potential)  # stress_unit="GPa", matgl's default
    atoms = triclinic(6)
    s_gpa = reference(gpa, atoms)[2]
    s_ev = reference(calc, atoms)[2]
    ev_efs, gpa_efs = efs_from_calculator(calc), efs_from_calculator(gpa)
    assert abs(ev_efs.stress_scale - 1.0) < 1e-6 and abs(gpa_efs.stress_scale - 160.21766208) < 1e-6
    assert np.abs(call(ev_efs, [atoms])[2][0] - s_ev).max() < S_TOL
    assert np.abs(call(gpa_efs, [atoms])[2][0] - s_gpa).max() < 160 * S_TOL
    assert efs_from_calculator(object()) is None
