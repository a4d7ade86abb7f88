"""ASE's OWN molecular-dynamics tests (the installed ``ase/test/md``) run on jaxpto.md.

Every test function of every file in ``ase.test.md`` is covered here, once per ASE
parametrization, in one of three ways:

* **run**: the ASE test module is imported with :mod:`importlib`, the ASE dynamics
  classes it imported (``VelocityVerlet``, ``Langevin``, ``Bussi``,
  ``NoseHooverChainNVT``, ``MTKNPT``, ``IsotropicMTKNPT``, ``MelchionnaNPT``/``NPT``)
  are replaced in the module's globals by jaxpto.md's (``monkeypatch.setattr``), and
  ASE's test function is called unchanged with the fixtures it asks for (ASE's own
  fixture functions, called through ``__wrapped__``). Parametrizations that name an
  ASE class (``md_class``, ``cls_and_kwargs``) are repeated here with the jaxpto class.
  A recorder on ``jaxpto.md._JaxDynamics._build`` checks that jaxpto's classes really
  ran and which force path they used (``twin``: ASE's EMT/Morse swapped for their JAX
  twins; ``callback``: TIP3P/IdealGas called through ``jax.pure_callback``).
* **not applicable**: ``pytest.skip`` with the reason (ASE internals jaxpto does not
  replicate, constraints, classes jaxpto does not have). :data:`NOT_APPLICABLE`.

The first version of this file found four jaxpto.md bugs (conserved energy before the
first run, Bussi's public attributes, Langevin's setters, ``irun`` yielding per chunk)
and the missing ``MaskedMTKNPT``; all are fixed, so every runnable ASE test now runs
without marks.

``test_every_ase_md_test_is_covered`` fails when the installed ASE grows a test that is
neither run nor listed, so the table stays complete.

Fixtures from ASE's ``conftest.py`` are replaced by equivalents: ``testdir`` (chdir to
``tmp_path``), ``allraise`` (``numpy`` errors raise), ``arbitrarily_seed_rng`` (seed the
global NumPy RNG per test, from which jaxpto draws its PRNG seed when the test passes
no ``rng``), and ``asap3``: asap3 is not installed; the stand-in's ``.EMT()`` returns
``ase.calculators.emt.EMT(asap_cutoff=True)`` (ASE's EMT with ASAP's cutoff
convention), which jaxpto.md replaces by its JAX EMT (``jaxpto.potentials.emt``). The
whole run is float64 (``tests/conftest.py`` enables JAX x64). The ensemble tests of
``test_nvt_npt.py`` (10,000 steps each) equilibrate with ASE's own ``NPTBerendsen``
(jaxpto has none), as ASE's fixtures do, then propagate with jaxpto.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import types
import warnings
import zlib

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.utils import seterr

import jaxpto.md as jmd

ASE_MD = "ase.test.md"


def _replacements():
    """ASE class -> jaxpto.md class, for every ASE dynamics class jaxpto.md has."""
    import ase.md.bussi
    import ase.md.langevin
    import ase.md.melchionna
    import ase.md.nose_hoover_chain
    import ase.md.npt
    import ase.md.verlet

    ase_classes = {
        "VelocityVerlet": ase.md.verlet.VelocityVerlet, "Langevin": ase.md.langevin.Langevin,
        "Bussi": ase.md.bussi.Bussi, "NoseHooverChainNVT": ase.md.nose_hoover_chain.NoseHooverChainNVT,
        "MTKNPT": ase.md.nose_hoover_chain.MTKNPT, "IsotropicMTKNPT": ase.md.nose_hoover_chain.IsotropicMTKNPT,
        "MaskedMTKNPT": ase.md.nose_hoover_chain.MaskedMTKNPT, "MelchionnaNPT": ase.md.melchionna.MelchionnaNPT,
        "NPT": ase.md.npt.NPT,
    }
    return {cls: getattr(jmd, name) for name, cls in ase_classes.items() if hasattr(jmd, name)}


REPLACEMENTS = _replacements()


# ---------------------------------------------------------------------------
# Plumbing
# ---------------------------------------------------------------------------


def ase_module(name, monkeypatch):
    """ASE's test module ``ase.test.md.<name>`` with its dynamics classes replaced by jaxpto.md's."""
    mod = importlib.import_module(f"{ASE_MD}.{name}")
    for attr, value in list(vars(mod).items()):
        if isinstance(value, type) and value in REPLACEMENTS:  # by identity: `MelchionnaNPT as NPT` too
            monkeypatch.setattr(mod, attr, REPLACEMENTS[value])
    return mod


def ase_fixture(mod, name, *args):
    """Call one of ASE's fixture functions directly."""
    return getattr(mod, name).__wrapped__(*args)


@pytest.fixture(autouse=True)
def arbitrarily_seed_rng(request):
    """As ASE's autouse fixture: a per-test seed of the global NumPy RNG, restored afterwards."""
    state = np.random.get_state()
    np.random.seed(zlib.adler32(request.node.name.encode()) % 12345)
    yield
    np.random.set_state(state)


@pytest.fixture(scope="session")
def asap3():
    """Stand-in for ASE's ``asap3`` fixture (asap3 is not installed): ASE's EMT, swapped by jaxpto for its JAX EMT."""
    return types.SimpleNamespace(EMT=lambda: EMT(asap_cutoff=True))


@pytest.fixture
def testdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def allraise():
    with seterr(all="raise"):
        yield


@pytest.fixture
def built(monkeypatch):
    """``[(class name, force path), ...]`` of every jaxpto.md dynamics object that ran."""
    record = []
    orig = jmd._JaxDynamics._build

    def _build(self):
        orig(self)
        if not getattr(self, "_probe", False):
            record.append((type(self).__name__, self.force_kind))

    monkeypatch.setattr(jmd._JaxDynamics, "_build", _build)
    return record


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ASE deprecations, jaxpto's "callback path" notes
        yield


# ---------------------------------------------------------------------------
# Not applicable: (module, function) -> reason
# ---------------------------------------------------------------------------

_NHC_INTERNAL = ("tests ASE's internal NoseHooverChainThermostat class (integrate_nhc and the private _eta/_p_eta "
                 "arrays); jaxpto's chain is a pure function inside its compiled step "
                 "(tests/test_nose_hoover_chain.py checks it)")
_BARO_INTERNAL = ("tests ASE's internal {} class (integrate_nhc_baro and the private _xi/_p_xi arrays); jaxpto's "
                  "barostat chain is a pure function inside its compiled step (tests/test_mtk.py checks it)")
_OPTIMIZER = "tests ASE's optimizers (FIRE/BFGS), which jaxpto.md does not replace"

NOT_APPLICABLE = {
    ("test_nose_hoover_chain", "test_thermostat_round_trip"): _NHC_INTERNAL,
    ("test_nose_hoover_chain", "test_thermostat_truncation_error"): _NHC_INTERNAL,
    ("test_nose_hoover_chain", "test_isotropic_barostat"): _BARO_INTERNAL.format("IsotropicMTKBarostat"),
    ("test_nose_hoover_chain", "test_anisotropic_barostat"): _BARO_INTERNAL.format("MTKBarostat"),
    ("test_nvt_npt", "test_nvtberendsen"): "ASE's NVTBerendsen: jaxpto.md has no Berendsen class",
    ("test_nvt_npt", "test_nptberendsen"): "ASE's NPTBerendsen: jaxpto.md has no Berendsen class",
    ("test_irun_force_call_order", "test_irun_call_order_through_md"):
        "replaces ASE's per-step internals MolecularDynamics.step/_refresh_properties/log by recorders; jaxpto "
        "runs the steps between observer events as one compiled chunk and has no per-step Python methods",
    ("test_langevin_asapcompat", "test_langevin_asapcompat"):
        "checks the ASE Langevin attributes Asap reads (c1..c5, v, rnd_pos, rnd_vel: per-step coefficients and "
        "random displacements); jaxpto keeps these inside its compiled step (temp and fr exist)",
    ("test_langevin_com", "test_langevin_com"):
        "uses the FixCom constraint; jaxpto.md does not support constraints (NotImplementedError)",
    ("test_fixrotation", "test_fixrotation_asap"):
        "uses the FixCom constraint (and FixRotation); jaxpto.md does not support constraints",
    ("test_CO2linear_Au111_langevin", "test_CO2linear_Au111_langevin"):
        "uses the FixLinearTriatomic constraint; jaxpto.md does not support constraints",
    ("test_rng", "test_andersen"): "ASE's Andersen: jaxpto.md has no Andersen class",
    ("test_langevin_switching", "test_langevin_switching"): "ASE's SwitchLangevin: jaxpto.md has no such class",
    ("test_langevinbaoab", "test_LangevinBAOAB_NVT"): "ASE's LangevinBAOAB: jaxpto.md has no such class",
    ("test_langevinbaoab", "test_LangevinBAOAB_NPT"): "ASE's LangevinBAOAB: jaxpto.md has no such class",
    ("test_langevinbaoab", "test_LangevinBAOAB_NsT"): "ASE's LangevinBAOAB: jaxpto.md has no such class",
    ("test_langevinbaoab", "test_LangevinBAOAB_NsH"): "ASE's LangevinBAOAB: jaxpto.md has no such class",
    ("test_langevinbaoab", "test_LangevinBAOAB_seed"): "ASE's LangevinBAOAB: jaxpto.md has no such class",
    ("test_langevinbaoab", "test_LangevinBAOAB_default_rng"): "ASE's LangevinBAOAB: jaxpto.md has no such class",
    ("test_ce_curvature", "test_curvature1"): "ASE's ContourExploration: jaxpto.md has no such class",
    ("test_ce_curvature", "test_curvature2"): "ASE's ContourExploration: jaxpto.md has no such class",
    ("test_ce_logging", "test_logging"): "ASE's ContourExploration: jaxpto.md has no such class",
    ("test_ce_potentiostat", "test_potentiostat"): "ASE's ContourExploration: jaxpto.md has no such class",
    ("test_ce_potentiostat", "test_potentiostat_no_fs"): "ASE's ContourExploration: jaxpto.md has no such class",
    ("test_md_logger", "test_optimizer"): _OPTIMIZER,
    ("test_md_logger_interval", "test_optimization_log_and_trajectory_length"): _OPTIMIZER,
    ("test_maxwellboltzmann", "test_maxwell_boltzmann_distribution"):
        "velocity initialisation (ase.md.velocitydistribution) only; no dynamics class to replace",
    ("test_maxwellboltzmann", "test_thermalize_momenta"):
        "velocity initialisation (ase.md.velocitydistribution) only; no dynamics class to replace",
    ("test_maxwellboltzmann", "test_maxwellboltzmann_dof"):
        "velocity initialisation (ase.md.velocitydistribution) only; no dynamics class to replace",
    ("test_velocity_distribution", "test_stationary"):
        "velocity initialisation (ase.md.velocitydistribution) only; no dynamics class to replace",
    ("test_velocity_distribution", "test_stationary_propagate"):
        "velocity initialisation (ase.md.velocitydistribution) only; no dynamics class to replace",
    ("test_velocity_distribution", "test_zero_rotation"):
        "velocity initialisation (ase.md.velocitydistribution) only; no dynamics class to replace",
    ("test_phonon_md_init", "test_phonon_md_init"):
        "PhononHarmonics initialisation with ASE's Phonons/FIRE; no dynamics class to replace",
}

# (module, function) pairs run below
RUN = {
    ("test_md", "test_md"), ("test_md", "test_run_twice"),
    ("test_nose_hoover_chain", "test_nose_hoover_chain_nvt"), ("test_nose_hoover_chain", "test_isotropic_mtk_npt"),
    ("test_nose_hoover_chain", "test_anisotropic_npt"), ("test_nose_hoover_chain", "test_masked_npt"),
    ("test_nvt_npt", "test_langevin"), ("test_nvt_npt", "test_bussi"), ("test_nvt_npt", "test_nosehoovernvt"),
    ("test_nvt_npt", "test_melchionna_cubic"), ("test_nvt_npt", "test_melchionna_upper_tri"),
    ("test_nvt_npt", "test_melchionna_lower_tri"),
    ("test_bussi", "test_bussi"), ("test_bussi", "test_bussi_transfered_energy_conservation"),
    ("test_bussi", "test_bussi_paranoia_check"), ("test_bussi", "test_bussi_paranoia_check2"),
    ("test_md_logger", "test_md"), ("test_md_logger_interval", "test_md_log_and_trajectory_length"),
    ("test_md_stepwise", "test_irun_start"), ("test_idealgas", "test_idealgas"),
    ("test_position_distribution", "test_position_distribution"),
    ("test_verlet_thermostats_asap", "test_verlet_thermostats_asap"),
}


def _ase_md_tests():
    import ase.test.md as pkg

    found = set()
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("test_"):
            continue
        mod = importlib.import_module(f"{ASE_MD}.{info.name}")
        for fname, obj in vars(mod).items():
            if fname.startswith("test_") and inspect.isfunction(obj) and obj.__module__ == mod.__name__:
                found.add((info.name, fname))
    return found


def test_every_ase_md_test_is_covered():
    found = _ase_md_tests()
    assert not (RUN & set(NOT_APPLICABLE))
    missing = found - RUN - set(NOT_APPLICABLE)
    assert not missing, f"ASE md tests neither run nor listed as not applicable: {sorted(missing)}"
    stale = (RUN | set(NOT_APPLICABLE)) - found
    assert not stale, f"listed tests the installed ASE does not have: {sorted(stale)}"


@pytest.mark.parametrize("module,function", sorted(NOT_APPLICABLE), ids=lambda s: s)
def test_not_applicable(module, function):
    pytest.skip(f"not applicable: ase/test/md/{module}.py::{function}: {NOT_APPLICABLE[module, function]}")


# ---------------------------------------------------------------------------
# test_md.py
# ---------------------------------------------------------------------------


def test_md__test_md(monkeypatch, testdir, built):
    mod = ase_module("test_md", monkeypatch)
    mod.test_md(ase_fixture(mod, "fixture_atoms"), testdir)
    assert built == [("VelocityVerlet", "twin")]


def test_md__test_run_twice(monkeypatch, built):
    mod = ase_module("test_md", monkeypatch)
    mod.test_run_twice(jmd.VelocityVerlet, ase_fixture(mod, "fixture_atoms"))  # parametrize: [VelocityVerlet]
    assert built == [("VelocityVerlet", "twin")]


# ---------------------------------------------------------------------------
# test_nose_hoover_chain.py
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tchain", [1, 3])
def test_nose_hoover_chain__test_nose_hoover_chain_nvt(monkeypatch, asap3, built, tchain):
    mod = ase_module("test_nose_hoover_chain", monkeypatch)
    mod.test_nose_hoover_chain_nvt(asap3, tchain)
    assert built == [("NoseHooverChainNVT", "twin")]


@pytest.mark.parametrize("tchain", [1, 3])
@pytest.mark.parametrize("pchain", [1, 3])
def test_nose_hoover_chain__test_isotropic_mtk_npt(monkeypatch, asap3, built, tchain, pchain):
    mod = ase_module("test_nose_hoover_chain", monkeypatch)
    mod.test_isotropic_mtk_npt(asap3, ase_fixture(mod, "hcp_Cu"), tchain, pchain)
    assert built == [("IsotropicMTKNPT", "twin")]


@pytest.mark.parametrize("tchain", [1, 3])
@pytest.mark.parametrize("pchain", [1, 3])
def test_nose_hoover_chain__test_anisotropic_npt(monkeypatch, asap3, built, tchain, pchain):
    mod = ase_module("test_nose_hoover_chain", monkeypatch)
    mod.test_anisotropic_npt(asap3, ase_fixture(mod, "hcp_Cu"), tchain, pchain)
    assert built == [("MTKNPT", "twin")]


@pytest.mark.parametrize("tchain", [1, 3])
@pytest.mark.parametrize("pchain", [1, 3])
@pytest.mark.parametrize("mask", [(True, False, False), (False, False, True), (True, True, False),
                                  (True, False, True), (True, True, True)],
                         ids=["uniaxial-a", "uniaxial-c", "biaxial-a-b", "biaxial-a-c", "triaxial"])
def test_nose_hoover_chain__test_masked_npt(monkeypatch, asap3, built, tchain, pchain, mask):
    if not hasattr(jmd, "MaskedMTKNPT"):
        pytest.skip("not applicable: ASE's MaskedMTKNPT: jaxpto.md has no MaskedMTKNPT class (its integrator "
                    "jaxpto.integrators.mtk.mtk_npt(mask=...) exists)")
    mod = ase_module("test_nose_hoover_chain", monkeypatch)
    mod.test_masked_npt(asap3, ase_fixture(mod, "hcp_Cu"), tchain, pchain, mask)
    assert built == [("MaskedMTKNPT", "twin")]


# ---------------------------------------------------------------------------
# test_nvt_npt.py (10,000 steps each; the equilibration fixtures use ASE's NPTBerendsen)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nvt_npt():
    return importlib.import_module(f"{ASE_MD}.test_nvt_npt")


@pytest.fixture(scope="module")
def dynamicsparams(nvt_npt):
    return ase_fixture(nvt_npt, "dynamicsparams")


@pytest.fixture(scope="module")
def equilibrated(nvt_npt, asap3, dynamicsparams):
    return ase_fixture(nvt_npt, "equilibrated", asap3, dynamicsparams)


@pytest.fixture(scope="module")
def equilibrated_upper_tri(nvt_npt, asap3, dynamicsparams):
    return ase_fixture(nvt_npt, "equilibrated_upper_tri", asap3, dynamicsparams)


@pytest.fixture(scope="module")
def equilibrated_lower_tri(nvt_npt, asap3, dynamicsparams):
    return ase_fixture(nvt_npt, "equilibrated_lower_tri", asap3, dynamicsparams)


@pytest.mark.slow
@pytest.mark.parametrize("function,system,cls", [
    ("test_langevin", "equilibrated", "Langevin"),
    ("test_bussi", "equilibrated", "Bussi"),
    ("test_nosehoovernvt", "equilibrated", "NoseHooverChainNVT"),
    ("test_melchionna_cubic", "equilibrated", "MelchionnaNPT"),
    ("test_melchionna_upper_tri", "equilibrated_upper_tri", "MelchionnaNPT"),
    ("test_melchionna_lower_tri", "equilibrated_lower_tri", "MelchionnaNPT"),
])
def test_nvt_npt(request, monkeypatch, asap3, dynamicsparams, built, allraise, function, system, cls):
    mod = ase_module("test_nvt_npt", monkeypatch)
    getattr(mod, function)(asap3, request.getfixturevalue(system), dynamicsparams, allraise)
    assert built == [(cls, "twin")]


# ---------------------------------------------------------------------------
# test_bussi.py
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("function", ["test_bussi",
                                      "test_bussi_transfered_energy_conservation",
                                      "test_bussi_paranoia_check", "test_bussi_paranoia_check2"])
def test_bussi(request, monkeypatch, built, function):
    mod = ase_module("test_bussi", monkeypatch)
    getattr(mod, function)()
    assert built == [("Bussi", "twin")]


# ---------------------------------------------------------------------------
# test_md_logger.py, test_md_logger_interval.py (TIP3P: jaxpto's pure_callback path)
# ---------------------------------------------------------------------------

_LANGEVIN_KW = {"temperature_K": 300, "friction": 0.02, "fixcm": False}
_MD_CLS_AND_KWARGS = [(jmd.VelocityVerlet, {}), (jmd.Langevin, _LANGEVIN_KW)]  # ASE's md_cls_and_kwargs


@pytest.mark.parametrize("cls_and_kwargs", _MD_CLS_AND_KWARGS, ids=["VelocityVerlet", "Langevin"])
def test_md_logger__test_md(monkeypatch, testdir, built, cls_and_kwargs):
    mod = ase_module("test_md_logger", monkeypatch)
    mod.test_md(cls_and_kwargs, ase_fixture(mod, "atoms"), ase_fixture(mod, "calc"), testdir)
    assert built == [(cls_and_kwargs[0].__name__, "callback")]


@pytest.mark.parametrize("loginterval", [1, 2])
@pytest.mark.parametrize("cls,kwargs", _MD_CLS_AND_KWARGS, ids=["VelocityVerlet", "Langevin"])
def test_md_logger_interval__test_md_log_and_trajectory_length(monkeypatch, testdir, built, cls, kwargs,
                                                                loginterval):
    mod = ase_module("test_md_logger_interval", monkeypatch)
    mod.test_md_log_and_trajectory_length(cls, testdir, kwargs, loginterval)
    assert built == [(cls.__name__, "callback")]


# ---------------------------------------------------------------------------
# test_md_stepwise.py, test_idealgas.py, test_position_distribution.py
# ---------------------------------------------------------------------------


def test_md_stepwise__test_irun_start(monkeypatch, built):
    mod = ase_module("test_md_stepwise", monkeypatch)  # its `NPT` is ase.md.melchionna.MelchionnaNPT
    atoms0 = ase_fixture(mod, "fixture_atoms0")
    mod.test_irun_start(atoms0, ase_fixture(mod, "fixture_atoms", atoms0))
    assert built == [("MelchionnaNPT", "twin")]


def test_idealgas__test_idealgas(monkeypatch, built):
    mod = ase_module("test_idealgas", monkeypatch)
    mod.test_idealgas()
    assert built == [("VelocityVerlet", "callback")]


def test_position_distribution__test_position_distribution(request, monkeypatch, built):
    mod = ase_module("test_position_distribution", monkeypatch)
    mod.test_position_distribution()
    assert built == [("Langevin", "twin")]


# ---------------------------------------------------------------------------
# test_verlet_thermostats_asap.py: VelocityVerlet and Langevin are jaxpto's; the
# Andersen part is not applicable (jaxpto.md has no Andersen).
# ---------------------------------------------------------------------------


class _AndersenReached(Exception):
    pass


def _andersen_stub(*args, **kwargs):
    raise _AndersenReached


@pytest.mark.slow
def test_verlet_thermostats_asap__test_verlet_thermostats_asap(monkeypatch, asap3, testdir, allraise, built):
    mod = ase_module("test_verlet_thermostats_asap", monkeypatch)
    monkeypatch.setattr(mod, "Andersen", _andersen_stub)
    try:
        mod.test_verlet_thermostats_asap(asap3, testdir, allraise)
    except _AndersenReached:
        assert built == [("VelocityVerlet", "twin"), ("Langevin", "twin")]
        pytest.skip("VelocityVerlet and Langevin parts passed; the Andersen part is not applicable: "
                    "ASE's Andersen: jaxpto.md has no Andersen class")
    raise AssertionError("ASE's test returned without reaching its Andersen part")
