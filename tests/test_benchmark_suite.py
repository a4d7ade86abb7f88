"""The benchmark suite runs and writes its JSON (timings are measured there, never asserted here)."""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))

import suite  # noqa: E402


def test_suite_writes_every_path(tmp_path):
    out = str(tmp_path / "suite.json")
    res = suite.main(["--models", "lj", "no-such-model", "--sizes", "2", "--replicas", "1", "2", "4",
                      "--max-total-atoms", "100", "--steps", "2", "--repeats", "1", "--out", out])
    data = json.load(open(out))
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
