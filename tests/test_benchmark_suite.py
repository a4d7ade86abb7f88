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


def test_isolated_points_run_in_their_own_processes(tmp_path, monkeypatch):
    """``--isolate``: the point runs in a child process whose JSON is merged (with its own peak
    memory and wall time); ``--grow`` stops at ``--grow-max-atoms`` (next size, 135 atoms, > 100)."""
    monkeypatch.setenv(suite._PREALLOCATE, "unset below; restored after the test")
    monkeypatch.delenv(suite._PREALLOCATE)
    monkeypatch.setattr(suite, "_parent_set_preallocate", False)
    out = str(tmp_path / "iso.json")
    res = suite.main(["--models", "lj", "--sizes", "2", "--replicas", "1", "--steps", "2", "--repeats", "1",
                      "--isolate", "--grow", "--grow-max-atoms", "100", "--out", out])
    data = json.load(open(out))
    assert data == json.loads(json.dumps(res))
    (p,) = data["points"]
    assert p["n_atoms"] == 40 and "error" not in p, p
    assert p["nvt"]["ms_per_step"] > 0 and p["memory"]["host_peak_rss_mb"] > 0 and p["process_wall_s"] > 0
    assert data["largest_fit"] == {"lj": 40}
    assert data["machine"]["host_allocator"]["reason"] != "not run"  # the child's state, not the parent's
    # The orchestrating parent keeps JAX from reserving a GPU's memory; its children get the user's environment.
    assert suite._parent_set_preallocate and os.environ[suite._PREALLOCATE] == "false"
    assert suite._PREALLOCATE not in suite._child_env()


def test_isolated_point_failures_are_recorded(tmp_path):
    """A point's process that runs out of time or memory is recorded with the reason and the run
    writes its JSON; a process limited to 0.3 GB of address space cannot even import JAX."""
    out = str(tmp_path / "fail.json")
    data = suite.main(["--models", "lj", "--sizes", "2", "--isolate", "--point-timeout", "1", "--out", out])
    (p,) = data["points"]
    assert "stopped after --point-timeout 1 s" in p["error"] and data["largest_fit"] == {}
    assert json.load(open(out))["points"][0]["error"] == p["error"]
    data = suite.main(["--models", "lj", "--sizes", "2", "--isolate", "--memory-limit-gb", "0.3", "--out", out])
    (p,) = data["points"]
    assert p["error"].startswith("exit status") or p["error"].startswith("killed by signal"), p
    # an address-space failure: torch/numpy "cannot allocate memory", or the loader cannot map a library
    assert any(w in p["output_tail"].lower() for w in ("memory", "alloc", "failed to map")), p["output_tail"]


def test_grow_stops_at_the_first_failed_size(tmp_path, monkeypatch):
    """``--grow`` adds sizes of ~2x the atoms after the listed ones while points succeed; the first
    failure ends that model's growth and ``largest_fit`` is the last completed size."""
    assert [suite._grown_sizes(n) for n in (2, 3, 4, 5, 10)] == [3, 4, 6, 7, 13]
    calls = []

    def fake_point(args, name, n, tmpdir):
        calls.append((name, n))
        if n >= 6:
            return None, "killed by signal 9 (SIGKILL, the kernel's OOM killer?)", "Killed", 1.0
        return {"points": [{"model": name, "cells": n, "n_atoms": 5 * n**3}], "skipped": []}, None, "", 1.0

    monkeypatch.setattr(suite, "_run_point_process", fake_point)
    data = suite.main(["--models", "a", "b", "--sizes", "2", "--isolate", "--grow", "--out", str(tmp_path / "g.json")])
    assert calls == [("a", 2), ("a", 3), ("a", 4), ("a", 6), ("b", 2), ("b", 3), ("b", 4), ("b", 6)]
    assert data["largest_fit"] == {"a": 320, "b": 320}
    assert [p.get("error", "") for p in data["points"]][3].startswith("killed by signal 9")
    with pytest.raises(SystemExit):
        suite.main(["--models", "a", "--grow"])  # --grow without --isolate: a clear usage error


def test_step_profile_accounts_for_the_step(tmp_path):
    """benchmarks/step_profile.py runs and splits the LJ step's excess over the bare call into its
    parts (each timed on its own), writing its JSON."""
    import step_profile

    out = tmp_path / "prof.json"
    res = step_profile.main(["--sizes", "2", "--steps", "50", "--repeats", "1", "--out", str(out)])
    (p,) = json.load(open(out))["points"]
    assert p == json.loads(json.dumps(res["points"][0]))
    assert p["n_atoms"] == 40 and all(v > 0 for v in p["ms"].values()), p
    assert 0 < p["rebuilds_per_step"] < 1, p  # the 40-atom LJ fluid moves: some, not every step
    parts = p["excess_parts_ms"]
    assert abs(sum(parts.values()) - p["excess_ms"]) < 1e-9 and parts["rng"] > 0 and parts["nl_build_amortised"] > 0
