"""Drop-in benchmark: the reference study's ASE NPT script with SevenNet / CHGNet, ASE vs jaxpto.

The same script is run twice per model, once with ``from ase.md.npt import NPT`` and once with
``from jaxpto.md import NPT`` (only the import differs; :func:`npt_script` takes the class), on a
polar PbTiO3 supercell (per 5-atom cell, a = 3.90 A, c = 4.15 A; Pb at the corner, Ti +0.035 c,
apical O +0.10 c, equatorial O +0.115 c from the ideal cubic positions), with the model's own ASE
calculator (``SevenNetCalculator("7net-0")``, ``CHGNetCalculator(CHGNet 0.3.0)``), which jaxpto
swaps for its torch bridge around the same loaded model. The script, as in the study::

    MaxwellBoltzmannDistribution(atoms, temperature_K=300)
    dyn = NPT(atoms, 2 * units.fs, temperature_K=300, externalstress=0, ttime=25 * units.fs,
              pfactor=75.0**2 * units.fs, mask=np.eye(3))
    dyn.attach(Trajectory(path, "w", atoms).write, interval=10)
    dyn.run(steps)

Before the runs the calculator is called 3 times (untimed, ``warmup_s``): SevenNet's first
calls on a fresh model are several times slower (TorchScript/e3nn warm-up), which would otherwise
be charged to whichever run comes first. For the timing, ``run`` is split into ``run(1)`` (``first_s``: ASE's first force call and step;
jaxpto's build, bridge check against the calculator and compilation) and ``run(steps)``, whose
wall time gives ``steps_per_s``. ASE and jaxpto runs are interleaved (order alternating over
``--repeats``) with the same starting velocities, so a busy machine slows both alike.
``speedup`` = jaxpto steps/s / ASE steps/s (median over repeats). Also recorded: jaxpto's force
path (``force_kind``, expected ``"bridge"``) and the largest position difference between the ASE
and jaxpto runs after ``1 + steps`` steps (float32 jaxpto state).

Usage::

    python benchmarks/dropin_benchmark.py                    # 5x5x5 = 625 atoms, 4 steps
    python benchmarks/dropin_benchmark.py --cells 2 --steps 2 --models 7net-0
    python benchmarks/dropin_benchmark.py --steps 20 --repeats 3 --torch-device cuda

Writes ``benchmarks/results/dropin-<jax backend>.json`` (or ``--out``) with the machine description.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_benchmark import machine_description  # noqa: E402

MODELS = ("7net-0", "chgnet-0.3.0")


def polar_pto(cells: int):
    """Polar tetragonal PbTiO3, ``cells`` x ``cells`` x ``cells`` 5-atom cells (a = 3.90, c = 4.15 A)."""
    from ase import Atoms

    a, c = 3.90, 4.15
    frac = [(0.0, 0.0, 0.0),            # Pb at the corner
            (0.5, 0.5, 0.5 + 0.035),    # Ti
            (0.5, 0.5, 0.0 + 0.10),     # apical O
            (0.5, 0.0, 0.5 + 0.115),    # equatorial O
            (0.0, 0.5, 0.5 + 0.115)]    # equatorial O
    cell = Atoms("PbTiO3", scaled_positions=frac, cell=[a, a, c], pbc=True)
    return cell.repeat((cells, cells, cells))


def make_calculator(name: str, torch_device: str):
    """The model's own ASE calculator, loaded once (shared by the ASE and jaxpto runs)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if name.startswith("7net"):
            from sevenn.calculator import SevenNetCalculator

            kw = {"modal": "PBE"} if name == "7net-mf-0" else {}
            return SevenNetCalculator(name, device=torch_device, **kw)
        if name.startswith("chgnet"):
            from chgnet.model import CHGNet
            from chgnet.model.dynamics import CHGNetCalculator

            dev = None if torch_device == "auto" else torch_device
            model = CHGNet.load(model_name=name.removeprefix("chgnet-"), use_device=dev, verbose=False)
            return CHGNetCalculator(model, use_device=dev)
    raise ValueError(f"unknown model {name!r}")


def warm_up(calc, template, n: int = 3) -> float:
    """Untimed calculator calls on rattled copies (TorchScript/e3nn's first calls are several times slower)."""
    t = time.perf_counter()
    for k in range(n):
        atoms = template.copy()
        atoms.rattle(0.01, seed=100 + k)
        atoms.calc = calc
        atoms.get_forces()
        atoms.get_stress()
    return time.perf_counter() - t


def npt_script(NPT, atoms, calc, steps: int, traj_path: str, seed: int):
    """The reference NPT script; ``NPT`` is ASE's or jaxpto's class (the only difference)."""
    from ase import units
    from ase.io.trajectory import Trajectory
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    atoms.calc = calc
    dyn = NPT(atoms, 2 * units.fs, temperature_K=300, externalstress=0, ttime=25 * units.fs,
              pfactor=75.0**2 * units.fs, mask=np.eye(3))
    traj = Trajectory(traj_path, "w", atoms)
    dyn.attach(traj.write, interval=10)
    t0 = time.perf_counter()
    dyn.run(1)
    t1 = time.perf_counter()
    dyn.run(steps)
    t2 = time.perf_counter()
    traj.close()
    return dyn, {"first_s": t1 - t0, "run_s": t2 - t1, "steps_per_s": steps / (t2 - t1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=5, help="supercell edge in 5-atom cells (default 5: 625 atoms)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (after run(1); default 4)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved ASE/jaxpto pairs per model")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help=f"default: {' '.join(MODELS)}")
    parser.add_argument("--torch-device", default="auto", help="torch device of the calculators (auto: CUDA if any)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/dropin-<backend>.json)")
    args = parser.parse_args(argv)

    import jax
    import torch
    from ase.md.npt import NPT as AseNPT

    from jaxpto.md import NPT as JaxNPT

    template = polar_pto(args.cells)
    results = {"benchmark": "dropin-npt", "machine": machine_description(), "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(), "n_atoms": len(template), "cells": args.cells,
               "steps": args.steps, "repeats": args.repeats, "models": []}
    tmp = tempfile.mkdtemp(prefix="dropin-")
    for name in args.models:
        t = time.perf_counter()
        calc = make_calculator(name, args.torch_device)
        entry = {"model": name, "calculator": type(calc).__name__, "load_s": time.perf_counter() - t}
        entry.update({"warmup_s": warm_up(calc, template), "ase": [], "jaxpto": []})
        for rep in range(args.repeats):
            order = [("ase", AseNPT), ("jaxpto", JaxNPT)]
            if rep % 2:
                order.reverse()
            final = {}
            for label, cls in order:
                atoms = template.copy()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    dyn, timing = npt_script(cls, atoms, calc, args.steps,
                                             os.path.join(tmp, f"{name}-{label}-{rep}.traj"), args.seed + rep)
                if label == "jaxpto":
                    timing["force_kind"] = dyn.force_kind
                    timing["warnings"] = sorted({str(w.message)[:200] for w in caught
                                                 if not issubclass(w.category, DeprecationWarning)})
                timing["final_energy_eV"] = float(atoms.get_potential_energy())
                final[label] = atoms.positions.copy()
                entry[label].append(timing)
                print(json.dumps({"model": name, "impl": label, "repeat": rep, **timing}), flush=True)
            entry.setdefault("max_position_diff_A", []).append(float(np.abs(final["ase"] - final["jaxpto"]).max()))
        ase_sps = statistics.median(r["steps_per_s"] for r in entry["ase"])
        jax_sps = statistics.median(r["steps_per_s"] for r in entry["jaxpto"])
        entry.update({"ase_steps_per_s": ase_sps, "jaxpto_steps_per_s": jax_sps, "speedup": jax_sps / ase_sps})
        results["models"].append(entry)
        print(f"{name}: {len(template)} atoms, ASE {ase_sps:.3f} steps/s, jaxpto {jax_sps:.3f} steps/s "
              f"(x{jax_sps / ase_sps:.2f}), force path {entry['jaxpto'][0]['force_kind']}", flush=True)

    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"dropin-{jax.default_backend()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
