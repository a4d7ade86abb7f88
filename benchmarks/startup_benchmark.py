"""Start-up cost of jaxpto.md against ASE, end to end, in fresh processes (issue #18).

Each scenario is a user script as ASE's documentation writes it; the only difference between the
two sides is the dynamics import (``from ase.md.verlet import VelocityVerlet`` or
``from jaxpto.md import VelocityVerlet``). Every run is a new Python process, timed from before
``exec`` to its exit (wall time, so imports, compilation and the steps all count); inside, the
script also reports the time of its first ``run`` call (for jaxpto: the compilation of the chunk
program and the first-configuration check, plus the steps) and the time of a second, identical
``run`` (the steps alone), so compile time is ``first - second``. The two sides are interleaved
(ASE, jaxpto, ASE, jaxpto, ...) so that they share the machine's state; the JSON records every
run and the medians.

    python benchmarks/startup_benchmark.py --repeats 3 --scenarios emt-1000 tutorial-verlet \
        --out benchmarks/results/startup-cpu.json

Scenarios (EMT unless named): ``emt-1000`` (VelocityVerlet, 1,000 steps of 5 fs, 100 Cu atoms),
``langevin-1000`` (the same with Langevin), ``tutorial-verlet`` (ASE's MD tutorial: VelocityVerlet with
an energy-printing observer), ``tutorial-cluster`` (an icosahedral cluster with a trajectory),
``tutorial-langevin`` (Langevin with ``Trajectory.write`` attached), ``docs-md`` (the md docs'
example: trajectory and log file), ``chgnet-1000`` (CHGNet 0.3.0, 1,000 steps on 100 atoms of PbTiO3:
slow on a CPU, ASE's side is minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORTS = {
    "ase": {"VelocityVerlet": "from ase.md.verlet import VelocityVerlet",
            "Langevin": "from ase.md.langevin import Langevin"},
    "jaxpto": {"VelocityVerlet": "from jaxpto.md import VelocityVerlet",
               "Langevin": "from jaxpto.md import Langevin"},
}

# Each body: {imp} is the dynamics import; the script times its two run() calls itself.
_TIMED = """
import time as _t
def _timed_runs(dyn, steps):
    t0 = _t.perf_counter(); dyn.run(steps); t1 = _t.perf_counter(); dyn.run(steps); t2 = _t.perf_counter()
    print("TIMES", t1 - t0, t2 - t1)
"""

SCENARIOS = {
    "emt-1000": ("VelocityVerlet", """
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase import units
{imp}
atoms = bulk("Cu", "fcc", a=3.6).repeat((5, 5, 4))  # 100 atoms
atoms.calc = EMT()
MaxwellBoltzmannDistribution(atoms, temperature_K=300)
dyn = VelocityVerlet(atoms, 5 * units.fs)
_timed_runs(dyn, 1000)
"""),
    "langevin-1000": ("Langevin", """
from ase.build import bulk
from ase.calculators.emt import EMT
from ase import units
{imp}
atoms = bulk("Cu", "fcc", a=3.6).repeat((5, 5, 4))
atoms.calc = EMT()
dyn = Langevin(atoms, 5 * units.fs, temperature_K=300, friction=0.002)
_timed_runs(dyn, 1000)
"""),
    "tutorial-verlet": ("VelocityVerlet", """
from ase import units
from ase.calculators.emt import EMT
from ase.lattice.cubic import FaceCenteredCubic
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
{imp}
atoms = FaceCenteredCubic(directions=[[1, 0, 0], [0, 1, 0], [0, 0, 1]], symbol="Cu", size=(3, 3, 3), pbc=True)
atoms.calc = EMT()
MaxwellBoltzmannDistribution(atoms, temperature_K=300)
dyn = VelocityVerlet(atoms, 5 * units.fs)

def printenergy(a=atoms):
    epot = a.get_potential_energy() / len(a)
    ekin = a.get_kinetic_energy() / len(a)
    print("Energy per atom: Epot = %.3feV  Ekin = %.3feV (T=%3.0fK)  Etot = %.3feV"
          % (epot, ekin, ekin / (1.5 * units.kB), epot + ekin))

dyn.attach(printenergy, interval=10)
printenergy()
_timed_runs(dyn, 200)
"""),
    "tutorial-cluster": ("VelocityVerlet", """
from ase import units
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
{imp}
atoms = Icosahedron("Cu", noshells=4)
atoms.center(vacuum=5.0)
atoms.calc = EMT()
MaxwellBoltzmannDistribution(atoms, temperature_K=1000)
dyn = VelocityVerlet(atoms, 5 * units.fs, trajectory="cluster.traj", logfile="cluster.log", loginterval=10)
_timed_runs(dyn, 200)
"""),
    "tutorial-langevin": ("Langevin", """
from ase import units
from ase.calculators.emt import EMT
from ase.io.trajectory import Trajectory
from ase.lattice.cubic import FaceCenteredCubic
{imp}
atoms = FaceCenteredCubic(directions=[[1, 0, 0], [0, 1, 0], [0, 0, 1]], symbol="Cu", size=(3, 3, 3), pbc=True)
atoms.calc = EMT()
dyn = Langevin(atoms, 5 * units.fs, temperature_K=800, friction=0.002)
traj = Trajectory("moldyn3.traj", "w", atoms)
dyn.attach(traj.write, interval=50)
_timed_runs(dyn, 500)
"""),
    "docs-md": ("VelocityVerlet", """
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
{imp}
atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((3, 3, 3))
atoms.calc = EMT()
MaxwellBoltzmannDistribution(atoms, temperature_K=300)
dyn = VelocityVerlet(atoms, 5.0 * units.fs, trajectory="md.traj", logfile="md.log")
_timed_runs(dyn, 100)
"""),
    "chgnet-1000": ("VelocityVerlet", """
import warnings
warnings.simplefilter("ignore")
from ase import units
from chgnet.model import CHGNet
from chgnet.model.dynamics import CHGNetCalculator
{imp}
from ase import Atoms
cell = 3.97
atoms = Atoms("PbTiO3", scaled_positions=[[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]],
              cell=[cell] * 3, pbc=True).repeat((5, 2, 2))  # 100 atoms
atoms.rattle(0.02, seed=1)
atoms.calc = CHGNetCalculator(CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False), use_device="cpu")
dyn = VelocityVerlet(atoms, 1 * units.fs)
_timed_runs(dyn, 1000)
"""),
}


def script(name: str, side: str) -> str:
    cls, body = SCENARIOS[name]
    return _TIMED + textwrap.dedent(body).format(imp=IMPORTS[side][cls])


def run_once(name: str, side: str, env: dict, timeout: float, root: Path = ROOT) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "script.py"
        path.write_text(script(name, side))
        env = dict(env, PYTHONPATH=str(root) + os.pathsep + env.get("PYTHONPATH", ""))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(path)], cwd=tmp, env=env, capture_output=True, text=True,
                              timeout=timeout)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name}/{side} failed:\n{proc.stderr[-3000:]}")
    first, second = map(float, [ln for ln in proc.stdout.splitlines() if ln.startswith("TIMES")][-1].split()[1:])
    # the whole script minus its second run: what a user's script (one run) costs end to end
    return {"wall_s": wall, "first_run_s": first, "second_run_s": second, "one_run_script_s": wall - second,
            "compile_s_estimate": first - second}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenarios", nargs="+", default=["emt-1000"], choices=sorted(SCENARIOS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--cache-dir", default=None,
                   help="also run jaxpto with JAX's persistent compilation cache in this (new) folder")
    p.add_argument("--before", default=None, metavar="DIR",
                   help="also run jaxpto from this checkout (e.g. a git worktree of an older commit), "
                        "interleaved with the others: a before/after comparison in one run")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/startup-cpu.json"))
    args = p.parse_args(argv)
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    sides = [("ase", "ase", env, ROOT), ("jaxpto", "jaxpto", env, ROOT)]
    if args.before:
        sides.append(("jaxpto-before", "jaxpto", env, Path(args.before).resolve()))
    if args.cache_dir:
        sides.append(("jaxpto-cache", "jaxpto", dict(env, JAX_COMPILATION_CACHE_DIR=args.cache_dir,
                                                       JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"), ROOT))
    results = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "python": sys.version.split()[0], "repeats": args.repeats, "before": args.before,
               "load_average_start": os.getloadavg(), "scenarios": {}}
    for name in args.scenarios:
        runs = {label: [] for label, *_ in sides}
        for rep in range(args.repeats):
            for label, side, side_env, root in sides:  # interleaved: the sides share the machine's state
                r = run_once(name, side, side_env, args.timeout, root)
                runs[label].append(r)
                print(f"{name:18s} {label:13s} rep {rep}: wall {r['wall_s']:.2f} s, first run {r['first_run_s']:.2f} s, "
                      f"second run {r['second_run_s']:.2f} s", flush=True)
        med = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in runs.items()}
        results["scenarios"][name] = {"runs": runs, "median": med,
                                      "jaxpto_over_ase_one_run_script": med["jaxpto"]["one_run_script_s"]
                                      / med["ase"]["one_run_script_s"]}
        if args.before:
            results["scenarios"][name]["before_over_ase_one_run_script"] = (
                med["jaxpto-before"]["one_run_script_s"] / med["ase"]["one_run_script_s"])
    results["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps({n: s["median"] | {"ratio": s["jaxpto_over_ase_one_run_script"]}
                      for n, s in results["scenarios"].items()}, indent=1))


if __name__ == "__main__":
    main()
