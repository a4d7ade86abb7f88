"""The benchmark suite: jaxpto against the bare model, ASE and TorchSim, on CPU or GPU, in one run.

For every model and PbTiO3 supercell (n^3 cells, 5 n^3 atoms) it measures, interleaved in one
process on one device with one float type (float32):

1. ``bare``     -- one energy+forces+stress call of the model on pre-built edges (torch models: the
                  torch EFS object called directly with the engine's edge arrays; JAX-native: the
                  jitted ``Model.compute`` with a pre-built neighbour list). The floor.
2. ``nvt``/``npt`` -- one jaxpto MD step (Langevin NVT, Melchionna NPT), R = 1, from compiled
                  chunks of ``--steps`` steps (compilation excluded).
3. ``replicas`` -- jaxpto Langevin with R = 2, 4, 8, ... replicas in one program (atom-steps/s).
4. ``ase``      -- one step of ASE's ``Langevin`` with the model's own ASE calculator (the study's method).
5. ``torchsim`` -- TorchSim (``torch-sim-atomistic``) Langevin with its wrapper of the same model,
                  where it is installed (it needs Python >= 3.12); otherwise the JSON says why not.

Per point: median ms/step, us/atom/step, ns/day at 2 fs, peak memory (GPU: torch + JAX device
peaks; CPU: the process's peak resident set, which only grows), and the ratios jaxpto/bare,
ASE/jaxpto, TorchSim/jaxpto. Results: ``benchmarks/results/suite-<device>.json`` and a plot.

Usage::

    python benchmarks/suite.py                         # defaults for this device
    python benchmarks/suite.py --models 7net-0 chgnet-0.3.0 lj --sizes 2 3 4 5 --replicas 1 2 4 8
    python benchmarks/suite.py --quick                 # a few minutes on a laptop CPU

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

LJ_PARAMS = dict(sigma=2.0, epsilon=0.05, rc=5.0, smooth=True)  # a generic pair potential for PbTiO3 cells


# ----------------------------------------------------------------------------------------- models

def build_model(name: str, tmpdir: str):
    """(jaxpto Model, torch EFS or None, ASE calculator factory, description)."""
    import jaxpto
    from bridges.registry import family_module
    from bridges.torch_bridge import as_jax_model

    if name == "lj":
        from ase.calculators.lj import LennardJones

        model = jaxpto.load_model("lj", **LJ_PARAMS)
        return model, None, lambda: LennardJones(**LJ_PARAMS), "JAX-native Lennard-Jones (ASE LennardJones on the ASE side)"
    if name in ("7net-0", "7net-l3i5"):
        from sevenn.calculator import SevenNetCalculator

        efs = family_module("sevenn").load(name)
        return as_jax_model(efs, device=str(efs.device)), efs, \
            lambda: SevenNetCalculator(name, device=str(efs.device)), f"SevenNet {name} (real weights)"
    if name.startswith("chgnet-"):
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator

        efs = family_module("chgnet").load(name)
        version = name.split("-", 1)[1]
        return as_jax_model(efs, device=str(efs.device)), efs, \
            lambda: CHGNetCalculator(CHGNet.load(model_name=version, verbose=False)), f"CHGNet {version} (real weights)"
    if name == "mace-medium-random":
        import torch
        from mace.calculators import MACECalculator

        path = os.path.join(tmpdir, "mace-medium-random.model")
        if not os.path.exists(path):
            torch.save(_random_mace_medium(), path)
        efs = family_module("mace").load(path)
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
        efs = family_module("orb").load(path, architecture="orb-v2")
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


def _atoms(n, seed=0):
    from jaxpto.workflows.structures import polar_supercell

    atoms = polar_supercell(n)
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(0, 0.02, atoms.positions.shape)
    return atoms


def time_bare(model, efs, atoms, repeats):
    import jax
    import jax.numpy as jnp

    from jaxpto import neighbors as nl

    pos = jnp.asarray(atoms.positions[None], jnp.float32)
    cell = jnp.asarray(np.asarray(atoms.cell)[None], jnp.float32)
    nbrs = nl.allocate(pos, cell, model.cutoff, skin=1.0, pbc=(True, True, True))
    if efs is None:
        f = jax.jit(model.compute)
        z = jnp.asarray(atoms.numbers)
        call = lambda: jax.block_until_ready(f(pos, cell, z, nbrs).energy)  # noqa: E731
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
    return _median_time(call, repeats)


def time_jaxpto(model, atoms, ensemble, replicas, steps, repeats, T=300.0):
    import jax
    from ase import units

    from jaxpto.integrators import langevin, melchionna_npt
    from jaxpto.simulate import run_chunk, state_from_atoms

    atoms_list = []
    for r in range(replicas):
        a = atoms.copy()
        a.set_momenta(np.random.default_rng(r).normal(0, 0.3, (len(a), 3)) * np.sqrt(a.get_masses())[:, None])
        atoms_list.append(a)
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
    return _median_time(chunk, repeats) / steps


def time_ase(calc_factory, atoms, steps, repeats, T=300.0):
    from ase import units
    from ase.md.langevin import Langevin

    a = atoms.copy()
    a.calc = calc_factory()
    dyn = Langevin(a, 2 * units.fs, temperature_K=T, friction=0.01 / units.fs)
    dyn.run(1)
    return _median_time(lambda: dyn.run(steps), repeats) / steps


def time_torchsim(name, atoms, steps, repeats, T=300.0):
    """TorchSim Langevin with its own wrapper of the model; raises ImportError where not installed."""
    import torch
    import torch_sim as ts  # noqa: F401  (ImportError = not installed)

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "7net-0":
        from sevenn.util import load_checkpoint
        from torch_sim.models.sevennet import SevenNetModel

        cp = load_checkpoint("7net-0")
        model = SevenNetModel(model=cp.build_model(), modal=None, device=dev)
    elif name == "mace-medium-random":
        from torch_sim.models.mace import MaceModel

        model = MaceModel(model=_random_mace_medium().to(dev), device=dev, dtype=torch.float32, compute_forces=True)
    else:
        raise NotImplementedError(f"no TorchSim wrapper for {name} in this suite")
    integrator = getattr(getattr(ts, "Integrator", None), "nvt_langevin", None) or ts.nvt_langevin

    def run():
        ts.integrate(system=atoms, model=model, integrator=integrator, n_steps=steps, temperature=T, timestep=0.002)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    run()
    return _median_time(run, repeats) / steps


# ----------------------------------------------------------------------------------------- driver

def _point(seconds, n_atoms, replicas=1):
    return {"ms_per_step": 1e3 * seconds, "us_per_atom_step": 1e6 * seconds / (n_atoms * replicas),
            "ns_per_day": 2.0 * 86400e-6 / seconds, "atom_steps_per_s": n_atoms * replicas / seconds}


def machine():
    import jax

    info = {"python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "jax_backend": jax.default_backend(),
            "jax_devices": [str(d) for d in jax.devices()]}
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


def main(argv=None):
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
    ap.add_argument("--quick", action="store_true", help="sizes 2 3, replicas 1 2 4, models lj 7net-0 chgnet-0.3.0")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.replicas, args.models = [2, 3], [1, 2, 4], ["lj", "7net-0", "chgnet-0.3.0"]
    dev = "gpu" if gpu else "cpu"
    out = args.out or os.path.join(HERE, "results", f"suite-{dev}.json")
    result = {"machine": machine(), "args": vars(args), "points": [], "skipped": [], "notes": []}
    tmpdir = tempfile.mkdtemp(prefix="jaxpto-bench-")
    warnings.simplefilter("ignore")

    def save():
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out + ".tmp", "w") as fh:
            json.dump(result, fh, indent=1)
        os.replace(out + ".tmp", out)

    for name in args.models:
        try:
            model, efs, calc_factory, desc = build_model(name, tmpdir)
        except Exception as exc:
            result["skipped"].append({"model": name, "reason": f"{type(exc).__name__}: {exc}"})
            print(f"[{name}] skipped: {exc}", flush=True)
            save()
            continue
        for n in args.sizes:
            atoms = _atoms(n)
            N = len(atoms)
            p = {"model": name, "description": desc, "cells": n, "n_atoms": N}
            try:
                bare_s = time_bare(model, efs, atoms, args.repeats)
                p["bare"] = _point(bare_s, N)
                # Chunks of at least ~0.3 s, so that the per-chunk host check does not count for
                # fast (JAX-native) models; ML models take --steps steps per chunk.
                steps = int(min(1000, max(args.steps, np.ceil(0.3 / bare_s))))
                p["steps_per_chunk"] = steps
                for ens in ("nvt", "npt"):
                    p[ens] = _point(time_jaxpto(model, atoms, ens, 1, steps, args.repeats), N)
                p["jaxpto_over_bare"] = p["nvt"]["ms_per_step"] / p["bare"]["ms_per_step"]
                p["replicas"] = {}
                for R in args.replicas:
                    if R == 1:
                        continue
                    if R * N > args.max_total_atoms:
                        result["skipped"].append({"model": name, "n_atoms": N, "replicas": R,
                                                  "reason": f"R*N = {R * N} > --max-total-atoms {args.max_total_atoms}"})
                        continue
                    p["replicas"][str(R)] = _point(time_jaxpto(model, atoms, "nvt", R, steps, args.repeats), N, R)
                    p["replicas"][str(R)]["throughput_over_R1"] = \
                        p["replicas"][str(R)]["atom_steps_per_s"] / p["nvt"]["atom_steps_per_s"]
                if N <= args.ase_max_atoms:
                    p["ase"] = _point(time_ase(calc_factory, atoms, max(1, min(steps, 50) // 2), args.repeats), N)
                    p["ase_over_jaxpto"] = p["ase"]["ms_per_step"] / p["nvt"]["ms_per_step"]
                else:
                    result["skipped"].append({"model": name, "n_atoms": N, "path": "ase",
                                              "reason": f"N > --ase-max-atoms {args.ase_max_atoms}"})
                try:
                    p["torchsim"] = _point(time_torchsim(name, atoms, args.steps, args.repeats), N)
                    p["torchsim_over_jaxpto"] = p["torchsim"]["ms_per_step"] / p["nvt"]["ms_per_step"]
                except ImportError as exc:
                    p["torchsim_skipped"] = (f"torch-sim-atomistic not importable here ({exc}); it needs "
                                             f"Python >= 3.12 (this is {platform.python_version()})")
                except NotImplementedError as exc:
                    p["torchsim_skipped"] = str(exc)
                except Exception as exc:
                    p["torchsim_failed"] = f"{type(exc).__name__}: {exc}"
                p["memory"] = _peak_memory()
            except Exception as exc:
                p["error"] = f"{type(exc).__name__}: {exc}"
                p["traceback"] = traceback.format_exc(limit=3)
            result["points"].append(p)
            save()
            line = f"[{name}] N={N}: " + ", ".join(
                f"{k} {p[k]['ms_per_step']:.1f} ms" for k in ("bare", "nvt", "npt", "ase", "torchsim") if k in p)
            if "jaxpto_over_bare" in p:
                line += f"; jaxpto/bare {p['jaxpto_over_bare']:.3f}"
            if "ase_over_jaxpto" in p:
                line += f"; ASE/jaxpto {p['ase_over_jaxpto']:.2f}"
            print(line + (f"; ERROR {p['error']}" if "error" in p else ""), flush=True)
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
