"""Temperature sweeps of the PTO-test: every temperature a replica of ONE batched, compiled program.

* NPT (the study's ``ase.md.npt.NPT``, i.e. Melchionna / Nose-Hoover + Parrinello-Rahman):
  ``ttime = 25 fs``, ``pfactor = 75.0**2 * units.fs`` (as the study wrote it, ~552 in ASE units),
  ``mask = eye(3)``, external stress 0; lattice constants = box lengths / n averaged over the last
  50 ps, sorted ``a <= b <= c``.
* NVT (``ase.md.langevin.Langevin``): friction 0.01/fs at the fixed experimental cell
  (a = 3.904, c = 4.152 A); Born-charge polarization (:mod:`jaxpto.workflows.polarization`)
  averaged over the last 50 ps.

Both start from the study's polar supercell with Maxwell-Boltzmann momenta at each temperature,
time step 2 fs, 50,000 steps, 300-1000 K. Units are ASE's at the boundary (K, fs given as
``*_fs`` fields, Angstrom, eV).

Long runs: the run goes in compiled chunks; after each chunk the host records the observables,
checks every replica (a replica that blows up or melts is flagged and dropped from the batch,
the others go on), writes an atomic checkpoint (data only, checksummed:
:mod:`jaxpto.workflows.checkpoint`), and updates the progress line. Running the same
sweep again with the same checkpoint file resumes after the last finished chunk; the chunks are
the same compiled program with the same per-replica random streams, so a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from ase import units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

from jaxpto.model import Model
from jaxpto import simulate
from jaxpto.sharding import is_main_process, shard_state, state_mesh, tree_to_host
from jaxpto.state import MDState, temperature_K
from jaxpto.workflows import phase as phase_mod
from jaxpto.workflows.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from jaxpto.workflows.polarization import born_charges, find_cell_topology, mean_polarization
from jaxpto.workflows.structures import MD_A, MD_C, NVT_A, NVT_C, POLAR_SHIFTS, polar_supercell

STUDY_TEMPERATURES = tuple(float(t) for t in range(300, 1001, 100))
FINGERPRINT_VERSION = 1  # what the protocol fingerprint covers; the file format: checkpoint.VERSION


@dataclasses.dataclass(frozen=True)
class SweepProtocol:
    """One temperature sweep (defaults: the study's NPT protocol; see :func:`study_nvt`)."""

    ensemble: str = "npt"  # "npt" (Melchionna) or "nvt" (Langevin)
    temperatures_k: tuple = STUDY_TEMPERATURES
    supercell: int = 5
    a: float = MD_A  # Angstrom, starting pseudo-cubic a (NVT: the fixed cell)
    c: float = MD_C
    shifts: tuple = POLAR_SHIFTS  # polar start: dz of Ti, apical O, equatorial O (fractions of c)
    steps: int = 50_000
    timestep_fs: float = 2.0
    record_every: int = 10
    average_last_ps: float = 50.0
    ttime_fs: float = 25.0
    pfactor: float = 75.0**2 * units.fs  # ASE units, as the study wrote it
    friction_per_fs: float = 0.01
    charges: str = "study"
    seed: int = 0
    chunk_steps: int = 500
    skin: float = 1.0
    swap_interval: int | None = None  # replica exchange between neighbouring temperatures every this many steps

    def __post_init__(self):
        if self.ensemble not in ("npt", "nvt"):
            raise ValueError(f"ensemble must be 'npt' or 'nvt', got {self.ensemble!r}")
        temps = tuple(float(t) for t in self.temperatures_k)
        object.__setattr__(self, "temperatures_k", temps)
        object.__setattr__(self, "shifts", tuple(float(s) for s in self.shifts))
        if not temps or any(not np.isfinite(t) or t <= 0 for t in temps):
            raise ValueError(f"temperatures must be positive, got {temps}")
        for name in ("steps", "record_every", "chunk_steps", "supercell"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps % self.record_every or self.chunk_steps % self.record_every:
            raise ValueError(f"steps ({self.steps}) and chunk_steps ({self.chunk_steps}) must be multiples "
                             f"of record_every ({self.record_every})")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.timestep_fs <= 0 or self.average_last_ps <= 0:
            raise ValueError("timestep_fs and average_last_ps must be positive")
        born_charges(self.charges)  # validates the name
        if self.swap_interval is not None:
            if int(self.swap_interval) < 1 or len(set(temps)) < 2 or len(set(temps)) < len(temps):
                raise ValueError(f"replica exchange needs >= 2 distinct temperatures and a swap interval >= 1 step, "
                                 f"got temperatures {list(temps)} and swap_interval {self.swap_interval}")
            object.__setattr__(self, "swap_interval", int(self.swap_interval))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["temperatures_k"] = list(self.temperatures_k)
        d["shifts"] = list(self.shifts)
        if self.swap_interval is None:  # runs without exchange keep their fingerprints (resume)
            d.pop("swap_interval")
        return d

    def fingerprint(self, model_name: str) -> str:
        blob = json.dumps({"protocol": self.to_dict(), "model": model_name, "v": FINGERPRINT_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def study_npt(**overrides) -> SweepProtocol:
    """The study's NPT sweep (Melchionna, 625 atoms, 300-1000 K, 100 ps)."""
    return SweepProtocol(**{"ensemble": "npt", **overrides})


def study_nvt(**overrides) -> SweepProtocol:
    """The study's NVT sweep (Langevin 0.01/fs at a = 3.904, c = 4.152 A)."""
    return SweepProtocol(**{"ensemble": "nvt", "a": NVT_A, "c": NVT_C, **overrides})


# ---------------------------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------------------------


def sweep_memory_bytes(p: SweepProtocol, cutoff: float = 0.0, itemsize: int = 4) -> int:
    """A lower bound of the memory (bytes) a sweep's state takes: ``R`` replicas of ``N = 5 n^3`` atoms.

    Per atom and replica: ~10 float 3-vectors (positions, momenta, forces, the integrator's
    copies, the neighbour list's reference positions); with ``cutoff > 0`` also the neighbour
    list, ``K`` slots of an int32 index and a 3-vector image offset, ``K = 1.3 rho 4/3 pi
    (cutoff + skin)^3`` at the starting cell's density ``rho``. The model's own memory (torch
    graphs, activations) comes on top.
    """
    n_atoms = 5 * p.supercell**3
    per_atom = 10 * 3 * itemsize
    if cutoff > 0:
        density = 5.0 / (p.a * p.a * p.c)
        slots = math.ceil(1.3 * density * 4.0 / 3.0 * math.pi * (cutoff + p.skin) ** 3)
        per_atom += slots * (4 + 3 * itemsize)
    return n_atoms * len(p.temperatures_k) * per_atom


def available_memory_bytes() -> tuple[int, str]:
    """``(bytes, what)``: the device memory on a GPU, else the machine's physical memory."""
    import jax

    dev = jax.devices()[0]
    if dev.platform != "cpu":
        try:
            limit = (dev.memory_stats() or {}).get("bytes_limit")
        except Exception:  # not every backend reports memory
            limit = None
        if limit:
            return int(limit), f"memory of {dev.device_kind}"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory of this machine"


def check_sweep_memory(p: SweepProtocol, cutoff: float = 0.0, itemsize: int = 4) -> None:
    """A clear error before anything is allocated if the sweep's state alone cannot fit in memory."""
    need = sweep_memory_bytes(p, cutoff, itemsize)
    have, what = available_memory_bytes()
    if need > have:
        n_atoms = 5 * p.supercell**3
        raise ValueError(f"a sweep of {len(p.temperatures_k)} temperature(s) x {n_atoms:,} atoms (supercell "
                         f"{p.supercell}, i.e. {p.supercell}^3 PbTiO3 cells) needs at least {need / 2**30:,.1f} GiB "
                         f"for its state alone, more than the {have / 2**30:,.1f} GiB {what}; use a smaller "
                         "--supercell or fewer --temperatures")



def _initial(model: Model, p: SweepProtocol, dtype, devices=None):
    from jaxpto.integrators import langevin, melchionna_npt, replica_exchange

    from jaxpto.simulate import state_from_atoms

    atoms0 = polar_supercell(p.supercell, p.a, p.c, p.shifts)
    if hasattr(model, "check_elements"):
        model.check_elements(atoms0.numbers)
    replicas = []
    for i, T in enumerate(p.temperatures_k):
        at = atoms0.copy()
        with warnings.catch_warnings():  # ASE 3.29 renamed it; the study called this one
            warnings.simplefilter("ignore", DeprecationWarning)
            MaxwellBoltzmannDistribution(at, temperature_K=T, rng=np.random.default_rng([p.seed, i]))
        replicas.append(at)
    state, force_fn = state_from_atoms(replicas, model, seed=p.seed, skin=p.skin, dtype=dtype, devices=devices)
    dt = p.timestep_fs * units.fs
    temps = list(p.temperatures_k)
    if p.ensemble == "npt":
        integ = melchionna_npt(force_fn, dt, mask=np.eye(3))
        args, kw = (temps,), dict(ttime=p.ttime_fs * units.fs, pfactor=p.pfactor, externalstress=0.0)
    else:
        integ = langevin(force_fn, dt, fixcm=True)
        args, kw = (temps, p.friction_per_fs / units.fs), {}
    if p.swap_interval is not None:  # temperature replica exchange between the sweep's temperatures
        integ = replica_exchange(integ, p.swap_interval, seed=p.seed)
    return atoms0, integ.init(state, *args, **kw), integ



def _site_rms_jax(positions, cell, ref_scaled):
    """JAX twin of :func:`jaxpto.workflows.phase.site_rms_displacement` for [R,N,3] / [R,3,3]."""
    s = jnp.einsum("rni,rij->rnj", positions, jnp.linalg.inv(cell))
    ds = s - ref_scaled[None]
    ds = ds - jnp.round(ds)
    ds = ds - jnp.mean(ds, axis=1, keepdims=True)
    ds = ds - jnp.round(ds)
    dr = jnp.einsum("rni,rij->rnj", ds, cell)
    return jnp.sqrt(jnp.mean(jnp.sum(dr**2, axis=-1), axis=1))


def make_recorder(atoms0, p: SweepProtocol, dtype) -> Callable[[MDState], dict]:
    """Observables recorded on the device every ``record_every`` steps (per replica)."""
    topology = find_cell_topology(atoms0)
    charges = born_charges(p.charges)
    ref_scaled = jnp.asarray(atoms0.get_scaled_positions(wrap=False), dtype)
    reps = float(p.supercell)

    def record(s: MDState) -> dict:
        out = {
            "lattice": jnp.linalg.norm(s.cell, axis=-1) / reps,  # [R,3] A, pseudo-cubic a, b, c
            "temperature": temperature_K(s.momenta, s.masses),  # [R] K
            "epot_per_atom": s.energy / s.n_atoms,  # [R] eV
            "polarization": mean_polarization(s.positions, s.cell, topology, charges),  # [R,3] C/m^2
            "site_rms": _site_rms_jax(s.positions, s.cell, ref_scaled),  # [R] A
        }
        if p.swap_interval is not None:  # which walker (starting temperature) each temperature holds
            out["walker"] = s.variables.walker
        return out

    return record


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def save_checkpoint(path: str, fingerprint: str, run: dict, state: MDState, protocol: "SweepProtocol",
                    model_name: str) -> None:
    """Write the sweep's progress ``run`` and ``state`` to ``path`` (data only, with a SHA-256
    checksum; :mod:`jaxpto.workflows.checkpoint`), atomically: a kill or a full disk keeps the
    previous checkpoint and leaves no temporary file."""
    header = {"fingerprint": fingerprint, "model": model_name, "protocol": protocol.to_dict(),
              "done_steps": int(run["done_steps"]), "active": [int(i) for i in run["active"]],
              "status": run["status"], "timing": run["timing"]}
    arrays = {f"series.{k}": np.asarray(v) for k, v in run["series"].items()}
    write_checkpoint(path, header, arrays, state)


def load_checkpoint(path: str, fingerprint: str, template: MDState) -> dict | None:
    """The run saved at ``path`` (``done_steps``, ``active``, ``status``, ``series``, ``timing``,
    ``state``) if it belongs to this sweep (same protocol and model), None if there is no file.

    The state is rebuilt on ``template`` (the sweep's fresh state); any file that is not an intact
    checkpoint of this sweep is a :class:`~jaxpto.workflows.checkpoint.CheckpointError` naming it.
    """
    if not path or not os.path.exists(path):
        return None
    header, arrays, state = read_checkpoint(path, template)
    if header.get("fingerprint") != fingerprint:
        raise CheckpointError(f"checkpoint {path} belongs to a different protocol or model "
                              f"(fingerprint {header.get('fingerprint')} != {fingerprint}); use another output "
                              "directory, or delete the checkpoint to start this sweep afresh")
    series = {k[len("series."):]: np.array(v) for k, v in arrays.items() if k.startswith("series.")}
    return {"done_steps": int(header["done_steps"]), "active": list(header["active"]), "status": header["status"],
            "series": series, "timing": header["timing"], "state": state}


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


def _fmt_time(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class Progress:
    """A one-line progress bar on stderr: steps, elapsed time, ns/day per replica, ETA."""

    def __init__(self, label: str, total: int, timestep_fs: float, stream=None, enabled: bool = True):
        self.label, self.total, self.dt_fs = label, total, timestep_fs
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def update(self, done: int, rate_steps_per_s: float | None, note: str = "") -> None:
        if not self.enabled:
            return
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        elapsed = time.perf_counter() - self.t0
        if rate_steps_per_s:
            ns_day = rate_steps_per_s * self.dt_fs * 86400e-6
            eta = (self.total - done) / rate_steps_per_s
            speed = f"{ns_day:.3g} ns/day, ETA {_fmt_time(eta)}"
        else:
            speed = "compiling..."
        end = "\n" if done >= self.total else ""
        self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total} steps, {_fmt_time(elapsed)} elapsed, "
                          f"{speed}{(' ' + note) if note else ''}   {end}")
        self.stream.flush()


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------


def run_sweep(model: Model, protocol: SweepProtocol, *, model_name: str | None = None,
              checkpoint: str | None = None, progress: bool = True, dtype=None,
              relaxed_c_over_a: float | None = None, stop_after_chunks: int | None = None,
              devices=None) -> dict:
    """Run one sweep (all temperatures batched) and return its results (JSON-ready) and time series.

    The chunks are :func:`jaxpto.simulate.chunks` (the one driver) with the "stop" policy: a replica
    that blows up (non-finite, box length changed by > 50 %, T > 5x target) or melts (mean site
    displacement over a chunk > ``phase.MOLTEN_SITE_RMS``) is held at its last good state while the
    other temperatures go on, in the same compiled program.
    ``checkpoint``: file to resume from and to write after every chunk. ``stop_after_chunks``
    (for tests and for splitting work over job slots) returns early after that many chunks of this
    call with ``result["finished"] = False``; calling again resumes. ``devices`` (None, an int, or
    ``"all"``) shards the temperatures over devices, and over processes in a ``jax.distributed`` run
    (:mod:`jaxpto.sharding`; the numbers are the same; only process 0 writes the checkpoint).
    Returns ``{"finished", "protocol", "replicas": [...], "series": {...numpy...}, "speed": {...}, ...}``.
    """
    p = protocol
    model_name = model_name or getattr(model, "name", "model")
    fp = p.fingerprint(model_name)
    note = averaging_window_note(p)
    if note:
        warnings.warn(f"{p.ensemble.upper()} sweep: {note}", RuntimeWarning, stacklevel=2)
    itemsize = np.dtype(dtype or (np.float64 if jax.config.jax_enable_x64 else np.float32)).itemsize
    check_sweep_memory(p, cutoff=model.cutoff or 0.0, itemsize=itemsize)
    atoms0, state, integ = _initial(model, p, dtype, devices)
    record = make_recorder(atoms0, p, state.positions.dtype)
    R = len(p.temperatures_k)
    run = load_checkpoint(checkpoint, fp, state) if checkpoint else None
    if run is None:
        run = _fresh_run(record, state, p, R)
    if "state" in run:  # resumed: on the fresh state's devices
        state = shard_state(run.pop("state"), state_mesh(state))
    label = f"{p.ensemble.upper()} {model_name} ({R} T, {len(atoms0)} atoms)"
    bar = Progress(label, p.steps, p.timestep_fs, enabled=progress and is_main_process())
    start_lengths = np.broadcast_to(np.linalg.norm(np.asarray(atoms0.cell), axis=-1), (R, 3))
    first_call_chunk = True
    loop = simulate.chunks(integ, state, p.steps - run["done_steps"], chunk_size=p.chunk_steps, record_fn=record,
                           record_every=p.record_every, on_unhealthy="stop", health=_molten_rule,
                           reference_lengths=start_lengths)
    for n_chunks, chunk in enumerate(loop, start=1):
        _store_chunk(run, chunk, p, label, progress)
        if first_call_chunk:  # it compiled the program: kept out of the speed figures
            run["timing"]["first_chunk_seconds"] = run["timing"]["first_chunk_seconds"] or chunk.seconds
            first_call_chunk = False
        else:
            run["timing"]["seconds"] += chunk.seconds
            run["timing"]["steps"] += chunk.records["temperature"].shape[0] * p.record_every
        state = chunk.state
        if checkpoint:
            host_state = tree_to_host(state)  # every process takes part in gathering the replicas
            if is_main_process():
                save_checkpoint(checkpoint, fp, run, host_state, p, model_name)
        timing = run["timing"]
        bar.update(run["done_steps"], timing["steps"] / timing["seconds"] if timing["seconds"] > 0 else None)
        if stop_after_chunks is not None and n_chunks >= stop_after_chunks:
            break
    return _sweep_result(run, state, p, model_name, len(atoms0), relaxed_c_over_a)


def _fresh_run(record, state, p: SweepProtocol, R: int) -> dict:
    n_rec_total = p.steps // p.record_every
    probe = jax.eval_shape(record, state)
    series = {k: np.full((n_rec_total,) + v.shape, np.nan) for k, v in probe.items()}
    series["time_ps"] = (np.arange(1, n_rec_total + 1) * p.record_every * p.timestep_fs * 1e-3)
    return {"done_steps": 0, "active": list(range(R)), "series": series,
            "status": [{"status": "running", "stopped_at_step": None, "reason": None} for _ in range(R)],
            "timing": {"seconds": 0.0, "steps": 0, "first_chunk_seconds": None}}


def _molten_rule(start, end, records) -> list:
    """The sweeps' own health rule, beside the driver's blow-up rules: molten = the mean site
    displacement over the chunk above ``phase.MOLTEN_SITE_RMS``."""
    with warnings.catch_warnings():  # a blown-up replica has no finite sample
        warnings.simplefilter("ignore", RuntimeWarning)
        rms = np.nanmean(records["site_rms"], axis=0)
    return [None if not (rms[r] > phase_mod.MOLTEN_SITE_RMS) else
            f"molten: mean site displacement {rms[r]:.2f} A > {phase_mod.MOLTEN_SITE_RMS} A" for r in range(len(rms))]


def _store_chunk(run: dict, chunk, p: SweepProtocol, label: str, progress: bool) -> None:
    """The chunk's records into the series (NaN for stopped replicas), and who stopped why."""
    rec = chunk.records
    n_new = rec["temperature"].shape[0]
    r0 = run["done_steps"] // p.record_every
    stopped_before = [i for i in range(len(run["status"])) if i not in run["active"]]
    for key, arr in rec.items():
        run["series"][key][r0:r0 + n_new] = arr
        if stopped_before:  # held replicas record their frozen state: not data
            run["series"][key][r0:r0 + n_new, stopped_before] = np.nan
    run["done_steps"] += n_new * p.record_every
    for i, reason in chunk.stopped.items():
        kind = "molten" if reason.startswith("molten") else "blew_up"
        run["status"][i] = {"status": kind, "stopped_at_step": run["done_steps"], "reason": reason}
        if kind == "blew_up":  # its records of this chunk may already be garbage
            for key in rec:
                run["series"][key][r0:r0 + n_new, i] = np.nan
        run["active"].remove(i)
        if progress:
            sys.stderr.write(f"\n{label}: replica at {p.temperatures_k[i]:.0f} K stopped at step "
                             f"{run['done_steps']}: {reason}\n")


def _sweep_result(run: dict, state, p: SweepProtocol, model_name: str, n_atoms: int, relaxed_c_over_a) -> dict:
    done, active, status = run["done_steps"], run["active"], run["status"]
    finished = done >= p.steps or not active
    if finished:
        for i in active:
            status[i]["status"] = "ok"
    result = summarize(run["series"], status, p, model_name, n_atoms=n_atoms, timing=run["timing"],
                       relaxed_c_over_a=relaxed_c_over_a, done_steps=done)
    result["finished"] = finished
    result["final_state"] = state
    result["active"] = active
    if p.swap_interval is not None:
        from jaxpto.integrators.replica_exchange import exchange_statistics

        result["replica_exchange"] = {"swap_interval": p.swap_interval,
                                      **exchange_statistics(state, p.timestep_fs * units.fs)}
    return result


def series_by_walker(series: dict) -> dict:
    """Per-walker series from per-temperature ones: ``out[key][t, w]`` is walker ``w``'s value at record
    ``t`` (``series["walker"][t, r]`` names the walker in temperature slot ``r``); NaN where unknown."""
    walker = series["walker"]
    out = {}
    for key, arr in series.items():
        if key in ("walker", "time_ps"):
            continue
        by = np.full_like(arr, np.nan)
        for t in range(walker.shape[0]):
            w = walker[t]
            ok = np.isfinite(w)
            by[t, w[ok].astype(int)] = arr[t, ok]
        out[key] = by
    return out


def averaging_window_note(p: SweepProtocol) -> str | None:
    """Why the averaging window is shorter than ``average_last_ps`` (the run is too short), or None.

    The window is at most the second half of the run (the first half is equilibration).
    """
    run_ps = p.steps * p.timestep_fs * 1e-3
    if p.average_last_ps <= 0.5 * run_ps * (1 + 1e-9):
        return None
    return (f"averaging window cut: the last {p.average_last_ps:g} ps were asked for, but the run is "
            f"{run_ps:g} ps ({p.steps} steps of {p.timestep_fs:g} fs), so the averages are over its second half, "
            f"{0.5 * run_ps:g} ps")


def _window(series_time_ps, p: SweepProtocol, done_steps: int):
    """Indices of the averaging window: the last ``average_last_ps`` (at most the second half)."""
    n_done = done_steps // p.record_every
    total_ps = done_steps * p.timestep_fs * 1e-3
    window_ps = min(p.average_last_ps, 0.5 * total_ps)
    start = total_ps - window_ps
    idx = np.flatnonzero((series_time_ps[:n_done] > start + 1e-12))
    return idx, window_ps


def summarize(series, status, p: SweepProtocol, model_name: str, *, n_atoms: int, timing: dict,
              relaxed_c_over_a=None, done_steps: int | None = None) -> dict:
    """Averages, standard deviations and phase calls per temperature (JSON-ready)."""
    done_steps = p.steps if done_steps is None else done_steps
    idx, window_ps = _window(series["time_ps"], p, done_steps)
    replicas = []
    for i, T in enumerate(p.temperatures_k):
        st = status[i]
        sel = idx
        lat = series["lattice"][sel, i]
        ok = np.all(np.isfinite(lat), axis=-1)
        lat = lat[ok]
        entry = {"temperature_k": T, "status": st["status"], "stopped_at_step": st["stopped_at_step"],
                 "reason": st["reason"], "n_samples": int(ok.sum())}
        if len(lat) == 0 or st["status"] == "blew_up":
            entry.update(phase="unstable", phase_evidence=f"run stopped: {st['reason']}")
            replicas.append(entry)
            continue
        mean_T = float(np.mean(series["temperature"][sel, i][ok]))
        rms = float(np.mean(series["site_rms"][sel, i][ok]))
        entry.update(mean_temperature_k=mean_T, site_rms_a=rms,
                     epot_per_atom_ev=float(np.mean(series["epot_per_atom"][sel, i][ok])))
        if p.ensemble == "npt":
            # As the study: average each box length, then sort the averages (sorting every sample
            # would bias a cubic box towards c > a by the order statistics of its fluctuations).
            mean, std = lat.mean(0), lat.std(0)
            order = np.argsort(mean)
            mean, std = mean[order], std[order]
            call = phase_mod.classify_phase(*mean, *std, site_rms=rms, relaxed_c_over_a=relaxed_c_over_a)
            entry.update(a=float(mean[0]), b=float(mean[1]), c=float(mean[2]), a_std=float(std[0]),
                         b_std=float(std[1]), c_std=float(std[2]), c_over_a=call["c_over_a"],
                         phase=call["phase"] if st["status"] != "molten" else "molten",
                         phase_evidence=call["evidence"] if st["status"] != "molten" else st["reason"])
        else:
            pol = series["polarization"][sel, i][ok]
            mean, std = pol.mean(0), pol.std(0)
            entry.update(px=float(mean[0]), py=float(mean[1]), pz=float(mean[2]), px_std=float(std[0]),
                         py_std=float(std[1]), pz_std=float(std[2]),
                         p_abs=float(np.mean(np.linalg.norm(pol, axis=-1))),
                         phase="molten" if (st["status"] == "molten" or rms > phase_mod.MOLTEN_SITE_RMS) else "ordered")
        replicas.append(entry)
    out = {"ensemble": p.ensemble, "model": model_name, "protocol": p.to_dict(), "averaging_window_ps": window_ps,
           "averaging_note": averaging_window_note(p), "done_steps": done_steps, "replicas": replicas,
           "n_atoms": n_atoms}
    temps = [r["temperature_k"] for r in replicas]
    if p.ensemble == "nvt":
        pz = [r.get("pz", np.nan) if r["status"] != "blew_up" else np.nan for r in replicas]
        tc, note = phase_mod.transition_temperature(temps, pz)
        out["tc_k"], out["tc_note"] = tc, f"from |P_z|: {note}"
    else:
        tet = [(r.get("c_over_a") or np.nan) - 1.0 for r in replicas]
        tc, note = phase_mod.transition_temperature(temps, tet)
        out["tc_k"], out["tc_note"] = tc, f"from c/a - 1: {note}"
    if timing["steps"] > 0 and timing["seconds"] > 0:
        sps = timing["steps"] / timing["seconds"]
        R = len(p.temperatures_k)
        out["speed"] = {"steps_per_s": sps, "ms_per_step": 1e3 / sps,
                        "us_per_atom_step": 1e6 / (sps * n_atoms * R),
                        "ns_per_day_per_replica": sps * p.timestep_fs * 86400e-6,
                        "replicas": R, "n_atoms": n_atoms, "timed_steps": timing["steps"],
                        "compile_and_first_chunk_s": timing["first_chunk_seconds"]}
    else:
        out["speed"] = {"note": "run too short to time (the first chunk includes compilation)",
                        "compile_and_first_chunk_s": timing["first_chunk_seconds"]}
    out["series"] = series
    return out
