"""jaxpto.md swaps SevenNet's and CHGNet's own ASE calculators for the torch bridge, same weights.

``atoms.calc = SevenNetCalculator("7net-0")`` (or ``CHGNetCalculator(CHGNet 0.3.0)``) and
``from jaxpto.md import VelocityVerlet``: the run goes through the bridge around the calculator's
own torch model object (no callback, no second load) and follows ASE's VelocityVerlet with the
same calculator to 1e-4 A over 10 steps of 1 fs (float32 models). A calculator whose results the
bridge cannot reproduce (CHGNet with a non-default ``stress_weight``) falls back to the callback.
"""

import contextlib
import io
import warnings

import numpy as np
import pytest
from ase import units

import torch  # noqa: E402,F401  (a core dependency)

import bridge_harness as h

POS_TOL = 1e-4  # A, after 10 steps (float32 models)

_calcs = {}


def calculator(kind):
    if kind not in _calcs:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if kind == "sevenn":
                from sevenn.calculator import SevenNetCalculator
                _calcs[kind] = SevenNetCalculator("7net-0", device="cpu")
            else:
                from chgnet.model import CHGNet
                from chgnet.model.dynamics import CHGNetCalculator
                model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
                _calcs[kind] = CHGNetCalculator(model, use_device="cpu")
    return _calcs[kind]


@pytest.mark.parametrize("kind", ["sevenn", "chgnet"])
def test_calculator_swapped_for_bridge_matches_ase(kind):
    calc = calculator(kind)
    dyn, atoms, ase_positions = h.calculator_swap(calc, h.pto10, 10)
    efs = dyn._model_obj.compute.efs
    assert efs.model is calc.model  # the calculator's own loaded network, not a second load
    assert atoms.calc is calc
    assert np.abs(atoms.positions - ase_positions).max() <= POS_TOL

    # The calculator still works on its own after the bridge used its model (SevenNet: the
    # batched-graph mode is switched back), and agrees with the written-back results.
    h.assert_calculator_still_agrees(calc, atoms, 1e-4)


def test_bridge_disagreement_falls_back_to_callback():
    from chgnet.model.dynamics import CHGNetCalculator

    from jaxpto.md import VelocityVerlet

    base = calculator("chgnet")
    with contextlib.redirect_stdout(io.StringIO()):
        odd = CHGNetCalculator(base.model, use_device="cpu", stress_weight=2 * units.GPa)
    atoms = h.pto10()
    atoms.calc = odd
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    with pytest.warns(UserWarning, match="does not reproduce") as caught:
        dyn.run(0)
    assert any("pure_callback" in str(w.message) for w in caught)
    assert dyn.force_kind == "callback"
