"""What jaxpto.md writes into ``atoms.calc.results`` (and so into trajectory frames) has the dtypes
and shapes the calculator itself stores (issue #18): CHGNet keeps float32 forces and a 3x3 stress,
EMT float64 forces and a Voigt 6-vector. Reference: ASE's own VelocityVerlet running the same
calculator and writing the same trajectory. (Extra results such as EMT's per-atom energies and
CHGNet's magmoms: tests/test_extra_results.py.)
"""

import contextlib
import io
import warnings

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read
from ase.md.verlet import VelocityVerlet as AseVelocityVerlet

import bridge_harness as h
import jaxpto.md as jmd

KEYS = ("energy", "free_energy", "forces", "stress")


def _frames(cls, atoms, calc, path, steps):
    atoms = atoms.copy()
    atoms.calc = calc
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        dyn = cls(atoms, 1 * units.fs, trajectory=str(path))
        dyn.run(steps)
        dyn.close()
    return read(path, ":"), dict(atoms.calc.results)


def _compare(ase_run, jax_run, e_tol, f_tol, s_tol):
    """The trajectory frames, and ``atoms.calc.results`` after the run (dtypes: the frames are read
    back as float64 by ASE's reader whatever was written, so the dtypes are checked in memory)."""
    (ase_frames, ase_results), (jax_frames, jax_results) = ase_run, jax_run
    assert len(jax_frames) == len(ase_frames)
    for ra, rj in [(fa.calc.results, fj.calc.results) for fa, fj in zip(ase_frames, jax_frames)] + [
            (ase_results, jax_results)]:
        for key in KEYS:
            assert (key in rj) == (key in ra), key
            if key not in ra:
                continue
            va, vj = np.asarray(ra[key]), np.asarray(rj[key])
            assert vj.dtype == va.dtype and vj.shape == va.shape, (key, vj.dtype, vj.shape, va.dtype, va.shape)
            tol = {"energy": e_tol, "free_energy": e_tol, "forces": f_tol, "stress": s_tol}[key]
            assert np.abs(vj.astype(float) - va.astype(float)).max() <= tol, key


def test_emt_results_written_as_ase_writes_them(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=2)
    ase = _frames(AseVelocityVerlet, atoms, EMT(), tmp_path / "ase.traj", 3)
    jax = _frames(jmd.VelocityVerlet, atoms, EMT(), tmp_path / "jax.traj", 3)
    assert np.asarray(ase[1]["stress"]).shape == (6,)  # the reference: a Voigt 6-vector
    _compare(ase, jax, 1e-8, 1e-8, 1e-9)


def test_chgnet_results_written_as_ase_writes_them(tmp_path):
    pytest.importorskip("chgnet")
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        calc = CHGNetCalculator(CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False), use_device="cpu")
    atoms = h.pto10()
    ase = _frames(AseVelocityVerlet, atoms, calc, tmp_path / "ase.traj", 2)
    jax = _frames(jmd.VelocityVerlet, atoms, calc, tmp_path / "jax.traj", 2)
    ref = ase[1]
    assert np.asarray(ref["forces"]).dtype == np.float32 and np.shape(ref["stress"]) == (3, 3)  # CHGNet's own
    # float32 models: the two runs agree to float32 round-off over 2 steps
    _compare(ase, jax, 1e-3, 1e-3, 1e-4)
