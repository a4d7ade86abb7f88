"""The benchmark suite runs and writes its JSON (timings are measured there, never asserted here)."""

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))
sys.path.insert(0, HERE)

import suite  # noqa: E402


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    """One small suite run (``lj`` at 40 atoms) shared by the tests below: (returned, written, path)."""
    out = str(tmp_path_factory.mktemp("suite") / "suite.json")
    res = suite.main(["--models", "lj", "no-such-model", "--sizes", "2", "--replicas", "1", "2", "4",
                      "--max-total-atoms", "100", "--steps", "2", "--repeats", "1", "--out", out])
    return res, json.load(open(out)), out


def test_suite_writes_every_path(suite_run):
    res, data, out = suite_run
    assert data == json.loads(json.dumps(res))
    (p,) = data["points"]
    assert p["model"] == "lj" and p["n_atoms"] == 40 and "error" not in p, p
    for key in ("bare", "nvt", "npt", "ase"):
        assert p[key]["ms_per_step"] > 0 and p[key]["us_per_atom_step"] > 0
    assert p["jaxpto_over_bare"] > 0 and p["ase_over_jaxpto"] > 0
    assert "2" in p["replicas"] and "4" not in p["replicas"]  # 4 x 40 > 100 atoms: skipped and listed
    assert any(s.get("replicas") == 4 for s in data["skipped"])
    assert any(s.get("model") == "no-such-model" for s in data["skipped"])
    assert "torchsim_skipped" in p or "torchsim" in p or "torchsim_failed" in p
    assert os.path.getsize(out.replace(".json", ".png")) > 0


def test_torchsim_same_model_and_timed(tmp_path, suite_run):
    """TorchSim's side of the suite runs the same model as jaxpto's (energy and forces equal at
    float32 round-off on a 40-atom PbTiO3 cell: ASE's smooth LJ and a small random MACE through
    TorchSim's MaceModel wrapper), the check can tell a different model, and the suite records a
    timed TorchSim point."""
    pytest.importorskip("torch_sim")
    import torch

    import jaxpto
    from bridges.registry import family_module
    from bridges.torch_bridge import as_jax_model

    from _mace_util import build_mace, save_mace

    atoms = suite._atoms(2)
    assert len(atoms) == 40

    lj = jaxpto.load_model("lj", **suite.LJ_PARAMS)
    ts_lj = suite.torchsim_model("lj", None)
    a = suite.torchsim_agreement(ts_lj, lj, atoms)
    assert a["max_abs_F"] > 0.1, a  # real forces, not a trivial match
    assert a["dE_per_atom"] < 1e-5 and a["max_dF"] < 1e-4, a
    # ... and the check sees the difference between the smooth and the shifted LJ
    shifted = jaxpto.load_model("lj", **{**suite.LJ_PARAMS, "smooth": False})
    b = suite.torchsim_agreement(ts_lj, shifted, atoms)
    assert b["dE_per_atom"] > 1e-3 and b["max_dF"] > 1e-3, b

    efs = family_module("mace").load(save_mace(build_mace(dtype=torch.float32), tmp_path / "small.model"))
    mace = as_jax_model(efs, device=str(efs.device))
    ts_mace = suite.torchsim_model("mace-small-random", efs)
    assert ts_mace.model is efs.model  # the very same network object
    a = suite.torchsim_agreement(ts_mace, mace, atoms)
    assert a["max_abs_F"] > 0.1, a
    assert a["dE_per_atom"] < 1e-6 * abs(a["E_jaxpto"]) / len(atoms) + 1e-5, a
    assert a["max_dF"] < 2e-5 * a["max_abs_F"] + 1e-4, a

    (p,) = suite_run[1]["points"]
    assert p["model"] == "lj" and p["n_atoms"] == 40
    assert "error" not in p and "torchsim_failed" not in p and "torchsim_skipped" not in p, p
    assert p["torchsim_agreement"]["same_model"], p["torchsim_agreement"]
    assert p["torchsim"]["ms_per_step"] > 0 and p["torchsim_over_jaxpto"] > 0
