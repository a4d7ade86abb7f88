"""The benchmark suite: jaxpto against the bare model, ASE and TorchSim, on CPU or GPU, in one run.

For every model and PbTiO3 supercell (n^3 cells, 5 n^3 atoms) it measures, interleaved in one
process on one device with one float type (float32):

1. ``bare``     -- one energy+forces+stress call of the model on pre-built edges (torch models: the
                  torch EFS object called directly with the engine's edge arrays; JAX-native:
                  ``Model.compute`` with a pre-built neighbour list, many calls in one compiled
                  loop, as MD runs them, so Python's dispatch cost is not counted). The floor.
2. ``nvt``/``npt`` -- one jaxpto MD step (Langevin NVT, Melchionna NPT), R = 1, from compiled
                  chunks of ``--steps`` steps (compilation excluded).
3. ``replicas`` -- jaxpto Langevin with R = 2, 4, 8, ... replicas in one program (atom-steps/s).
4. ``ase``      -- one step of ASE's ``Langevin`` with the model's own ASE calculator (the study's method).
5. ``torchsim`` -- one step of TorchSim's (``torch-sim-atomistic`` >= 0.3.0) Langevin NVT
                  (BAOAB; 2 fs, 300 K, friction 0.01/fs as jaxpto's), its step loop timed after
                  ``init`` and a warm-up chunk, with TorchSim's wrapper of the very network object
                  the jaxpto side runs (same weights, device, float32) and its own neighbour lists.
                  Before timing, ``torchsim_agreement`` records both sides' energy and forces on
                  the structure (``dE_per_atom``, ``max_dF``; ``same_model`` at float32 round-off).
                  ``lj``: TorchSim's ``LennardJonesModel`` is plain truncated LJ (and its 0.3.0
                  forces are 2x -dE/dr), so the TorchSim side runs ASE's smooth LJ as a TorchSim
                  model (see ``_torchsim_lj``). CHGNet: TorchSim 0.3.0 has no wrapper
                  (``torchsim_skipped``). Not installed: the JSON says why.

All paths of a point are set up and warmed up first (compilation, TorchScript profiling runs and
first calls excluded), then timed round-robin, one chunk of each path per round, ``--repeats``
rounds: a drift of the machine's speed hits every path alike. All paths start from the same
rattled polar structure with the same Maxwell-Boltzmann momenta at 300 K.

Per point: median ms/step, us/atom/step, ns/day at 2 fs, peak memory (GPU: torch + JAX device
peaks; CPU: the process's peak resident set, which only grows), and the ratios jaxpto/bare,
ASE/jaxpto, TorchSim/jaxpto. Units are ASE's (eV, A) throughout. Results:
``benchmarks/results/suite-<device>.json`` and a plot.

Large systems: ``--isolate`` runs every (model, size) point in a fresh child process, so that its
peak memory is its own and a point that runs out of memory (``--memory-limit-gb``: an address-space
limit, so torch raises instead of the kernel's OOM killer stopping the machine) or time
(``--point-timeout``) is recorded with the reason while the run goes on; ``--grow`` then adds
supercells of about twice the atoms after ``--sizes`` until a point fails: ``largest_fit`` in the
JSON is the largest system whose point completed. The JSON is saved after every point.

Usage::

    python benchmarks/suite.py                         # defaults for this device
    python benchmarks/suite.py --models 7net-0 chgnet-0.3.0 lj --sizes 2 3 4 5 --replicas 1 2 4 8
    python benchmarks/suite.py --quick                 # a few minutes on a laptop CPU
    python benchmarks/suite.py --models lj --sizes 2 5 10 --isolate --grow --memory-limit-gb 20

Models: real ``7net-0`` and ``chgnet-0.3.0``; ``mace-medium-random`` (MACE-MP-0b medium
hyper-parameters, random weights) and ``orb-v2-random`` (ORB v2 architecture, random weights) when
mace-torch / orb-models are installed; ``lj`` (JAX-native Lennard-Jones vs ASE's LennardJones).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
# Before any JAX computation: glibc's malloc set up for torch models called on XLA's threads
# (jaxpto/host_allocator.py, as jaxpto.load_model does); every path of the suite runs under it.
from jaxpto import host_allocator  # noqa: E402

host_allocator.tune()

LJ_PARAMS = dict(sigma=2.0, epsilon=0.05, rc=5.0, smooth=True)  # a generic pair potential for PbTiO3 cells


# ----------------------------------------------------------------------------------------- models

def build_model(name: str, tmpdir: str, device=None):
    """(jaxpto Model, torch EFS or None, ASE calculator factory, description).

    ``device``: torch device of the torch models and of their ASE calculators (default: CUDA
    where torch has it, else the CPU); the JAX-native ``lj`` ignores it."""
    import jaxpto
    from bridges.registry import family_module
    from bridges.torch_bridge import as_jax_model

    if name == "lj":
        from ase.calculators.lj import LennardJones

        model = jaxpto.load_model("lj", **LJ_PARAMS)
        return model, None, lambda: LennardJones(**LJ_PARAMS), "JAX-native Lennard-Jones (ASE LennardJones on the ASE side)"
    if name in ("7net-0", "7net-l3i5"):
        from sevenn.calculator import SevenNetCalculator

        efs = family_module("sevenn").load(name, device=device)
        return as_jax_model(efs, device=str(efs.device)), efs, \
            lambda: SevenNetCalculator(name, device=str(efs.device)), f"SevenNet {name} (real weights)"
    if name.startswith("chgnet-"):
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator

        efs = family_module("chgnet").load(name, device=device)
        version = name.split("-", 1)[1]
        return as_jax_model(efs, device=str(efs.device)), efs, \
            lambda: CHGNetCalculator(CHGNet.load(model_name=version, verbose=False), use_device=str(efs.device)), \
            f"CHGNet {version} (real weights)"
    if name == "mace-medium-random":
        import torch
        from mace.calculators import MACECalculator

        path = os.path.join(tmpdir, "mace-medium-random.model")
        if not os.path.exists(path):
            torch.save(_random_mace_medium(), path)
        efs = family_module("mace").load(path, device=device)
        return as_jax_model(efs, device=str(efs.device)), efs, \
            lambda: MACECalculator(model_paths=path, device=str(efs.device), default_dtype="float32"), \
            "MACE, MACE-MP-0b medium hyper-parameters, random weights"
    if name == "orb-v2-random":
        import torch
        from orb_models.forcefield import pretrained
        from orb_models.forcefield.calculator import ORBCalculator

        torch.manual_seed(0)
        from orb_models.forcefield.atomic_system import SystemConfig

        config = SystemConfig(radius=6.0, max_num_neighbors=20)  # orb-v2's graph settings
        net = pretrained.orb_v2_architecture(device="cpu", system_config=config).eval()  # full size, random
        path = os.path.join(tmpdir, "orb-v2-random.ckpt")
        torch.save(net.state_dict(), path)
        efs = family_module("orb").load(path, architecture="orb-v2", device=device)
        return as_jax_model(efs, device=str(efs.device)), efs, lambda: ORBCalculator(net, system_config=config, device=str(efs.device)), \
            "ORB v2 architecture (15 message-passing steps), random weights"
    raise ValueError(f"unknown benchmark model {name!r}")


def _random_mace_medium():
    """A MACE with MACE-MP-0b medium's hyper-parameters (128x0e+128x1o, L=1, 2 interactions,
    correlation 3, r_max 6 A, 8 Bessel functions) on Pb/Ti/O, random weights, float32."""
    import torch
    from e3nn import o3
    from mace import modules

    torch.manual_seed(0)
    zs = [8, 22, 82]
    model = modules.ScaleShiftMACE(
        r_max=6.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2, num_elements=len(zs), hidden_irreps=o3.Irreps("128x0e+128x1o"),
        MLP_irreps=o3.Irreps("16x0e"), gate=torch.nn.functional.silu, atomic_energies=np.array([-5.0, -8.0, -4.0]),
        avg_num_neighbors=40.0, atomic_numbers=zs, correlation=3, radial_type="bessel",
        atomic_inter_scale=1.0, atomic_inter_shift=0.0)
    return model.float()


# ----------------------------------------------------------------------------------------- timing

def _median_time(fn, repeats):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def interleaved_seconds_per_step(runners: dict, repeats: int) -> dict:
    """Median seconds per step of every path, timed round-robin: each round runs one chunk of
    every path in turn, so a drift of the machine's speed (this VM's varies up to 2x over
    minutes) hits all paths alike and the ratios compare like with like.
    ``runners``: key -> (chunk callable, steps per chunk), already warmed up."""
    times = {k: [] for k in runners}
    for _ in range(repeats):
        for key, (chunk, steps) in runners.items():
            t0 = time.perf_counter()
            chunk()
            times[key].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def _peak_memory():
    out = {"host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    try:
        import torch

        if torch.cuda.is_available():
            out["torch_cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
    except ImportError:
        pass
    try:
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            out["jax_device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    except Exception:
        pass
    return out


def _atoms(n, seed=0, T=300.0):
    """The study's polar PbTiO3 start, n^3 cells, rattled by 0.02 A, Maxwell-Boltzmann momenta at
    T (seeded): every path starts from these positions and momenta."""
    from jaxpto.workflows.structures import polar_supercell

    atoms = polar_supercell(n)
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(0, 0.02, atoms.positions.shape)
    return _with_momenta(atoms, T, seed)


def _with_momenta(atoms, T, seed):
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    a = atoms.copy()
    MaxwellBoltzmannDistribution(a, temperature_K=T, rng=np.random.default_rng(seed + 1000))
    Stationary(a)
    return a


def _engine_inputs(model, atoms):
    """float32 positions [1,N,3], cell [1,3,3] and a neighbour list (skin 1 A) for ``atoms``."""
    import jax.numpy as jnp

    from jaxpto import neighbors as nl

    pos = jnp.asarray(atoms.positions[None], jnp.float32)
    cell = jnp.asarray(np.asarray(atoms.cell)[None], jnp.float32)
    return pos, cell, nl.allocate(pos, cell, model.cutoff, skin=1.0, pbc=(True, True, True))


def prepare_bare(model, efs, atoms):
    """``(callable, calls per invocation)``, warmed up: energy+forces+stress on a pre-built
    neighbour list / pre-built edges (the floor); torch models: one direct call of the torch EFS."""
    import jax
    import jax.numpy as jnp

    pos, cell, nbrs = _engine_inputs(model, atoms)
    if efs is None:
        z = jnp.asarray(atoms.numbers)
        f = jax.jit(model.compute)
        one = lambda: jax.block_until_ready(f(pos, cell, z, nbrs))  # noqa: E731
        one()
        # A JAX-native call takes micro- to milliseconds, comparable to the cost of dispatching
        # one jitted call from Python; the MD chunks run hundreds of steps per dispatch. So the
        # floor is `k` calls inside one compiled loop (each call's input depends on the last
        # one's forces by a 1e-30 factor, so XLA cannot hoist or merge them): seconds per call.
        t0 = time.perf_counter()
        one()
        k = int(min(1000, max(1, np.ceil(0.1 / max(time.perf_counter() - t0, 1e-6)))))

        @jax.jit
        def calls(p):
            def body(_, carry):
                p, e = carry
                out = model.compute(p, cell, z, nbrs)
                return p + jnp.asarray(1e-30, p.dtype) * out.forces, e + out.energy
            return jax.lax.fori_loop(0, k, body, (p, jnp.zeros(p.shape[0], p.dtype)))

        jax.block_until_ready(calls(pos))
        return lambda: jax.block_until_ready(calls(pos)), k
    else:
        import torch

        from bridges.torch_bridge import edges_from_neighbors

        src, dst, shift, mask = (np.asarray(x) for x in jax.jit(edges_from_neighbors, static_argnums=3)(
            pos, cell, nbrs, float(model.cutoff)))
        dev = efs.device
        t = lambda x, dt=None: torch.as_tensor(x, device=dev, dtype=dt)  # noqa: E731
        args = (t(np.asarray(pos)), t(np.asarray(cell)), t(atoms.numbers, torch.int64), t(src, torch.int64),
                t(dst, torch.int64), t(np.asarray(shift)), t(mask))

        def call():
            out = efs(*args)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return out
    call()
    call()
    return call, 1


def prepare_jaxpto(model, atoms, ensemble, replicas, steps, T=300.0):
    """A warmed-up (compiled) callable taking ``steps`` jaxpto steps (``.holder["s"]``: the state): Langevin NVT (friction
    0.01/fs) or Melchionna NPT (ttime 25 fs, pfactor (75 fs)^2 B, P = 0), 2 fs, ``replicas``
    copies of ``atoms`` (momenta as given, replica r > 0 re-drawn at T with seed r)."""
    import jax
    from ase import units

    from jaxpto.integrators import langevin, melchionna_npt
    from jaxpto.simulate import run_chunk, state_from_atoms

    atoms_list = [atoms.copy()]
    for r in range(1, replicas):
        atoms_list.append(_with_momenta(atoms, T, seed=r))
    state, force_fn = state_from_atoms(atoms_list, model, seed=0, skin=1.0, dtype=np.float32)
    dt = 2 * units.fs
    if ensemble == "npt":
        integ = melchionna_npt(force_fn, dt, mask=np.eye(3))
        state = integ.init(state, T, ttime=25 * units.fs, pfactor=75.0**2 * units.fs, externalstress=0.0)
    else:
        integ = langevin(force_fn, dt)
        state = integ.init(state, T, 0.01 / units.fs)
    holder = {"s": state}

    def chunk():
        holder["s"], _ = run_chunk(integ, holder["s"], steps)
        jax.block_until_ready(holder["s"].positions)

    chunk()  # compile + warm-up
    chunk.holder = holder  # the live state (benchmarks/step_profile.py reads its step and rebuild counts)
    return chunk


def prepare_ase(calc_factory, atoms, steps, T=300.0):
    """A warmed-up callable taking ``steps`` steps of ASE's Langevin (2 fs, 0.01/fs) with the
    model's own ASE calculator (the study's method)."""
    from ase import units
    from ase.md.langevin import Langevin

    a = atoms.copy()
    a.calc = calc_factory()
    dyn = Langevin(a, 2 * units.fs, temperature_K=T, friction=0.01 / units.fs)
    dyn.run(1)
    return lambda: dyn.run(steps)


# ----------------------------------------------------------------------------------------- TorchSim
#
# TorchSim's own units are ASE's (eV, A, amu; time in A sqrt(amu/eV)); only its high-level
# ``integrate`` runner takes the timestep in ps and the temperature in K. Its integrators take
# dt, kT (eV) and gamma in those internal units, converted here with ``torch_sim.units.MetalUnits``
# (``MetalUnits.time`` = 1 ps, ``MetalUnits.temperature`` = k_B in eV/K).

def _torchsim_lj(params, device, dtype):
    """TorchSim model computing exactly jaxpto's (= ASE's) Lennard-Jones, ``LJ_PARAMS`` included.

    TorchSim's ``LennardJonesModel`` is the plain truncated 12-6 potential: no energy shift and no
    smooth cutoff, so it cannot represent ``smooth=True`` (the forces differ for every pair between
    ro = 0.66 rc and rc). Moreover in torch-sim-atomistic 0.3.0 its forces are twice -dE/dr (each
    pair of its full neighbour list is applied to both atoms) and its periodic shifts use the
    transposed cell. So the benchmark runs the same potential on both sides: this ``ModelInterface``
    with TorchSim's own neighbour list (``vesin_nl_ts``, as its LJ and MACE/SevenNet wrappers use)
    and ASE's pair energy with analytic forces, the same work per pair as TorchSim's LJ.
    """
    import torch
    from torch_sim.models.interface import ModelInterface
    from torch_sim.neighbors import vesin_nl_ts
    from torch_sim.state import SimState

    sigma, eps = float(params["sigma"]), float(params["epsilon"])
    rc = float(params.get("rc") or 3.0 * sigma)
    ro = float(params.get("ro") or 0.66 * rc)
    smooth = bool(params.get("smooth", False))
    xc, xo = rc * rc, ro * ro
    e_rc = 4.0 * eps * ((sigma / rc) ** 12 - (sigma / rc) ** 6)

    class AseLennardJones(ModelInterface):
        def __init__(self):
            super().__init__()
            self._device, self._dtype = torch.device(device), dtype
            self._compute_forces, self._compute_stress = True, False
            self.cutoff = torch.tensor(rc, dtype=dtype, device=self._device)

        def forward(self, state, **_):
            if isinstance(state, dict):
                state = SimState(**state, masses=torch.ones_like(state["positions"]))
            energies, forces = [], []
            for b in range(int(state.system_idx.max()) + 1):
                pos = state.positions[state.system_idx == b]
                cell = state.row_vector_cell[b]
                (i, j), shifts = vesin_nl_ts(positions=pos, cell=cell, pbc=state.pbc, cutoff=self.cutoff)
                d = pos[j] - pos[i] + shifts @ cell
                x = (d * d).sum(-1)
                inside = x <= xc
                x = torch.where(inside, x, torch.full_like(x, xc))
                c6 = (sigma * sigma / x) ** 3
                u = 4.0 * eps * (c6 * c6 - c6)
                du = -24.0 * eps * (2.0 * c6 * c6 - c6) / x  # (du/dr) / r
                if smooth:
                    fc = torch.where(x < xo, torch.ones_like(x),
                                     (xc - x) ** 2 * (xc + 2 * x - 3 * xo) / (xc - xo) ** 3)
                    dfc = torch.where(x < xo, torch.zeros_like(x), 6.0 * (xc - x) * (xo - x) / (xc - xo) ** 3)
                    u, du = u * fc, du * fc + 2.0 * u * dfc  # d(u fc)/dr / r, fc' = dfc/dx
                else:
                    u = u - e_rc
                zero = torch.zeros_like(u)
                u, du = torch.where(inside, u, zero), torch.where(inside, du, zero)
                energies.append(0.5 * u.sum())  # full list: every pair twice
                # F_i = sum_j (du/dr) d_ij / r over the full list (both halves of each pair's
                # energy depend on r_i, so no factor 1/2 here).
                forces.append(torch.zeros_like(pos).index_add_(0, i, du[:, None] * d))
            return {"energy": torch.stack(energies), "forces": torch.cat(forces)}

    return AseLennardJones()


def torchsim_model(name, efs, device=None):
    """TorchSim's wrapper of the very network the jaxpto side runs (``efs.model``: same object,
    device and float32 dtype; the wrappers move/cast it in place, so both must be efs's own), or
    the ASE-equivalent LJ above for ``lj``. Wrapper options are TorchSim's defaults (stress on for
    MACE/ORB/SevenNet, as jaxpto's torch bridges compute it too). ``NotImplementedError`` where
    TorchSim has no wrapper for the family."""
    import torch
    import torch_sim  # noqa: F401  (ImportError: not installed)

    if efs is None:
        if name != "lj":
            raise NotImplementedError(f"no TorchSim counterpart for the JAX-native model {name}")
        import jax

        dev = device or ("cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu")
        return _torchsim_lj(LJ_PARAMS, dev, torch.float32)
    family = type(efs).__module__.rsplit(".", 1)[-1]
    dev, dt = efs.device, next(efs.model.parameters()).dtype
    if family == "sevenn":
        return _torchsim_sevennet_cls()(model=efs.model, modal=efs.modal, device=dev, dtype=dt)
    if family == "mace":
        from torch_sim.models.mace import MaceModel

        return MaceModel(model=efs.model, device=dev, dtype=dt)  # its default dtype is float64
    if family == "orb":
        from orb_models.forcefield.atomic_system import SystemConfig
        from torch_sim.models.orb import OrbModel

        config = SystemConfig(radius=efs.radius, max_num_neighbors=efs.max_num_neighbors)
        return OrbModel(model=efs.model, system_config=config, conservative=efs.conservative, device=dev, dtype=dt)
    if family == "chgnet":
        try:
            from torch_sim.models.chgnet import CHGNetModel  # newer TorchSim releases only
        except ImportError:
            raise NotImplementedError(f"TorchSim {_torchsim_version()} has no CHGNet wrapper "
                                      "(no torch_sim.models.chgnet)") from None
        return CHGNetModel(model=efs.model, device=dev, dtype=dt)
    raise NotImplementedError(f"no TorchSim wrapper for {name} ({type(efs).__name__}) in this suite")


def _torchsim_sevennet_cls():
    """SevenNet's own TorchSim wrapper (``sevenn.torchsim``, sevenn >= 0.13; it needs a TorchSim
    newer than 0.3.0) where it imports, else TorchSim's ``torch_sim.models.sevennet``."""
    try:
        from sevenn.torchsim import SevenNetModel

        return SevenNetModel
    except ImportError:
        pass
    import torch
    import torch_sim.models.sevennet as tsm

    # TorchSim 0.3.0 imports ``torch_script_type`` from ``sevenn.calculator``, which sevenn 0.13
    # dropped; the failed import also leaves ``Collater`` undefined (NameError in forward).
    # Restore both names as they were (sevenn < 0.13: RecursiveScriptModule).
    if not hasattr(tsm, "Collater"):
        from torch_geometric.loader.dataloader import Collater

        tsm.Collater = Collater
    if not hasattr(tsm, "torch_script_type"):
        tsm.torch_script_type = torch.jit.RecursiveScriptModule
    return tsm.SevenNetModel


def _jaxpto_energy_forces(model, atoms):
    import jax.numpy as jnp

    pos, cell, nbrs = _engine_inputs(model, atoms)
    out = model.compute(pos, cell, jnp.asarray(atoms.numbers), nbrs)
    return float(out.energy[0]), np.asarray(out.forces[0], np.float64)


def torchsim_agreement(ts_model, model, atoms):
    """Energy and forces of the TorchSim model and of the jaxpto model on ``atoms`` (eV, eV/A)."""
    import torch_sim as ts

    e_j, f_j = _jaxpto_energy_forces(model, atoms)
    out = ts_model(ts.initialize_state(atoms, ts_model.device, ts_model.dtype))
    e_t = float(out["energy"].reshape(-1)[0])
    f_t = out["forces"].detach().cpu().double().numpy().reshape(f_j.shape)
    return {"E_jaxpto": e_j, "E_torchsim": e_t, "dE_per_atom": abs(e_t - e_j) / len(atoms),
            "max_dF": float(np.abs(f_t - f_j).max()), "max_abs_F": float(np.abs(f_j).max())}


def _torchsim_langevin(ts_model, T, dt_fs=2.0, friction_per_fs=0.01, seed=0):
    """(init, step) of TorchSim's Langevin (BAOAB) NVT at the jaxpto side's settings
    (2 fs, T, friction 0.01/fs), for 0.3.0 (``nvt_langevin`` returning (init, update)) and for
    later releases (``nvt_langevin_init``/``nvt_langevin_step`` taking the model)."""
    import torch
    from ase import units
    from torch_sim import integrators
    from torch_sim.units import MetalUnits

    fs = 1e-3 * MetalUnits.time  # TorchSim's time unit is ASE's: 1 fs = 0.0982...
    if abs(fs / units.fs - 1) > 1e-6:  # a later TorchSim with other internal units
        raise RuntimeError(f"TorchSim's 1 fs is {fs} internal units, ASE's {units.fs}")
    t = lambda v: torch.tensor(v, device=ts_model.device, dtype=ts_model.dtype)  # noqa: E731
    dt, kT, gamma = t(dt_fs * fs), t(T * MetalUnits.temperature), t(friction_per_fs / fs)
    torch.manual_seed(seed)  # 0.3.0 draws the noise from torch's global generator
    if hasattr(integrators, "nvt_langevin_step"):
        def init(state):
            return integrators.nvt_langevin_init(state, ts_model, kT=kT)

        def step(state):
            return integrators.nvt_langevin_step(state, ts_model, dt=dt, kT=kT, gamma=gamma)

        return init, step
    return integrators.nvt_langevin(ts_model, dt=dt, kT=kT, gamma=gamma, seed=seed)


def prepare_torchsim(ts_model, atoms, steps, T=300.0):
    """A warmed-up callable taking ``steps`` steps of TorchSim's Langevin step loop: state built
    and ``init`` called once, one warm-up chunk (setup excluded, as on the jaxpto side)."""
    import torch
    import torch_sim as ts

    init, step = _torchsim_langevin(ts_model, T)
    holder = {"s": init(ts.initialize_state(atoms, ts_model.device, ts_model.dtype))}
    cuda = torch.device(ts_model.device).type == "cuda"

    def chunk():
        s = holder["s"]
        for _ in range(steps):
            s = step(s)
        if cuda:
            torch.cuda.synchronize()
        holder["s"] = s
        if not torch.isfinite(s.positions).all():
            raise FloatingPointError("TorchSim trajectory went non-finite")

    chunk()
    return chunk


# ----------------------------------------------------------------------------------------- driver

def _torchsim_version():
    from importlib.metadata import version

    return version("torch-sim-atomistic")


def _point(seconds, n_atoms, replicas=1):
    return {"ms_per_step": 1e3 * seconds, "us_per_atom_step": 1e6 * seconds / (n_atoms * replicas),
            "ns_per_day": 2.0 * 86400e-6 / seconds, "atom_steps_per_s": n_atoms * replicas / seconds}


def machine():
    import jax

    import ase

    info = {"ase": ase.__version__, "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "jax_backend": jax.default_backend(),
            "jax_devices": [str(d) for d in jax.devices()],
            "host_allocator": host_allocator.status}
    from bridges import gpu_memory

    info["gpu_memory"] = gpu_memory.status
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


_PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
_parent_set_preallocate = False


def main(argv=None):
    global _parent_set_preallocate
    if "--isolate" in (sys.argv[1:] if argv is None else argv) and _PREALLOCATE not in os.environ:
        # The --isolate parent only orchestrates. On a GPU, JAX would otherwise reserve 75 % of the
        # device's memory at its first use here, and the points' processes would get the rest.
        os.environ[_PREALLOCATE] = "false"
        _parent_set_preallocate = True
    else:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--models", nargs="+", default=["7net-0"])
        pre.add_argument("--quick", action="store_true")
        known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
        if known.quick or any(m != "lj" for m in known.models):
            from bridges import gpu_memory

            # Torch models on a GPU: JAX must not reserve 75 % of it first (bridges/gpu_memory.py).
            gpu_memory.share_gpu_with_torch()
    import jax

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = jax.default_backend() == "gpu"
    ap.add_argument("--models", nargs="+", default=["lj", "7net-0", "chgnet-0.3.0", "mace-medium-random", "orb-v2-random"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[2, 3, 4, 5, 6, 8, 10] if gpu else [2, 3, 4, 5])
    ap.add_argument("--replicas", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32] if gpu else [1, 2, 4, 8])
    ap.add_argument("--max-total-atoms", type=int, default=200_000 if gpu else 2_500,
                    help="skip replica points with R*N above this (listed in the JSON)")
    ap.add_argument("--steps", type=int, default=20 if gpu else 3, help="steps per timed chunk")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ase-max-atoms", type=int, default=5000 if gpu else 700)
    ap.add_argument("--torchsim-max-atoms", type=int, default=None, help="default: --ase-max-atoms")
    ap.add_argument("--quick", action="store_true", help="sizes 2 3, replicas 1 2 4, models lj 7net-0 chgnet-0.3.0")
    ap.add_argument("--out", default=None)
    ap.add_argument("--isolate", action="store_true",
                    help="run every (model, size) point in a fresh child process: its peak memory is its own, "
                         "and a point that runs out of memory or time is recorded and the run goes on")
    ap.add_argument("--point-timeout", type=float, default=None,
                    help="with --isolate: seconds before a point's process is stopped (recorded as an error)")
    ap.add_argument("--memory-limit-gb", type=float, default=None,
                    help="with --isolate: address-space limit of each point's process (RLIMIT_AS), so that an "
                         "allocation beyond it fails in that process instead of calling the kernel's OOM killer")
    ap.add_argument("--grow", action="store_true",
                    help="after --sizes, keep adding larger supercells (about 2x the atoms each) until a point "
                         "fails or exceeds --grow-max-atoms: the largest that fits (needs --isolate)")
    ap.add_argument("--grow-max-atoms", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    if args.torchsim_max_atoms is None:
        args.torchsim_max_atoms = args.ase_max_atoms
    if args.quick:
        args.sizes, args.replicas, args.models = [2, 3], [1, 2, 4], ["lj", "7net-0", "chgnet-0.3.0"]
    if (args.point_timeout or args.memory_limit_gb or args.grow) and not args.isolate:
        ap.error("--point-timeout, --memory-limit-gb and --grow act on child processes: add --isolate")
    dev = "gpu" if gpu else "cpu"
    out = args.out or os.path.join(HERE, "results", f"suite-{dev}.json")
    result = {"machine": machine(), "args": vars(args), "points": [], "skipped": [], "notes": []}
    tmpdir = tempfile.mkdtemp(prefix="jaxpto-bench-")
    warnings.simplefilter("ignore")

    def save():
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out + ".tmp", "w") as fh:
            json.dump(result, fh, indent=1)
        os.replace(out + ".tmp", out)

    if args.isolate:
        return _run_isolated(args, result, save, tmpdir, gpu, out)
    for name in args.models:
        try:
            model, efs, calc_factory, desc = build_model(name, tmpdir)
        except Exception as exc:
            result["skipped"].append({"model": name, "reason": f"{type(exc).__name__}: {exc}"})
            print(f"[{name}] skipped: {exc}", flush=True)
            save()
            continue
        for n in args.sizes:
            p = measure_point(name, model, efs, calc_factory, desc, n, args, result["skipped"])
            result["points"].append(p)
            save()
            print(point_line(p), flush=True)
    return _finish(result, save, gpu, out)


class OutOfTime(RuntimeError):
    """A point's required path (bare, nvt) does not fit in the time left (``measure_point``)."""


def measure_point(name, model, efs, calc_factory, desc, n, args, skipped, time_left=None):
    """One (model, n^3 cells) point of the suite: every path set up and warmed up, then timed
    round-robin (:func:`interleaved_seconds_per_step`); returns the point's dict (an ``error``
    key if it failed) and appends skipped paths to ``skipped``.

    ``args``: ``steps``, ``repeats``, ``replicas``, ``max_total_atoms``, ``ase_max_atoms``,
    ``torchsim_max_atoms`` (as the command line's). ``time_left``: optional callable giving the
    seconds left; a path whose predicted cost (its set-up, measured for the first jaxpto path, plus
    ``repeats + 1`` chunks at the bare call's speed times the replicas) does not fit is skipped and
    listed with the reason ("time budget"); without the bare and NVT paths the point is an error.
    """
    atoms = _atoms(n)
    N = len(atoms)
    p = {"model": name, "description": desc, "cells": n, "n_atoms": N}
    setup = {"s": None}  # seconds the first jaxpto path took to compile and warm up

    def fits(path, chunk_s, required=False):
        if time_left is None:
            return True
        need = (setup["s"] or 0.0) + (args.repeats + 1) * chunk_s
        if time_left() > need:
            return True
        reason = f"time budget: {time_left():.0f} s left, this path needs ~{need:.0f} s"
        if required:
            raise OutOfTime(reason)
        skipped.append({"model": name, "n_atoms": N, "path": path, "reason": reason})
        return False

    try:
        if time_left is not None and time_left() <= 0:
            raise OutOfTime("time budget: none left")
        bare, bare_calls = prepare_bare(model, efs, atoms)
        bare_s = _median_time(bare, 2) / bare_calls
        # Chunks of at least ~0.3 s, so that the per-chunk host check does not count for
        # fast (JAX-native) models; ML models take --steps steps per chunk.
        steps = int(min(1000, max(args.steps, np.ceil(0.3 / bare_s))))
        p["steps_per_chunk"] = steps
        # Every path is set up and warmed up first, then timed round-robin (see
        # interleaved_seconds_per_step), so that all ratios of a point share the same
        # machine state.
        runners = {"bare": (bare, bare_calls)}
        for ens in ("nvt", "npt"):
            if not fits(ens, steps * bare_s, required=ens == "nvt"):
                continue
            t0 = time.perf_counter()
            runners[ens] = (prepare_jaxpto(model, atoms, ens, 1, steps), steps)
            setup["s"] = setup["s"] or time.perf_counter() - t0
            p["jaxpto_setup_s"] = setup["s"]  # compilation + warm-up chunk of the first jaxpto path
        for R in args.replicas:
            if R == 1:
                continue
            if R * N > args.max_total_atoms:
                skipped.append({"model": name, "n_atoms": N, "replicas": R,
                                "reason": f"R*N = {R * N} > --max-total-atoms {args.max_total_atoms}"})
                continue
            if fits(f"R{R}", R * steps * bare_s):
                runners[f"R{R}"] = (prepare_jaxpto(model, atoms, "nvt", R, steps), steps)
        if N <= args.ase_max_atoms:
            ase_steps = max(1, min(steps, 50) // 2)
            # ASE's step is the model's call plus its own (CPU) graph building: up to ~10x the
            # bare call on a GPU (the ASE/jaxpto >= 10 target), so its chunk is predicted at 10x.
            if fits("ase", 10 * ase_steps * bare_s):
                runners["ase"] = (prepare_ase(calc_factory, atoms, ase_steps), ase_steps)
        else:
            skipped.append({"model": name, "n_atoms": N, "path": "ase",
                            "reason": f"N > --ase-max-atoms {args.ase_max_atoms}"})
        try:
            if N > args.torchsim_max_atoms:
                raise NotImplementedError(f"N > --torchsim-max-atoms {args.torchsim_max_atoms}")
            ts_model = torchsim_model(name, efs)
            p["torchsim_agreement"] = agree = torchsim_agreement(ts_model, model, atoms)
            # float32 round-off on both sides; anything larger is a different model
            agree["same_model"] = bool(agree["dE_per_atom"] < 1e-4
                                       and agree["max_dF"] < 1e-3 * max(1.0, agree["max_abs_F"]))
            if fits("torchsim", 2 * steps * bare_s):
                runners["torchsim"] = (prepare_torchsim(ts_model, atoms, steps), steps)
                p["torchsim_version"] = _torchsim_version()
                p["torchsim_wrapper"] = f"{type(ts_model).__module__}.{type(ts_model).__qualname__}"
        except ImportError as exc:
            p["torchsim_skipped"] = (f"TorchSim side not importable here ({type(exc).__name__}: {exc}); "
                                     "pip install torch-sim-atomistic (0.3.0 is the last for Python 3.11)")
        except NotImplementedError as exc:
            p["torchsim_skipped"] = str(exc)
        except Exception as exc:
            p["torchsim_failed"] = f"{type(exc).__name__}: {exc}"
        sec = interleaved_seconds_per_step(runners, args.repeats)
        for key in ("bare", "nvt", "npt", "ase", "torchsim"):
            if key in sec:
                p[key] = _point(sec[key], N)
        p["jaxpto_over_bare"] = p["nvt"]["ms_per_step"] / p["bare"]["ms_per_step"]
        p["replicas"] = {}
        for key in sec:
            if key.startswith("R"):
                R = int(key[1:])
                p["replicas"][str(R)] = _point(sec[key], N, R)
                p["replicas"][str(R)]["throughput_over_R1"] = \
                    p["replicas"][str(R)]["atom_steps_per_s"] / p["nvt"]["atom_steps_per_s"]
        if "ase" in p:
            p["ase_over_jaxpto"] = p["ase"]["ms_per_step"] / p["nvt"]["ms_per_step"]
        if "torchsim" in p:
            p["torchsim_over_jaxpto"] = p["torchsim"]["ms_per_step"] / p["nvt"]["ms_per_step"]
        p["memory"] = _peak_memory()
    except Exception as exc:
        p["error"] = f"{type(exc).__name__}: {exc}"
        p["traceback"] = traceback.format_exc(limit=3)
    return p


def point_line(p) -> str:
    """One line of progress for a point."""
    line = f"[{p['model']}] N={p['n_atoms']}: " + ", ".join(
        f"{k} {p[k]['ms_per_step']:.1f} ms" for k in ("bare", "nvt", "npt", "ase", "torchsim") if k in p)
    if "jaxpto_over_bare" in p:
        line += f"; jaxpto/bare {p['jaxpto_over_bare']:.3f}"
    if "ase_over_jaxpto" in p:
        line += f"; ASE/jaxpto {p['ase_over_jaxpto']:.2f}"
    if "torchsim_over_jaxpto" in p:
        line += f"; TorchSim/jaxpto {p['torchsim_over_jaxpto']:.2f}"
    return line + (f"; ERROR {p['error']}" if "error" in p else "")


def _finish(result, save, gpu, out):
    if not gpu:
        result["notes"].append("No GPU in this run: the GPU part of the suite was skipped (run the same command "
                               "on a GPU machine; results go to suite-gpu.json).")
    save()
    try:
        plot(result, out.replace(".json", ".png"))
    except Exception as exc:  # the JSON is the result; a plot failure must not lose it
        print(f"plot failed: {exc}")
    print(f"wrote {out}")
    return result


def _grown_sizes(n):
    """The next supercell after n^3 cells: about twice the atoms (n * 2^(1/3), rounded up)."""
    return int(np.ceil(n * 2 ** (1 / 3)))


def _child_argv(args, name, n, out):
    argv = [sys.executable, os.path.abspath(__file__), "--models", name, "--sizes", str(n),
            "--replicas", *map(str, args.replicas), "--max-total-atoms", str(args.max_total_atoms),
            "--steps", str(args.steps), "--repeats", str(args.repeats), "--ase-max-atoms", str(args.ase_max_atoms),
            "--torchsim-max-atoms", str(args.torchsim_max_atoms), "--out", out]
    return argv


def _child_env():
    """The points' processes run with the user's environment: without the parent's own
    ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (see ``main``), so each point's process makes jaxpto's
    own choice (``bridges/gpu_memory.py``) as a user's run would."""
    env = dict(os.environ)
    if _parent_set_preallocate:
        env.pop(_PREALLOCATE, None)
    return env


def _run_point_process(args, name, n, tmpdir):
    """Run one (model, size) point in a fresh process. Returns ``(child JSON or None, failure
    reason or None (time-out, killed, non-zero exit), tail of its output, wall seconds)``."""
    import resource as _resource
    import signal
    import subprocess

    out = os.path.join(tmpdir, f"point-{name}-{n}.json")
    limit = None if args.memory_limit_gb is None else int(args.memory_limit_gb * 2**30)

    def set_limit():
        if limit is not None:
            _resource.setrlimit(_resource.RLIMIT_AS, (limit, limit))

    t0 = time.perf_counter()
    proc = subprocess.Popen(_child_argv(args, name, n, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=set_limit, start_new_session=True, env=_child_env())
    try:
        log, _ = proc.communicate(timeout=args.point_timeout)
        reason = None if proc.returncode == 0 else (
            f"killed by signal {-proc.returncode} ({signal.Signals(-proc.returncode).name}"
            + (", the kernel's OOM killer?" if proc.returncode == -9 else "") + ")"
            if proc.returncode < 0 else f"exit status {proc.returncode}")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        reason = f"stopped after --point-timeout {args.point_timeout:g} s"
    wall = time.perf_counter() - t0
    tail = "\n".join((log or "").strip().splitlines()[-8:])
    print(tail, flush=True)
    child = None
    if os.path.exists(out):
        with open(out) as fh:
            child = json.load(fh)
    return child, reason, tail, wall


def _run_isolated(args, result, save, tmpdir, gpu, out):
    """``--isolate``: every (model, size) in its own process (see ``main``), merged into one JSON,
    saved after every point. A point that fails (out of memory, time-out) is recorded with the
    reason; with ``--grow`` it ends that model's growth, and ``largest_fit[model]`` is the largest
    system whose point completed."""
    result["largest_fit"] = {}
    for name in args.models:
        sizes = list(args.sizes)
        k = 0
        while k < len(sizes):
            n = sizes[k]
            k += 1
            child, reason, tail, wall = _run_point_process(args, name, n, tmpdir)
            if child is not None:
                if "machine" in child:
                    result["machine"] = child["machine"]  # the children's (allocator state included)
                result["skipped"] += child.get("skipped", [])
            pts = [] if child is None else child.get("points", [])
            ok = bool(pts) and all("error" not in p for p in pts) and reason is None
            if not pts and child is not None and any(s.get("model") == name and "n_atoms" not in s
                                                     for s in child.get("skipped", [])):
                break  # the model itself could not be built: listed in "skipped" by the child
            if not pts:
                pts = [{"model": name, "cells": n, "n_atoms": 5 * n**3, "error": reason or "no result",
                        "output_tail": tail}]
            elif reason is not None:
                for p in pts:
                    p.setdefault("error", reason)
            for p in pts:
                p["process_wall_s"] = wall
            result["points"] += pts
            if ok:
                result["largest_fit"][name] = max(result["largest_fit"].get(name, 0), 5 * n**3)
            save()
            if args.grow and k == len(sizes):
                nxt = _grown_sizes(max(sizes))
                if ok and 5 * nxt**3 <= args.grow_max_atoms:
                    sizes.append(nxt)
    return _finish(result, save, gpu, out)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    models = sorted({p["model"] for p in result["points"]})
    for k, m in enumerate(models):
        pts = [p for p in result["points"] if p["model"] == m and "nvt" in p]
        N = [p["n_atoms"] for p in pts]
        for key, ls in (("bare", ":"), ("nvt", "-"), ("ase", "--"), ("torchsim", "-.")):
            y = [p[key]["us_per_atom_step"] if key in p else np.nan for p in pts]
            if np.any(np.isfinite(y)):
                ax.plot(N, y, ls=ls, marker="o", color=f"C{k}", label=f"{m} {key}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("atoms")
    ax.set_ylabel("µs / atom / step")
    ax.set_title(f"jaxpto vs bare model vs ASE ({result['machine'].get('gpu') or 'CPU'})")
    ax.legend(fontsize=6, ncol=2)
    fig.savefig(path, dpi=150)
    plt.close(fig)


if __name__ == "__main__":
    main()
