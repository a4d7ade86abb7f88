"""Training data for students: teacher MD, teacher labels of any frames, and labelled extxyz files.

Units are ASE's everywhere (eV, Angstrom, eV/A, stress in eV/A^3 with ASE's sign, K, fs).

* :func:`run_teacher_md` -- batched jaxpto MD *with the teacher* (Langevin NVT and the study's
  Melchionna NPT, every replica its own start, temperature and random stream, all in one
  compiled program): every recorded frame carries the energy, forces and stress the teacher
  computed in that step, so the MD is the labelling (no second teacher call). Chunks are
  checkpointed; a killed run resumes.
* :func:`label_frames` -- the teacher's energy/forces/stress for any frames, in batched calls
  (frames with the same atoms become replicas of one call), e.g. for frames a student's MD
  visited (:mod:`jaxpto.workflows.distill`).
* :func:`read_configurations` + :func:`label_frames_resumable` -- configurations from a file
  (e.g. another teacher's distillation data) labelled by this teacher in batched, checkpointed
  chunks: one teacher call per frame instead of one per MD step, for teachers too slow for MD.
* :func:`static_cells` -- 5-atom cells on a random grid of lattice constants and polar
  displacements (what relaxations and phonons of the PTO-test see), labelled in one call.
* :func:`write_frames` / :func:`read_frames` -- extended XYZ that ASE reads
  (``ase.io.read(path, ":")``: ``atoms.get_potential_energy()``, ``get_forces()``,
  ``get_stress()``); :func:`read_frames` validates a user's file (missing forces, NaN, stress in
  GPa or energies in Hartree/kcal/mol next to eV, unknown species) with errors naming the file
  and the frame.

Every frame's ``info`` says where it came from: ``source`` (teacher-md, student-md, static,
user), ``trajectory`` (the train/validation split is by trajectory), ``temperature_k``,
``ensemble``, ``start``, ``step``, ``validation`` and ``teacher``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

from jaxpto import neighbors as nl
from jaxpto.workflows.structures import CUBIC_A, MD_A, MD_C, POLAR_SHIFTS, pbtio3_cell

DATA_VERSION = 1
# Heuristics for a user's file (see read_frames): beyond these a value is almost surely in the
# wrong unit or broken.
MAX_STRESS_EV_A3 = 1.0  # 160 GPa; a stress in GPa of a few GPa reads as "a few eV/A^3"
MAX_FORCE_EV_A = 100.0
MAX_ENERGY_SPREAD_EV_PER_ATOM = 5.0  # within one composition


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """One replica of a teacher-MD group: ``start`` ("tetragonal", "cubic", "strained",
    "structure", "structure-strained"), temperature (K) and whether it is held out."""

    start: str
    temperature_k: float
    validation: bool = False


@dataclasses.dataclass(frozen=True)
class MDGroup:
    """Replicas that run as ONE batched program: same supercell, same ensemble."""

    name: str
    supercell: tuple
    ensemble: str  # "nvt" (Langevin) or "npt" (Melchionna, the study's settings)
    trajectories: tuple
    steps: int
    record_every: int = 10
    timestep_fs: float = 2.0

    def __post_init__(self):
        if self.ensemble not in ("nvt", "npt"):
            raise ValueError(f"ensemble must be 'nvt' or 'npt', got {self.ensemble!r}")
        if self.steps and (self.steps < self.record_every or self.steps % self.record_every):
            raise ValueError(f"group {self.name}: steps ({self.steps}) must be a positive multiple of "
                             f"record_every ({self.record_every})")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["supercell"] = list(self.supercell)
        d["trajectories"] = [dataclasses.asdict(t) for t in self.trajectories]
        return d


def _plain(temperatures, starts):
    return tuple(Trajectory(start=st, temperature_k=float(T)) for T in temperatures for st in starts)


def hold_out_one_per_temperature(groups) -> list:
    """Mark one trajectory per temperature (over all groups) as validation, rotating over the
    (group, start) combinations so that every start and cell size appears in both sets."""
    by_t: dict = {}
    for g, grp in enumerate(groups):
        for k, traj in enumerate(grp.trajectories):
            by_t.setdefault(traj.temperature_k, []).append((g, k))
    held = set()
    for rank, T in enumerate(sorted(by_t)):
        members = by_t[T]
        if len(members) > 1:
            held.add(members[rank % len(members)])
    out = []
    for g, grp in enumerate(groups):
        trajs = tuple(dataclasses.replace(t, validation=(g, k) in held) for k, t in enumerate(grp.trajectories))
        out.append(dataclasses.replace(grp, trajectories=trajs))
    return out


DEFAULT_TEMPERATURES = (300.0, 500.0, 700.0, 900.0, 1100.0, 1300.0)  # the sweep's 300-1000 K and beyond


def default_md_groups(temperatures=DEFAULT_TEMPERATURES, small=(2, 2, 2), large=(3, 3, 3), steps_small: int = 400,
                      steps_large: int = 200, record_every: int = 10, structure: bool = False) -> tuple:
    """The default teacher-MD plan (40- and 135-atom PbTiO3, or the user's structure).

    NPT from the polar tetragonal and the cubic start, NVT from the polar start and from randomly
    strained cells (3 %), at every temperature; the larger cell at every other temperature.
    """
    temps = tuple(float(t) for t in temperatures)
    polar, cubic, strained = ("structure", "structure", "structure-strained") if structure else \
        ("tetragonal", "cubic", "strained")
    npt_starts = (polar,) if structure else (polar, cubic)
    groups = [
        MDGroup("small-npt", tuple(small), "npt", _plain(temps, npt_starts), steps_small, record_every),
        MDGroup("small-nvt", tuple(small), "nvt", _plain(temps, (polar, strained)), steps_small, record_every),
        MDGroup("large-npt", tuple(large), "npt", _plain(temps[::2], (polar,)), steps_large, record_every),
        MDGroup("large-nvt", tuple(large), "nvt", _plain(temps[1::2], (cubic if not structure else strained,)),
                steps_large, record_every),
    ]
    groups = [g for g in groups if g.steps > 0 and g.trajectories]  # steps 0: skip that cell size
    fixed = hold_out_one_per_temperature(groups)
    return tuple(fixed)


# ---------------------------------------------------------------------------------------------
# Structures
# ---------------------------------------------------------------------------------------------


def _random_strain(rng, amplitude: float) -> np.ndarray:
    e = rng.uniform(-amplitude, amplitude, (3, 3))
    return 0.5 * (e + e.T)


def start_structure(start: str, supercell, rng, base: Atoms | None = None, strain: float = 0.03) -> Atoms:
    """The starting configuration of one trajectory (Angstrom)."""
    reps = tuple(int(k) for k in supercell)
    if start in ("structure", "structure-strained"):
        if base is None:
            raise ValueError("start 'structure' needs the structure given with --structure")
        atoms = base.repeat(reps)
    elif start == "tetragonal" or start == "strained":
        atoms = pbtio3_cell(MD_A, MD_C, POLAR_SHIFTS).repeat(reps)
    elif start == "cubic":
        atoms = pbtio3_cell(CUBIC_A, CUBIC_A, (0.0, 0.0, 0.0)).repeat(reps)
    else:
        raise ValueError(f"unknown start {start!r}")
    if start.endswith("strained"):
        cell = np.asarray(atoms.cell) @ (np.eye(3) + _random_strain(rng, strain))
        atoms.set_cell(cell, scale_atoms=True)
    return atoms


def supercell_for(atoms: Atoms, min_atoms: int) -> tuple:
    """Smallest near-isotropic repetition of ``atoms`` with at least ``min_atoms`` atoms."""
    lengths = np.linalg.norm(np.asarray(atoms.cell), axis=1)
    reps = np.ones(3, int)
    while len(atoms) * int(np.prod(reps)) < min_atoms:
        reps[int(np.argmin(lengths * reps))] += 1
    return tuple(int(r) for r in reps)


# ---------------------------------------------------------------------------------------------
# Frames: build, write, read, validate
# ---------------------------------------------------------------------------------------------


def make_frame(numbers, positions, cell, energy, forces, stress_3x3=None, pbc=True, **info) -> Atoms:
    """An Atoms with a single-point calculator holding the labels (ASE units) and ``info``."""
    at = Atoms(numbers=np.asarray(numbers), positions=np.asarray(positions, float), cell=np.asarray(cell, float),
               pbc=pbc)
    results = {"energy": float(energy), "free_energy": float(energy), "forces": np.asarray(forces, float)}
    if stress_3x3 is not None:
        results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(stress_3x3, float))
    at.calc = SinglePointCalculator(at, **results)
    for k, v in info.items():
        at.info[k] = v
    return at


def write_frames(path: str, frames) -> str:
    """Write labelled frames as extended XYZ (atomically: a temporary file renamed)."""
    from ase.io import write

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp, list(frames), format="extxyz")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


class DataError(ValueError):
    """A labelled-data file that cannot be used, with the file, the frame and the fix."""


def read_frames(path: str, species=None, require_stress: bool = False) -> list:
    """Labelled frames from an extxyz (or any ASE-readable) file, validated.

    Each frame needs an energy (eV) and forces (eV/A); a stress (eV/A^3, ASE sign) is used when
    present. Raises :class:`DataError` naming the file and the frame for: no frames, missing
    energy or forces, NaN/inf, forces above 100 eV/A, a stress above 1 eV/A^3 (160 GPa: almost
    surely GPa), per-atom energies of one composition more than 5 eV/atom apart (mixed units, e.g.
    Hartree or kcal/mol next to eV), and elements outside ``species`` (atomic numbers) when given.
    """
    from ase.io import read

    if not os.path.exists(path):
        raise DataError(f"data file {path} does not exist")
    try:
        frames = read(path, ":")
    except Exception as exc:  # ASE raises many types for a malformed file
        raise DataError(f"cannot read {path} as labelled structures ({type(exc).__name__}: {exc}); "
                        "give an extended XYZ file with energy, forces (and stress) per frame") from None
    if not frames:
        raise DataError(f"{path} holds no frames")
    where = lambda k: f"{path}, frame {k}"  # noqa: E731
    for k, at in enumerate(frames):
        calc = at.calc
        results = getattr(calc, "results", {}) if calc is not None else {}
        if "energy" not in results:
            raise DataError(f"{where(k)}: no energy; every frame needs its energy (eV), forces (eV/A) and "
                            "ideally stress (eV/A^3), e.g. written by ase.io.write after a calculation")
        if "forces" not in results:
            raise DataError(f"{where(k)}: no forces; students are trained on forces, give them per atom in eV/A "
                            "(extxyz column 'forces')")
        e = float(results["energy"])
        f = np.asarray(results["forces"], float)
        if f.shape != (len(at), 3):
            raise DataError(f"{where(k)}: forces have shape {f.shape}, expected ({len(at)}, 3)")
        if not np.isfinite(e) or not np.all(np.isfinite(f)) or not np.all(np.isfinite(at.positions)):
            what = "energy" if not np.isfinite(e) else ("forces" if not np.all(np.isfinite(f)) else "positions")
            raise DataError(f"{where(k)}: {what} contain NaN/inf; remove the frame or fix the calculation")
        fmax = float(np.abs(f).max()) if f.size else 0.0
        if fmax > MAX_FORCE_EV_A:
            raise DataError(f"{where(k)}: a force component of {fmax:.3g} eV/A: forces must be in eV/A "
                            f"(check the unit, e.g. Hartree/Bohr = 51.42 eV/A), or drop this broken frame")
        if "stress" in results:
            s = np.asarray(results["stress"], float)
            if not np.all(np.isfinite(s)):
                raise DataError(f"{where(k)}: stress contains NaN/inf")
            smax = float(np.abs(s).max())
            if smax > MAX_STRESS_EV_A3:
                raise DataError(f"{where(k)}: stress component {smax:.3g} eV/A^3 (= {smax / units.GPa:.3g} GPa): "
                                "this looks like a stress in GPa (or kbar); give eV/A^3 with ASE's sign, i.e. "
                                "multiply GPa by ase.units.GPa")
        elif require_stress:
            raise DataError(f"{where(k)}: no stress, but stress training was asked for")
        if species is not None:
            extra = sorted(set(int(z) for z in at.numbers) - set(int(z) for z in species))
            if extra:
                from ase.data import chemical_symbols

                raise DataError(f"{where(k)}: element(s) {', '.join(chemical_symbols[z] for z in extra)} are not "
                                f"covered by the student ({', '.join(chemical_symbols[z] for z in species)}); "
                                "train a new student on data with these elements instead of fine-tuning")
    _check_energy_units(path, frames)
    for k, at in enumerate(frames):
        at.info.setdefault("source", "user")
        at.info.setdefault("trajectory", f"{os.path.basename(path)}:{k}")
        at.info.setdefault("file", os.path.basename(path))
    return frames


def _check_energy_units(path, frames):
    """Per-atom energies of one composition must lie within a few eV (mixed units otherwise)."""
    by_comp: dict = {}
    for k, at in enumerate(frames):
        key = tuple(sorted(np.unique(at.numbers, return_counts=True)[0].tolist() +
                           (np.unique(at.numbers, return_counts=True)[1] / len(at)).round(6).tolist()))
        by_comp.setdefault(key, []).append((k, at.calc.results["energy"] / len(at)))
    for key, items in by_comp.items():
        e = np.array([x[1] for x in items])
        med = float(np.median(e))
        bad = np.flatnonzero(np.abs(e - med) > MAX_ENERGY_SPREAD_EV_PER_ATOM)
        if bad.size:
            k, ek = items[int(bad[0])]
            raise DataError(f"{path}, frame {k}: energy {ek:.4g} eV/atom is {abs(ek - med):.3g} eV/atom away from "
                            f"the median {med:.4g} eV/atom of the frames with the same composition: mixed units "
                            "(Hartree, kcal/mol, per-atom vs total) or different energy references; give every "
                            "frame's total energy in eV from one calculation setup")


def frame_arrays(at: Atoms):
    """``(energy, forces [N,3], stress [3,3] or None)`` of a labelled frame."""
    res = at.calc.results
    stress = res.get("stress")
    if stress is not None:
        stress = np.asarray(stress, float)
        stress = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress.reshape(3, 3)
    return float(res["energy"]), np.asarray(res["forces"], float), stress


# ---------------------------------------------------------------------------------------------
# Teacher labels of given frames (batched)
# ---------------------------------------------------------------------------------------------


def label_frames(teacher, frames, *, max_atoms_per_call: int = 2000, dtype=None, log=None, teacher_name=None,
                 skin: float = 0.5):
    """The teacher's energy, forces and stress for ``frames`` (Atoms), in batched calls.

    Frames with the same atoms (numbers in order, pbc) become replicas of one model call, at most
    ``max_atoms_per_call`` atoms per call. Returns new Atoms with single-point labels; ``info``
    is kept and ``teacher`` added.
    """
    from jaxpto.state import default_dtype

    dtype = dtype or default_dtype()
    compute = jax.jit(teacher.compute)
    groups: dict = {}
    for k, at in enumerate(frames):
        groups.setdefault((tuple(int(z) for z in at.numbers), tuple(bool(p) for p in at.pbc)), []).append(k)
    out = [None] * len(frames)
    t0 = time.perf_counter()
    for (numbers, pbc), idx in groups.items():
        teacher.check_elements(numbers)
        per_call = max(1, max_atoms_per_call // len(numbers))
        for s in range(0, len(idx), per_call):
            chunk = idx[s:s + per_call]
            pos = jnp.asarray(np.stack([frames[k].positions for k in chunk]), dtype)
            cel = jnp.asarray(np.stack([np.asarray(frames[k].cell) for k in chunk]), dtype)
            nbrs = nl.allocate(pos, cel, teacher.cutoff, skin=skin, pbc=pbc)
            res = compute(pos, cel, jnp.asarray(numbers), nbrs)
            e, f, st = (np.asarray(x, float) for x in (res.energy, res.forces, res.stress))
            for r, k in enumerate(chunk):
                info = dict(frames[k].info)
                if teacher_name:
                    info["teacher"] = teacher_name
                out[k] = make_frame(numbers, frames[k].positions, frames[k].cell, e[r], f[r],
                                    st[r] if all(pbc) else None, pbc=pbc, **info)
            if log:
                log(f"  labelled {min(s + per_call, len(idx))}/{len(idx)} frames of {len(numbers)} atoms "
                    f"({time.perf_counter() - t0:.0f} s)")
    return out


def read_configurations(path: str, every: int = 1) -> list:
    """Unlabelled configurations from any file ASE reads (labels in it are ignored), every
    ``every``-th frame: structures for the teacher to label (e.g. another teacher's distillation
    data, or a user's trajectory). Each frame keeps its ``info`` (trajectory, temperature,
    validation flag) when the file has it; else the file is one trajectory and every 5th kept
    frame is held out."""
    from ase.io import read

    if not os.path.exists(path):
        raise DataError(f"configurations file {path} does not exist")
    try:
        frames = read(path, ":")
    except Exception as exc:
        raise DataError(f"cannot read {path} as structures ({type(exc).__name__}: {exc})") from None
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    out = []
    for k, at in enumerate(frames):
        if not np.all(np.isfinite(at.positions)):
            raise DataError(f"{path}, frame {k}: positions contain NaN/inf")
        info = dict(at.info)
        at = Atoms(numbers=at.numbers, positions=at.positions, cell=np.asarray(at.cell), pbc=at.pbc)
        info.setdefault("trajectory", f"{os.path.basename(path)}:0")
        info["source"] = f"relabelled-{info.get('source', 'file')}"
        info.pop("teacher", None)
        info["relabelled_from"] = f"{os.path.basename(path)}:{k}"
        at.info.update(info)
        out.append(at)
    by_traj: dict = {}
    for at in out:
        by_traj.setdefault(at.info["trajectory"], []).append(at)
    kept = [at for traj in by_traj.values() for at in traj[::every]]
    if not any("validation" in at.info for at in kept):
        for k, at in enumerate(kept):
            at.info["validation"] = bool(k % 5 == 4)
    return kept


def label_frames_resumable(teacher, frames, path: str, *, chunk_frames: int = 16, log=None, label: str = "",
                           **kw) -> list:
    """:func:`label_frames` in chunks of ``chunk_frames``, appending each labelled chunk to
    ``path + ".partial"``; a killed run continues after the last chunk written. Returns the
    labelled frames once all are done and renames the partial file to ``path``."""
    partial = path + ".partial"
    done = []
    if os.path.exists(partial):
        from ase.io import read

        try:
            done = read(partial, ":", format="extxyz")
        except Exception as exc:  # a chunk cut off mid-write: label everything again
            if log:
                log(f"  {label}: cannot read {partial} ({type(exc).__name__}: {exc}); labelling from the start")
            os.remove(partial)
            done = []
    if len(done) > len(frames):
        raise ValueError(f"{partial} holds more frames than asked for; delete it to start the labelling again")
    t0 = time.perf_counter()
    order = sorted(range(len(frames)), key=lambda k: len(frames[k]))  # same sizes together: full batches
    for s in range(len(done), len(frames), chunk_frames):
        chunk = [frames[k] for k in order[s:s + chunk_frames]]
        got = label_frames(teacher, chunk, **kw)
        from ase.io import write

        with open(partial, "a") as fh:
            write(fh, got, format="extxyz")
            fh.flush()
            os.fsync(fh.fileno())
        done.extend(got)
        if log:
            log(f"  {label}: labelled {len(done)}/{len(frames)} frames ({time.perf_counter() - t0:.0f} s)")
    write_frames(path, done)
    if os.path.exists(partial):
        os.remove(partial)
    return read_frames(path)


def static_cells(n_frames: int, rng, a_range=(3.78, 4.02), c_over_a_range=(0.98, 1.26), polar_range=(0.0, 1.5),
                 rattle: float = 0.04, validation_fraction: float = 0.2) -> list:
    """Unlabelled 5-atom PbTiO3 cells: random a, c/a and polar amplitude (times the study's polar
    shifts), rattled; what relaxations and phonon displacements explore."""
    frames = []
    for k in range(int(n_frames)):
        a = rng.uniform(*a_range)
        c = a * rng.uniform(*c_over_a_range)
        lam = rng.uniform(*polar_range)
        at = pbtio3_cell(a, c, tuple(lam * s for s in POLAR_SHIFTS))
        at.positions += rng.normal(0.0, rattle, at.positions.shape)
        at.info.update(source="static", trajectory=f"static:{k}", temperature_k=0.0, ensemble="none",
                       start="grid", step=0, validation=bool(rng.random() < validation_fraction))
        frames.append(at)
    return frames


# ---------------------------------------------------------------------------------------------
# Teacher MD
# ---------------------------------------------------------------------------------------------


def _fingerprint(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _json_info(info: dict) -> dict:
    out = {}
    for k, v in info.items():
        if isinstance(v, (bool, np.bool_)):
            out[k] = bool(v)
        elif isinstance(v, (int, np.integer)):
            out[k] = int(v)
        elif isinstance(v, (float, np.floating)):
            out[k] = float(v)
        else:
            out[k] = str(v)
    return out


def _frames_to_arrays(frames, record_labels: bool):
    """Frames of one MD group (same atoms) as JSON infos and stacked arrays (a data-only checkpoint)."""
    info = [_json_info(at.info) for at in frames]
    if not frames:
        return info, {}
    arrays = {"frames.positions": np.stack([at.positions for at in frames]),
              "frames.cell": np.stack([np.asarray(at.cell) for at in frames])}
    if record_labels:
        e, f, st = zip(*(frame_arrays(at) for at in frames))
        arrays.update({"frames.energy": np.asarray(e), "frames.forces": np.stack(f), "frames.stress": np.stack(st)})
    return info, arrays


def _frames_from_arrays(numbers, info, arrays, record_labels: bool) -> list:
    frames = []
    for r, inf in enumerate(info):
        pos, cell = arrays["frames.positions"][r], arrays["frames.cell"][r]
        if record_labels:
            frames.append(make_frame(numbers, pos, cell, arrays["frames.energy"][r], arrays["frames.forces"][r],
                                     arrays["frames.stress"][r], **inf))
        else:
            at = Atoms(numbers=numbers, positions=pos, cell=cell, pbc=True)
            at.info.update(inf)
            frames.append(at)
    return frames


def run_md_group(model, group: MDGroup, *, seed: int, base: Atoms | None = None, strain: float = 0.03,
                 checkpoint: str | None = None, chunk_steps: int = 100, dtype=None, log=None,
                 source: str = "teacher-md", label: str | None = None, record_labels: bool = True,
                 stop_check=None):
    """Run one group's replicas with ``model`` and return the recorded frames (Atoms).

    ``record_labels``: keep the model's energy/forces/stress in each frame (teacher MD); else
    the frames are unlabelled (student MD, labelled later by the teacher). A replica that blows
    up (non-finite, box change > 50 %, T > 5x target) is stopped alone; its frames up to the last
    healthy chunk are kept. ``checkpoint``: a file to resume from and to write after every chunk.
    """
    from jaxpto.integrators import langevin, melchionna_npt
    from jaxpto.simulate import run_chunk, state_from_atoms
    from jaxpto.state import take_replicas, temperature_K
    from jaxpto.workflows.checkpoint import CheckpointError, read_checkpoint, read_header, write_checkpoint
    from jaxpto.workflows.phase import blow_up_reason
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    rng = np.random.default_rng([seed, int(_fingerprint(group.to_dict()), 16) % (2**31)])
    replicas = []
    for k, traj in enumerate(group.trajectories):
        at = start_structure(traj.start, group.supercell, rng, base=base, strain=strain)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            MaxwellBoltzmannDistribution(at, temperature_K=traj.temperature_k, rng=rng)
        replicas.append(at)
    numbers = replicas[0].numbers
    state, force_fn = state_from_atoms(replicas, model, seed=seed, dtype=dtype)
    dt = group.timestep_fs * units.fs
    temps = [t.temperature_k for t in group.trajectories]
    if group.ensemble == "npt":
        integ = melchionna_npt(force_fn, dt, mask=np.eye(3))
        state = integ.init(state, temps, ttime=25.0 * units.fs, pfactor=75.0**2 * units.fs, externalstress=0.0)
    else:
        integ = langevin(force_fn, dt, fixcm=True)
        state = integ.init(state, temps, 0.01 / units.fs)

    def record(s):
        return {"positions": s.positions, "cell": s.cell, "energy": s.energy, "forces": s.forces,
                "stress": s.stress, "temperature": temperature_K(s.momenta, s.masses)}

    fp = _fingerprint({"group": group.to_dict(), "seed": seed, "model": getattr(model, "name", ""),
                       "source": source, "v": DATA_VERSION})
    done, active, frames = 0, list(range(len(replicas))), []
    if checkpoint and os.path.exists(checkpoint):
        header = read_header(checkpoint)
        if header.get("kind") != "distill-md" or header.get("fingerprint") != fp:
            raise CheckpointError(f"checkpoint {checkpoint} belongs to another MD group, seed or model; delete it "
                                  "to run this group from the start")
        done, active = int(header["done"]), [int(i) for i in header["active"]]
        # the state had its stopped replicas removed: rebuild it on a template of that size
        _, arrays, state = read_checkpoint(checkpoint, take_replicas(state, active) if len(active) < len(replicas)
                                           else state)
        frames = _frames_from_arrays(numbers, header["frame_info"], arrays, record_labels)
    start_cells = [np.asarray(r.cell) for r in replicas]
    chunk = max(group.record_every, (chunk_steps // group.record_every) * group.record_every)
    t0 = time.perf_counter()
    while done < group.steps and active:
        k = min(chunk, group.steps - done)
        state, rec = run_chunk(integ, state, k, record, group.record_every)
        rec = jax.tree_util.tree_map(np.asarray, rec)
        keep = []
        for j, i in enumerate(active):
            traj = group.trajectories[i]
            reason = blow_up_reason(rec["positions"][-1, j], rec["cell"][-1, j], start_cells[i],
                                    float(rec["temperature"][-1, j]), traj.temperature_k)
            n_rec = rec["positions"].shape[0]
            if reason is not None:
                if log:
                    log(f"  {label or group.name}: replica {i} ({traj.start}, {traj.temperature_k:.0f} K) stopped at "
                        f"step {done + k}: {reason}")
                # The frames before the blow-up are kept (for a student, the region it fails in is
                # what its next training round needs); the first unhealthy one and later are not.
                healthy = [blow_up_reason(rec["positions"][r, j], rec["cell"][r, j], start_cells[i],
                                          float(rec["temperature"][r, j]), traj.temperature_k) is None
                           for r in range(n_rec)]
                n_rec = healthy.index(False) if False in healthy else n_rec
            else:
                keep.append(j)
            for r in range(n_rec):
                info = dict(source=source, group=group.name, trajectory=f"{label or group.name}/{i}",
                            temperature_k=traj.temperature_k, ensemble=group.ensemble, start=traj.start,
                            step=done + (r + 1) * group.record_every, validation=bool(traj.validation))
                if record_labels:
                    frames.append(make_frame(numbers, rec["positions"][r, j], rec["cell"][r, j], rec["energy"][r, j],
                                             rec["forces"][r, j], rec["stress"][r, j], **info))
                else:
                    at = Atoms(numbers=numbers, positions=rec["positions"][r, j], cell=rec["cell"][r, j], pbc=True)
                    at.info.update(info)
                    frames.append(at)
        done += k
        if len(keep) < len(active):
            active = [active[j] for j in keep]
            if active:
                state = take_replicas(state, keep)
        if checkpoint and active:
            info, arrays = _frames_to_arrays(frames, record_labels)
            write_checkpoint(checkpoint, {"kind": "distill-md", "fingerprint": fp, "done": done, "active": active,
                                          "frame_info": info}, arrays, state)
        if log:
            log(f"  {label or group.name}: {done}/{group.steps} steps, {len(active)} replicas, {len(frames)} frames "
                f"({time.perf_counter() - t0:.0f} s)")
        if stop_check is not None and stop_check():
            break
    return frames
