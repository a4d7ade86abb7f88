"""Students against their teachers: MD step times at the study's size, measured in one run.

Two parts, both PbTiO3 n^3 supercells from the study's polar start (float32, 2 fs, 300 K):

* ``--students FILE:TEACHER ...`` -- each trained student (``jaxpto distill``'s ``student.npz``)
  and its teacher, the same jaxpto Langevin NVT step (friction 0.01/fs) at ``--size`` (default 5:
  625 atoms), R = 1, timed round-robin (``suite.interleaved_seconds_per_step``: one chunk of each
  per round, ``--repeats`` rounds, medians), so the ratio teacher/student compares like with like;
  plus the student's Melchionna NPT step and its 8-replica program (the PTO-test's sweeps: one
  program, 8 temperatures), from which the full protocol's MD time (2 x 50,000 steps of the
  8-replica program) is estimated.
* ``--scan`` -- the architecture choice: randomly initialised students of several descriptor
  sizes, one bare energy+forces+stress call on a pre-built neighbour list (many calls in one
  compiled loop), R = 1 and R = 8, at the same size.

Results: ``benchmarks/results/student-speed-cpu.json`` (``--out``). The machine is shared: the
JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import suite  # noqa: E402  (tunes glibc malloc for the torch teachers, as load_model does)

SCAN = {
    # name: StudentConfig settings (species PbTiO3); "chosen" is DEFAULT_ARCHITECTURE
    "small (5/4 A, 6+4x4)": dict(rc_radial=5.0, rc_angular=4.0, n_angular=4, basis_radial=6,
                                 basis_angular=6, l_max=4, hidden=(32,)),
    "previous (6/4.5 A, 8+6x4, 32)": dict(rc_radial=6.0, rc_angular=4.5, n_angular=6, basis_radial=8,
                                          basis_angular=8, l_max=4, hidden=(32,)),
    "wide (6/4.5 A, 8+6x4, 64)": dict(rc_radial=6.0, rc_angular=4.5, n_angular=6, basis_radial=8,
                                      basis_angular=8, l_max=4, hidden=(64,)),
    "deep (6/4.5 A, 8+6x4, 64x64)": dict(rc_radial=6.0, rc_angular=4.5, n_angular=6, basis_radial=8,
                                         basis_angular=8, l_max=4, hidden=(64, 64)),
    "l_max 3 (6/4.5 A, 8+6x3)": dict(rc_radial=6.0, rc_angular=4.5, n_angular=6, basis_radial=8,
                                     basis_angular=8, l_max=3, hidden=(32,)),
    "n_angular 8 (6/4.5 A, 8+8x4, 64)": dict(rc_radial=6.0, rc_angular=4.5, n_angular=8, basis_radial=8,
                                             basis_angular=8, l_max=4, hidden=(64,)),
    "angular 5 A (6/5 A, 8+6x4, 64)": dict(rc_radial=6.0, rc_angular=5.0, n_angular=6, basis_radial=8,
                                           basis_angular=8, l_max=4, hidden=(64,)),
    "large (6/5 A, 10+8x4, 64x64)": dict(rc_radial=6.0, rc_angular=5.0, n_angular=8, basis_radial=10,
                                         basis_angular=10, l_max=4, hidden=(64, 64)),
}


def _load(path_or_name):
    from bridges.registry import load_model

    return load_model(path_or_name)


def _bare(model, atoms, replicas, calls):
    """Warmed-up callable: ``calls`` model calls in one compiled loop (R replicas)."""
    import jax
    import jax.numpy as jnp

    from jaxpto import neighbors as nl

    pos = jnp.asarray(np.stack([atoms.positions] * replicas), jnp.float32)
    cell = jnp.asarray(np.stack([np.asarray(atoms.cell)] * replicas), jnp.float32)
    nbrs = nl.allocate(pos, cell, model.cutoff, skin=1.0)
    numbers = jnp.asarray(atoms.numbers)

    @jax.jit
    def loop(pos):
        def body(_, acc):
            out = model.compute(pos + acc[:, None, None] * 0.0, cell, numbers, nbrs)
            return acc + out.energy * 1e-30
        return jax.lax.fori_loop(0, calls, body, jnp.zeros(replicas, jnp.float32))

    def run():
        jax.block_until_ready(loop(pos))

    run()
    return run, calls


def scan(size, repeats, calls):
    import jax.numpy as jnp

    from jaxpto.potentials.student import StudentConfig, init_params, student_model

    atoms = suite._atoms(size)
    rows = []
    for name, arch in SCAN.items():
        cfg = StudentConfig(species=(8, 22, 82), angular_neighbors=48, **arch)
        params = init_params(cfg, seed=0)
        params["energy_scale"] = jnp.asarray(0.01, jnp.float32)
        model = student_model(params, cfg)
        runners = {f"R={r}": _bare(model, atoms, r, calls) for r in (1, 8)}
        t = suite.interleaved_seconds_per_step(runners, repeats)
        row = {"name": name, "config": cfg.to_dict(), "ms_per_call_R1": 1e3 * t["R=1"],
               "ms_per_call_R8": 1e3 * t["R=8"], "ms_per_replica_R8": 1e3 * t["R=8"] / 8}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def students(pairs, size, repeats, steps, teacher_steps):
    out = []
    atoms = suite._atoms(size)
    for pair in pairs:
        path, teacher_name = pair.rsplit(":", 1)
        student = _load(path)
        teacher = _load(teacher_name)
        t0 = time.perf_counter()
        runners = {"student_nvt": (suite.prepare_jaxpto(student, atoms, "nvt", 1, steps), steps),
                   "teacher_nvt": (suite.prepare_jaxpto(teacher, atoms, "nvt", 1, teacher_steps), teacher_steps)}
        setup = time.perf_counter() - t0
        t = suite.interleaved_seconds_per_step(runners, repeats)
        extra = {"student_npt": (suite.prepare_jaxpto(student, atoms, "npt", 1, steps), steps),
                 "student_nvt_R8": (suite.prepare_jaxpto(student, atoms, "nvt", 8, steps), steps),
                 "student_npt_R8": (suite.prepare_jaxpto(student, atoms, "npt", 8, steps), steps)}
        t.update(suite.interleaved_seconds_per_step(extra, repeats))
        full_protocol_h = 50_000 * (t["student_npt_R8"] + t["student_nvt_R8"]) / 3600.0
        row = {"student": path, "teacher": teacher_name, "n_atoms": len(atoms),
               **{f"{k}_ms_per_step": 1e3 * v for k, v in t.items()},
               "teacher_over_student_nvt": t["teacher_nvt"] / t["student_nvt"],
               "target_speedup": 100.0, "meets_target": bool(t["teacher_nvt"] / t["student_nvt"] >= 100.0),
               "full_protocol_md_hours_estimate": full_protocol_h, "setup_and_compile_s": setup,
               "student_steps_per_chunk": steps, "teacher_steps_per_chunk": teacher_steps, "repeats": repeats}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", nargs="*", default=[], help="STUDENT_FILE:TEACHER pairs")
    p.add_argument("--scan", action="store_true", help="time random students of several sizes (the choice)")
    p.add_argument("--size", type=int, default=5, help="n of the n^3 supercell (default 5: 625 atoms)")
    p.add_argument("--steps", type=int, default=50, help="student steps per timed chunk")
    p.add_argument("--teacher-steps", type=int, default=2, help="teacher steps per timed chunk")
    p.add_argument("--calls", type=int, default=20, help="bare calls per timed chunk (--scan)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(HERE, "results", "student-speed-cpu.json"))
    args = p.parse_args(argv)
    result = {"machine": suite.machine(), "load_average_before": os.getloadavg(), "size": args.size}
    if os.path.exists(args.out):
        with open(args.out) as fh:
            old = json.load(fh)
        result = {**old, **result}
    if args.scan:
        result["scan"] = scan(args.size, args.repeats, args.calls)
    if args.students:
        result["students"] = students(args.students, args.size, args.repeats, args.steps, args.teacher_steps)
    result["load_average_after"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
