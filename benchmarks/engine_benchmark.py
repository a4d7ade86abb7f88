"""Engine benchmark: jaxpto integrators with JAX-native potentials vs ASE's own loop.

For each potential (EMT, Lennard-Jones), system size (32 .. 32,000 atoms) and
replica count R (1, 8, 64) it measures, in one run on one machine:

* jaxpto: median wall time of a compiled chunk of steps (after a warm-up chunk
  that includes compilation), for velocity Verlet (NVE), Langevin NVT and
  Melchionna NPT; reported as ms/step, steps/s and atom-steps/s (R*N*steps/s);
* ASE: the same integrators (``VelocityVerlet``, ``Langevin``, ``NPT``) with
  ASE's own calculators (``EMT``, ``LennardJones``), R = 1, a few steps.

The ratio ``ase_ms_per_step / jaxpto_ms_per_step`` compares like with like
(same potential parameters, same atoms, same integrator, R = 1). Results go to
``benchmarks/results/engine-<host>.json`` with the machine description.

Usage::

    python benchmarks/engine_benchmark.py                 # full matrix (CPU: ~20-40 min)
    python benchmarks/engine_benchmark.py --quick         # small sizes only
    python benchmarks/engine_benchmark.py --max-atoms 4000 --replicas 1 8

The matrix is capped by ``--max-total-atoms`` (R*N) so that it fits the
machine; skipped points are listed in the JSON with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np


def machine_description():
    import jax

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
    }
    try:
        import ase

        info["ase"] = ase.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def make_atoms(potential: str, n_target: int):
    """A rattled fcc crystal with about ``n_target`` atoms (4 atoms per cubic cell)."""
    from ase.build import bulk

    k = max(1, round((n_target / 4) ** (1 / 3)))
    if potential == "emt":
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (k, k, k)
    else:  # Argon-like LJ crystal
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True) * (k, k, k)
    atoms.rattle(0.02, seed=1)
    return atoms


def potentials(name: str):
    """(jaxpto model, ASE calculator factory) with identical parameters."""
    if name == "emt":
        from ase.calculators.emt import EMT

        from jaxpto.potentials.emt import emt

        return emt(), EMT
    if name == "lj":
        from ase.calculators.lj import LennardJones

        from jaxpto.potentials.pair import lennard_jones

        params = dict(sigma=3.4, epsilon=0.0104, rc=8.5)
        return lennard_jones(**params), (lambda: LennardJones(**params))
    raise ValueError(name)


def jaxpto_integrator(kind, force_fn, dt, state, T):
    from ase import units

    from jaxpto.integrators.langevin import langevin
    from jaxpto.integrators.melchionna import melchionna_npt
    from jaxpto.integrators.verlet import velocity_verlet

    if kind == "nve":
        integ = velocity_verlet(force_fn, dt)
        return integ, integ.init(state)
    if kind == "langevin":
        integ = langevin(force_fn, dt, fixcm=False)
        return integ, integ.init(state, temperature_K=T, friction=0.01 / units.fs)
    if kind == "npt":
        integ = melchionna_npt(force_fn, dt, mask=np.eye(3))
        return integ, integ.init(state, temperature_K=T, ttime=25 * units.fs,
                                 pfactor=75.0**2 * units.fs, externalstress=0.0)
    raise ValueError(kind)


def ase_dynamics(kind, atoms, dt, T):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.npt import NPT
    from ase.md.verlet import VelocityVerlet

    if kind == "nve":
        return VelocityVerlet(atoms, dt)
    if kind == "langevin":
        return Langevin(atoms, dt, temperature_K=T, friction=0.01 / units.fs, fixcm=False)
    return NPT(atoms, dt, temperature_K=T, ttime=25 * units.fs, pfactor=75.0**2 * units.fs,
               externalstress=0.0, mask=np.eye(3))


def time_jaxpto(model, atoms, kind, R, steps, repeats, dt, T):
    import jax

    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from jaxpto.simulate import run_chunk, state_from_atoms

    reps = []
    for r in range(R):
        a = atoms.copy()
        MaxwellBoltzmannDistribution(a, temperature_K=T, rng=np.random.default_rng(r))
        reps.append(a)
    t0 = time.perf_counter()
    state, force_fn = state_from_atoms(reps, model)
    integ, state = jaxpto_integrator(kind, force_fn, dt, state, T)
    state, _ = run_chunk(integ, state, steps)  # compile + warm-up
    jax.block_until_ready(state.positions)
    setup = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        state, _ = run_chunk(integ, state, steps)
        jax.block_until_ready(state.positions)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    finite = bool(np.all(np.isfinite(np.asarray(state.positions))))
    return {"ms_per_step": 1e3 * med / steps, "setup_s": setup, "finite": finite,
            "neighbor_builds": int(np.asarray(state.neighbors.n_builds).max()),
            "neighbor_capacity": int(state.neighbors.capacity)}


def time_ase(calc_factory, atoms, kind, steps, dt, T):
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    a = atoms.copy()
    MaxwellBoltzmannDistribution(a, temperature_K=T, rng=np.random.default_rng(0))
    a.calc = calc_factory()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dyn = ase_dynamics(kind, a, dt, T)
        dyn.run(1)  # first force call, NPT initialisation
        t = time.perf_counter()
        dyn.run(steps)
        return {"ms_per_step": 1e3 * (time.perf_counter() - t) / steps}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--potentials", nargs="+", default=["emt", "lj"])
    parser.add_argument("--integrators", nargs="+", default=["nve", "langevin", "npt"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 256, 2048, 4000, 32000])
    parser.add_argument("--replicas", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--max-total-atoms", type=int, default=70_000,
                        help="skip points with R*N above this (CPU memory/time)")
    parser.add_argument("--ase-max-atoms", type=int, default=32_000)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed jaxpto chunk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ase-steps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="sizes 32 and 256 only, R = 1 and 8")
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.replicas = [32, 256], [1, 8]
    import jax

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    from ase import units

    dt, T = 2 * units.fs, 300.0
    results = {"benchmark": "engine", "machine": machine_description(), "dtype":
               "float64" if args.float64 else "float32", "dt_fs": 2.0, "temperature_K": T,
               "points": [], "skipped": []}
    for pot in args.potentials:
        model, calc_factory = potentials(pot)
        for n in args.sizes:
            atoms = make_atoms(pot, n)
            N = len(atoms)
            for kind in args.integrators:
                ase_ms = None
                if N <= args.ase_max_atoms:
                    steps = max(1, args.ase_steps if N < 5000 else 2)
                    ase_ms = time_ase(calc_factory, atoms, kind, steps, dt, T)["ms_per_step"]
                for R in args.replicas:
                    if R * N > args.max_total_atoms:
                        results["skipped"].append({"potential": pot, "n_atoms": N, "replicas": R,
                                                   "integrator": kind, "reason": "R*N above --max-total-atoms"})
                        continue
                    steps = args.steps if R * N < 20000 else max(5, args.steps // 4)
                    j = time_jaxpto(model, atoms, kind, R, steps, args.repeats, dt, T)
                    point = {
                        "potential": pot, "integrator": kind, "n_atoms": N, "replicas": R,
                        "jaxpto_ms_per_step": j["ms_per_step"],
                        "jaxpto_steps_per_s": 1e3 / j["ms_per_step"],
                        "jaxpto_atom_steps_per_s": R * N * 1e3 / j["ms_per_step"],
                        "jaxpto_setup_s": j["setup_s"], "finite": j["finite"],
                        "neighbor_builds": j["neighbor_builds"],
                        "ase_ms_per_step": ase_ms if R == 1 else None,
                        "ase_over_jaxpto": (ase_ms / j["ms_per_step"]) if (ase_ms and R == 1) else None,
                    }
                    results["points"].append(point)
                    print(json.dumps(point), flush=True)
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   f"engine-{jax.default_backend()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
