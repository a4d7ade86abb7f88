"""MACE through the torch bridge (bridges.mace) equals mace-torch's own ASE calculator.

No MACE weights can be downloaded here, so every test uses a small randomly initialised model of
MACE-MP-0b's architecture (``ScaleShiftMACE``, residual interactions, ZBL pair term, Agnesi
transform, correlation 3; see ``tests/_mace_util.py``), saved to a temporary ``.model`` file as
mace-torch saves its models, and loaded through ``jaxpto.load_model``. The reference is
``mace.calculators.MACECalculator(model_paths=<same file>)`` (matscipy neighbour list on the CPU).

PbTiO3 cells: 5-atom tetragonal, 2x2x2 with random 0.05 A displacements, a strained triclinic
cell. float32 within 1e-5 eV/atom, 1e-4 eV/A, 1e-5 eV/A^3; float64 within 1e-10 / 1e-9 / 1e-10.
Also: R replicas as one batched graph, multi-head models, an NVE run against ASE's VelocityVerlet,
the calculator swap of jaxpto.md, models pickled by older e3nn, and named models offline
(mace-torch's cache; no test touches the network: urllib is replaced by a failing stub).
"""

from __future__ import annotations

import io
import os
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units

import torch  # noqa: E402  (a core dependency)

import mace  # noqa: E402,F401  (installed with --no-deps next to the test extra; see README)

import bridge_harness as h
import jaxpto  # noqa: E402
from bridge_harness import offline, quiet, reference  # noqa: F401  (offline: a fixture)
from bridges import mace as bm  # noqa: E402
from bridges.registry import detect_family  # noqa: E402
from bridges.torch_bridge import edges_from_neighbors  # noqa: E402
from jaxpto import neighbors as nl  # noqa: E402

from _mace_util import build_mace, save_mace  # noqa: E402
from _pbtio3_cells import pbtio3 as pto_cell
from _pbtio3_cells import supercell as pto_supercell
from _pbtio3_cells import triclinic as pto_triclinic

warnings.filterwarnings("ignore", message=".*weights_only.*")
warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")

TOL = {"float32": h.FLOAT32, "float64": h.FLOAT64}  # eV/atom, eV/A, eV/A^3

CELLS = h.CELLS


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mace_models")


@pytest.fixture(scope="module")
def model_path(model_dir):
    """A random MACE-MP-0b-like model (float64 weights, as mace-torch stores its foundation models)."""
    return save_mace(build_mace(seed=1), model_dir / "random_mace.model")


@pytest.fixture(scope="module")
def multihead_path(model_dir):
    return save_mace(build_mace(seed=2, heads=["pbe_mp", "r2scan"]), model_dir / "multihead.model")


_cache: dict = {}


def bridged(path, dtype, **kw):
    key = (str(path), dtype, tuple(sorted(kw.items())))
    if key not in _cache:
        _cache[key] = quiet(jaxpto.load_model, str(path), device="cpu", dtype=dtype, **kw)
    return _cache[key]


def calculator(path, dtype, **kw):
    from mace.calculators import MACECalculator

    key = ("calc", str(path), dtype, tuple(sorted(kw.items())))
    if key not in _cache:
        _cache[key] = quiet(MACECalculator, model_paths=str(path), device="cpu", default_dtype=dtype, **kw)
    return _cache[key]


bridge_eval = h.evaluate


# ----------------------------------------------------------------------------- agreement


def test_family_detected_and_model_attributes(model_path, tmp_path):
    assert detect_family(model_path) == "mace" and bm.looks_like(model_path)
    # Not MACE files: a text file, a zip of something else, a torch-saved dict (training checkpoint).
    txt = tmp_path / "notes.model"
    txt.write_text("mace.modules.models is mentioned here, but this is not a zip")
    torch.save({"model": torch.load(model_path, weights_only=False).state_dict()}, tmp_path / "ckpt.pt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "linear.model")
    assert not bm.looks_like(tmp_path / "ckpt.pt") and not bm.looks_like(tmp_path / "linear.model")
    assert not bm.looks_like(tmp_path / "missing.model")
    assert detect_family(tmp_path / "ckpt.pt") is None
    with pytest.raises(TypeError, match="training checkpoint"):
        jaxpto.load_model(str(tmp_path / "ckpt.pt"), family="mace", device="cpu")
    with pytest.raises(TypeError, match="energy models"):
        jaxpto.load_model(str(tmp_path / "linear.model"), family="mace", device="cpu")

    model = quiet(jaxpto.load_model, model_path, family="mace", device="cpu")  # default dtype: float32
    assert model.cutoff == 5.0 and model.elements == frozenset({8, 22, 82})
    assert model.name == "mace:random_mace.model"
    assert model.compute.efs.dtype == torch.float32 and model.compute.efs.head == "Default"
    _cache[(str(model_path), "float32", ())] = model  # the later tests use it (loading takes seconds)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_matches_mace_calculator(model_path, dtype, cell):
    atoms = CELLS[cell]()
    model = bridged(model_path, dtype)
    assert model.compute.efs.dtype == getattr(torch, dtype)
    ref = reference(calculator(model_path, dtype), atoms)
    h.assert_agrees(bridge_eval(model, [atoms]), ref, TOL[dtype], len(atoms), f"{dtype} {cell}")
    # the comparison is not between zeros: realistic forces and stresses
    assert np.abs(ref[1]).max() > 0.1


def test_float32_close_to_float64(model_path):
    atoms = pto_supercell(4)
    e32, f32, s32 = bridge_eval(bridged(model_path, "float32"), [atoms])
    e64, f64, s64 = bridge_eval(bridged(model_path, "float64"), [atoms])
    assert abs(e32[0] - e64[0]) / len(atoms) < 1e-5
    assert np.abs(f32 - f64).max() < 1e-4 and np.abs(s32 - s64).max() < 1e-5


def test_batched_replicas_equal_single_calls(model_path):
    """Three structures with different cells as one batched graph, one torch call."""
    model = bridged(model_path, "float64")
    rattled = pto_cell()
    rattled.positions += np.random.default_rng(7).normal(0, 0.05, rattled.positions.shape)
    strained = pto_cell()
    strained.set_cell(np.asarray(strained.cell) @ (np.eye(3) + [[0.03, 0.01, 0.0], [0.0, -0.02, 0.02],
                                                                  [0.01, 0.0, 0.01]]), scale_atoms=True)
    h.assert_batched_equals_single(lambda s: bridge_eval(model, s), [pto_cell(), strained, rattled],
                                   h.Tolerance(1e-12, 1e-11, 1e-12), counter=model.compute, distinct_digits=6,
                                   rtol=1e-7)


def test_edges_beyond_r_max_and_masked_slots_are_dropped(model_path):
    """A list with pairs up to cutoff + 2 A (and padding): same result as a tight list. The bridge
    (edges_from_neighbors) cuts it at r_max before MACE's graph is built."""
    model = bridged(model_path, "float64")
    efs = model.compute.efs
    atoms = pto_triclinic()
    pos = jnp.asarray(atoms.positions)[None]
    cell = jnp.asarray(np.asarray(atoms.cell))[None]
    numbers = jnp.asarray(atoms.numbers)
    outs = []
    for cutoff in (efs.cutoff, efs.cutoff + 2.0):
        nbrs = nl.allocate(pos, cell, cutoff, skin=0.5)
        n_real = int(np.asarray(nl.as_pairs(nbrs)[3]).sum())
        args = [torch.from_numpy(np.array(x)) for x in (pos, cell, atoms.numbers,
                                                         *edges_from_neighbors(pos, cell, nbrs, efs.cutoff))]
        args[2], args[3], args[4] = args[2].long(), args[3].long(), args[4].long()
        g = efs.graph(*args)
        assert g["edge_index"].shape[1] < n_real  # some listed pairs lie beyond r_max
        out = jax.jit(model.compute)(pos, cell, numbers, nbrs)
        outs.append([torch.from_numpy(np.array(x)) for x in (out.energy, out.forces, out.stress)])
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- heads


def test_multihead_heads(multihead_path):
    atoms = pto_triclinic()
    energies = {}
    for head in ("pbe_mp", "r2scan"):
        model = bridged(multihead_path, "float64", head=head)
        assert model.name == f"mace:multihead.model[{head}]"
        e, f, s = bridge_eval(model, [atoms])
        e_ref, f_ref, s_ref = reference(calculator(multihead_path, "float64", head=head), atoms)
        assert abs(e[0] - e_ref) / len(atoms) < 1e-10
        assert np.abs(f[0] - f_ref).max() < 1e-9 and np.abs(s[0] - s_ref).max() < 1e-10
        energies[head] = e[0]
    assert abs(energies["pbe_mp"] - energies["r2scan"]) > 0.1
    module = bridged(multihead_path, "float64", head="r2scan").compute.efs.model
    assert bm.MACEEFS(module, head="R2SCAN").head == "r2scan"  # case insensitive
    with pytest.raises(ValueError, match="multi-head.*pbe_mp"):
        bm.MACEEFS(module)  # no head named "default"
    with pytest.raises(ValueError, match="unknown head 'hse'"):
        quiet(jaxpto.load_model, multihead_path, device="cpu", head="hse")


# ----------------------------------------------------------------------------- errors


def test_uncovered_element_fails_before_any_step(model_path):
    atoms = pto_cell()
    atoms.numbers[0] = 84  # Po: not in the model
    h.assert_refuses_element(bridged(model_path, "float32"), atoms, engine_match="Po", efs_match=r"Po \(84\)",
                             calculator_too=True)


def test_bad_arguments(model_path):
    with pytest.raises(ValueError, match="float32 or float64"):
        bm.load(model_path, dtype="float16")
    with pytest.raises(ValueError, match="unknown MACE model"):
        bm.load("mace-mp-9")
    with pytest.raises(ValueError) as err:  # unknown names list the known ones
        jaxpto.load_model("mace-mp-9")
    assert "mace-mp-0b-medium" in str(err.value) and "7net-0" in str(err.value)


# ----------------------------------------------------------------------------- named models, offline


def test_named_model_offline_fails_fast_with_clear_message(offline):
    from mace.calculators.foundations_models import mace_mp_urls

    url = mace_mp_urls["medium-0b"]
    msg = h.assert_fails_fast(lambda: jaxpto.load_model("mace-mp-0b-medium", device="cpu"), RuntimeError)
    assert url in msg and "network disabled" in msg
    assert bm.mace_cache_path("mace-mp-0b-medium") in msg and "load_model('/path/to/mace_agnesi_medium.model')" in msg
    assert offline == [url]  # one probe, nothing else
    assert not os.path.exists(bm.mace_cache_path("mace-mp-0b-medium"))


def test_named_model_from_mace_cache(offline, model_path):
    """A cached file is found where mace-torch's own download function looks (no network needed)."""
    from mace.calculators.foundations_models import download_mace_mp_checkpoint

    cached = bm.mace_cache_path("mace-mp-0b-medium")
    assert cached.startswith(os.environ["XDG_CACHE_HOME"])
    os.makedirs(os.path.dirname(cached))
    shutil.copy(model_path, cached)
    assert quiet(download_mace_mp_checkpoint, "medium-0b") == cached  # mace's own cache lookup agrees
    model = quiet(jaxpto.load_model, "MACE-MP-0b-Medium", device="cpu", dtype="float64")
    assert model.name == "mace-mp-0b-medium" and offline == []
    atoms = pto_triclinic()
    e, f, _ = bridge_eval(model, [atoms])
    e_ref, f_ref, _ = bridge_eval(bridged(model_path, "float64"), [atoms])
    assert e[0] == e_ref[0] and np.array_equal(f, f_ref)


# ----------------------------------------------------------------------------- e3nn < 0.5.5 pickles


def _legacy_getstate(self):
    """``CodeGenMixin.__getstate__`` as e3nn < 0.5.5 wrote it: compiled sub-modules as bare TorchScript bytes."""
    from e3nn.util.codegen import CodeGenMixin

    out = super(CodeGenMixin, self).__getstate__().copy()
    out["_modules"] = out["_modules"].copy()
    state = {}
    for fname in getattr(self, "__codegen__", []):
        smod = getattr(self, fname)
        if not isinstance(smod, torch.jit.ScriptModule):
            smod = torch.jit.script(smod)
        buf = io.BytesIO()
        torch.jit.save(smod, buf)
        state[fname] = buf.getvalue()
        del out["_modules"][fname]
    out["__codegen__"] = state
    return out


def test_model_pickled_by_old_e3nn_is_rebuilt(monkeypatch, model_dir, model_path):
    """A file in e3nn 0.4.4's pickle layout (what MACE-MP foundation models are) loads and computes the same."""
    from e3nn.util.codegen import CodeGenMixin

    legacy = model_dir / "legacy_e3nn.model"
    with monkeypatch.context() as m:
        m.setattr(CodeGenMixin, "__getstate__", _legacy_getstate)
        torch.save(torch.load(model_path, weights_only=False), legacy)
    with pytest.raises(ValueError, match="too many values to unpack"):  # what plain torch.load does
        torch.load(legacy, weights_only=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = jaxpto.load_model(str(legacy), device="cpu", dtype="float64")
    assert any("rebuilt the MACE model" in str(w.message) for w in caught)
    atoms = pto_supercell(2)
    e, f, s = bridge_eval(model, [atoms])
    e_ref, f_ref, s_ref = reference(calculator(model_path, "float64"), atoms)
    assert abs(e[0] - e_ref) / len(atoms) < 1e-10
    assert np.abs(f[0] - f_ref).max() < 1e-9 and np.abs(s[0] - s_ref).max() < 1e-10


# ----------------------------------------------------------------------------- dynamics


def test_calculator_swapped_for_bridge(model_path):
    """``atoms.calc = MACECalculator(...)`` + jaxpto.md: the bridge runs on the calculator's own model."""
    calc = calculator(model_path, "float32")
    dyn, atoms, ase_positions = h.calculator_swap(calc, h.pto10, 10)
    efs = dyn._model_obj.compute.efs
    assert isinstance(efs, bm.MACEEFS) and efs.model is calc.models[0] and efs.dtype == torch.float32
    assert np.abs(atoms.positions - ase_positions).max() <= 1e-4
    # Calculators the bridge does not reproduce are left to the callback path.
    assert bm.efs_from_calculator(object()) is None


@pytest.mark.slow
def test_nve_energy_conservation_vs_ase(model_path):
    run = h.nve_against_ase(bridged(model_path, "float64"), calculator(model_path, "float64"), h.pto10(), 50,
                            1.0 * units.fs, dtype=jnp.float64)
    run.report("10-atom PbTiO3, random MACE float64, 1 fs")
    assert run.steps_done == 50
    assert abs(run.jax_energy[0] - run.ase_energy[0]) < 1e-9  # same start
    assert run.drift("jax") <= 1.5 * run.drift("ase") + 1e-8
    assert np.abs(run.jax_positions - run.ase_positions).max() < 1e-8  # same trajectory
