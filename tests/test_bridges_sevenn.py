"""SevenNet through the torch bridge equals SevenNet's own ASE calculator (float32).

PbTiO3 cells: 5-atom tetragonal, a rattled 2x2x2 supercell (40 atoms) and a strained triclinic
cell. 7net-0 and 7net-mf-0 (PBE head) on all three, 7net-l3i5 (slow on CPU) on the 5-atom cell.
Also: R=3 replicas in one batched call equal three single calls; a 50-step NVE run through
jaxpto.simulate (jit + lax.scan) conserves energy as well as ASE's VelocityVerlet with the
SevenNet calculator; bad inputs fail before any step. The checks are bridge_harness's.
"""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from ase import units

import torch  # noqa: E402,F401
import sevenn  # noqa: E402,F401  (installed by the test extra)

import bridge_harness as h
import jaxpto  # noqa: E402
from _pbtio3_cells import pbtio3 as pto_cell
from _pbtio3_cells import strained_unit_cell as pto_triclinic

warnings.filterwarnings("ignore", message=".*accelerator.*")

TOL = h.FLOAT32  # 1e-5 eV/atom, 1e-4 eV/A, 1e-5 eV/A^3
F32 = jnp.float32
CELLS = h.CELLS_5

_models, _calcs = {}, {}


def _modal(name):
    return {"modal": "PBE"} if name == "7net-mf-0" else {}


def model_for(name):
    if name not in _models:
        _models[name] = jaxpto.load_model(name, device="cpu", **_modal(name))
    return _models[name]


def calc_for(name):
    if name not in _calcs:
        from sevenn.calculator import SevenNetCalculator
        _calcs[name] = SevenNetCalculator(name, device="cpu", **_modal(name))
    return _calcs[name]


CASES = [("7net-0", c) for c in CELLS] + [("7net-mf-0", c) for c in CELLS] + [("7net-l3i5", "5-atom")]


@pytest.mark.parametrize("name,cell", CASES)
def test_matches_sevennet_calculator(name, cell):
    atoms = CELLS[cell]()
    model = model_for(name)
    assert model.cutoff == 5.0 and 82 in model.elements and 22 in model.elements
    h.assert_agrees(h.evaluate(model, [atoms], F32), h.reference(calc_for(name), atoms), TOL, len(atoms),
                    f"{name} {cell}")


def test_mf0_heads_differ_and_bad_modal():
    atoms = pto_cell()
    r2scan = jaxpto.load_model("7net-mf-0", device="cpu", modal="r2scan")
    assert r2scan.name == "7net-mf-0[R2SCAN]"
    e_pbe, _, _ = h.evaluate(model_for("7net-mf-0"), [atoms], F32)
    e_r2, _, _ = h.evaluate(r2scan, [atoms], F32)
    assert abs(e_pbe[0] - e_r2[0]) > 1e-2
    with pytest.raises(ValueError, match="PBE"):
        jaxpto.load_model("7net-mf-0", device="cpu", modal="HSE")
    with pytest.raises(ValueError, match="single-fidelity"):
        jaxpto.load_model("7net-0", device="cpu", modal="PBE")
    with pytest.raises(ValueError, match="float32 only"):
        jaxpto.load_model("7net-0", device="cpu", dtype="float64")


def test_batched_replicas_equal_single_calls():
    """Three different 5-atom structures (different cells) as one batched graph."""
    model = model_for("7net-0")
    rattled = pto_cell()
    rattled.positions += np.random.default_rng(7).normal(0, 0.05, rattled.positions.shape)
    h.assert_batched_equals_single(lambda s: h.evaluate(model, s, F32), [pto_cell(), pto_triclinic(), rattled],
                                   h.Tolerance(1e-6, 1e-5, 1e-6), counter=model.compute, rtol=1e-7)


@pytest.mark.slow
def test_nve_energy_conservation_vs_ase():
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = pto_cell().repeat((2, 2, 2))
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(11))
    Stationary(atoms)
    run = h.nve_against_ase(model_for("7net-0"), calc_for("7net-0"), atoms, 50, 1.0 * units.fs, dtype=F32)
    run.report("7net-0 40-atom PbTiO3 300 K, 1 fs")
    assert run.steps_done == 50
    assert abs(run.jax_energy[0] - run.ase_energy[0]) / run.n_atoms < 1e-5  # same starting point
    assert run.drift("jax", per_atom=True) <= 2.0 * run.drift("ase", per_atom=True) + 2e-5


def test_uncovered_element_fails_before_any_step():
    atoms = pto_cell()
    atoms.numbers[0] = 84  # Po: not in SevenNet-0's 89 elements
    h.assert_refuses_element(model_for("7net-0"), atoms, engine_match="Po", efs_match="84", calculator_too=True)


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError) as err:
        jaxpto.load_model("7net-99")
    for n in ("7net-0", "7net-l3i5", "7net-mf-0", "chgnet-0.3.0", "emt", "lj"):
        assert n in str(err.value)
