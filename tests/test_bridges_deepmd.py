"""DeePMD-kit (PyTorch backend) through the torch bridge equals DeePMD's own ASE calculator.

No DeePMD weights ship with deepmd-kit, so the models are small randomly initialised DPA-1
(``se_atten``, the descriptor of UniPero) networks built from a config dict with DeePMD's own
argument normaliser and model factory (``deepmd.utils.argcheck.model_args``,
``deepmd.pt.model.model.get_model``), saved as DeePMD saves them and loaded back through
``jaxpto.load_model(path)``:

* ``dpa1-f32.pth``: float32, one attention layer with DPA-1's smooth attention
  (``smooth_type_embedding``), frozen as ``dp --pt freeze`` does (``torch.jit.script`` +
  ``torch.jit.save``); family detected from the file;
* ``dpa1-f64.pt``: float64, one attention layer with DPA-1's original (non-smooth) attention, a
  training checkpoint as DeePMD's trainer writes it (``{"model": ModelWrapper.state_dict()}`` with
  the model parameters in ``_extra_state``), loaded with ``family="deepmd"``;
* the float64 model converted to DeePMD's backend-independent ``.dp`` (``dp convert-backend``).

The descriptor normalisation (DeePMD's ``davg``/``dstd``, which training sets from data
statistics) and the per-type energy bias are set so that the random models give forces of
0.1-0.4 eV/A and stresses of ~0.2 eV/A^3 on PbTiO3: the comparisons are not between zeros.

Why the float32 model uses the smooth attention: with the original attention in float32, DeePMD's
own calculator moves by ~1e-3 eV/A in the forces when the rattled 40-atom cell is rigidly
translated by 1e-7 A (measured; that cell has a neighbour 2e-4 A inside the 5 A cutoff, where
DeePMD's float32 switching function is mostly round-off, which the original attention does not
damp). No two float32 evaluations that round coordinates differently can then agree to 1e-4 eV/A.
The smooth variant in float32, and the original attention in float64, move by < 1e-6 eV/A under
the same translation.

Checked: energy/forces/stress of the jitted bridge vs ``deepmd.calculator.DP`` on the three PbTiO3
cells (float32: 1e-5 eV/atom, 1e-4 eV/A, 1e-5 eV/A^3; float64 far tighter); R = 3 replicas in one
torch call equal three single calls; a 50-step NVE run (10 atoms, 300 K) conserves energy as
well as ASE's VelocityVerlet with DP; ``jaxpto.md`` swaps a ``DP`` calculator for the bridge on
the calculator's own model object; a type-sectioned descriptor (``se_e2_a``, with ``fparam``) and
a message-passing one (DPA-2) agree too; uncovered elements and unsupported files fail with clear
errors; a pretrained name fails fast without network (the network is never touched here).
"""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from ase import units

import torch
import deepmd  # noqa: F401  (installed by the deepmd extra)

import bridge_harness as h
import jaxpto  # noqa: E402
from bridge_harness import offline, reference  # noqa: F401  (offline: a fixture)
from bridges import deepmd as bdp  # noqa: E402
from _pbtio3_cells import pbtio3 as pto_cell
from _pbtio3_cells import strained_unit_cell as pto_triclinic

warnings.filterwarnings("ignore", message=".*(accelerator|DP_INFER_BATCH_SIZE).*")

E_TOL, F_TOL, S_TOL = h.FLOAT32  # float32: eV/atom, eV/A, eV/A^3
E_TOL64, F_TOL64, S_TOL64 = h.FLOAT64  # float64 (measured ~1e-15)
F32, F64 = jnp.float32, jnp.float64
TYPE_MAP = ["O", "Ti", "Pb"]

CELLS = h.CELLS_5


# ------------------------------------------------------------------------------ models
def build_dpa1(precision: str, seed: int, smooth: bool):
    """A random DPA-1 (se_atten) energy model from a config dict, DeePMD's own way; returns (model, config)."""
    bdp.import_deepmd_pt()
    from deepmd.pt.model.model import get_model
    from deepmd.utils.argcheck import model_args

    config = {
        "type_map": TYPE_MAP,
        "descriptor": {"type": "se_atten", "sel": 60, "rcut": 5.0, "rcut_smth": 0.5, "neuron": [8, 16],
                       "axis_neuron": 4, "attn": 16, "attn_layer": 1, "tebd_dim": 8,
                       "smooth_type_embedding": smooth, "precision": precision, "seed": seed},
        "fitting_net": {"neuron": [16, 16], "precision": precision, "seed": seed + 1},
    }
    base = model_args()
    config = base.normalize_value(config, trim_pattern="_*")
    base.check_value(config, strict=True)
    model = get_model(config)
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        # What DeePMD's training sets from data statistics: descriptor scale (dstd) and energy bias.
        buffers["atomic_model.descriptor.se_atten.stddev"].fill_(0.05)
        bias = buffers["atomic_model.out_bias"]
        bias.copy_(torch.tensor([-4.9, -7.8, -3.7], dtype=bias.dtype).view(bias.shape))
    model.eval()
    return model, config


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from deepmd.entrypoints.convert_backend import convert_backend
    from deepmd.pt.train.wrapper import ModelWrapper

    d = tmp_path_factory.mktemp("deepmd")
    m32, _ = build_dpa1("float32", seed=1, smooth=True)
    torch.jit.save(torch.jit.script(m32), str(d / "dpa1-f32.pth"))  # `dp --pt freeze`
    m64, cfg64 = build_dpa1("float64", seed=7, smooth=False)
    torch.save({"model": ModelWrapper(m64, model_params=cfg64).state_dict()}, str(d / "dpa1-f64.pt"))
    convert_backend(INPUT=str(d / "dpa1-f64.pt"), OUTPUT=str(d / "dpa1-f64.dp"))  # `dp convert-backend`
    return {"f32": str(d / "dpa1-f32.pth"), "f64": str(d / "dpa1-f64.pt"), "dp": str(d / "dpa1-f64.dp"),
            "dir": d}


_models, _calcs = {}, {}


def model_for(files, kind):
    if kind not in _models:
        if kind == "f32":
            _models[kind] = jaxpto.load_model(files["f32"], device="cpu")  # family detected
        else:
            _models[kind] = jaxpto.load_model(files[kind], family="deepmd", device="cpu")
    return _models[kind]


def calc_for(files, kind):
    if kind not in _calcs:
        from deepmd.calculator import DP
        _calcs[kind] = DP(files[kind])
    return _calcs[kind]


bridge_eval = h.evaluate


# ------------------------------------------------------------------------------ tests
def test_import_guard_uses_pure_pytorch_fallbacks():
    """deepmd.pt imports next to a torch its compiled operators were not built for, on its fallbacks."""
    from packaging.version import Version

    from deepmd.env import GLOBAL_CONFIG

    dpt = bdp.import_deepmd_pt()
    reason = bdp.custom_ops_fallback()
    built_for = GLOBAL_CONFIG.get("pt_version", "")
    if built_for and built_for != Version(torch.__version__).public:
        assert reason is not None and dpt.ENABLE_CUSTOMIZED_OP is False
    else:  # a deepmd-kit built for this torch keeps its operators
        assert reason is None
    print(f"\ndeepmd-kit operators built for torch {built_for}, running {torch.__version__}: "
          f"{'fallback (' + reason[:80] + ')' if reason else 'compiled operators'}")


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("kind", ["f32", "f64"])
def test_matches_dp_calculator(files, kind, cell):
    atoms = CELLS[cell]()
    model = model_for(files, kind)
    assert model.cutoff == 5.0 and model.elements == frozenset({8, 22, 82})
    efs = model.compute.efs
    assert efs.dtype == (torch.float32 if kind == "f32" else torch.float64)
    ref = reference(calc_for(files, kind), atoms)
    h.assert_agrees(bridge_eval(model, [atoms], F32 if kind == "f32" else F64), ref,
                    h.FLOAT32 if kind == "f32" else h.FLOAT64, len(atoms), f"{kind} {cell}")
    assert np.abs(ref[1]).max() > 0.05 and np.abs(ref[2]).max() > 1e-2  # not a comparison of zeros


OTHER_DESCRIPTORS = {
    # type-sectioned neighbour list (one sel per type): the model's format_nlist splits ours per type;
    # with two frame parameters (fparam) in its fitting net
    "se_e2_a": {"type": "se_e2_a", "sel": [32, 16, 16], "rcut": 5.0, "rcut_smth": 0.5, "neuron": [8, 16],
                "axis_neuron": 4},
    # message passing with two cutoffs (5 A repinit, 3.5 A repformer): ghost features through mapping
    "dpa2": {"type": "dpa2",
             "repinit": {"rcut": 5.0, "rcut_smth": 0.5, "nsel": 60, "neuron": [4, 8], "axis_neuron": 4,
                         "tebd_dim": 4},
             "repformer": {"rcut": 3.5, "rcut_smth": 0.5, "nsel": 20, "nlayers": 1, "g1_dim": 8, "g2_dim": 4,
                           "axis_neuron": 4, "attn1_hidden": 4, "attn1_nhead": 1, "attn2_hidden": 4,
                           "attn2_nhead": 1}},
}


@pytest.mark.parametrize("descriptor", list(OTHER_DESCRIPTORS))
def test_other_descriptors_match_dp(descriptor, tmp_path):
    """Beyond DPA-1: a per-type-sel descriptor (with fparam) and a message-passing one (float64, triclinic)."""
    from deepmd.calculator import DP
    from deepmd.pt.model.model import get_model
    from deepmd.utils.argcheck import model_args

    config = {"type_map": TYPE_MAP,
              "descriptor": dict(OTHER_DESCRIPTORS[descriptor], precision="float64", seed=3),
              "fitting_net": {"neuron": [16, 16], "precision": "float64", "seed": 4,
                              "numb_fparam": 2 if descriptor == "se_e2_a" else 0}}
    base = model_args()
    config = base.normalize_value(config, trim_pattern="_*")
    base.check_value(config, strict=True)
    model = get_model(config)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("stddev"):
                buf.fill_(0.05)
    path = str(tmp_path / f"{descriptor}.pth")
    torch.jit.save(torch.jit.script(model.eval()), path)
    atoms = pto_triclinic()
    kw = {}
    if descriptor == "se_e2_a":
        with pytest.raises(ValueError, match="needs 2 frame parameters"):
            jaxpto.load_model(path, device="cpu")
        kw["fparam"] = [0.3, -1.0]
        atoms.info["fparam"] = np.array(kw["fparam"])  # where DP reads them
    e, f, s = bridge_eval(jaxpto.load_model(path, device="cpu", **kw), [atoms], F64)
    e_ref, f_ref, s_ref = reference(DP(path), atoms)
    df, ds = np.abs(f[0] - f_ref).max(), np.abs(s[0] - s_ref).max()
    print(f"\n{descriptor}: |dE|/atom={abs(e[0] - e_ref) / len(atoms):.1e}  max|dF|={df:.1e}  max|dS|={ds:.1e} "
          f"(max|F|={np.abs(f_ref).max():.2f})")
    assert abs(e[0] - e_ref) / len(atoms) < E_TOL64 and df < F_TOL64 and ds < S_TOL64
    assert np.abs(f_ref).max() > 1e-3


def test_dp_format_and_dtype(files):
    """The .dp conversion of the float64 model gives the same numbers; dtype=float32 is accepted."""
    atoms = pto_triclinic()
    e, f, s = bridge_eval(model_for(files, "f64"), [atoms], F64)
    m_dp = jaxpto.load_model(files["dp"], device="cpu")  # detected from the .dp file
    e2, f2, s2 = bridge_eval(m_dp, [atoms], F64)
    assert abs(e2[0] - e[0]) < 1e-10 and np.abs(f2 - f).max() < 1e-10 and np.abs(s2 - s).max() < 1e-12
    m32 = jaxpto.load_model(files["f64"], family="deepmd", device="cpu", dtype="float32")
    assert m32.compute.efs.dtype == torch.float32
    e3, f3, _ = bridge_eval(m32, [atoms], F32)
    assert abs(e3[0] - e[0]) / len(atoms) < 1e-5 and np.abs(f3 - f).max() < 1e-4


def test_file_detection(files, tmp_path):
    from bridges.registry import detect_family

    for key in ("f32", "f64", "dp"):
        assert bdp.looks_like(files[key]), key
        assert detect_family(files[key]) == "deepmd"
    # other torch files, a zip that is not a model, a missing file: not DeePMD, and no exception
    torch.save({"model_state_dict": {"w": torch.zeros(2)}, "config": {"cutoff": 5.0}}, tmp_path / "other.pt")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "linear.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    for name in ("other.pt", "linear.pth", "junk.pth", "missing.pth"):
        assert not bdp.looks_like(tmp_path / name), name


def test_unsupported_files_explain(tmp_path):
    tf = tmp_path / "graph.pb"  # bytes as in a DeePMD TensorFlow graph
    tf.write_bytes(b"\x0a\x10" + b"descrpt_attr/rcut" + b"\x00" * 64)
    assert bdp.looks_like(tf)
    with pytest.raises(ValueError, match="dp convert-backend graph.pb graph.pth"):
        jaxpto.load_model(str(tf))
    with pytest.raises(ValueError, match="neither a DeePMD model file nor a DeePMD pretrained name"):
        bdp.load(str(tmp_path / "nothing.pth"))


def test_pretrained_name_fails_fast_offline(tmp_path, offline):
    """A DeePMD pretrained name with no cached file and no network: a clear error within seconds."""
    names = bdp.pretrained_names()
    if not names:
        pytest.skip("this deepmd-kit has no pretrained registry")
    from bridges import registry

    name = next(n for n in names if bdp._bridge_supports_pretrained(n))
    assert registry.KNOWN_MODELS[name.lower()][0] == "deepmd"
    h.assert_fails_fast(lambda: bdp.load(name.lower(), cache_dir=tmp_path), RuntimeError,
                        f"dp pretrained download {name}")
    assert offline  # the download hosts were probed (and refused)
    sezm = [n for n in names if not bdp._bridge_supports_pretrained(n)]
    if sezm:
        with pytest.raises(NotImplementedError, match="SeZM"):
            bdp.load(sezm[0], cache_dir=tmp_path)


def test_batched_replicas_equal_single_calls(files):
    """Three different 5-atom structures (different cells) as the three frames of one call."""
    model = model_for(files, "f64")
    rattled = pto_cell()
    rattled.positions += np.random.default_rng(7).normal(0, 0.05, rattled.positions.shape)
    h.assert_batched_equals_single(lambda s: bridge_eval(model, s, F64), [pto_cell(), pto_triclinic(), rattled],
                                   h.Tolerance(1e-10, 1e-10, 1e-12), counter=model.compute, rtol=1e-7,
                                   per_atom=False)


def test_nve_energy_conservation_vs_ase(files):
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = pto_cell().repeat((2, 1, 1))  # 10 atoms: DP itself takes ~0.2-1 s a call on this busy CPU
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(11))
    Stationary(atoms)
    run = h.nve_against_ase(model_for(files, "f32"), calc_for(files, "f32"), atoms, 50, 1.0 * units.fs, dtype=F32)
    run.report("10-atom PbTiO3 300 K, DPA-1 float32, 1 fs")
    assert run.steps_done == 50
    assert abs(run.jax_energy[0] - run.ase_energy[0]) / run.n_atoms < 1e-5  # same starting point
    assert run.drift("jax", per_atom=True) <= 2.0 * run.drift("ase", per_atom=True) + 2e-5


def test_calculator_swapped_for_bridge(files):
    """``atoms.calc = DP(file)`` + ``jaxpto.md.VelocityVerlet``: the bridge on DP's own model object."""
    calc = calc_for(files, "f64")
    dyn, atoms, ase_positions = h.calculator_swap(calc, h.pto10, 10, dtype=F64)
    efs = dyn._model_obj.compute.efs
    assert efs.model is calc.dp.deep_eval.dp.model["Default"]  # DP's loaded network, not a second load
    dpos = np.abs(atoms.positions - ase_positions).max()
    print(f"\nDP swapped for the bridge, 10 x 1 fs float64: max|dx| vs ASE = {dpos:.1e} A")
    assert dpos < 1e-9
    assert bdp.efs_from_calculator(object()) is None


def test_uncovered_element_fails_before_any_step(files):
    atoms = pto_cell()
    atoms.numbers[1] = 11  # Na: not in type_map O, Ti, Pb
    h.assert_refuses_element(model_for(files, "f32"), atoms, engine_match="Na", efs_match=r"\[11\] \(Na\)")
    with pytest.raises(ValueError, match="not a type of the model"):
        bdp.load(files["f32"], device="cpu", type_dict={"O": 0, "Ti": 1, "Pb": 3})
