"""``jaxpto check-model``: passes on sound models, fails on deliberately broken ones.

References: the finite differences agree with ASE's own ``calculate_numerical_forces`` /
``calculate_numerical_stress`` (an independent implementation) on the JAX EMT; the checks pass on
EMT, Lennard-Jones and CHGNet 0.3.0 (float64); negative controls built on EMT fail exactly where
they should: a stress with the wrong sign (the virial sign bug), forces scaled by 1.01, an energy
that depends on where the system is (E + 0.01 eV/A * sum x, otherwise consistent).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpto.calculator import JaxptoCalculator
from jaxpto.model import Model, ModelOutput, energy_model
from jaxpto.potentials import emt, lennard_jones
from jaxpto.workflows.model_check import SETTINGS, check_model, default_structure, numerical_forces_and_stress


@pytest.fixture(scope="module")
def emt_model():
    return emt()


def _verdicts(report):
    return {c.name: c.passed for c in report.checks}


def _scaled(model, *, forces=1.0, stress=1.0, name="broken"):
    """``model`` with its forces and stress multiplied (a model whose outputs are not its energy's)."""
    def compute(positions, cell, numbers, neighbors):
        out = model.compute(positions, cell, numbers, neighbors)
        return ModelOutput(energy=out.energy, forces=forces * out.forces, stress=stress * out.stress)

    return Model(compute=compute, cutoff=model.cutoff, elements=model.elements, name=name)


def _field(model, strength=0.01):
    """E + strength * sum_i x_i: forces and stress by autodiff (consistent), but not invariant."""
    def energy(positions, cell, numbers, neighbors):
        one = jax.tree_util.tree_map(lambda x: x[None], neighbors)
        return model.compute(positions[None], cell[None], numbers, one).energy[0] + strength * jnp.sum(positions[:, 0])

    return energy_model(energy, cutoff=model.cutoff, elements=model.elements, name="emt+field")


def test_finite_differences_equal_ase_numerical_derivatives(emt_model):
    from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
    from ase.stress import voigt_6_to_full_3x3_stress

    atoms, label = default_structure(emt_model)
    assert "fcc Cu" in label
    s = SETTINGS["float64"]
    f_fd, s_fd = numerical_forces_and_stress(emt_model, atoms, s)
    probe = atoms.copy()
    probe.calc = JaxptoCalculator(emt_model)
    f_ase = calculate_numerical_forces(probe, eps=s.displacement, iatoms=range(len(f_fd)))
    s_ase = voigt_6_to_full_3x3_stress(calculate_numerical_stress(probe, eps=s.strain))
    # ASE's are second-order central differences (truncation ~h^2/6 d3E/dx3 ~ 1e-8 here), ours fourth-order
    print(f"\nmax |F_fd - F_ase| {np.abs(f_fd - f_ase).max():.1e} eV/A, max |s_fd - s_ase| "
          f"{np.abs(s_fd - s_ase).max():.1e} eV/A^3")
    assert np.abs(f_fd - f_ase).max() < 1e-7 and np.abs(s_fd - s_ase).max() < 1e-9
    assert np.abs(f_ase).max() > 0.1 and np.abs(s_ase).max() > 1e-3  # not a comparison of zeros


def test_passes_on_lennard_jones(emt_model):
    cu, _ = default_structure(emt_model)  # (LJ covers every element: the default would be PbTiO3)
    report = check_model(lennard_jones(sigma=2.3, epsilon=0.12, rc=6.75), structure=cu, nve_steps=50)
    print("\n" + report.table())
    assert report.passed, report.table()
    assert len(report.checks) == 6 and report.precision == "float64"


def test_stress_with_the_wrong_sign_fails(emt_model):
    report = check_model(_scaled(emt_model, stress=-1.0), checks=("finite-differences",))
    assert _verdicts(report) == {"forces = -dE/dr": True, "stress = dE/dstrain": False}
    assert "opposite sign" in report.checks[1].detail
    assert "FAIL" in report.table() and not report.passed


def test_forces_scaled_by_one_percent_fail(emt_model):
    report = check_model(_scaled(emt_model, forces=1.01), checks=("finite-differences",))
    assert _verdicts(report) == {"forces = -dE/dr": False, "stress = dE/dstrain": True}
    assert report.checks[0].value > 10 * report.checks[0].tolerance  # far beyond the tolerance


def test_energy_that_is_not_invariant_fails(emt_model):
    report = check_model(_field(emt_model), checks=("finite-differences", "invariance"))
    assert _verdicts(report) == {"forces = -dE/dr": True, "stress = dE/dstrain": True,
                                 "rotation invariance": False, "translation invariance": False}


def test_command_line_passes_on_emt(tmp_path, capsys):
    """``jaxpto check-model emt``: the table on stdout, the JSON report, exit code 0."""
    from jaxpto.cli import main

    out = tmp_path / "emt.json"
    assert main(["check-model", "emt", "--out", str(out), "--nve-steps", "20"]) == 0
    data = json.loads(out.read_text())
    assert data["schema"] == "jaxpto.check-model/1" and data["passed"] and len(data["checks"]) == 6
    assert "verdict: PASS (6/6 checks passed)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["check-model", "no-such-model"])
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


@pytest.mark.slow
def test_passes_on_chgnet_float64():
    from bridges.registry import load_model

    model = load_model("chgnet-0.3.0", dtype="float64", device="cpu")
    report = check_model(model, nve_steps=20)
    print("\n" + report.table())
    assert report.passed and report.precision == "float64" and "PbTiO3" in report.structure
