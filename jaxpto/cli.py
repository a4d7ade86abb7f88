"""The ``jaxpto`` command line.

* ``jaxpto pto-test``: the whole PTO-test (static, phonons, NPT sweep, NVT polarization, speed)
  for one or more models, writing ``OUT/results.json``, figures and ``OUT/report.md``;
  ``--quick`` runs a small protocol on a laptop CPU; without ``--model`` it uses CHGNet 0.3.0,
  whose weights ship with the chgnet package (offline).
* ``jaxpto relax | phonons | npt-sweep | nvt-polarization``: one part each, same options and the
  same ``results.json``.
* ``jaxpto verify``: every integrator against ASE, step for step, in float64.
* ``jaxpto export-lammps MODEL --out DIR``: a LAMMPS run folder (a ``pair_style jax/kk`` bundle for
  JAX-native models, the family's own pair style for torch models) with the PTO-test's NPT/NVT
  protocols as LAMMPS decks (:mod:`jaxpto.workflows.lammps_export`).
* ``jaxpto distill``: a fast JAX-native student of any model (teacher MD data, training,
  active-sampling rounds, validation report); ``--data`` trains or fine-tunes on labelled files.
* ``jaxpto check-model NAME|PATH``: is a model's energy, forces and stress one consistent,
  invariant, batched function (finite differences, batched == single, rotation/translation,
  a short NVE run)? One verdict table; ``--out`` writes it as JSON.

Running the same command again resumes: finished parts are kept, interrupted sweeps continue.

Errors in what the user gave (a flag's value, a model name, an unwritable ``--out``, a damaged
checkpoint) end the ``jaxpto`` command with one line naming the problem and exit status 2
(:func:`console_main`); ``--debug`` (anywhere on the line) or ``JAXPTO_DEBUG=1`` shows the Python
traceback instead. :func:`main` itself raises, for callers from Python.
"""

from __future__ import annotations

import argparse
import math
import os
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
    bad = [v for v in vals if not (math.isfinite(v) and v > 0)]
    if bad:
        raise argparse.ArgumentTypeError(f"temperatures must be positive (K), got {', '.join(f'{v:g}' for v in bad)}")
    return vals


def _ints(text: str) -> tuple:
    try:
        return tuple(int(x) for x in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def _number(kind, low: float, inclusive: bool, what: str):
    """An argparse type: a ``kind`` number >= ``low`` (or > ``low``); argparse names the flag in the error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or (value < low if inclusive else value <= low):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what  # argparse's fallback message uses it
    return parse


POSITIVE_INT = _number(int, 1, True, "a positive integer")
NON_NEGATIVE_INT = _number(int, 0, True, "a non-negative integer")
POSITIVE_FLOAT = _number(float, 0.0, False, "a positive number")
NON_NEGATIVE_FLOAT = _number(float, 0.0, True, "a non-negative number")


def _add_pto_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", default=None,
                   help="model name or checkpoint path (repeat for several models; default chgnet-0.3.0). "
                        "`python -c 'import jaxpto; print(jaxpto.known_models())'` lists the names")
    p.add_argument("--out", default="pto-test", help="output directory (default ./pto-test)")
    p.add_argument("--quick", action="store_true",
                   help="small protocol for a laptop CPU (40 atoms, 300/600/900 K, 500 steps); every output, "
                        "indicative numbers")
    p.add_argument("--temperatures", type=_floats, help="temperatures in K, e.g. 300,400,500 (default 300..1000 by 100)")
    p.add_argument("--steps", type=POSITIVE_INT, help="MD steps per sweep (default 50000)")
    p.add_argument("--supercell", type=POSITIVE_INT, help="supercell repetitions n (n^3 cells; default 5 = 625 atoms)")
    p.add_argument("--timestep", type=POSITIVE_FLOAT, help="time step in fs (default 2)")
    p.add_argument("--average-last-ps", type=POSITIVE_FLOAT,
                   help="averaging window in ps (default 50; at most the second half of the run)")
    p.add_argument("--ttime", type=POSITIVE_FLOAT, help="NPT thermostat time in fs (default 25)")
    p.add_argument("--pfactor", type=POSITIVE_FLOAT, help="NPT barostat pfactor in ASE units (default 75.0**2*units.fs)")
    p.add_argument("--friction", type=NON_NEGATIVE_FLOAT, help="Langevin friction in 1/fs (default 0.01)")
    p.add_argument("--charges", choices=["study", "zhong1994"], help="Born charges for the polarization")
    p.add_argument("--chunk-steps", type=POSITIVE_INT, help="steps per compiled chunk = checkpoint interval (default 500)")
    p.add_argument("--record-every", type=POSITIVE_INT, help="record observables every this many steps (default 10)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, help="random seed (default 0)")
    p.add_argument("--replica-exchange", type=POSITIVE_INT, metavar="K", dest="replica_exchange",
                   help="temperature replica exchange between neighbouring temperatures every K steps, on the "
                        "device (NPT and NVT sweeps; default off)")
    p.add_argument("--fmax", type=POSITIVE_FLOAT, help="relaxation force threshold in eV/A (default 1e-3)")
    p.add_argument("--ase-steps", type=POSITIVE_INT, help="ASE NPT steps timed for the speed comparison (default 200)")
    p.add_argument("--dtype", choices=["float32", "float64"],
                   help="engine float type (default float32; float64 needs JAX_ENABLE_X64=1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--devices", default=None,
                   help="shard the sweeps' temperatures over this many devices, or 'all' (default: one device); "
                        "the numbers are the same as on one device")
    dist = p.add_argument_group("several processes (jax.distributed; every process runs the same command)")
    dist.add_argument("--coordinator", help="host:port of process 0, e.g. localhost:12355")
    dist.add_argument("--num-processes", type=int, help="number of processes")
    dist.add_argument("--process-id", type=int, help="this process's id, 0 .. num-processes - 1")
    dist.add_argument("--local-devices", type=int,
                      help="CPU only: host devices per process (XLA's --xla_force_host_platform_device_count)")


def _protocol(args):
    import dataclasses

    from jaxpto.workflows.pto_test import quick_protocol, study_protocol

    base = quick_protocol() if args.quick else study_protocol()
    sweep_kw = {}
    for arg, field in (("temperatures", "temperatures_k"), ("steps", "steps"), ("supercell", "supercell"),
                       ("timestep", "timestep_fs"), ("average_last_ps", "average_last_ps"), ("ttime", "ttime_fs"),
                       ("pfactor", "pfactor"), ("friction", "friction_per_fs"), ("charges", "charges"),
                       ("chunk_steps", "chunk_steps"), ("record_every", "record_every"), ("seed", "seed"),
                       ("replica_exchange", "swap_interval")):
        v = getattr(args, arg, None)  # export-lammps has no --replica-exchange (its decks run one replica each)
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
    protocol = dataclasses.replace(base, npt=dataclasses.replace(base.npt, **sweep_kw),
                                   nvt=dataclasses.replace(base.nvt, **sweep_kw), **top)
    if args.average_last_ps is not None:
        # The default window (50 ps) is cut to short runs with a warning; one asked for explicitly must fit.
        s = protocol.npt
        run_ps = s.steps * s.timestep_fs * 1e-3
        if args.average_last_ps > run_ps:
            raise ValueError(f"--average-last-ps {args.average_last_ps:g} is longer than the run ({s.steps} steps "
                             f"x {s.timestep_fs:g} fs = {run_ps:g} ps); the averages are taken over at most the "
                             f"run's second half ({0.5 * run_ps:g} ps): give at most that, or more --steps")
    return protocol


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
    devices = args.devices
    if devices is not None and devices != "all":
        try:
            devices = int(devices)
        except ValueError:
            parser.error(f"--devices must be a number or 'all', got {devices!r}")
    if args.coordinator and devices is None:
        devices = "all"  # a multi-process run shards over every process's devices
    data = run_pto_test(models, args.out, protocol, parts=parts, progress=not args.no_progress, dtype=dtype,
                        devices=devices)
    from jaxpto.sharding import is_main_process

    if is_main_process():
        print(f"results: {args.out}/results.json, report: {args.out}/report.md")
    return 0 if data["models"] else 1


def _add_export_lammps(sub) -> None:
    p = sub.add_parser("export-lammps", help="a model + the PTO-test NPT/NVT protocols as a LAMMPS run folder")
    p.add_argument("model", help="model name (jaxpto.known_models()) or checkpoint path")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quick", action="store_true", help="the --quick protocol's sizes (40 atoms, 3 temperatures)")
    p.add_argument("--ensembles", default="npt,nvt", help="decks to write: npt, nvt or npt,nvt (default)")
    p.add_argument("--structure", help="ASE-readable structure file used for both decks instead of PbTiO3")
    for flag, kind, text in (("--temperatures", _floats, "temperatures in K (default 300..1000 by 100)"),
                             ("--steps", POSITIVE_INT, "MD steps (default 50000)"),
                             ("--supercell", POSITIVE_INT, "PbTiO3 supercell repetitions (default 5)"),
                             ("--timestep", POSITIVE_FLOAT, "time step in fs (default 2)"),
                             ("--average-last-ps", POSITIVE_FLOAT, "averaging window in ps (default 50)"),
                             ("--ttime", POSITIVE_FLOAT, "NPT thermostat time in fs (default 25)"),
                             ("--pfactor", POSITIVE_FLOAT, "NPT barostat pfactor in ASE units (default 75.0**2*units.fs)"),
                             ("--friction", NON_NEGATIVE_FLOAT, "Langevin friction in 1/fs (default 0.01)"),
                             ("--record-every", POSITIVE_INT, "record every this many steps (default 10)"),
                             ("--seed", NON_NEGATIVE_INT, "velocity seed (default 0)")):
        p.add_argument(flag, type=kind, help=text)
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword for load_model, e.g. sigma=3.4 (repeatable; numbers and true/false parsed)")
    p.add_argument("--platform", choices=["cuda", "cpu"], default="cuda",
                   help="PJRT platform of the bundle: cuda (GPU LAMMPS) or cpu (host KOKKOS build); default cuda")
    p.add_argument("--precision", choices=["float32", "float64"], default="float32", help="bundle precision")
    p.add_argument("--ranks", type=int, default=1, help="MPI ranks the capacities are sized for (slabs; default 1)")
    p.add_argument("--max-atoms", type=int, help="per-rank atom capacity (owned + ghosts); overrides the estimate")
    p.add_argument("--max-edges", type=int, help="per-rank edge capacity; overrides the estimate")
    p.add_argument("--neighbors-per-atom", type=int, help="neighbour slots per atom; overrides the estimate")
    p.add_argument("--no-check", action="store_true", help="skip running the bundle on the structure at export")


def _model_kwargs(items) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-arg expects KEY=VALUE, got {item!r}")
        low = value.strip().lower()
        if low in ("true", "false"):
            out[key] = low == "true"
        else:
            try:
                out[key] = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                out[key] = value
    return out


def _run_export_lammps(args, parser) -> int:
    import argparse as _argparse

    from jaxpto.workflows.lammps_bundle import Capacities
    from jaxpto.workflows.lammps_export import export_lammps

    ensembles = tuple(e.strip() for e in args.ensembles.split(",") if e.strip())
    given = [args.max_atoms, args.max_edges, args.neighbors_per_atom]
    if any(v is not None for v in given) and not all(v is not None for v in given):
        parser.error("--max-atoms, --max-edges and --neighbors-per-atom go together (or none: estimated)")
    if args.precision == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    try:
        full = _argparse.Namespace(**vars(args), charges=None, chunk_steps=None, fmax=None, ase_steps=None)
        protocol = _protocol(full)
        structure = None
        if args.structure:
            from ase.io import read

            structure = read(args.structure)
        caps = Capacities(*given) if given[0] is not None else None
        mapping = export_lammps(args.model, args.out, protocol, ensembles=ensembles, structure=structure,
                                model_kwargs=_model_kwargs(args.model_arg), platform=args.platform,
                                precision=args.precision, ranks=args.ranks, capacities=caps,
                                check=not args.no_check)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"jaxpto export-lammps: error: {exc}\n")
    for c in mapping.get("check", []):
        print(f"bundle check ({c['ranks']} rank(s)): |dE|/atom = {c['energy_error_per_atom']:.2e} eV, "
              f"max |dF| = {c['max_force_error']:.2e} eV/A")
    print(f"LAMMPS run folder: {args.out} (README.md, run.sh, in.*.lmp)")
    return 0


def _add_check_model(sub) -> None:
    cm = sub.add_parser("check-model", help="check a model: forces = -dE/dr, stress = dE/dstrain, batched == single, "
                                            "rotation/translation invariance, NVE drift")
    cm.add_argument("model", help="model name or checkpoint path (`python -c 'import jaxpto; print(jaxpto.known_models())'`)")
    cm.add_argument("--out", help="write the verdict table as JSON to this file")
    cm.add_argument("--structure", help="ASE-readable structure to check on (default: a small strained, rattled "
                                        "PbTiO3 cell, or an fcc cell of an element the model covers)")
    cm.add_argument("--nve-steps", type=int, default=100, help="steps of the NVE run (1 fs each; default 100)")
    cm.add_argument("--family", help="model family of a checkpoint file (default: detected)")
    cm.add_argument("--device", help="torch device of a torch model (default: follows JAX's platform)")


def _run_check_model(args, parser) -> int:
    if args.nve_steps < 1:
        parser.error("--nve-steps must be >= 1")
    from jaxpto.workflows.model_check import main_check

    kw = {k: v for k, v in (("family", args.family), ("device", args.device)) if v is not None}
    try:
        report = main_check(args.model, out=args.out, structure=args.structure, nve_steps=args.nve_steps, **kw)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        parser.error(str(exc))
    return 0 if report.passed else 1


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
    d.add_argument("--configurations-every", type=POSITIVE_INT, default=1,
                   help="label every k-th frame of each trajectory in --configurations (default 1)")
    d.add_argument("--init", help="student file to fine-tune (with --data: the study's fine-tuning remedy)")
    d.add_argument("--temperatures", type=_floats, help="teacher-MD temperatures in K (default 300,500,...,1300)")
    d.add_argument("--steps", type=NON_NEGATIVE_INT,
                   help="teacher-MD steps of the small cells (default 400; large cells half; 0: no teacher MD)")
    d.add_argument("--steps-large", type=NON_NEGATIVE_INT, help="teacher-MD steps of the large cells (0: no large cells)")
    d.add_argument("--static-cells", type=NON_NEGATIVE_INT, help="5-atom cells labelled on a (a, c/a, polar) grid (default 300)")
    d.add_argument("--rounds", type=NON_NEGATIVE_INT, help="active-sampling rounds with the student's own MD (default 1)")
    d.add_argument("--epochs", type=POSITIVE_INT, help="training epochs of the first student (default 200)")
    d.add_argument("--round-epochs", type=POSITIVE_INT, help="epochs after each round (default 60)")
    d.add_argument("--round-frames", type=_ints,
                   help="frames labelled per student trajectory in each round, for the 40/135/625-atom cells "
                        "(default 12,8,4; 0 skips that size)")
    d.add_argument("--batch-atoms", type=POSITIVE_INT, help="atoms per minibatch (default 320)")
    d.add_argument("--learning-rate", type=POSITIVE_FLOAT,
                   help="initial Adam learning rate (default 3e-3; with --init a tenth of it unless given)")
    d.add_argument("--architecture", type=_architecture,
                   help="student settings, e.g. rc_radial=6,rc_angular=4.5,basis_radial=8,n_angular=6,l_max=4,hidden=64")
    d.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="random seed (data, split, initial weights, batches)")
    d.add_argument("--no-report", action="store_true", help="skip the validation report")
    d.add_argument("--report-only", action="store_true", help="only (re)write the validation report of OUT/student.npz")


def _run_distill(args, parser) -> int:
    import dataclasses

    from jaxpto.workflows.distill import DEFAULT_ARCHITECTURE, DistillSettings, distill

    if not args.teacher and not args.data:
        parser.error("give --teacher (a model to distill) and/or --data (labelled extxyz files)")
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
        if args.steps_large % 10:
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
    _add_export_lammps(sub)
    _add_check_model(sub)
    _add_distill(sub)
    args = parser.parse_args(argv)
    if getattr(args, "coordinator", None) or getattr(args, "num_processes", None) is not None:
        if not (args.coordinator and args.num_processes and args.process_id is not None):
            parser.error("a multi-process run needs --coordinator, --num-processes and --process-id together")
        from jaxpto.sharding import initialize_distributed

        try:
            initialize_distributed(args.coordinator, args.num_processes, args.process_id, args.local_devices)
        except ValueError as exc:
            parser.error(str(exc))
    elif getattr(args, "local_devices", None):
        import os

        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.local_devices}").strip()
    if args.command == "distill":
        return _run_distill(args, parser)
    if args.command == "export-lammps":
        return _run_export_lammps(args, parser)
    if args.command == "check-model":
        return _run_check_model(args, parser)
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


# What a user's bad input raises (flags, names, files, checkpoints); anything else is a bug: traceback.
USER_ERRORS = (ValueError, TypeError, OSError)


def console_main(argv=None) -> int:
    """The ``jaxpto`` command: :func:`main` with errors in the user's input turned into one line
    (``jaxpto: error: ...``) and exit status 2. ``--debug`` anywhere in ``argv`` (removed before
    parsing) or the environment variable ``JAXPTO_DEBUG=1`` re-raises them with the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("JAXPTO_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv)
    except USER_ERRORS as exc:
        if debug:
            raise
        command = next((a for a in argv if not a.startswith("-")), "")
        message = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.strerror:  # without the "[Errno N]" prefix
            message = exc.strerror + (f": {exc.filename}" if exc.filename else "")
        sys.stderr.write(f"jaxpto{(' ' + command) if command else ''}: error: {message}\n"
                         "(run with --debug or JAXPTO_DEBUG=1 for the Python traceback)\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("jaxpto: interrupted; run the same command again to resume\n")
        return 130


if __name__ == "__main__":
    sys.exit(console_main())
