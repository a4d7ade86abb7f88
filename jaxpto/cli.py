"""The ``jaxpto`` command line.

* ``jaxpto pto-test``: the whole PTO-test (static, phonons, NPT sweep, NVT polarization, speed)
  for one or more models, writing ``OUT/results.json``, figures and ``OUT/report.md``;
  ``--quick`` runs a small protocol on a laptop CPU; without ``--model`` it uses CHGNet 0.3.0,
  whose weights ship with the chgnet package (offline).
* ``jaxpto relax | phonons | npt-sweep | nvt-polarization``: one part each, same options and the
  same ``results.json``.
* ``jaxpto verify``: every integrator against ASE, step for step, in float64.
* ``jaxpto distill``: a fast JAX-native student of any model (teacher MD data, training,
  active-sampling rounds, validation report); ``--data`` trains or fine-tunes on labelled files.

Running the same command again resumes: finished parts are kept, interrupted sweeps continue.
"""

from __future__ import annotations

import argparse
import sys

PART_COMMANDS = {"relax": ("static",), "phonons": ("static", "phonons"), "npt-sweep": ("npt",),
                 "nvt-polarization": ("nvt",)}


def _floats(text: str) -> tuple:
    try:
        vals = tuple(float(x) for x in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one temperature")
    return vals


def _ints(text: str) -> tuple:
    try:
        return tuple(int(x) for x in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def _add_pto_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", default=None,
                   help="model name or checkpoint path (repeat for several models; default chgnet-0.3.0). "
                        "`python -c 'import jaxpto; print(jaxpto.known_models())'` lists the names")
    p.add_argument("--out", default="pto-test", help="output directory (default ./pto-test)")
    p.add_argument("--quick", action="store_true",
                   help="small protocol for a laptop CPU (40 atoms, 300/600/900 K, 500 steps); every output, "
                        "indicative numbers")
    p.add_argument("--temperatures", type=_floats, help="temperatures in K, e.g. 300,400,500 (default 300..1000 by 100)")
    p.add_argument("--steps", type=int, help="MD steps per sweep (default 50000)")
    p.add_argument("--supercell", type=int, help="supercell repetitions n (n^3 cells; default 5 = 625 atoms)")
    p.add_argument("--timestep", type=float, help="time step in fs (default 2)")
    p.add_argument("--average-last-ps", type=float, help="averaging window in ps (default 50)")
    p.add_argument("--ttime", type=float, help="NPT thermostat time in fs (default 25)")
    p.add_argument("--pfactor", type=float, help="NPT barostat pfactor in ASE units (default 75.0**2*units.fs)")
    p.add_argument("--friction", type=float, help="Langevin friction in 1/fs (default 0.01)")
    p.add_argument("--charges", choices=["study", "zhong1994"], help="Born charges for the polarization")
    p.add_argument("--chunk-steps", type=int, help="steps per compiled chunk = checkpoint interval (default 500)")
    p.add_argument("--record-every", type=int, help="record observables every this many steps (default 10)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--fmax", type=float, help="relaxation force threshold in eV/A (default 1e-3)")
    p.add_argument("--ase-steps", type=int, help="ASE NPT steps timed for the speed comparison (default 200)")
    p.add_argument("--dtype", choices=["float32", "float64"],
                   help="engine float type (default float32; float64 needs JAX_ENABLE_X64=1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _protocol(args):
    import dataclasses

    from jaxpto.workflows.pto_test import quick_protocol, study_protocol

    base = quick_protocol() if args.quick else study_protocol()
    sweep_kw = {}
    for arg, field in (("temperatures", "temperatures_k"), ("steps", "steps"), ("supercell", "supercell"),
                       ("timestep", "timestep_fs"), ("average_last_ps", "average_last_ps"), ("ttime", "ttime_fs"),
                       ("pfactor", "pfactor"), ("friction", "friction_per_fs"), ("charges", "charges"),
                       ("chunk_steps", "chunk_steps"), ("record_every", "record_every"), ("seed", "seed")):
        v = getattr(args, arg)
        if v is not None:
            sweep_kw[field] = v
    top = {}
    if args.fmax is not None:
        top["fmax"] = args.fmax
    if args.ase_steps is not None:
        top["ase_steps"] = args.ase_steps
    if sweep_kw.get("steps") is not None and "chunk_steps" not in sweep_kw:
        # keep the chunk a divisor-friendly size for short runs
        sweep_kw["chunk_steps"] = min(base.npt.chunk_steps, sweep_kw["steps"])
    return dataclasses.replace(base, npt=dataclasses.replace(base.npt, **sweep_kw),
                               nvt=dataclasses.replace(base.nvt, **sweep_kw), **top)


def _run_pto(args, parts, parser) -> int:
    import numpy as np

    from jaxpto.workflows.pto_test import DEFAULT_MODEL, run_pto_test

    try:
        protocol = _protocol(args)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    dtype = None
    if args.dtype == "float64":
        import jax

        if not jax.config.jax_enable_x64:
            jax.config.update("jax_enable_x64", True)
        dtype = np.float64
    elif args.dtype == "float32":
        dtype = np.float32
    models = args.model or [DEFAULT_MODEL]
    data = run_pto_test(models, args.out, protocol, parts=parts, progress=not args.no_progress, dtype=dtype)
    print(f"results: {args.out}/results.json, report: {args.out}/report.md")
    return 0 if data["models"] else 1


def _architecture(text: str) -> dict:
    """``key=value,key=value`` (hidden layers as 32x32) into StudentConfig settings."""
    out = {}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--architecture expects key=value items, got {item!r}")
        key, value = (x.strip() for x in item.split("=", 1))
        try:
            if key == "hidden":
                out[key] = tuple(int(v) for v in value.split("x"))
            elif key.startswith("rc_"):
                out[key] = float(value)
            else:
                out[key] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--architecture: bad value {value!r} for {key}") from None
    return out


def _add_distill(sub) -> None:
    d = sub.add_parser("distill", help="train a fast JAX-native student of any model (or on labelled data)")
    d.add_argument("--teacher", help="teacher model name or file (any model load_model takes), e.g. chgnet-0.3.0")
    d.add_argument("--out", required=True, help="output directory (data, student.npz, report.md, figures)")
    d.add_argument("--structure", help="crystal to distill on instead of PbTiO3 (any file ASE reads)")
    d.add_argument("--data", action="append", default=[],
                   help="labelled extxyz (energy eV, forces eV/A, stress eV/A^3); repeatable. Frames with an info "
                        "'validation' flag are split by it, else every 5th frame is held out")
    d.add_argument("--configurations", action="append", default=[],
                   help="structures for the teacher to label (any file ASE reads; its own labels are ignored), e.g. "
                        "another teacher's OUT/data/*.extxyz: one teacher call per frame, for teachers too slow "
                        "for MD; repeatable, resumable")
    d.add_argument("--configurations-every", type=int, default=1,
                   help="label every k-th frame of each trajectory in --configurations (default 1)")
    d.add_argument("--init", help="student file to fine-tune (with --data: the study's fine-tuning remedy)")
    d.add_argument("--temperatures", type=_floats, help="teacher-MD temperatures in K (default 300,500,...,1300)")
    d.add_argument("--steps", type=int,
                   help="teacher-MD steps of the small cells (default 400; large cells half; 0: no teacher MD)")
    d.add_argument("--steps-large", type=int, help="teacher-MD steps of the large cells (0: no large cells)")
    d.add_argument("--static-cells", type=int, help="5-atom cells labelled on a (a, c/a, polar) grid (default 300)")
    d.add_argument("--rounds", type=int, help="active-sampling rounds with the student's own MD (default 1)")
    d.add_argument("--epochs", type=int, help="training epochs of the first student (default 200)")
    d.add_argument("--round-epochs", type=int, help="epochs after each round (default 60)")
    d.add_argument("--round-frames", type=_ints,
                   help="frames labelled per student trajectory in each round, for the 40/135/625-atom cells "
                        "(default 12,8,4; 0 skips that size)")
    d.add_argument("--batch-atoms", type=int, help="atoms per minibatch (default 320)")
    d.add_argument("--learning-rate", type=float,
                   help="initial Adam learning rate (default 3e-3; with --init a tenth of it unless given)")
    d.add_argument("--architecture", type=_architecture,
                   help="student settings, e.g. rc_radial=6,rc_angular=4.5,basis_radial=8,n_angular=6,l_max=4,hidden=32")
    d.add_argument("--seed", type=int, default=0, help="random seed (data, split, initial weights, batches)")
    d.add_argument("--no-report", action="store_true", help="skip the validation report")
    d.add_argument("--report-only", action="store_true", help="only (re)write the validation report of OUT/student.npz")


def _run_distill(args, parser) -> int:
    import dataclasses

    from jaxpto.workflows.distill import DEFAULT_ARCHITECTURE, DistillSettings, distill

    if not args.teacher and not args.data:
        parser.error("give --teacher (a model to distill) and/or --data (labelled extxyz files)")
    if args.seed is not None and args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    for name in ("steps", "static_cells", "rounds", "epochs", "round_epochs", "batch_atoms", "configurations_every"):
        v = getattr(args, name)
        if v is not None and v < (0 if name in ("steps", "static_cells", "rounds") else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {v}")
    base = DistillSettings(teacher=args.teacher)
    kw = {"data": tuple(args.data), "init": args.init, "seed": args.seed,
          "configurations": tuple(args.configurations), "configurations_every": args.configurations_every}
    if args.configurations and not args.teacher:
        parser.error("--configurations needs a --teacher to label them")
    if args.structure:
        kw["structure"] = args.structure
    if args.temperatures:
        kw["temperatures"] = args.temperatures
    if args.steps is not None:
        kw["steps_small"] = args.steps
        kw["steps_large"] = max(10, 10 * round(args.steps / 2 / 10)) if args.steps else 0
        if args.steps % 10:
            parser.error(f"--steps must be a multiple of 10 (frames are recorded every 10 steps), got {args.steps}")
    if args.steps_large is not None:
        if args.steps_large < 0 or args.steps_large % 10:
            parser.error(f"--steps-large must be a multiple of 10 (or 0), got {args.steps_large}")
        kw["steps_large"] = args.steps_large
    if args.static_cells is not None:
        kw["static_cells"] = args.static_cells
    if args.rounds is not None:
        kw["rounds"] = args.rounds
    plan = {}
    if args.round_epochs:
        plan["epochs"] = args.round_epochs
    if args.round_frames is not None:
        if len(args.round_frames) != len(base.round_plan.supercells) or min(args.round_frames) < 0:
            parser.error(f"--round-frames needs {len(base.round_plan.supercells)} numbers >= 0 (40/135/625 atoms), "
                         f"got {args.round_frames}")
        keep = [k for k, n in enumerate(args.round_frames) if n > 0]
        plan.update(supercells=tuple(base.round_plan.supercells[k] for k in keep),
                    steps=tuple(base.round_plan.steps[k] for k in keep),
                    frames_per_trajectory=tuple(args.round_frames[k] for k in keep))
    if plan:
        kw["round_plan"] = dataclasses.replace(base.round_plan, **plan)
    if args.architecture:
        arch = {**DEFAULT_ARCHITECTURE, **args.architecture}
        kw["architecture"] = tuple(sorted(arch.items()))
    tkw = {k: v for k, v in (("epochs", args.epochs), ("batch_atoms", args.batch_atoms),
                             ("learning_rate", args.learning_rate)) if v is not None}
    tkw["seed"] = args.seed
    kw["train"] = dataclasses.replace(base.train, **tkw)
    try:
        settings = dataclasses.replace(base, **kw)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if not args.report_only:
        summary = distill(settings, args.out)
        print(f"student: {summary['student']}")
    if not args.no_report:
        from jaxpto.workflows.distill_report import write_report

        path = write_report(args.out)
        print(f"report: {path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxpto", description="JAX-native molecular dynamics for ML force fields")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="compare every integrator with ASE's, step for step, in float64")
    v.add_argument("--steps", type=int, default=200, help="MD steps per case (default 200)")
    v.add_argument("--size", type=int, default=2, help="Cu fcc supercell repetitions (4*size^3 atoms)")
    v.add_argument("--no-native-ase-emt", action="store_true",
                   help="skip the second comparison against ASE's own EMT calculator")
    v.add_argument("--out", default="jaxpto-verify.json", help="JSON results file")
    pto = sub.add_parser("pto-test", help="the PbTiO3 benchmark of Li et al. (2025): static, phonons, NPT, NVT, speed")
    _add_pto_options(pto)
    pto.add_argument("--parts", default="static,phonons,npt,nvt,speed",
                     help="comma-separated parts to run (default all: static,phonons,npt,nvt,speed)")
    for cmd, parts in PART_COMMANDS.items():
        sp = sub.add_parser(cmd, help=f"PTO-test part(s): {', '.join(parts)}")
        _add_pto_options(sp)
    _add_distill(sub)
    args = parser.parse_args(argv)
    if args.command == "distill":
        return _run_distill(args, parser)
    if args.command == "verify":
        if args.steps < 1 or args.size < 1:
            parser.error("--steps and --size must be >= 1")
        from jaxpto.verify import verify

        res = verify(steps=args.steps, size=args.size, native_ase_emt=not args.no_native_ase_emt, out=args.out)
        return 0 if res["passed"] else 1
    if args.command == "pto-test":
        parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
        from jaxpto.workflows.pto_test import PARTS

        bad = [p for p in parts if p not in PARTS]
        if bad:
            parser.error(f"unknown part(s) {bad}; choose from {', '.join(PARTS)}")
        return _run_pto(args, parts, parser)
    return _run_pto(args, PART_COMMANDS[args.command], parser)


if __name__ == "__main__":
    sys.exit(main())
