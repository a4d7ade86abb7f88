"""The GPU check kit (benchmarks/gpu_check.sh, gpu_check.py, gpu_wheels.py) without a GPU.

* the ``--cpu`` dry run: the kit's six steps on the CPU at tiny sizes, so that it cannot rot
  before a GPU appears. Its checks must be real: two separately loaded copies of CHGNet 0.3.0 on
  the CPU agree exactly on single cells (the CUDA-vs-CPU check's CPU twin), within float32
  round-off in a batched call and against CHGNet's own calculator, and the negative control (the
  same model x 1.001) fails the check;
* the tolerance check on a JAX-native model's results (fast);
* ``gpu_wheels.rebuild``: a slimmed wheel installs with pip and holds exactly the kept files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_check  # noqa: E402
import gpu_wheels  # noqa: E402

STEPS = ("environment", "agreement", "zero_copy", "memory", "suite", "npt_chunk")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = dict(os.environ, PYTHON=sys.executable, KIT_BUDGET_S="1200")  # no step may be cut for time here
    env.pop("OUT", None)
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--cpu", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    with open(out / "gpu_check.json") as fh:
        result = json.load(fh)
    return proc, result, out


@pytest.mark.slow
def test_dry_run_runs_every_step(dry_run):
    proc, result, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert result["schema"] == "jaxpto.gpu-check/1" and result["mode"] == "cpu-dry-run"
    assert list(result["steps"]) == list(STEPS)
    for name, sec in result["steps"].items():
        assert sec["status"] == "ok", (name, sec.get("error") or sec.get("reason"), sec.get("traceback"))
    v = result["verdict"]
    assert v["all_checks_passed"] and not v["failed"] and not v["skipped_steps"]
    assert (out / "gpu_check.png").stat().st_size > 10_000
    log = (out / "gpu_check.log").read_text()
    assert "verdict: all checks passed: True" in log and "exit status 0" in log
    env = result["steps"]["environment"]
    assert env["jax_backend"] == "cpu" and env["packages"]["chgnet"]["version"]


@pytest.mark.slow
def test_dry_run_agreement_is_a_real_check(dry_run):
    _, result, _ = dry_run
    entry = result["steps"]["agreement"]["models"]["chgnet-0.3.0"]
    cells = entry["cells"]
    assert set(cells) == {"unit", "supercell", "triclinic", "supercell_batch_R2"}
    for name in ("unit", "supercell", "triclinic"):
        c = cells[name]
        # two copies of one model on one device: identical, not merely close
        assert c["vs_cpu"]["dE_per_atom"] == 0 and c["vs_cpu"]["max_dF"] == 0 and c["vs_cpu"]["max_dS"] == 0
        own = c["vs_own_calculator"]  # CHGNet's own pipeline: float32 round-off, not zero
        assert own["passed"] and 0 < own["max_dF"] < gpu_check.TOL["max_dF"]
        assert c["vs_cpu"]["max_abs_F"] > 0.1  # real forces, not a trivially agreeing zero
    batch = cells["supercell_batch_R2"]
    assert batch["replicas"] == 2 and batch["vs_cpu"]["passed"]
    neg = entry["negative_control"]
    assert neg["passed_as_it_must_not"] is False and neg["max_dF"] > gpu_check.TOL["max_dF"]
    checks = result["steps"]["agreement"]["checks"]
    assert checks["chgnet-0.3.0_agrees"]["passed"] and checks["chgnet-0.3.0_negative_control_fails"]["passed"]


@pytest.mark.slow
def test_dry_run_zero_copy_memory_suite_npt(dry_run):
    _, result, _ = dry_run
    zc = result["steps"]["zero_copy"]
    assert zc["mode"] == "buffer_callback" and zc["callbacks"] == zc["steps"]
    assert all(c["passed"] for c in zc["checks"].values())
    first = zc["first_call"]
    assert len(first["inputs"]) == 7 and len(first["outputs"]) == 3
    assert all(a == b for a, b in first["inputs"] + first["outputs"])
    mem = result["steps"]["memory"]["fresh_processes"]
    assert mem["jax_default"]["backend"] == "cpu" and mem["jaxpto_setting"]["preallocate"] == "false"
    suite = result["steps"]["suite"]
    (point,) = suite["points"]
    assert point["model"] == "chgnet-0.3.0" and "error" not in point
    for key in ("bare", "nvt", "npt", "ase"):
        assert point[key]["ms_per_step"] > 0
    assert point["replicas"]["2"]["throughput_over_R1"] > 0
    assert set(suite["targets"]["chgnet-0.3.0@5"]) == set(gpu_check.TARGETS)
    npt = result["steps"]["npt_chunk"]
    assert npt["steps"] == npt["steps_asked"] == 20 and npt["finished"]
    assert [r["status"] for r in npt["replicas"]] == ["ok", "ok"] and npt["speed"]["steps_per_s"] > 0


def test_compare_holds_each_quantity_to_its_tolerance():
    """``compare`` on jaxpto's own evaluation: identical results pass, the negative control's 0.1 %
    fails, each absolute and each relative tolerance alone decides, and NaN never passes."""
    import jax
    from conftest import smooth_lj_model

    from jaxpto.workflows.structures import check_supercell

    atoms = check_supercell()
    model = smooth_lj_model()
    cpu = jax.devices("cpu")[0]
    ref = gpu_check.evaluate(model, [atoms], cpu)
    same = gpu_check.compare(ref, ref, len(atoms))
    assert same["passed"] and same["max_dF"] == 0
    neg = gpu_check.compare(tuple(x * gpu_check.NEGATIVE_CONTROL_SCALE for x in ref), ref, len(atoms))
    assert not neg["passed"] and np.isclose(neg["max_dF"], 1e-3 * neg["max_abs_F"], rtol=1e-3)
    for key, tol in gpu_check.TOL.items():  # each tolerance alone decides
        e, f, s = (x.copy() for x in ref)
        bump = {"dE_per_atom": (e, 2 * tol * len(atoms)), "max_dF": (f, 2 * tol), "max_dS": (s, 2 * tol)}[key]
        bump[0].flat[0] += bump[1]
        d = gpu_check.compare((e, f, s), ref, len(atoms))
        assert not d["passed"] and d[key] > tol
    for key in gpu_check.TOL_REL:  # a difference under the absolute tolerance but large for this model
        # a model with small forces and stresses (as the random MACE): max |F| 0.01 eV/A, max |S| 1e-3 eV/A^3
        small = (ref[0], ref[1] * (0.01 / np.abs(ref[1]).max()), ref[2] * (1e-3 / np.abs(ref[2]).max()))
        e2, f2, s2 = (x.copy() for x in small)
        arr = {"max_dF": f2, "max_dS": s2}[key]
        arr.flat[np.argmax(np.abs(arr))] *= 1.005  # 0.5 % of the largest component
        d = gpu_check.compare((e2, f2, s2), small, len(atoms))
        assert d[key] < gpu_check.TOL[key] and not d["passed"], (key, d)
    nan = (ref[0] * np.nan, ref[1], ref[2])
    assert not gpu_check.compare(nan, ref, len(atoms))["passed"]
    assert ref[1].dtype == np.float64 and ref[1].shape == (1, len(atoms), 3)


def _toy_wheel(path):
    files = {"toy/__init__.py": b"VALUE = 1\n", "toy/weights/big.bin": b"\0" * 5000, "toy/weights/keep.bin": b"k",
             "toy-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: toy\nVersion: 0.1\n",
             "toy-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    rows = [gpu_wheels._record_row(n, d) for n, d in files.items()]
    record = "\n".join(",".join(r) for r in rows) + "\ntoy-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
        z.writestr("toy-0.1.dist-info/RECORD", record)


def test_rebuilt_wheel_installs_with_exactly_the_kept_files(tmp_path):
    src = tmp_path / "toy-0.1-py3-none-any.whl"
    _toy_wheel(src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out, removed = gpu_wheels.rebuild(str(src), str(out_dir), [r"^toy/weights/(?!keep)"])
    assert os.path.basename(out) == "toy-0.1-1slim-py3-none-any.whl" and removed == ["toy/weights/big.bin"]
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        record = z.read("toy-0.1.dist-info/RECORD").decode()
        assert "Build: 1slim" in z.read("toy-0.1.dist-info/WHEEL").decode()
    assert "toy/weights/big.bin" not in names and "big.bin" not in record
    assert {ln.split(",")[0] for ln in record.splitlines()} == names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target),
                    out], check=True, capture_output=True)
    assert (target / "toy" / "weights" / "keep.bin").exists() and not (target / "toy" / "weights" / "big.bin").exists()
    assert (target / "toy" / "__init__.py").read_text() == "VALUE = 1\n"
