"""``jaxpto verify``: every integrator against ASE's, step for step, in float64.

Each case starts ASE's integrator and jaxpto's from the same atoms and momenta,
with the same forces (the JAX EMT on both sides: ASE gets it through
:class:`~jaxpto.calculator.JaxptoCalculator`), runs ``steps`` steps and reports
the largest relative deviation of positions, momenta and cell, plus the wall
time of both. A second block repeats the comparison with ASE's own ``EMT``
calculator on the ASE side, which checks the JAX EMT and the integrator
together (deviations there are bounded by the ~1e-13 force agreement amplified
by the dynamics).
"""

from __future__ import annotations

import json
import time
import warnings

import numpy as np


def _cases():
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.melchionna import MelchionnaNPT
    from ase.md.nose_hoover_chain import IsotropicMTKNPT, MTKNPT, NoseHooverChainNVT
    from ase.md.verlet import VelocityVerlet

    from jaxpto.integrators.langevin import langevin
    from jaxpto.integrators.melchionna import melchionna_npt
    from jaxpto.integrators.mtk import isotropic_mtk_npt, mtk_npt
    from jaxpto.integrators.nose_hoover_chain import nose_hoover_chain_nvt
    from jaxpto.integrators.verlet import velocity_verlet

    fs = units.fs
    npt = dict(temperature_K=300.0, ttime=25 * fs, pfactor=75.0**2 * fs, externalstress=0.0)
    mtk = dict(temperature_K=300.0, pressure_au=0.0, tdamp=50 * fs, pdamp=250 * fs)
    return {
        "VelocityVerlet": (lambda a, dt: VelocityVerlet(a, dt),
                           lambda f, s, dt: velocity_verlet(f, dt)),
        "Langevin(T=0)": (lambda a, dt: Langevin(a, dt, temperature_K=0.0, friction=0.01 / fs, fixcm=True),
                          lambda f, s, dt: langevin(f, dt, fixcm=True),
                          dict(temperature_K=0.0, friction=0.01 / fs)),
        "NoseHooverChainNVT": (lambda a, dt: NoseHooverChainNVT(a, dt, temperature_K=300.0, tdamp=50 * fs),
                               lambda f, s, dt: nose_hoover_chain_nvt(f, dt),
                               dict(temperature_K=300.0, tdamp=50 * fs)),
        "MelchionnaNPT(mask=eye3)": (lambda a, dt: MelchionnaNPT(a, dt, mask=np.eye(3), **npt),
                                     lambda f, s, dt: melchionna_npt(f, dt, mask=np.eye(3)), npt),
        "MTKNPT": (lambda a, dt: MTKNPT(a, dt, **mtk), lambda f, s, dt: mtk_npt(f, dt), mtk),
        "IsotropicMTKNPT": (lambda a, dt: IsotropicMTKNPT(a, dt, **mtk),
                            lambda f, s, dt: isotropic_mtk_npt(f, dt), mtk),
    }


def verify(steps: int = 200, size: int = 2, native_ase_emt: bool = True, out: str | None = None,
           echo=print) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from jaxpto.calculator import JaxptoCalculator
    from jaxpto.potentials.emt import emt
    from jaxpto.simulate import run, state_from_atoms

    model = emt()
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (size, size, size)
    atoms.rattle(0.03, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(7))
    Stationary(atoms)
    dt = 1.0 * units.fs
    results = {"system": f"Cu{len(atoms)} fcc, rattled, 300 K", "steps": steps, "dt_fs": 1.0,
               "dtype": "float64", "cases": []}
    echo(f"jaxpto verify: {results['system']}, {steps} steps of {1.0} fs, float64")
    echo(f"{'integrator':28s} {'ASE side':10s} {'max rel dev':>12s} {'ASE s':>8s} {'jaxpto s':>9s}")
    sides = [("JAX EMT", lambda: JaxptoCalculator(model))]
    if native_ase_emt:
        sides.append(("ASE EMT", EMT))
    for name, spec in _cases().items():
        ase_factory, jax_factory = spec[0], spec[1]
        params = spec[2] if len(spec) > 2 else {}
        for side, calc in sides:
            a = atoms.copy()
            a.calc = calc()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dyn = ase_factory(a, dt)
                t0 = time.perf_counter()
                dyn.run(steps)
                t_ase = time.perf_counter() - t0
            state, force_fn = state_from_atoms(atoms, model)
            integ = jax_factory(force_fn, state, dt)
            state = integ.init(state, **params) if params else integ.init(state)
            t0 = time.perf_counter()
            state, _ = run(integ, state, steps)
            jax.block_until_ready(state.positions)
            t_jax = time.perf_counter() - t0

            def rel(x, ref):
                ref = np.asarray(ref)
                return float(np.abs(np.asarray(x) - ref).max() / np.abs(ref).max())

            dev = max(rel(state.positions[0], a.positions), rel(state.momenta[0], a.get_momenta()),
                      rel(state.cell[0], a.cell.array))
            results["cases"].append({"integrator": name, "ase_calculator": side, "max_relative_deviation": dev,
                                     "ase_seconds": t_ase, "jaxpto_seconds_incl_compile": t_jax})
            echo(f"{name:28s} {side:10s} {dev:12.2e} {t_ase:8.2f} {t_jax:9.2f}")
    worst = max(c["max_relative_deviation"] for c in results["cases"] if c["ase_calculator"] == "JAX EMT")
    results["worst_same_forces"] = worst
    results["passed"] = bool(worst <= 1e-8)
    echo(f"worst deviation with identical forces: {worst:.2e} ({'PASS' if results['passed'] else 'FAIL'}: "
         "threshold 1e-8)")
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
        echo(f"wrote {out}")
    return results
