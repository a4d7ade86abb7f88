"""``jaxpto distill``: a fast JAX-native student of any model, with its validation report.

Stages (each writes its output into ``OUT`` as soon as it is done; running the same command
again skips what is there, and an interrupted teacher MD continues from its last chunk):

1. **Teacher data** (``OUT/data/*.extxyz``): batched jaxpto MD with the teacher
   (:func:`jaxpto.workflows.distill_data.default_md_groups`: Langevin NVT and the study's
   Melchionna NPT, tetragonal/cubic/strained starts, 40 and 135 atoms, 300-1300 K), labelled by
   the teacher in the same steps, plus 5-atom cells on a random (a, c/a, polar amplitude) grid
   labelled in one batched call; ``--configurations file`` adds structures from a file labelled
   by the teacher (one call per frame, checkpointed: for teachers too slow for MD, e.g.
   another teacher's data). ``--data file.extxyz`` adds (or, without a teacher, is) the
   user's own labelled data: the study's fine-tuning remedy.
2. **Training** (:mod:`jaxpto.workflows.distill_train`): optax on energy, forces and stress,
   train/validation split by trajectory.
3. **Rounds** (active sampling): the student runs its own batched MD (40-625 atoms, NVT and NPT,
   the same temperatures); frames it visits, including the last ones before any blow-up, are
   labelled by the teacher in batched calls and added to the data; the student is trained
   further. Labelling a frame costs one teacher call, where teacher MD costs one call per step,
   so rounds buy most of the data for little teacher time, and they put data where the
   student's own dynamics go wrong.
4. **The student file** (``OUT/student.npz``, :func:`jaxpto.potentials.student.save_student`)
   with the teacher, data, settings, errors and timings in its header; it loads with
   ``jaxpto.load_model("OUT/student.npz")``.
5. **Validation report** (``OUT/report.md`` + figures, :mod:`jaxpto.workflows.distill_report`):
   held-out errors per temperature, parity plots, student beside teacher on the relaxed cell and
   the phonons, short NPT/NVT series, and an MD stability run at 1.3x the sweep's top temperature.

Units are ASE's throughout (eV, Angstrom, eV/A, eV/A^3 with ASE's sign, K, fs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from jaxpto.potentials.student import StudentConfig
from jaxpto.workflows import distill_data as data_mod
from jaxpto.workflows.distill_train import TrainSettings

SCHEMA = "jaxpto.distill/1"

#: The architecture chosen by measurement for PbTiO3 (``benchmarks/student_speed.py`` and
#: ``benchmarks/results/students/chgnet-0.3.0/architecture-scan.md``): radial 6 A, angular 4.5 A,
#: l <= 4, one hidden layer of 64. The students underfit (training and held-out force errors
#: agree), and 64 neurons instead of 32 cost no measurable step time (the per-edge descriptor
#: dominates) while lowering the held-out force error at equal training time; a larger
#: descriptor (10+8x4) was slower per step and per epoch and no better.
DEFAULT_ARCHITECTURE = dict(rc_radial=6.0, rc_angular=4.5, n_angular=6, basis_radial=8,
                            basis_angular=8, l_max=4, hidden=(64,))


@dataclasses.dataclass(frozen=True)
class RoundPlan:
    """One active-sampling round: student MD groups, frames labelled per trajectory, epochs."""

    supercells: tuple = ((2, 2, 2), (3, 3, 3), (5, 5, 5))
    steps: tuple = (2000, 1000, 400)
    frames_per_trajectory: tuple = (12, 8, 4)
    epochs: int = 60

    def to_dict(self) -> dict:
        return {k: [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class DistillSettings:
    """Everything a distillation run depends on (recorded in the student file)."""

    teacher: str | None = "chgnet-0.3.0"
    structure: str | None = None  # a file ASE reads; default PbTiO3
    data: tuple = ()  # users' labelled extxyz files
    configurations: tuple = ()  # files of structures the teacher labels (their own labels ignored)
    configurations_every: int = 1  # label every k-th frame of each trajectory in them
    temperatures: tuple = data_mod.DEFAULT_TEMPERATURES
    steps_small: int = 400
    steps_large: int = 200
    record_every: int = 10
    static_cells: int = 300
    rounds: int = 1
    round_plan: RoundPlan = RoundPlan()
    architecture: tuple = tuple(sorted(DEFAULT_ARCHITECTURE.items()))
    train: TrainSettings = TrainSettings()
    init: str | None = None  # a student file to fine-tune
    seed: int = 0
    max_atoms_per_call: int = 1000

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["architecture"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.architecture}
        d["round_plan"] = self.round_plan.to_dict()
        d["train"] = self.train.to_dict()
        return d

    def finetune_learning_rate(self) -> float:
        """Initial learning rate when fine-tuning (``init``): a tenth of a fresh run's unless the
        user set ``train.learning_rate`` away from its default."""
        default = TrainSettings().learning_rate
        lr = self.train.learning_rate
        return lr / 10 if lr == default else lr

    def teacher_data_fingerprint(self) -> dict:
        return {"teacher": self.teacher, "structure": self.structure, "temperatures": list(self.temperatures),
                "steps_small": self.steps_small, "steps_large": self.steps_large, "record_every": self.record_every,
                "seed": self.seed}


def _logger(out: str):
    path = os.path.join(out, "distill.log")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(path, "a") as fh:
            fh.write(line + "\n")

    return log


def _load_structure(path: str | None):
    if path is None:
        return None
    from ase.io import read

    try:
        atoms = read(path)
    except Exception as exc:
        raise ValueError(f"cannot read --structure {path}: {type(exc).__name__}: {exc}") from None
    if not all(atoms.pbc) or atoms.cell.rank != 3:
        raise ValueError(f"--structure {path}: a periodic crystal (3D cell, pbc) is needed")
    return atoms


def md_groups(settings: DistillSettings, base=None) -> tuple:
    """The teacher-MD plan for these settings (PbTiO3 or the user's structure)."""
    if base is None:
        return data_mod.default_md_groups(settings.temperatures, steps_small=settings.steps_small,
                                          steps_large=settings.steps_large, record_every=settings.record_every)
    small = data_mod.supercell_for(base, 40)
    large = data_mod.supercell_for(base, 130)
    return data_mod.default_md_groups(settings.temperatures, small=small, large=large,
                                      steps_small=settings.steps_small, steps_large=settings.steps_large,
                                      record_every=settings.record_every, structure=True)


def teacher_data(teacher, settings: DistillSettings, out: str, log, timings: dict) -> list:
    """Stage 1: teacher MD of every group and the labelled static cells (cached in ``OUT/data``)."""
    base = _load_structure(settings.structure)
    data_dir = os.path.join(out, "data")
    os.makedirs(data_dir, exist_ok=True)
    frames = []
    stamp = data_mod._fingerprint(settings.teacher_data_fingerprint())
    for group in md_groups(settings, base):
        path = os.path.join(data_dir, f"teacher-md-{group.name}-{stamp}.extxyz")
        if os.path.exists(path):
            got = data_mod.read_frames(path)
            log(f"teacher MD {group.name}: {len(got)} frames from {path}")
        else:
            t0 = time.perf_counter()
            log(f"teacher MD {group.name}: {len(group.trajectories)} replicas x {group.steps} steps, "
                f"{int(np.prod(group.supercell)) * (len(base) if base is not None else 5)} atoms each")
            got = data_mod.run_md_group(teacher, group, seed=settings.seed, base=base,
                                        checkpoint=os.path.join(out, "checkpoints", f"md-{group.name}-{stamp}.npz"),
                                        log=log, label=f"teacher-md-{group.name}")
            for at in got:
                at.info["teacher"] = settings.teacher
            data_mod.write_frames(path, got)
            timings[f"teacher_md_{group.name}_s"] = time.perf_counter() - t0
            log(f"teacher MD {group.name}: {len(got)} frames in {time.perf_counter() - t0:.0f} s -> {path}")
        frames.extend(got)
    if base is None and settings.static_cells > 0:
        path = os.path.join(data_dir, f"static-{settings.static_cells}-{stamp}.extxyz")
        if os.path.exists(path):
            got = data_mod.read_frames(path)
        else:
            t0 = time.perf_counter()
            cells = data_mod.static_cells(settings.static_cells, np.random.default_rng([settings.seed, 5]))
            got = data_mod.label_frames(teacher, cells, max_atoms_per_call=settings.max_atoms_per_call,
                                        teacher_name=settings.teacher)
            data_mod.write_frames(path, got)
            timings["teacher_static_s"] = time.perf_counter() - t0
        log(f"static cells: {len(got)} frames ({path})")
        frames.extend(got)
    for source in settings.configurations:
        frames.extend(relabelled(teacher, settings, source, out, log, timings))
    return frames


def relabelled(teacher, settings: DistillSettings, source: str, out: str, log, timings: dict) -> list:
    """The structures of ``source`` (every ``configurations_every``-th frame per trajectory)
    labelled by the teacher, cached in ``OUT/data`` and resumable chunk by chunk."""
    st = os.stat(source)
    stamp = data_mod._fingerprint({"teacher": settings.teacher, "file": os.path.abspath(source), "size": st.st_size,
                                   "every": settings.configurations_every})
    name = os.path.splitext(os.path.basename(source))[0]
    path = os.path.join(out, "data", f"relabel-{name}-{stamp}.extxyz")
    if os.path.exists(path):
        got = data_mod.read_frames(path)
        log(f"relabelled {name}: {len(got)} frames from {path}")
        return got
    todo = data_mod.read_configurations(source, every=settings.configurations_every)
    log(f"relabelling {len(todo)} structures of {source} with {settings.teacher}")
    t0 = time.perf_counter()
    got = data_mod.label_frames_resumable(teacher, todo, path, log=log, label=f"relabel {name}",
                                          max_atoms_per_call=settings.max_atoms_per_call,
                                          teacher_name=settings.teacher)
    timings[f"relabel_{name}_s"] = time.perf_counter() - t0
    log(f"relabelled {name}: {len(got)} frames in {time.perf_counter() - t0:.0f} s -> {path}")
    return got


def run_data_stage(settings: DistillSettings, out: str) -> list:
    """Stage 1 alone (e.g. to generate data in the background before choosing an architecture)."""
    from bridges.registry import load_model

    os.makedirs(out, exist_ok=True)
    log = _logger(out)
    teacher = load_model(settings.teacher)
    return teacher_data(teacher, settings, out, log, {})


# ---------------------------------------------------------------------------------------------
# Student configuration from data
# ---------------------------------------------------------------------------------------------


def shortest_pair_distances(frames, species, cutoff: float = 3.0) -> dict:
    """Shortest distance (A) of every unordered species pair over the frames (ASE neighbour lists)."""
    from ase.neighborlist import neighbor_list

    best: dict = {}
    for at in frames:
        i, j, d = neighbor_list("ijd", at, cutoff)
        zi, zj = at.numbers[i], at.numbers[j]
        for a, b, r in zip(zi, zj, d):
            key = (min(a, b), max(a, b))
            if r < best.get(key, np.inf):
                best[key] = float(r)
    return best


def build_config(settings: DistillSettings, frames, angular_neighbors: int = 0) -> StudentConfig:
    """Species from the data, the architecture, and the core repulsion switched off at each pair's
    shortest distance in the data (so it never touches a training frame)."""
    from jaxpto.potentials.student import pair_index_table

    species = tuple(sorted({int(z) for at in frames for z in at.numbers}))
    arch = dict(settings.architecture)
    rng = np.random.default_rng(0)
    sample = [frames[k] for k in rng.choice(len(frames), size=min(len(frames), 400), replace=False)]
    short = shortest_pair_distances(sample, species)
    table = pair_index_table(len(species))
    r_out = [0.0] * (len(species) * (len(species) + 1) // 2)
    for a in range(len(species)):
        for b in range(a, len(species)):
            r = short.get((species[a], species[b]), 1.5)
            r_out[table[a, b]] = float(min(max(0.85 * r, 0.5), arch.get("rc_angular", 4.5) - 0.5))
    return StudentConfig(species=species, core_r_out=tuple(r_out), angular_neighbors=angular_neighbors, **arch)


def split(frames):
    """Indices of the training and validation frames (the frames' ``validation`` flags: by trajectory)."""
    train = [k for k, at in enumerate(frames) if not bool(at.info.get("validation", False))]
    val = [k for k, at in enumerate(frames) if bool(at.info.get("validation", False))]
    return train, val


def _train_stage(config, frames, settings: DistillSettings, log, params=None, epochs=None, learning_rate=None,
                 time_limit_s=None):
    from jaxpto.workflows import distill_train as tr

    train_ids, val_ids = split(frames)
    train_packs = tr.pack(frames, config, train_ids)
    val_packs = tr.pack(frames, config, val_ids) if val_ids else []
    ts = settings.train
    if epochs is not None:
        ts = dataclasses.replace(ts, epochs=int(epochs))
    if learning_rate is not None:
        ts = dataclasses.replace(ts, learning_rate=float(learning_rate),
                                 final_learning_rate=min(ts.final_learning_rate, float(learning_rate) / 10))
    log(f"training on {len(train_ids)} frames ({sum(p.n_frames * p.n_atoms for p in train_packs)} atoms), "
        f"validating on {len(val_ids)}, {ts.epochs} epochs")
    params, history = tr.train(config, train_packs, val_packs, ts, params=params, log=log, time_limit_s=time_limit_s)
    return params, history, train_packs, val_packs


def _angular_slots(config, frames):
    from jaxpto.workflows import distill_train as tr

    return tr.angular_capacity(tr.pack(frames, config), config)


# ---------------------------------------------------------------------------------------------
# Active sampling rounds
# ---------------------------------------------------------------------------------------------


def round_groups(settings: DistillSettings, round_index: int, base=None) -> list:
    """The student-MD groups of one round: each supercell, NPT and NVT, every temperature."""
    plan = settings.round_plan
    groups = []
    polar, cubic, strained = ("structure", "structure", "structure-strained") if base is not None else \
        ("tetragonal", "cubic", "strained")
    temps = tuple(float(t) for t in settings.temperatures)
    for sc, steps, nframes in zip(plan.supercells, plan.steps, plan.frames_per_trajectory):
        if base is not None:
            sc = data_mod.supercell_for(base, {2: 40, 3: 130, 5: 600}.get(int(sc[0]), 40))
        every = max(1, int(steps) // int(nframes))
        steps = every * int(nframes)
        tag = "x".join(str(k) for k in sc)
        npt_starts = (polar,) if base is not None or np.prod(sc) > 27 else (polar, cubic)
        nvt_starts = (strained,) if np.prod(sc) > 27 else (polar, strained)
        groups.append(data_mod.MDGroup(f"r{round_index}-{tag}-npt", tuple(sc), "npt",
                                       data_mod._plain(temps, npt_starts), steps, every))
        groups.append(data_mod.MDGroup(f"r{round_index}-{tag}-nvt", tuple(sc), "nvt",
                                       data_mod._plain(temps, nvt_starts), steps, every))
    return data_mod.hold_out_one_per_temperature(groups)


MAX_LABEL_FORCE = 25.0  # eV/A: frames a student visited with larger teacher forces are broken, not data


def sample_round(student, teacher, settings: DistillSettings, round_index: int, out: str, log, timings: dict) -> list:
    """Student MD of one round, then teacher labels of the frames it visited (cached in ``OUT/data``)."""
    base = _load_structure(settings.structure)
    stamp = data_mod._fingerprint({**settings.teacher_data_fingerprint(), "round": round_index,
                                   "plan": settings.round_plan.to_dict(), "arch": dict(settings.architecture),
                                   "data": list(settings.data), "init": settings.init})
    path = os.path.join(out, "data", f"round{round_index}-{stamp}.extxyz")
    if os.path.exists(path):
        got = data_mod.read_frames(path)
        log(f"round {round_index}: {len(got)} labelled frames from {path}")
        return got
    t0 = time.perf_counter()
    visited = []
    for group in round_groups(settings, round_index, base):
        visited.extend(data_mod.run_md_group(student, group, seed=settings.seed + 1000 * round_index, base=base,
                                             record_labels=False, source="student-md", label=group.name,
                                             chunk_steps=max(group.record_every, 500)))
    timings[f"round{round_index}_student_md_s"] = time.perf_counter() - t0
    log(f"round {round_index}: student MD visited {len(visited)} frames in {time.perf_counter() - t0:.0f} s; "
        "labelling them with the teacher")
    t1 = time.perf_counter()
    labelled = data_mod.label_frames(teacher, visited, max_atoms_per_call=settings.max_atoms_per_call,
                                     teacher_name=settings.teacher, log=log)
    keep = [at for at in labelled if np.abs(at.get_forces()).max() <= MAX_LABEL_FORCE]
    if len(keep) < len(labelled):
        log(f"round {round_index}: {len(labelled) - len(keep)} frames dropped (teacher force > {MAX_LABEL_FORCE} eV/A: "
            "the student had left the physical region there)")
    timings[f"round{round_index}_labelling_s"] = time.perf_counter() - t1
    data_mod.write_frames(path, keep)
    log(f"round {round_index}: {len(keep)} frames labelled in {time.perf_counter() - t1:.0f} s -> {path}")
    return keep


# ---------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------


def _user_frames(settings: DistillSettings, species=None) -> list:
    frames = []
    for path in settings.data:
        got = data_mod.read_frames(path, species=species)
        # A user's file is one trajectory unless its frames say otherwise; hold out every 5th frame
        # of files that carry no split (documented in the CLI help).
        if not any("validation" in at.info for at in got):
            for k, at in enumerate(got):
                at.info["validation"] = bool(k % 5 == 4)
        frames.extend(got)
    return frames


def distill(settings: DistillSettings, out: str, *, log=None, stop_after: str | None = None) -> dict:
    """Run the distillation (see the module docstring) and return the summary written to
    ``OUT/distill.json``; the student file is ``OUT/student.npz``."""
    from jaxpto.potentials.student import load_student, read_student, save_student, student_model
    from jaxpto.workflows import distill_train as tr

    os.makedirs(out, exist_ok=True)
    log = log or _logger(out)
    if not os.access(out, os.W_OK):
        raise PermissionError(f"cannot write to --out {out}")
    timings: dict = {}
    t_start = time.perf_counter()
    teacher = None
    if settings.teacher:
        from bridges.registry import load_model

        log(f"loading teacher {settings.teacher}")
        teacher = load_model(settings.teacher)
    init_params = init_config = None
    if settings.init:
        init_params, init_config, _ = read_student(settings.init)
    if settings.configurations and teacher is None:
        raise ValueError("--configurations needs a --teacher to label them")
    frames = teacher_data(teacher, settings, out, log, timings) if teacher is not None else []
    frames += _user_frames(settings, species=init_config.species if init_config is not None else None)
    if not frames:
        raise ValueError("no training data: give --teacher (teacher MD) and/or --data file.extxyz")
    if stop_after == "data":
        return {"frames": len(frames)}
    if init_config is not None:
        config = init_config
    else:
        config = build_config(settings, frames)
        config = dataclasses.replace(config, angular_neighbors=_angular_slots(config, frames))
    log(f"student: {config.to_dict()}")
    t0 = time.perf_counter()
    ts = settings.train
    params, history, _, _ = _train_stage(config, frames, settings, log, params=init_params,
                                         learning_rate=settings.finetune_learning_rate() if init_params is not None
                                         else None)
    timings["train_gen0_s"] = time.perf_counter() - t0
    histories = {"gen0": history}
    save_student(os.path.join(out, "student-gen0.npz"), params, config, {"stage": "gen0"})
    n_rounds = settings.rounds if teacher is not None else 0
    for k in range(1, n_rounds + 1):
        student = student_model(params, config, name=f"student-gen{k - 1}")
        new = sample_round(student, teacher, settings, k, out, log, timings)
        frames = frames + new
        if config.angular_neighbors:
            needed = _angular_slots(config, frames)
            if needed > config.angular_neighbors:
                log(f"angular slots {config.angular_neighbors} -> {needed} (the new frames are denser)")
                config = dataclasses.replace(config, angular_neighbors=needed)
        t0 = time.perf_counter()
        params, history, _, _ = _train_stage(config, frames, settings, log, params=params,
                                             epochs=settings.round_plan.epochs, learning_rate=ts.learning_rate / 3)
        timings[f"train_round{k}_s"] = time.perf_counter() - t0
        histories[f"round{k}"] = history
        save_student(os.path.join(out, f"student-gen{k}.npz"), params, config, {"stage": f"round{k}"})
    train_ids, val_ids = split(frames)
    val_packs = tr.pack(frames, config, val_ids) if val_ids else []
    val_errors = tr.evaluate(params, config, val_packs) if val_packs else None
    timings["total_s"] = time.perf_counter() - t_start
    sources = {}
    for at in frames:
        key = str(at.info.get("source", "user"))
        sources[key] = sources.get(key, 0) + 1
    info = {
        "name": f"student-of-{settings.teacher}" if settings.teacher else "student",
        "teacher": settings.teacher,
        "settings": settings.to_dict(),
        "data": {"frames": len(frames), "train_frames": len(train_ids), "validation_frames": len(val_ids),
                 "by_source": sources, "files": sorted(os.path.basename(p) for p in os.listdir(os.path.join(out, "data"))
                                                       if p.endswith(".extxyz")) if os.path.isdir(os.path.join(out, "data")) else [],
                 "user_files": list(settings.data)},
        "validation_errors": tr.summary(val_errors) if val_errors else None,
        "validation_errors_by_temperature": tr.errors_by_temperature(val_errors) if val_errors else None,
        "training_history": {k: [{kk: vv for kk, vv in h.items()} for h in v] for k, v in histories.items()},
        "timings_s": timings,
        "init": settings.init,
    }
    path = save_student(os.path.join(out, "student.npz"), params, config, info)
    log(f"student written to {path} ({os.path.getsize(path) / 1e3:.0f} kB)")
    summary = {"schema": SCHEMA, "student": path, **info}
    with open(os.path.join(out, "distill.json"), "w") as fh:
        json.dump(summary, fh, indent=1, default=_json_default)
    if val_errors is not None:
        np.savez_compressed(os.path.join(out, "validation_predictions.npz"),
                            **{k: np.asarray(v) for k, v in val_errors["per_frame"].items()})
    load_student(path)  # the written file must load (checksum, format)
    return summary


def _json_default(x):
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
