"""The one model resolver (bridges.resolver), the registry's one table, and the shared bridge helpers.

* ``bridges.from_calculator``: JaxptoCalculator -> its model, ASE's EMT/LennardJones/MorsePotential
  -> JAX twins equal to them (checked against the ASE calculator), CHGNet/SevenNet calculators ->
  the bridge on their own network (checked against the calculator), unknown calculators -> None;
  identities: equal exactly when the calculators compute the same thing (issue #17 item 1:
  LennardJones(sigma=3.4) vs (sigma=3.0), JaxptoCalculator(emt) vs (lj)); exact classes only;
  ``from_calculator(EMT())`` imports no torch; a JAX-native family plugs in through the table.
* the registry: every family's names written once (``family_names``), ``ase_calculator``;
* ``bridges.graph``: batched edges against a plain Python loop, ``edge_pairs`` by hand,
  ``ElementIndex`` messages; ``torch_float_dtype``/``resolve_device``; the offline probe
  (``bridges._download``) against a local HTTP server, a closed port and a stuck probe.
"""

import http.server
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.calculators.morse import MorsePotential

import bridge_harness as h
import bridges
import jaxpto
from _pbtio3_cells import pbtio3, supercell
from bridges import _download, registry


def _cu():
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=4)
    return atoms


# ----------------------------------------------------------------------------- ASE's potentials


@pytest.mark.parametrize("calc", [EMT(), EMT(asap_cutoff=True), LennardJones(sigma=2.3, epsilon=0.12, rc=6.0),
                                  LennardJones(sigma=2.3, epsilon=0.12, rc=6.0, smooth=True),
                                  MorsePotential(epsilon=0.35, r0=2.5, rho0=4.5)],
                         ids=["emt", "emt-asap", "lj", "lj-smooth", "morse"])
def test_twins_equal_the_ase_calculators(calc):
    resolved = bridges.from_calculator(calc)
    assert resolved.kind == "twin" and type(calc).__name__ in resolved.description
    atoms = _cu()
    e, f, s = h.evaluate(resolved.model, [atoms])
    e_ref, f_ref, s_ref = h.reference(calc, atoms)
    assert abs(e[0] - e_ref) < 1e-10 * max(1, abs(e_ref))
    assert np.abs(f[0] - f_ref).max() < 1e-10 and np.abs(s[0] - s_ref).max() < 1e-12
    assert bridges.calculator_identity(calc) == resolved.identity


def test_identities_say_whether_calculators_compute_the_same_thing():
    ident = bridges.calculator_identity
    assert ident(LennardJones(sigma=3.4, epsilon=0.0104, rc=8.5)) != ident(LennardJones(sigma=3.0, epsilon=0.02, rc=8.5))
    assert ident(LennardJones()) == ident(LennardJones(sigma=1.0, rc=3.0, ro=0.66 * 3.0))  # ASE's defaults filled in
    assert ident(EMT()) == ident(EMT()) != ident(EMT(asap_cutoff=True))
    assert ident(MorsePotential()) != ident(MorsePotential(r0=1.1))
    emt_model, lj_model = jaxpto.load_model("emt"), jaxpto.load_model("lj")
    a, b = jaxpto.JaxptoCalculator(emt_model), jaxpto.JaxptoCalculator(lj_model)
    assert ident(a) != ident(b) and ident(a) == ident(jaxpto.JaxptoCalculator(emt_model))
    assert ident(jaxpto.JaxptoCalculator(jaxpto.load_model("emt"))) != ident(a)  # another model object
    resolved = bridges.from_calculator(a)
    assert resolved.kind == "jaxpto" and resolved.model is emt_model and resolved.identity == ident(a)
    assert len({ident(a), ident(b), ident(jaxpto.JaxptoCalculator(emt_model))}) == 2  # hashable


def test_unknown_and_subclassed_calculators_are_not_resolved():
    class MyEMT(EMT):  # a subclass may compute something else
        pass

    for calc in (MyEMT(), object(), None):
        assert bridges.from_calculator(calc) is None and bridges.calculator_identity(calc) is None


def test_resolving_ase_potentials_imports_no_torch():
    code = ("import sys, bridges; from ase.calculators.emt import EMT; from ase.calculators.lj import LennardJones; "
            "assert bridges.from_calculator(EMT()).kind == 'twin'; bridges.calculator_identity(LennardJones()); "
            "import jaxpto; assert 'bridges' in sys.modules; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_importing_the_core_imports_no_bridges():
    code = ("import sys, jaxpto, jaxpto.model, jaxpto.simulate, jaxpto.neighbors, jaxpto.potentials; "
            "print('bridges' in sys.modules); m = jaxpto.load_model('emt'); print('bridges' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]  # the re-export loads bridges on first use only


# ----------------------------------------------------------------------------- model families


@pytest.fixture(scope="module")
def chgnet_calc():
    from chgnet.model.dynamics import CHGNetCalculator

    return h.quiet(CHGNetCalculator, use_device="cpu")


def test_chgnet_calculator_resolves_to_its_own_network(chgnet_calc):
    from chgnet.model.dynamics import CHGNetCalculator

    resolved = bridges.from_calculator(chgnet_calc)
    assert resolved.kind == "bridge" and resolved.model.compute.efs.model is chgnet_calc.model
    atoms = pbtio3()
    h.assert_agrees(h.evaluate(resolved.model, [atoms], np.float32), h.reference(chgnet_calc, atoms), h.FLOAT32,
                    len(atoms), "CHGNetCalculator via bridges.from_calculator")
    same = h.quiet(CHGNetCalculator, chgnet_calc.model, use_device="cpu")
    other_weight = h.quiet(CHGNetCalculator, chgnet_calc.model, use_device="cpu", stress_weight=1.0)
    assert bridges.calculator_identity(same) == resolved.identity
    assert bridges.calculator_identity(other_weight) != resolved.identity


def test_sevennet_calculator_resolves_and_keeps_working():
    from sevenn.calculator import SevenNetCalculator

    calc = SevenNetCalculator("7net-0", device="cpu")
    resolved = bridges.from_calculator(calc)
    assert resolved.kind == "bridge" and resolved.model.compute.efs.model is calc.model
    structures = h.three_structures(pbtio3())
    e, f, s = h.evaluate(resolved.model, structures, np.float32)  # batched mode only inside the call
    assert calc.model.is_batch_data is False
    for r, atoms in enumerate(structures):
        h.assert_agrees((e[r:r + 1], f[r:r + 1], s[r:r + 1]), h.reference(calc, atoms), h.FLOAT32, len(atoms), "7net-0")
    mf = SevenNetCalculator("7net-mf-0", device="cpu", modal="R2SCAN")
    assert bridges.calculator_identity(mf) != bridges.calculator_identity(
        SevenNetCalculator("7net-mf-0", device="cpu", modal="PBE"))


def test_a_jax_native_family_plugs_in_through_the_table(monkeypatch):
    """A kind-"jax" family (as Nequix will be) needs one FAMILIES entry and its module."""
    model = jaxpto.load_model("emt")
    Calc = type("NativeCalculator", (), {"__module__": "fakenative.calculator"})
    module = types.ModuleType("bridges.fakenative")
    module.model_from_calculator = lambda calc: model if type(calc) is Calc else None
    module.model_identity = lambda calc: ("fake", 1) if type(calc) is Calc else None
    module.load = lambda name, dtype=None, **kw: model
    module.looks_like = lambda path: str(path).endswith(".fake")
    monkeypatch.setitem(sys.modules, "bridges.fakenative", module)
    monkeypatch.setitem(registry.FAMILIES, "fakenative", registry.Family("fakenative", "jax"))
    resolved = bridges.from_calculator(Calc())
    assert resolved.kind == "native" and resolved.model is model and resolved.identity == (Calc, ("fake", 1))
    registry.register("fake-1", "fakenative", "a fake JAX-native model")
    try:
        assert jaxpto.load_model("fake-1") is model and registry.is_jax_native("fake-1")
    finally:
        del registry.KNOWN_MODELS["fake-1"]
    # a family whose module is not in this checkout resolves to nothing (no error)
    monkeypatch.setitem(registry.FAMILIES, "absentfamily", registry.Family("absentpkg", "jax"))
    assert bridges.from_calculator(type("C", (), {"__module__": "absentpkg.calc"})()) is None


# ----------------------------------------------------------------------------- registry


def test_every_name_is_written_once_and_families_read_it():
    from bridges import chgnet, mace, matgl, orb

    assert chgnet.MODEL_NAMES == {"chgnet-0.3.0": "0.3.0", "chgnet-0.2.0": "0.2.0", "chgnet-r2scan": "r2scan"}
    assert mace.MODEL_NAMES["mace-mp-0b-medium"] == ("mp", "medium-0b")
    assert matgl.MODEL_NAMES["m3gnet-mp-2021.2.8-pes"] == "M3GNet-MP-2021.2.8-PES"
    assert set(orb.MODEL_NAMES) == {n for n, e in registry.KNOWN_MODELS.items() if e.family == "orb"}
    for name, entry in registry.KNOWN_MODELS.items():
        assert entry[0] == entry.family in registry.FAMILIES and name == name.lower() and entry.description


def test_ase_calculator_gives_each_familys_own():
    from chgnet.model.dynamics import CHGNetCalculator

    assert type(bridges.ase_calculator("emt")) is EMT
    lj = bridges.ase_calculator("lj", sigma=2.0, epsilon=0.1)
    assert type(lj) is LennardJones and lj.parameters["sigma"] == 2.0
    calc = bridges.ase_calculator("chgnet-0.3.0")
    assert type(calc) is CHGNetCalculator
    atoms = supercell(1)
    h.assert_agrees(h.evaluate(jaxpto.load_model("chgnet-0.3.0"), [atoms], np.float32), h.reference(calc, atoms),
                    h.FLOAT32, len(atoms), "ase_calculator('chgnet-0.3.0') vs load_model")
    with pytest.raises(ValueError, match="unknown model"):
        bridges.ase_calculator("no-such-model")


# ----------------------------------------------------------------------------- bridge helpers


def test_batched_edges_equal_a_plain_loop():
    import torch

    from bridges.graph import batched_edges, edge_vectors

    structures = h.three_structures(pbtio3().repeat((2, 1, 1)))
    e = h.engine_edges(structures, 5.0)
    edges = batched_edges(e["edge_src"], e["edge_dst"], e["edge_shift"], e["edge_mask"], 10)
    vec = edge_vectors(e["positions"], e["cell"], edges)
    expected = []
    R, E = e["edge_src"].shape
    for r in range(R):
        for k in range(E):
            if e["edge_mask"][r, k]:
                i, j = int(e["edge_src"][r, k]), int(e["edge_dst"][r, k])
                d = e["positions"][r, j] - e["positions"][r, i] + e["edge_shift"][r, k] @ e["cell"][r]
                expected.append((r * 10 + i, r * 10 + j, r, r * E + k, d))
    assert [(int(a), int(b), int(c), int(x)) for a, b, c, x in zip(edges.src, edges.dst, edges.replica, edges.index)] \
        == [x[:4] for x in expected]
    assert torch.allclose(vec, torch.stack([x[4] for x in expected]), atol=1e-12, rtol=0)
    assert float(torch.linalg.vector_norm(vec, dim=-1).max()) < 5.0  # cut at the cutoff by the bridge


def test_edge_pairs_by_hand():
    import torch

    from bridges.graph import edge_pairs

    centre = torch.tensor([0, 1, 0, 0, 1])
    first, second = edge_pairs(centre, torch.tensor([0, 1, 3, 4]), 2)
    assert sorted(zip(first.tolist(), second.tolist())) == [(0, 3), (1, 4), (3, 0), (4, 1)]
    assert edge_pairs(centre, torch.tensor([], dtype=torch.int64), 2)[0].numel() == 0


def test_element_index_names_what_is_missing():
    import torch

    from bridges.graph import ElementIndex

    table = ElementIndex({8: 0, 22: 1, 82: 2}, name="model X")
    assert table(torch.tensor([82, 22, 8, 8])).tolist() == [2, 1, 0, 0]
    with pytest.raises(ValueError, match=r"model X does not cover atomic numbers \[11, 84\] \(Na, Po\).*Po \(84\)"):
        table(torch.tensor([8, 84, 11]))
    with pytest.raises(ValueError, match=r"\[200\]"):
        table(torch.tensor([200]))


def test_dtype_and_device_rules():
    import jax.numpy as jnp
    import torch

    from bridges.torch_bridge import resolve_device, torch_float_dtype

    for given in ("float64", "torch.float64", np.float64, jnp.float64, torch.float64):
        assert torch_float_dtype(given) is torch.float64
    assert torch_float_dtype(None) is None and torch_float_dtype(None, default=torch.float32) is torch.float32
    with pytest.raises(ValueError, match="for MACE; use float32 or float64"):
        torch_float_dtype("float16", "MACE")
    assert resolve_device(None) == torch.device("cpu")  # JAX runs on the CPU here
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):  # noqa: N802
        self.send_response(200 if self.path == "/model.bin" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_offline_probe():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        _download.require_download(f"{base}/model.bin", "a model", "hint")  # reachable: returns
        _download.require_download([f"{base}/missing", f"{base}/model.bin"], "a model", "hint")  # one mirror answers
        with pytest.raises(_download.ModelUnavailableError, match=r"cannot download a model from .*/missing "
                                                                  r"\(.*HTTP 404.*\); pass the file"):
            _download.require_download(f"{base}/missing", "a model", "pass the file")
    finally:
        server.shutdown()
        server.server_close()
    msg = h.assert_fails_fast(lambda: _download.require_download(f"{base}/model.bin", "a model", "hint", 2.0),
                              _download.ModelUnavailableError, "unreachable")
    assert base in msg


def test_offline_probe_gives_up_on_a_stuck_lookup(monkeypatch):
    monkeypatch.setattr(_download, "unreachable_reason", lambda url, timeout: time.sleep(30))
    msg = h.assert_fails_fast(lambda: _download.require_download("https://example.invalid/x", "w", "hint", 0.5),
                              _download.ModelUnavailableError, seconds=3.0)
    assert "no answer within 0.5 s" in msg and "https://example.invalid/x" in msg
