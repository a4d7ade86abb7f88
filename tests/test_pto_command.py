"""The PTO-test command end to end on the real offline CHGNet 0.3.0, tiny protocol.

Checks the results.json schema, figures and report, that a second run skips every finished part,
and the command-line front end (bad input, sub-commands).
"""

import dataclasses
import json
import os

import numpy as np
import pytest

from jaxpto.cli import main
from jaxpto.workflows.pto_test import SCHEMA, quick_protocol, run_pto_test


def _tiny():
    q = quick_protocol()
    kw = dict(temperatures_k=(300.0, 900.0), supercell=2, steps=20, chunk_steps=10, record_every=5,
              average_last_ps=0.02)
    return dataclasses.replace(q, npt=dataclasses.replace(q.npt, **kw), nvt=dataclasses.replace(q.nvt, **kw),
                               ase_steps=2, phonon_npoints=11, fmax=1e-2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pto"))
    logs = []
    data = run_pto_test(["chgnet-0.3.0"], out, _tiny(), progress=False, dtype=np.float32, log=logs.append)
    return out, data, logs


def test_results_schema_and_outputs(tiny_run):
    out, data, _ = tiny_run
    with open(os.path.join(out, "results.json")) as fh:
        res = json.load(fh)
    assert res["schema"] == SCHEMA
    assert res["versions"]["chgnet"] and res["device"]["jax_backend"] == "cpu"
    assert res["protocol"]["npt"]["ttime_fs"] == 25.0
    (m,) = res["models"]
    assert m["model"] == "chgnet-0.3.0"
    s = m["static"]
    for key in ("a", "c", "c_over_a", "volume", "delta_e_ev_per_fu"):
        assert np.isfinite(s[key]), key
    assert s["c"] > s["a"] and s["delta_e_ev_per_fu"] < 0  # CHGNet 0.3.0: polar tetragonal ground state
    assert abs(s["volume"] - s["a"] ** 2 * s["c"]) < 1e-6 * s["volume"]
    ph = m["phonons"]
    assert isinstance(ph["has_imaginary"], bool) and np.isfinite(ph["min_frequency_thz"])
    assert [r["temperature_k"] for r in m["npt"]] == [300.0, 900.0]
    for r in m["npt"]:
        assert r["status"] == "ok"
        assert r["a"] <= r["b"] <= r["c"] and r["phase"] in ("tetragonal", "cubic", "supertetragonal")
        assert 3.5 < r["a"] < 4.5 and r["a_std"] >= 0
    for r in m["nvt"]:
        assert r["status"] == "ok" and np.isfinite(r["pz"]) and r["pz_std"] >= 0
    # after 40 fs the 300 K replica is still strongly polar (the start has |P_z| = 0.81 C/m^2)
    assert abs(m["nvt"][0]["pz"]) > 0.4
    assert "nvt_tc_k" in m and "npt_tc_k" in m
    sp = m["speed"]
    assert sp["ase_comparison"]["ase_s_per_step"] > 0 and sp["ase_comparison"]["jaxpto_s_per_step"] > 0
    assert sp["ase_comparison"]["ase_calculator"] == "CHGNetCalculator"
    for f in ("report.md", "static.png", "phonons.png", "npt_lattice.png", "nvt_polarization.png",
              "chgnet-0.3.0/npt_series.npz", "chgnet-0.3.0/nvt_final.extxyz"):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    report = open(os.path.join(out, "report.md")).read()
    assert "**chgnet-0.3.0**" in report and "npt_lattice.png" in report


def test_second_run_skips_finished_parts(tiny_run):
    out, data, _ = tiny_run
    before = json.load(open(os.path.join(out, "results.json")))
    logs = []
    run_pto_test(["chgnet-0.3.0"], out, _tiny(), progress=False, dtype=np.float32, log=logs.append)
    assert sum("already done" in line for line in logs) == 5, logs
    after = json.load(open(os.path.join(out, "results.json")))
    assert after["models"] == before["models"]


def test_cli_rejects_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["pto-test", "--out", str(tmp_path), "--parts", "static,bogus"])
    assert "unknown part" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["npt-sweep", "--out", str(tmp_path), "--temperatures", "300,abc"])
    with pytest.raises(SystemExit):
        main(["npt-sweep", "--out", str(tmp_path), "--steps", "15", "--record-every", "10"])
    with pytest.raises(ValueError, match="unknown model"):
        main(["relax", "--out", str(tmp_path), "--model", "no-such-model"])


def test_cli_sub_command_writes_its_part(tmp_path):
    out = str(tmp_path / "lj")
    rc = main(["nvt-polarization", "--model", "lj", "--out", out, "--supercell", "2", "--temperatures", "300",
               "--steps", "10", "--chunk-steps", "10", "--record-every", "5", "--average-last-ps", "0.01",
               "--no-progress", "--dtype", "float64"])
    assert rc == 0
    res = json.load(open(os.path.join(out, "results.json")))
    (m,) = res["models"]
    assert set(m["parts"]) == {"nvt"} and len(m["nvt"]) == 1 and "static" not in m


def test_report_overlays_several_models(tiny_run, tmp_path):
    """Two models in one results file: side-by-side rows and one figure with both."""
    import copy

    from jaxpto.workflows.report import write_report

    out, data, _ = tiny_run
    two = copy.deepcopy(json.load(open(os.path.join(out, "results.json"))))
    other = copy.deepcopy(two["models"][0])
    other["model"] = "second-model"
    two["models"].append(other)
    path = write_report(str(tmp_path), two)
    text = open(path).read()
    assert "**chgnet-0.3.0**" in text and "**second-model**" in text
    assert text.count("| second-model | 300 |") == 2  # one NPT row and one NVT row at 300 K
    for f in ("static.png", "phonons.png", "npt_lattice.png", "nvt_polarization.png"):
        assert os.path.getsize(tmp_path / f) > 0


def test_killed_command_resumes_to_the_uninterrupted_result(tmp_path):
    """Kill `jaxpto npt-sweep` after its first checkpoint, run the same command again: the result
    equals an uninterrupted run's."""
    import signal
    import subprocess
    import sys
    import time

    args = ["npt-sweep", "--model", "lj", "--supercell", "2", "--temperatures", "300,600", "--steps", "300",
            "--chunk-steps", "10", "--record-every", "5", "--average-last-ps", "0.2", "--no-progress",
            "--dtype", "float64"]
    cmd = [sys.executable, "-c", "import sys; from jaxpto.cli import main; sys.exit(main(sys.argv[1:]))"]
    full = str(tmp_path / "full")
    subprocess.run(cmd + args + ["--out", full], check=True, capture_output=True, timeout=600)
    cut = str(tmp_path / "cut")
    proc = subprocess.Popen(cmd + args + ["--out", cut], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = os.path.join(cut, "checkpoints", "lj-npt.checkpoint.npz")
    t0 = time.time()
    while not os.path.exists(ckpt) and time.time() - t0 < 300 and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(ckpt), "no checkpoint was written before the kill"
    from jaxpto.workflows.checkpoint import read_header

    assert read_header(ckpt)["done_steps"] < 300, "the run finished before it was killed"
    assert not os.path.exists(os.path.join(cut, "results.json")) or \
        "npt" not in json.load(open(os.path.join(cut, "results.json")))["models"][0]
    subprocess.run(cmd + args + ["--out", cut], check=True, capture_output=True, timeout=600)
    a = np.load(os.path.join(full, "lj", "npt_series.npz"))
    b = np.load(os.path.join(cut, "lj", "npt_series.npz"))
    for key in ("lattice", "temperature", "polarization", "site_rms"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    ra = json.load(open(os.path.join(full, "results.json")))["models"][0]["npt"]
    rb = json.load(open(os.path.join(cut, "results.json")))["models"][0]["npt"]
    assert ra == rb
