"""CHGNet torch EFS (bridges.chgnet): graph built in torch from the engine's edges vs CHGNet's own.

References: ``chgnet.model.dynamics.CHGNetCalculator`` (pymatgen neighbour list, compiled CPU graph
builder, ``CHGNet.predict_graph``) and ``CHGNet.graph_converter`` (``CrystalGraph``) on PbTiO3
cells. CHGNet runs in float32: the tolerances are float32 round-off (both paths differ from a
float64 evaluation by ~3e-5 eV/A in the forces).
"""

from __future__ import annotations

import numpy as np
import pytest

import torch  # noqa: E402  (a core dependency)
import chgnet  # noqa: E402,F401  (installed by the test extra)


import bridge_harness as h
from bridges.chgnet import build_graph, load  # noqa: E402
from bridge_harness import call_efs as call
from bridge_harness import engine_edges, quiet, reference
from _pbtio3_cells import pbtio3, supercell, triclinic

TOL = h.FLOAT32  # 1e-5 eV/atom, 1e-4 eV/A, 1e-5 eV/A^3
E_TOL, F_TOL, S_TOL = TOL

CELLS = {"unit5": pbtio3, "supercell40": supercell, "triclinic10": triclinic}


@pytest.fixture(scope="module")
def efs():
    return load("chgnet-0.3.0", device="cpu")


@pytest.fixture(scope="module")
def calc():
    from chgnet.model.dynamics import CHGNetCalculator

    return quiet(CHGNetCalculator, use_device="cpu")


@pytest.mark.parametrize("cell_name", list(CELLS))
def test_matches_chgnet_calculator(efs, calc, cell_name):
    # (the cells are stressed: the comparison means something)
    h.assert_efs_agrees(efs, calc, CELLS[cell_name](), TOL, cell_name)


def _edge_key(i, j, img):
    return (int(i), int(j), tuple(int(x) for x in img))


def _graph_sets(src, dst, image, d2u, bond_graph):
    keys = [_edge_key(i, j, s) for i, j, s in zip(src, dst, image)]
    edges = set(keys)
    assert len(edges) == len(keys), "duplicate directed edges"
    pairs: dict[int, list] = {}
    for k, u in zip(keys, d2u):
        pairs.setdefault(int(u), []).append(k)
    undirected = {frozenset(v) for v in pairs.values()}
    assert all(len(v) == 2 for v in pairs.values())
    triplets = [(int(c), keys[d1], keys[d2]) for c, _, d1, _, d2 in bond_graph]
    for (c, k1, k2), row in zip(triplets, bond_graph):
        # centre is the source of both bonds; the undirected indices belong to the directed ones
        assert c == k1[0] == k2[0]
        assert int(row[1]) == int(d2u[int(row[2])]) and int(row[3]) == int(d2u[int(row[4])])
    assert len(set(triplets)) == len(triplets), "duplicate angle triplets"
    return edges, undirected, set(triplets)


@pytest.mark.parametrize("cell_name", list(CELLS))
def test_graph_equals_chgnet_crystal_graph(efs, calc, cell_name):
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = CELLS[cell_name]()
    ref = calc.model.graph_converter(AseAtomsAdaptor.get_structure(atoms))
    ref_sets = _graph_sets(ref.atom_graph[:, 0].numpy(), ref.atom_graph[:, 1].numpy(),
                           np.rint(ref.neighbor_image.numpy()), ref.directed2undirected.numpy(),
                           ref.bond_graph.numpy())
    e = engine_edges([atoms], efs.cutoff)
    g = efs.graph(e["positions"], e["cell"], e["edge_src"], e["edge_dst"], e["edge_shift"], e["edge_mask"])
    mine = _graph_sets(g.src.numpy(), g.dst.numpy(), g.image.numpy(), g.directed2undirected.numpy(),
                       g.bond_graph.numpy())
    names = ("directed edges", "undirected pairs", "angle triplets")
    for name, a, b in zip(names, mine, ref_sets):
        assert a == b, f"{name}: {len(a - b)} extra, {len(b - a)} missing"
    assert len(mine[2]) > 0 and g.n_directed == 2 * g.n_undirected
    # undirected2directed points at one of the undirected bond's own directed edges
    u2d = g.undirected2directed.numpy()
    assert np.array_equal(g.directed2undirected.numpy()[u2d], np.arange(g.n_undirected))


def test_skin_does_not_change_the_graph(efs):
    atoms = triclinic()
    e0 = engine_edges([atoms], efs.cutoff, skin=0.0)
    e1 = engine_edges([atoms], efs.cutoff, skin=2.0)
    sets = []
    for e in (e0, e1):
        g = efs.graph(e["positions"], e["cell"], e["edge_src"], e["edge_dst"], e["edge_shift"], e["edge_mask"])
        sets.append(_graph_sets(g.src.numpy(), g.dst.numpy(), g.image.numpy(), g.directed2undirected.numpy(),
                                g.bond_graph.numpy()))
    assert sets[0] == sets[1]


def test_batched_replicas_equal_single_calls(efs):
    h.assert_batched_equals_single(lambda s: call(efs, s), h.three_structures(supercell(3)),
                                   h.Tolerance(1e-6, 1e-5, 1e-6), distinct_digits=4)


@pytest.mark.parametrize("name,chgnet_name", [("chgnet-0.2.0", "0.2.0"), ("chgnet-r2scan", "r2scan")])
def test_other_pretrained_models(efs, name, chgnet_name):
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    other = load(name, device="cpu")
    assert other.name == name
    assert other.cutoff == other.model.graph_converter.atom_graph_cutoff  # 5 A for 0.2.0, 6 A else
    atoms = supercell(5)
    energy, forces, stress = call(other, [atoms])
    assert np.all(np.isfinite(energy)) and np.all(np.isfinite(forces)) and np.all(np.isfinite(stress))
    e3, _, _ = call(efs, [atoms])
    assert abs(energy[0] - e3[0]) > 1e-3  # a different model
    ref_calc = quiet(CHGNetCalculator, model=quiet(CHGNet.load, model_name=chgnet_name, verbose=False),
                     use_device="cpu")
    e_ref, f_ref, s_ref = reference(ref_calc, atoms)
    assert abs(energy[0] - e_ref) / len(atoms) < E_TOL
    assert np.abs(forces[0] - f_ref).max() < F_TOL
    assert np.abs(stress[0] - s_ref).max() < S_TOL


def test_float64_model_close_to_float32(efs):
    atoms = supercell(0)
    e32, f32, s32 = call(efs, [atoms])
    e64, f64, s64 = call(load("chgnet-0.3.0", device="cpu", dtype="float64"), [atoms])
    assert abs(e32[0] - e64[0]) / len(atoms) < 1e-5
    assert np.abs(f32 - f64).max() < 1e-4 and np.abs(s32 - s64).max() < 1e-5


def test_errors(efs):
    with pytest.raises(ValueError, match="unknown CHGNet model"):
        load("chgnet-9.9.9")
    with pytest.raises(ValueError, match="float32 or float64"):
        load("chgnet-0.3.0", dtype="float16")
    e = engine_edges([pbtio3()], efs.cutoff)
    g = efs.graph(e["positions"], e["cell"], e["edge_src"], e["edge_dst"], e["edge_shift"], e["edge_mask"])
    # Drop one direction of one kept pair: the list is no longer full.
    mask = e["edge_mask"].clone()
    mask.view(-1)[int(g.edge_index[0])] = False
    with pytest.raises(ValueError, match="full list"):
        build_graph(e["positions"], e["cell"], e["edge_src"], e["edge_dst"], e["edge_shift"], mask,
                    bond_graph_cutoff=3.0)


# ----------------------------------------------------------------------------- through the JAX bridge


def _bridge():
    from bridges.torch_bridge import as_jax_model

    return as_jax_model


def test_through_jax_bridge_in_jit(efs, calc):
    as_jax_model = _bridge()
    model = as_jax_model(efs)
    assert model.cutoff == 6.0 and model.name == "chgnet-0.3.0"
    atoms = supercell(0)
    e, f, s = h.evaluate(model, [atoms])
    n = len(atoms)
    e_ref, f_ref, s_ref = reference(calc, atoms)
    assert abs(float(e[0]) - e_ref) / n < E_TOL
    assert np.abs(f[0] - f_ref).max() < F_TOL
    assert np.abs(s[0] - s_ref).max() < S_TOL


def test_registry_loads_chgnet():
    from bridges.registry import load_model

    model = load_model("chgnet-0.2.0", device="cpu")
    assert model.name == "chgnet-0.2.0" and model.cutoff == 5.0 and 82 in model.elements


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_nve_conserves_energy_like_ase(efs, calc):
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = pbtio3().repeat((2, 1, 1))
    atoms.positions += np.random.default_rng(11).normal(0.0, 0.03, atoms.positions.shape)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(12))
    run = h.nve_against_ase(_bridge()(efs), calc, atoms, 50, 2.0 * units.fs)
    run.report("CHGNet 0.3.0, 2 fs")
    assert abs(run.jax_energy[0] - run.ase_energy[0]) < 1e-3
    # Same trajectory start, same model: fluctuations of the total energy of the same size.
    assert run.spread("jax") < max(3.0 * run.spread("ase"), 2e-3), (run.spread("jax"), run.spread("ase"))
    # And the trajectories agree for this short run.
    assert np.abs(run.jax_positions - run.ase_positions).max() < 1e-3
