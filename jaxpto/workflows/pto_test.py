"""The PTO-test as one workflow: static, phonons, NPT sweep, NVT polarization, speed, report.

Reproduces the benchmark of Li, Yang, Chen, Yu, Liu, "Are Foundational Atomistic Models Reliable
for Finite-Temperature Molecular Dynamics?" (J. Phys. Chem. C 2025) for any jaxpto model. The
defaults are the study's protocol (:func:`study_protocol`); :func:`quick_protocol` is a small
version that runs on a laptop CPU in minutes and still produces every output.

Results go to ``OUT/results.json`` (schema below), figures to ``OUT/*.png``, the report to
``OUT/report.md``, time series to ``OUT/<model>/``, checkpoints to ``OUT/checkpoints/``
(``<model>-<part>.checkpoint.npz``, :mod:`jaxpto.workflows.checkpoint`).
Every finished part is written to ``results.json`` immediately, and a part already there with the
same protocol is not recomputed, so running the same command again after a kill resumes: finished
parts are kept, and an interrupted MD sweep continues from its last checkpoint. Parts run by
different commands into one ``OUT`` may have different protocols: each part keeps its own.

``results.json`` schema (``schema = "jaxpto.pto-test/2"``; ASE units: A, eV, K, C/m^2, THz)::

    {"schema", "created", "protocol": {...every setting of the LAST command...}, "versions": {...}, "device": {...},
     "models": [{
        "model": name,
        "static": {"a", "c", "c_over_a", "volume", "delta_e_ev_per_fu", ...per-phase records},
        "phonons": {"min_frequency_thz", "has_imaginary", "imaginary_modes": [...], ...},
        "npt": [{"temperature_k", "a", "b", "c", "a_std", "b_std", "c_std", "c_over_a", "phase",
                 "phase_evidence", "status", ...}],
        "npt_tc_k", "npt_tc_note",
        "nvt": [{"temperature_k", "px", "py", "pz", "px_std", "py_std", "pz_std", "p_abs", "status", ...}],
        "nvt_tc_k", "nvt_tc_note",
        "npt_averaging_window_ps", "npt_averaging_note" (null, or why the window is shorter than asked),
        "nvt_averaging_window_ps", "nvt_averaging_note",
        "speed": {"npt": {...}, "nvt": {...}, "ase_comparison": {...}},
        "parts": {part: {"fingerprint", "seconds", "protocol": {...the settings THIS part ran with...}}}}]}

Schema versions: ``/2`` added ``parts[part].protocol`` (the protocol of each part; the top-level
``protocol`` is only the last command's, which need not be the one a part ran with) and the
``*_averaging_note`` fields. ``/1`` files are read and extended (their old parts have no
``protocol`` of their own; the report then falls back to the top-level one and says so).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import re
import time

import numpy as np

from jaxpto.sharding import is_main_process, to_host
from jaxpto.workflows.checkpoint import CheckpointError, atomic_write
from jaxpto.workflows.dynamics import SweepProtocol, check_sweep_memory, run_sweep, series_by_walker, study_npt, study_nvt

SCHEMA = "jaxpto.pto-test/2"
READABLE_SCHEMAS = ("jaxpto.pto-test/1", SCHEMA)
PARTS = ("static", "phonons", "npt", "nvt", "speed")
DEFAULT_MODEL = "chgnet-0.3.0"  # ships inside the chgnet wheel: runs offline


@dataclasses.dataclass(frozen=True)
class PTOProtocol:
    """All settings of a PTO-test run (defaults: the study's)."""

    fmax: float = 1e-3  # eV/A, relaxation
    phonon_supercell: int = 2
    phonon_distance: float = 0.01  # A
    phonon_npoints: int = 101
    npt: SweepProtocol = dataclasses.field(default_factory=study_npt)
    nvt: SweepProtocol = dataclasses.field(default_factory=study_nvt)
    ase_steps: int = 200  # ASE NPT steps timed for the speed comparison
    quick: bool = False

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("fmax", "phonon_supercell", "phonon_distance", "phonon_npoints",
                                          "ase_steps", "quick")}
        d["npt"] = self.npt.to_dict()
        d["nvt"] = self.nvt.to_dict()
        return d

    def part_settings(self, part: str) -> dict:
        """The settings ``part`` depends on (what its fingerprint covers)."""
        d = self.to_dict()
        sel = {"static": ["fmax"], "phonons": ["fmax", "phonon_supercell", "phonon_distance", "phonon_npoints"],
               "npt": ["npt"], "nvt": ["nvt"], "speed": ["npt", "ase_steps"]}[part]
        return {k: d[k] for k in sel}

    def part_fingerprint(self, part: str, model_name: str) -> str:
        blob = json.dumps({"model": model_name, "part": part, **self.part_settings(part)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def study_protocol(**overrides) -> PTOProtocol:
    """The study's full protocol (625 atoms, 300-1000 K every 100 K, 50,000 steps of 2 fs)."""
    return PTOProtocol(**overrides)


def quick_protocol(**overrides) -> PTOProtocol:
    """A small protocol for a laptop CPU: 2x2x2 supercell (40 atoms), 300/600/900 K, 500 steps (1 ps).

    The static part keeps the study's fmax = 1e-3 eV/A; phonons use 51 points per segment.

    Every output is still produced; the numbers are indicative only (short runs, small cell).
    """
    temps = (300.0, 600.0, 900.0)
    common = dict(temperatures_k=temps, supercell=2, steps=500, chunk_steps=100, record_every=10,
                  average_last_ps=0.5)
    return PTOProtocol(fmax=1e-3, phonon_npoints=51, npt=study_npt(**common), nvt=study_nvt(**common),
                       ase_steps=20, quick=True, **overrides)


def slug(name: str) -> str:
    """A file-name-safe version of a model name or path."""
    base = os.path.basename(str(name).rstrip("/")) or str(name)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base)


# ---------------------------------------------------------------------------------------------
# results.json
# ---------------------------------------------------------------------------------------------


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if k not in ("series", "final_state")}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


def load_results(out: str) -> dict:
    path = os.path.join(out, "results.json")
    if os.path.exists(path):
        with open(path) as fh:
            data = json.load(fh)
        if data.get("schema") not in READABLE_SCHEMAS:
            raise ValueError(f"{path} is not a jaxpto PTO-test result (schema {data.get('schema')!r}); "
                             "use another --out directory")
        data["schema"] = SCHEMA  # /1 -> /2 only adds fields
        return data
    return {"schema": SCHEMA, "models": []}


def _silent(*args, **kwargs):
    return None


def write_results(out: str, data: dict) -> str:
    """Write ``OUT/results.json`` atomically (a kill or a full disk keeps the previous file, and no
    temporary file is left behind); only process 0 of a multi-process run writes."""
    if not is_main_process():
        return os.path.join(out, "results.json")
    text = json.dumps(_jsonable(data), indent=1)
    return atomic_write(os.path.join(out, "results.json"), lambda fh: fh.write(text), mode="w")


def model_entry(data: dict, name: str) -> dict:
    for entry in data["models"]:
        if entry["model"] == name:
            return entry
    entry = {"model": name, "parts": {}}
    data["models"].append(entry)
    return entry


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("jaxpto", "jax", "jaxlib", "numpy", "ase", "phonopy", "spglib", "torch", "chgnet", "sevenn",
                "mace-torch", "orb-models", "matgl", "deepmd-kit"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def device_info() -> dict:
    import jax

    devs = jax.devices()
    info = {"jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in devs],
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "processor": platform.processor()}
    try:
        import torch

        info["torch_cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


# ---------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------


def run_static(model, protocol: PTOProtocol, dtype=None) -> dict:
    from jaxpto.workflows.static import pto_static

    return pto_static(model, fmax=protocol.fmax, dtype=dtype)


def run_phonons(model, protocol: PTOProtocol, static: dict) -> dict:
    from jaxpto.workflows.phonons import pto_phonons

    return pto_phonons(model, static["structures"]["tetragonal"], supercell=(protocol.phonon_supercell,) * 3, distance=protocol.phonon_distance,
                       npoints=protocol.phonon_npoints)


def run_speed(model, name: str, protocol: PTOProtocol, dtype=None) -> dict:
    """jaxpto vs ASE, same model, same 1-replica NPT on the NPT supercell, timed in one run."""
    from ase import units
    try:  # ASE >= 3.27 name of the study's ase.md.npt.NPT (same class)
        from ase.md.melchionna import MelchionnaNPT as AseNPT
    except ImportError:
        from ase.md.npt import NPT as AseNPT
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from jaxpto.workflows.structures import polar_supercell

    p = protocol.npt
    n = max(protocol.ase_steps, 2)
    T = p.temperatures_k[0]
    one = dataclasses.replace(p, temperatures_k=(T,), steps=2 * n, chunk_steps=n, record_every=n,
                              average_last_ps=p.timestep_fs * n * 1e-3, swap_interval=None)
    res = run_sweep(model, one, model_name=name, progress=False, dtype=dtype)
    jax_speed = res["speed"]
    atoms = polar_supercell(p.supercell, p.a, p.c, p.shifts)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=T, rng=np.random.default_rng(p.seed))
    from bridges.registry import ase_calculator

    atoms.calc = ase_calculator(name)  # the model family's own ASE calculator (the study's method)
    kind = type(atoms.calc).__name__
    dyn = AseNPT(atoms, p.timestep_fs * units.fs, temperature_K=T, ttime=p.ttime_fs * units.fs,
                 pfactor=p.pfactor, externalstress=0.0, mask=np.eye(3))
    dyn.run(1)  # first call: model set-up, kept out of the timing as for jaxpto
    t0 = time.perf_counter()
    dyn.run(n)
    ase_s = (time.perf_counter() - t0) / n
    jax_s = jax_speed.get("ms_per_step", np.nan) * 1e-3
    return {"n_atoms": len(atoms), "steps": n, "ase_calculator": kind, "ase_s_per_step": ase_s,
            "jaxpto_s_per_step": jax_s, "ase_over_jaxpto": ase_s / jax_s if jax_s > 0 else None,
            "ase_us_per_atom_step": ase_s * 1e6 / len(atoms), "jaxpto_us_per_atom_step": jax_s * 1e6 / len(atoms)}


def _save_series(out: str, name: str, ens: str, res: dict) -> None:
    st = res.get("final_state")
    if st is not None:  # gathering the replicas is collective: every process takes part
        positions, cells, numbers = to_host(st.positions), to_host(st.cell), to_host(st.numbers)
    if not is_main_process():
        return
    d = os.path.join(out, slug(name))
    os.makedirs(d, exist_ok=True)
    np.savez_compressed(os.path.join(d, f"{ens}_series.npz"),
                        temperatures_k=np.array(res["protocol"]["temperatures_k"]),
                        **{k: v for k, v in res["series"].items()},
                        **({f"{k}_by_walker": v for k, v in series_by_walker(res["series"]).items()}
                           if "walker" in res["series"] else {}))
    # Final configuration of every replica still running, as extended XYZ (ASE-readable).
    if st is not None:
        from ase import Atoms
        from ase.io import write

        temps = res["protocol"]["temperatures_k"]
        frames = []
        for i in res["active"]:  # the state holds every replica; stopped ones are not written
            a = Atoms(numbers=numbers, positions=positions[i].astype(float),
                      cell=cells[i].astype(float), pbc=True)
            a.info["temperature_k"] = temps[i]
            frames.append(a)
        if frames:
            write(os.path.join(d, f"{ens}_final.extxyz"), frames)


def checkpoint_path(out: str, name: str, part: str) -> str:
    """``OUT/checkpoints/<model>-<part>.checkpoint.npz``; an old-format pickle checkpoint of the same
    sweep (``.pkl``, jaxpto before issue #17) is an error, never loaded (unpickling can run code)."""
    base = os.path.join(out, "checkpoints", f"{slug(name)}-{part}")
    if os.path.exists(base + ".pkl"):
        raise CheckpointError(f"checkpoint {base}.pkl is in the old pickle format, which this jaxpto does not load "
                              "(unpickling a file can run code); delete it to restart the sweep from step 0, or "
                              "finish the run with the jaxpto version that wrote it")
    return base + ".checkpoint.npz"


def check_writable(out: str, checkpoints: bool = False) -> None:
    """Create ``out`` (and ``out/checkpoints``) and write a probe file there, or a clear ``OSError``
    naming the directory, before any work starts."""
    import tempfile

    dirs = [out] + ([os.path.join(out, "checkpoints")] if checkpoints else [])
    for d in dirs:
        try:
            os.makedirs(d, exist_ok=True)
            with tempfile.TemporaryFile(dir=d):
                pass
        except OSError as exc:
            raise OSError(exc.errno, f"the output directory {d} is not writable ({exc.strerror or exc}); "
                                     "choose another --out") from exc


def run_pto_test(models, out: str, protocol: PTOProtocol | None = None, *, parts=PARTS, progress: bool = True,
                 dtype=None, log=print, devices=None) -> dict:
    """Run the PTO-test for every model in ``models`` (names or paths), writing ``out``.

    ``parts``: any of ``static``, ``phonons``, ``npt``, ``nvt``, ``speed``. Parts already in
    ``out/results.json`` with the same protocol are skipped; interrupted sweeps resume.
    ``devices``: shard the sweeps' temperatures over devices (and processes, in a
    ``jax.distributed`` run: every process runs this function, process 0 writes the files).
    """
    if not is_main_process():
        log = _silent
    protocol = protocol or study_protocol()
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown part(s) {sorted(unknown)}; parts are {', '.join(PARTS)}")
    # Everything that can be checked without computing is checked before the first part starts.
    from bridges.registry import check_model_name, is_jax_native
    from jaxpto import host_allocator

    for name in models:
        check_model_name(name)
    sweeps = [protocol.npt if part == "npt" else protocol.nvt for part in ("npt", "nvt") if part in parts]
    for sweep in sweeps:
        check_sweep_memory(sweep)  # the model-independent lower bound; run_sweep checks with the model's cutoff
    check_writable(out, checkpoints=bool(sweeps))

    if not all(is_jax_native(m) for m in models):
        from bridges import gpu_memory

        host_allocator.tune()  # torch models on the CPU: before device_info() starts JAX's threads
        gpu_memory.share_gpu_with_torch()  # torch models on a GPU: before JAX reserves its memory
    data = load_results(out)
    data.update(protocol=protocol.to_dict(), versions=versions(), device=device_info())
    data.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    for name in models:
        entry = model_entry(data, name)
        model = None
        for part in PARTS:
            if part not in parts:
                continue
            fp = protocol.part_fingerprint(part, name)
            if entry["parts"].get(part, {}).get("fingerprint") == fp:
                log(f"[{name}] {part}: already done (results.json), skipped")
                continue
            if model is None:
                log(f"[{name}] loading model")
                from bridges.registry import load_model

                model = load_model(name)
            t0 = time.perf_counter()
            log(f"[{name}] {part} ...")
            relaxed_ca = (entry.get("static") or {}).get("c_over_a")
            if part == "static":
                entry["static"] = run_static(model, protocol, dtype)
            elif part == "phonons":
                if "static" not in entry:
                    entry["static"] = run_static(model, protocol, dtype)
                entry["phonons"] = run_phonons(model, protocol, entry["static"])
            elif part in ("npt", "nvt"):
                sweep = protocol.npt if part == "npt" else protocol.nvt
                res = run_sweep(model, sweep, model_name=name, checkpoint=checkpoint_path(out, name, part),
                                progress=progress, dtype=dtype, relaxed_c_over_a=relaxed_ca, devices=devices)
                _save_series(out, name, part, res)
                entry[part] = res["replicas"]
                entry[f"{part}_tc_k"] = res["tc_k"]
                entry[f"{part}_tc_note"] = res["tc_note"]
                entry[f"{part}_averaging_window_ps"] = res["averaging_window_ps"]
                entry[f"{part}_averaging_note"] = res["averaging_note"]
                if "replica_exchange" in res:
                    entry[f"{part}_replica_exchange"] = res["replica_exchange"]
                entry.setdefault("speed", {})[part] = res["speed"]
            elif part == "speed":
                entry.setdefault("speed", {})["ase_comparison"] = run_speed(model, name, protocol, dtype)
            entry["parts"][part] = {"fingerprint": fp, "seconds": time.perf_counter() - t0,
                                    "protocol": {**protocol.part_settings(part), "quick": protocol.quick}}
            write_results(out, data)  # finished work is on disk before the next part starts
            log(f"[{name}] {part} done in {time.perf_counter() - t0:.1f} s")
    from jaxpto.workflows.report import write_report

    if is_main_process():
        write_report(out, data)
    write_results(out, data)
    return data
