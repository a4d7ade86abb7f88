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

import contextlib
import io
import os
import shutil
import time
import urllib.error
import urllib.request
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units

import torch  # noqa: E402  (a core dependency)

import mace  # noqa: E402,F401  (installed with --no-deps next to the test extra; see README)

import jaxpto  # noqa: E402
from bridges import mace as bm  # noqa: E402
from bridges.registry import detect_family  # noqa: E402
from jaxpto import neighbors as nl  # noqa: E402

from _mace_util import build_mace, save_mace  # noqa: E402
from _pbtio3_cells import pbtio3 as pto_cell
from _pbtio3_cells import supercell as pto_supercell
from _pbtio3_cells import triclinic as pto_triclinic

warnings.filterwarnings("ignore", message=".*weights_only.*")
warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")

TOL = {"float32": (1e-5, 1e-4, 1e-5), "float64": (1e-10, 1e-9, 1e-10)}  # eV/atom, eV/A, eV/A^3


CELLS = {"5-atom": pto_cell, "2x2x2-rattled": pto_supercell, "triclinic": pto_triclinic}


def quiet(fn, *a, **kw):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


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


def bridge_eval(model, atoms_list, jdtype=jnp.float64):
    pos = jnp.asarray(np.stack([a.positions for a in atoms_list]), jdtype)
    cell = jnp.asarray(np.stack([np.asarray(a.cell) for a in atoms_list]), jdtype)
    nbrs = nl.allocate(pos, cell, model.cutoff, skin=1.0)
    out = jax.jit(model.compute)(pos, cell, jnp.asarray(atoms_list[0].numbers), nbrs)
    return np.asarray(out.energy, float), np.asarray(out.forces, float), np.asarray(out.stress, float)


def reference(calc, atoms):
    at = atoms.copy()
    at.calc = calc
    return at.get_potential_energy(), at.get_forces(), at.get_stress(voigt=False)


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
    e, f, s = bridge_eval(model, [atoms])
    e_ref, f_ref, s_ref = reference(calculator(model_path, dtype), atoms)
    n = len(atoms)
    de, df, ds = abs(e[0] - e_ref) / n, np.abs(f[0] - f_ref).max(), np.abs(s[0] - s_ref).max()
    print(f"\n{dtype} {cell}: |dE|/atom={de:.2e} eV  max|dF|={df:.2e} eV/A  max|dS|={ds:.2e} eV/A^3")
    e_tol, f_tol, s_tol = TOL[dtype]
    assert de < e_tol and df < f_tol and ds < s_tol
    # the comparison is not between zeros: realistic forces and stresses
    assert np.abs(f_ref).max() > 0.1 and np.abs(s_ref).max() > 1e-3


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
    structs = [pto_cell(), strained, rattled]
    bridge = model.compute
    n0 = bridge.n_calls
    e, f, s = bridge_eval(model, structs)
    assert bridge.n_calls == n0 + 1  # one torch call for R = 3
    for r, at in enumerate(structs):
        e1, f1, s1 = bridge_eval(model, [at])
        assert abs(e[r] - e1[0]) / len(at) < 1e-12
        np.testing.assert_allclose(f[r], f1[0], atol=1e-11)
        np.testing.assert_allclose(s[r], s1[0], atol=1e-12)
    assert len({round(float(x), 6) for x in e}) == 3  # the replicas really differ


def test_edges_beyond_r_max_and_masked_slots_are_dropped(model_path):
    """The EFS gets a list with pairs up to cutoff + 2 A (and padding): same result as a tight list."""
    efs = bridged(model_path, "float64").compute.efs
    atoms = pto_triclinic()
    pos = np.asarray(atoms.positions)[None]
    cell = np.asarray(atoms.cell)[None]
    outs = []
    for cutoff in (efs.cutoff, efs.cutoff + 2.0):
        i, j, shifts, mask = nl.as_pairs(nl.allocate(pos, cell, cutoff, skin=0.5))
        args = [torch.from_numpy(np.array(x)) for x in (pos, cell, atoms.numbers, i, j, shifts, mask)]
        args[2], args[3], args[4] = args[2].long(), args[3].long(), args[4].long()
        args[5] = args[5].to(torch.float64)
        outs.append(efs(*args))
        n_real = int(np.asarray(mask).sum())
        g = efs.graph(*args)
        assert g["edge_index"].shape[1] < n_real  # some listed pairs lie beyond r_max
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
    from jaxpto.simulate import state_from_atoms

    model = bridged(model_path, "float32")
    atoms = pto_cell()
    atoms.numbers[0] = 84  # Po: not in the model
    calls = model.compute.n_calls
    with pytest.raises(ValueError, match="Po"):
        state_from_atoms(atoms, model, dtype=jnp.float32)
    with pytest.raises(ValueError, match="Po"):
        atoms.calc = jaxpto.JaxptoCalculator(model, dtype=jnp.float32)
        atoms.get_potential_energy()
    assert model.compute.n_calls == calls  # refused before torch ever ran
    efs = model.compute.efs  # the EFS refuses it too when called directly
    with pytest.raises(ValueError, match=r"Po \(84\)"):
        no_edge = torch.zeros(1, 0, dtype=torch.int64)
        efs(torch.zeros(1, 5, 3), torch.eye(3)[None] * 4, torch.tensor(atoms.numbers), no_edge, no_edge,
            torch.zeros(1, 0, 3), torch.zeros(1, 0, dtype=torch.bool))


def test_bad_arguments(model_path):
    with pytest.raises(ValueError, match="float32 or float64"):
        bm.load(model_path, dtype="float16")
    with pytest.raises(ValueError, match="unknown MACE model"):
        bm.load("mace-mp-9")
    with pytest.raises(ValueError) as err:  # unknown names list the known ones
        jaxpto.load_model("mace-mp-9")
    assert "mace-mp-0b-medium" in str(err.value) and "7net-0" in str(err.value)


# ----------------------------------------------------------------------------- named models, offline


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """A private, empty mace cache and no network: every urlopen fails at once."""
    attempts = []

    def no_network(req, *a, **kw):
        attempts.append(getattr(req, "full_url", req))
        raise urllib.error.URLError("network disabled in this test")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return attempts


def test_named_model_offline_fails_fast_with_clear_message(offline):
    from mace.calculators.foundations_models import mace_mp_urls

    url = mace_mp_urls["medium-0b"]
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError) as err:
        jaxpto.load_model("mace-mp-0b-medium", device="cpu")
    elapsed = time.perf_counter() - t0
    msg = str(err.value)
    assert elapsed < 5.0, elapsed
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


def _pto10():
    atoms = pto_cell().repeat((2, 1, 1))
    atoms.rattle(0.02, seed=3)
    sigma = np.sqrt(units.kB * 300 * atoms.get_masses())[:, None]
    atoms.set_momenta(sigma * np.random.default_rng(7).normal(size=(len(atoms), 3)))
    return atoms


def test_calculator_swapped_for_bridge(model_path):
    """``atoms.calc = MACECalculator(...)`` + jaxpto.md: the bridge runs on the calculator's own model."""
    from ase.md.verlet import VelocityVerlet as AseVV

    from jaxpto.md import VelocityVerlet

    calc = calculator(model_path, "float32")
    ref = _pto10()
    ref.calc = calc
    AseVV(ref, timestep=1.0 * units.fs).run(10)

    atoms = _pto10()
    atoms.calc = calc
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
        dyn.run(10)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "callback" in m], messages
    assert dyn.force_kind == "bridge"
    efs = dyn._model_obj.compute.efs
    assert isinstance(efs, bm.MACEEFS) and efs.model is calc.models[0] and efs.dtype == torch.float32
    assert np.abs(atoms.positions - ref.positions).max() <= 1e-4
    # Calculators the bridge does not reproduce are left to the callback path.
    assert bm.efs_from_calculator(object()) is None


@pytest.mark.slow
def test_nve_energy_conservation_vs_ase(model_path):
    from ase.md.verlet import VelocityVerlet as AseVV

    from jaxpto.integrators import velocity_verlet
    from jaxpto.simulate import run, state_from_atoms

    n_steps, dt = 50, 1.0 * units.fs
    atoms = _pto10()
    calc = calculator(model_path, "float64")

    ase_atoms = atoms.copy()
    ase_atoms.calc = calc
    etot = []
    dyn = AseVV(ase_atoms, dt)
    dyn.attach(lambda: etot.append(ase_atoms.get_total_energy()), interval=1)
    dyn.run(n_steps)
    etot = np.asarray(etot)
    assert etot.shape == (n_steps + 1,)  # the start and every step
    drift_ase = np.abs(etot - etot[0]).max()

    model = bridged(model_path, "float64")
    state, force_fn = state_from_atoms(atoms, model, dtype=jnp.float64)
    integ = velocity_verlet(force_fn, dt)
    state = integ.init(state)

    def total(s):
        return s.energy + 0.5 * jnp.sum(s.momenta ** 2 / s.masses[None, :, None], axis=(1, 2))

    e0 = float(total(state)[0])
    state, rec = run(integ, state, n_steps, record_fn=total, record_every=1)
    rec = np.concatenate([[e0], np.asarray(rec)[:, 0]])
    drift_jax = np.abs(rec - rec[0]).max()
    print(f"\nNVE 10-atom PbTiO3, {n_steps} x 1 fs: max|Etot-Etot0| jaxpto {drift_jax:.2e} eV, ASE {drift_ase:.2e} eV")
    assert np.all(np.isfinite(rec)) and int(state.step) == n_steps
    assert abs(rec[0] - etot[0]) < 1e-9  # same start
    assert drift_jax <= 1.5 * drift_ase + 1e-8
    assert np.abs(np.asarray(state.positions[0]) - ase_atoms.positions).max() < 1e-8  # same trajectory
