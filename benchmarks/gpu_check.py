"""The GPU check kit: one prepared command that proves jaxpto's CUDA path (issue #16).

Nothing in jaxpto had run on a GPU before this kit: the CUDA side of the torch bridge (torch on
XLA's stream through ``torch.cuda.ExternalStream``, DLPack without copies on the device), JAX's
memory beside a torch model on the same GPU, and the GPU targets of ``benchmarks/``. A GPU
machine is lent rarely, for minutes, without a package index, so the check is one command:

    bash benchmarks/gpu_check.sh             # on the GPU machine (installs .whl/ first, if there)
    bash benchmarks/gpu_check.sh --cpu       # the dry run: the same steps at tiny sizes on the CPU

(``benchmarks/gpu_wheels.sh`` builds ``.whl/`` here: the wheels the GPU machine lacks.)

Steps, in this order; each writes its section of ``<out>/gpu_check.json`` as soon as it ends, so
a kill keeps every finished step. Every check records its numbers, its threshold and ``passed``.

1. ``environment``: GPU name and driver (nvidia-smi), JAX/jaxlib/plugin and torch versions and
   devices, the model packages' versions and where they were imported from; ``same_gpu``: JAX's
   and torch's device names agree and a JAX array handed to torch by DLPack arrives on torch's
   CUDA device with the same values.
2. ``agreement``: for every model (CHGNet 0.3.0, SevenNet 7net-0, a random MACE with MACE-MP-0b
   medium's hyper-parameters, Nequix when ``bridges.nequix`` and its weights are there), energy,
   forces and stress of jaxpto on the device against (a) the same model loaded on the CPU and run
   by jaxpto there (the CUDA-vs-CPU check) and (b) the model's own ASE calculator on the device,
   on the three PbTiO3 cells of :func:`jaxpto.workflows.structures.bridge_check_cells` and on a
   2-replica batch of the 40-atom cell. Tolerances are float32 round-off, the bridge tests' own:
   1e-5 eV/atom, 1e-4 eV/A, 1e-5 eV/A^3, and forces and stress within 5e-4 of their largest
   component (:data:`TOL_REL`: a model with small forces is held as tightly). Negative control:
   the device's 40-atom energy, forces and stress scaled by 1 + 1e-3 must fail the CUDA-vs-CPU
   comparison (else the check is blind at that size of error).
   A JAX-native model (Nequix) that fails is run again (first failing cell) with float32 matmuls
   at full precision, to tell XLA's TF32 default on the GPU from a real difference. The step
   takes at most ``--agreement-share`` of the budget: cells and models beyond it are listed.
3. ``zero_copy``: a compiled ``lax.scan`` chunk of Langevin steps (2 replicas) with the torch
   bridge's ``trace`` on: one callback per step, every torch tensor's ``data_ptr`` equal to its
   XLA buffer's address (inputs and outputs), the float inputs reaching the model without a copy,
   all on the GPU, and torch's current stream inside the callback = XLA's stream. Synchronisation:
   the torch profiler counts CUDA synchronise calls during the chunk and during as many direct
   calls of the model (the floor): a device-wide one (``cudaDeviceSynchronize``, or ``cudaFree``,
   which waits for the device too) in the chunk fails the check; stream synchronisations per
   step (the model's own host reads) are reported next to the bare calls'. A positive control
   (explicit ``torch.cuda.synchronize()`` calls) shows that the profiler sees them; if it does
   not, the result is "inconclusive", not passed.
4. ``memory``: the setting jaxpto chose (``bridges.gpu_memory``), JAX's memory statistics and
   torch's reservation in this process, device memory in use (``torch.cuda.mem_get_info``), and
   two fresh processes that only start JAX: one with JAX's default (it reserves ~75 % of the
   GPU), one with jaxpto's setting (it must reserve little).
5. ``suite``: ``benchmarks/suite.py``'s paths (bare model, jaxpto NVT and NPT, R = 8 replicas,
   ASE with the model's own calculator) at 625 and 135 atoms, ratios per point, and the GPU
   targets at 625 atoms: jaxpto/bare <= 1.05, ASE/jaxpto >= 10, R = 8 throughput >= 6x R = 1.
6. ``npt_chunk``: the PTO-test's NPT sweep (Melchionna, 625 atoms, 8 temperatures 300-1000 K as
   one batched program) for 500 steps: speed, ns/day per replica, the full 50,000-step sweep's
   estimated time, every replica's status.

Time: the kit stops itself at ``--budget-s`` (default 440 s on a GPU): each step checks the time
left before it starts; suite paths whose predicted cost does not fit are skipped with the reason;
the NPT chunk takes as many 50-step chunks as fit. ``SIGTERM``/``SIGINT`` end the step in progress
as "killed" and the JSON is written. Outputs (at most four files): ``gpu_check.json``,
``gpu_check.png``, and the shell's ``gpu_check.log``.

Units are ASE's throughout (eV, Angstrom, eV/A^3 with ASE's sign, fs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

SCHEMA = "jaxpto.gpu-check/1"
TOL = {"dE_per_atom": 1e-5, "max_dF": 1e-4, "max_dS": 1e-5}  # eV/atom, eV/A, eV/A^3 (float32)
# ... and relative to the largest component, so that a model with small forces or stresses (the
# random MACE: |F| ~ 0.01 eV/A) is held as tightly as one with large ones: float32 round-off is
# ~1e-5 of it, the negative control's 1e-3 fails it. The floors keep near-zero values decidable.
TOL_REL = {"max_dF": (5e-4, 1e-6), "max_dS": (5e-4, 1e-7)}  # (fraction of max |x|, floor)
NEGATIVE_CONTROL_SCALE = 1.0 + 1e-3
TARGETS = {"jaxpto_over_bare": ("<=", 1.05), "ase_over_jaxpto": (">=", 10.0), "r8_throughput_over_r1": (">=", 6.0)}
TORCH_MODELS = ("chgnet-0.3.0", "7net-0", "mace-medium-random")
NEQUIX = "nequix-mp-1"
WHEEL_DISTS = ("ase", "chgnet", "pymatgen", "pymatgen-core", "monty", "spglib", "sevenn", "e3nn", "mace-torch", "matscipy",
               "e3nn-jax", "jraph", "nequix", "numpy", "scipy", "torch", "jax", "jaxlib", "torch-geometric")

PROFILES = {
    # the GPU run: <= 8 minutes on one H100/H200-class GPU, pip install included
    "gpu": dict(budget_s=440.0, models=list(TORCH_MODELS) + [NEQUIX], sizes=[5, 3], replicas=[1, 8], steps=10,
                repeats=3, ase_max_atoms=5000, npt_model="chgnet-0.3.0", npt_supercell=5,
                npt_temperatures=[float(t) for t in range(300, 1001, 100)], npt_steps=500, npt_chunk=50,
                npt_reserve_s=90.0, zero_copy_steps=5),
    # the dry run on a CPU (CI): the same code paths at tiny sizes
    "cpu": dict(budget_s=240.0, models=["chgnet-0.3.0"], sizes=[1], replicas=[1, 2],
                steps=2, repeats=1, ase_max_atoms=5000, npt_model="chgnet-0.3.0", npt_supercell=1,
                npt_temperatures=[300.0, 1000.0], npt_steps=20, npt_chunk=10, npt_reserve_s=20.0,
                zero_copy_steps=3),
}


class Killed(BaseException):
    """SIGTERM/SIGINT during a step."""


def _on_signal(signum, frame):
    raise Killed(signal.Signals(signum).name)


def clean(obj):
    """JSON-ready: numpy scalars/arrays to Python, non-finite floats to None."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


class Kit:
    """The run: options, output, time budget, loaded models, the JSON written after every step."""

    def __init__(self, args, mode):
        self.args, self.mode = args, mode
        self.gpu = mode == "gpu"
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + args.budget_s
        os.makedirs(args.out, exist_ok=True)
        self.json_path = os.path.join(args.out, "gpu_check.json")
        self.tmpdir = tempfile.mkdtemp(prefix="jaxpto-gpu-check-")
        self.models = {}  # (name, "device" | "cpu") -> (Model, torch EFS or None, calc factory or None, description)
        self.result = {"schema": SCHEMA, "mode": "gpu" if self.gpu else "cpu-dry-run",
                       "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "args": vars(args), "tolerances": TOL, "relative_tolerances": TOL_REL, "targets": {k: list(v) for k, v in TARGETS.items()},
                       "steps": {}}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def log(self, msg):
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {msg}", flush=True)

    def save(self):
        self.result["elapsed_s"] = time.perf_counter() - self.t0
        tmp = self.json_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(clean(self.result), fh, indent=1)
        os.replace(tmp, self.json_path)

    # ------------------------------------------------------------------ models
    def model(self, name, where):
        """``name`` loaded on the device under test (``where="device"``) or on the CPU."""
        key = (name, where)
        if key not in self.models:
            t0 = time.perf_counter()
            try:
                self.models[key] = self._load(name, where)
            except Exception as exc:  # remembered: a later step gets the same error at once
                self.models[key] = exc
            self.log(f"{'loaded' if not isinstance(self.models[key], Exception) else 'could not load'} {name} "
                     f"on {where} in {time.perf_counter() - t0:.1f} s")
        if isinstance(self.models[key], Exception):
            raise self.models[key]
        return self.models[key]

    def _load(self, name, where):
        import jax

        import suite

        device = "cpu" if (where == "cpu" or not self.gpu) else "cuda"
        try:
            with jax.default_device(self.jax_device(where)):
                return suite.build_model(name, self.tmpdir, device=device)
        except ValueError:
            if name != NEQUIX:  # Nequix: by its bridge until the suite knows it (then with its calculator)
                raise
        return self._load_nequix(where)

    def _load_nequix(self, where):
        import importlib

        import jax

        importlib.import_module("bridges.nequix")  # ImportError: the step records why it skipped
        import jaxpto

        folder = self.args.nequix_dir
        path = os.path.join(folder, "nequix-mp-1.nqx")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no Nequix weights at {path} (copy them with benchmarks/gpu_wheels.sh, or "
                                    "give --nequix-dir / JAXPTO_NEQUIX_DIR)")
        os.environ.setdefault("JAXPTO_NEQUIX_DIR", folder)
        # By its file: a name would go to nequix's own download cache, empty on the GPU machine.
        with jax.default_device(self.jax_device(where)):  # its weights are created on that device
            model = jaxpto.load_model(path)
        return model, None, None, f"Nequix nequix-mp-1 (JAX-native, {path})"

    def jax_device(self, where):
        import jax

        return jax.devices("cpu")[0] if where == "cpu" else jax.devices()[0]


# ---------------------------------------------------------------------------------------------- helpers

def evaluate(model, atoms_list, device):
    """jaxpto's energy [R], forces [R,N,3], stress [R,3,3] (float64 numpy) of ``model`` on the
    replicas ``atoms_list`` (same atoms, different positions/cells), float32, in ``jax.jit``, on
    ``device``, with a fresh neighbour list (skin 1 A)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxpto import neighbors as nl

    with jax.default_device(device):
        pos = jax.device_put(np.stack([a.positions for a in atoms_list]).astype(np.float32), device)
        cell = jax.device_put(np.stack([np.asarray(a.cell) for a in atoms_list]).astype(np.float32), device)
        nbrs = nl.allocate(pos, cell, model.cutoff, skin=1.0, pbc=tuple(bool(p) for p in atoms_list[0].pbc))
        z = jax.device_put(jnp.asarray(atoms_list[0].numbers), device)
        out = jax.jit(model.compute)(pos, cell, z, nbrs)
        return tuple(np.asarray(x, np.float64) for x in (out.energy, out.forces, out.stress))


def own_calculator(calc, atoms):
    """The model's own ASE calculator on ``atoms``: energy, forces, 3x3 stress."""
    import numpy as np

    a = atoms.copy()
    a.calc = calc
    return (np.array([a.get_potential_energy()]), a.get_forces()[None], a.get_stress(voigt=False)[None])


def compare(a, b, n_atoms):
    """Differences of two (energy, forces, stress) results against :data:`TOL`."""
    import numpy as np

    d = {"dE_per_atom": float(np.max(np.abs(a[0] - b[0]))) / n_atoms, "max_dF": float(np.max(np.abs(a[1] - b[1]))),
         "max_dS": float(np.max(np.abs(a[2] - b[2]))), "max_abs_F": float(np.max(np.abs(b[1]))),
         "max_abs_S": float(np.max(np.abs(b[2])))}
    finite = all(np.all(np.isfinite(x)) for x in a + b)
    rel_ok = all(d[k] <= frac * d[k.replace("max_d", "max_abs_")] + floor for k, (frac, floor) in TOL_REL.items())
    d["passed"] = bool(finite and rel_ok and all(d[k] <= tol for k, tol in TOL.items()))
    return d


def _version(dist):
    from importlib import metadata

    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return None
    return {"version": d.version, "location": str(d.locate_file(""))}


# ---------------------------------------------------------------------------------------------- steps

def step_environment(kit):
    import jax
    import numpy as np
    import torch

    from bridges import gpu_memory
    from jaxpto import host_allocator

    out = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "jax": jax.__version__, "jax_backend": jax.default_backend(),
           "jax_devices": [{"str": str(d), "platform": d.platform, "kind": d.device_kind, "id": d.id,
                            "compute_capability": getattr(d, "compute_capability", None)} for d in jax.devices()],
           "torch": torch.__version__, "torch_cuda": torch.version.cuda, "torch_cuda_available": torch.cuda.is_available(),
           "packages": {d: _version(d) for d in WHEEL_DISTS + ("jax-cuda13-plugin", "jax-cuda12-plugin")},
           "env": {k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_", "CUDA_", "JAXPTO_", "PYTHONPATH"))},
           "gpu_memory_setting": dict(gpu_memory.status), "host_allocator": dict(host_allocator.status)}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,uuid,pci.bus_id",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        out["nvidia_smi"] = f"unavailable: {exc}"
    checks = {}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out["torch_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        out["torch_device_0"] = {"name": props.name, "total_memory_gb": props.total_memory / 2**30,
                                 "capability": f"{props.major}.{props.minor}",
                                 "multiprocessors": props.multi_processor_count,
                                 "uuid": str(getattr(props, "uuid", ""))}
        out["tf32"] = {"torch_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                       "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                       "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
                       "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision)}
    if kit.gpu:
        dev = jax.devices()[0]
        x = jax.device_put(np.arange(12, dtype=np.float32).reshape(3, 4), dev)
        t = torch.from_dlpack(x)
        names_agree = dev.platform == "gpu" and torch.cuda.is_available() and \
            dev.device_kind.strip().lower() == torch.cuda.get_device_name(t.device).strip().lower()
        checks["same_gpu"] = {"jax_device_kind": dev.device_kind, "torch_tensor_device": str(t.device),
                              "torch_device_name": torch.cuda.get_device_name(t.device) if t.is_cuda else None,
                              "values_equal": bool(np.array_equal(t.cpu().numpy(), np.asarray(x))),
                              "passed": bool(names_agree and t.is_cuda and np.array_equal(t.cpu().numpy(), np.asarray(x)))}
        checks["jax_on_gpu"] = {"backend": jax.default_backend(), "passed": jax.default_backend() == "gpu"}
    else:
        checks["jax_on_cpu"] = {"backend": jax.default_backend(), "passed": jax.default_backend() == "cpu"}
    out["checks"] = checks
    return out


def _agree(model, ref_model, efs, calc, cells, dev, cpu, time_ok=lambda: True):
    """One model's agreement entry: the cells on the device vs the CPU copy (and vs its own
    calculator), the 40-atom cells first; then the negative control. ``time_ok()`` False: the
    remaining cells are listed as not evaluated (each new cell shape costs a compilation)."""
    import jax
    import numpy as np

    second = cells["supercell"].copy()
    second.positions += np.random.default_rng(7).normal(0, 0.03, second.positions.shape)
    order = [("supercell", [cells["supercell"]]), ("supercell_batch_R2", [cells["supercell"], second]),
             ("triclinic", [cells["triclinic"]]), ("unit", [cells["unit"]])]
    entry, all_ok, diagnosed = {"cells": {}}, True, False
    for k, (cname, batch) in enumerate(order):
        if k > 0 and not time_ok():
            entry["cells_not_evaluated"] = {"cells": [c for c, _ in order[k:]], "reason": "time budget"}
            break
        res_dev = evaluate(model, batch, dev)
        res_cpu = tuple(np.concatenate(x) for x in zip(*(evaluate(ref_model, [a], cpu) for a in batch)))
        if cname == "supercell":
            dev_super, ref_super = res_dev, res_cpu
        c = {"n_atoms": len(batch[0]), "replicas": len(batch), "vs_cpu": compare(res_dev, res_cpu, len(batch[0]))}
        if calc is not None and len(batch) == 1:
            c["vs_own_calculator"] = compare(res_dev, own_calculator(calc, batch[0]), len(batch[0]))
        if not c["vs_cpu"]["passed"] and efs is None and not diagnosed:
            # JAX-native: XLA's GPU float32 dots default to TF32; once again at full precision (diagnosis only)
            diagnosed = True
            with jax.default_matmul_precision("float32"):
                c["vs_cpu_full_precision_matmul"] = compare(evaluate(model, batch, dev), res_cpu, len(batch[0]))
        entry["cells"][cname] = c
        all_ok = all_ok and c["vs_cpu"]["passed"] and c.get("vs_own_calculator", {"passed": True})["passed"]
    # Negative control: the device's 40-atom result off by 0.1 % must fail the same comparison (done
    # on the results, so that it costs no compilation; the comparison is what it checks).
    neg = tuple(x * NEGATIVE_CONTROL_SCALE for x in dev_super)
    entry["negative_control"] = {"scale": NEGATIVE_CONTROL_SCALE, **compare(neg, ref_super, len(cells["supercell"]))}
    entry["negative_control"]["passed_as_it_must_not"] = entry["negative_control"].pop("passed")
    return entry, all_ok


def step_agreement(kit):
    from jaxpto.workflows.structures import bridge_check_cells

    cells = bridge_check_cells()
    dev, cpu = kit.jax_device("device"), kit.jax_device("cpu")
    out = {"device": str(dev), "reference_device": str(cpu), "models": {}, "checks": {}}
    stop = time.perf_counter() + kit.args.agreement_share * kit.args.budget_s  # the later steps' time is theirs
    for name in kit.args.models:
        if time.perf_counter() > stop or kit.left() < 20:
            out["models"][name] = {"skipped": f"time budget (this step's share, {kit.args.agreement_share:.0%} of "
                                              f"{kit.args.budget_s:.0f} s, is spent)"}
            continue
        try:
            model, efs, calc_factory, desc = kit.model(name, "device")
            ref_model = kit.model(name, "cpu")[0]
        except Exception as exc:
            out["models"][name] = {"skipped": f"{type(exc).__name__}: {exc}"}
            kit.log(f"agreement {name}: skipped ({out['models'][name]['skipped']})")
            continue
        calc, calc_note = None, None
        if calc_factory is not None:
            try:
                calc = calc_factory()
            except Exception as exc:
                calc_note = f"{type(exc).__name__}: {exc}"
        try:
            entry, ok = _agree(model, ref_model, efs, calc, cells, dev, cpu, time_ok=lambda: time.perf_counter() < stop)
        except Exception as exc:  # a bridge that fails on the device: recorded, the other models go on
            entry, ok = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}, False
        entry["description"] = desc
        if calc_note:
            entry["own_calculator_skipped"] = calc_note
        out["models"][name] = entry
        caught = "negative_control" in entry and not entry["negative_control"]["passed_as_it_must_not"]
        out["checks"][f"{name}_agrees"] = {"passed": ok}
        out["checks"][f"{name}_negative_control_fails"] = {"passed": caught}
        if "error" in entry:
            kit.log(f"agreement {name}: ERROR {entry['error']}")
        else:
            worst = max(c["vs_cpu"]["max_dF"] for c in entry["cells"].values())
            kit.log(f"agreement {name}: {'ok' if ok else 'FAILED'} (max |dF| vs CPU {worst:.2e} eV/A; negative "
                    f"control {'caught' if caught else 'MISSED'})")
        kit.save()
    out["skipped_models"] = {m: e["skipped"] for m, e in out["models"].items() if "skipped" in e}
    return out


def _sync_counts(fn, cuda):
    """CUDA synchronise calls the torch profiler sees while ``fn()`` runs."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        fn()
    names = Counter(e.name for e in prof.events())
    # cudaFree waits for the whole device too (CUDA runtime documentation), so it counts as device-wide
    device_wide = sum(v for k, v in names.items() if k in ("cudaDeviceSynchronize", "cuCtxSynchronize", "cudaFree",
                                                           "cuMemFree", "cuMemFree_v2"))
    stream = sum(v for k, v in names.items() if k in ("cudaStreamSynchronize", "cuStreamSynchronize",
                                                      "cudaEventSynchronize", "cuEventSynchronize"))
    blocking_copies = sum(v for k, v in names.items() if k in ("cudaMemcpy", "cuMemcpy"))
    return {"device_wide": device_wide, "stream_or_event": stream, "blocking_memcpy": blocking_copies,
            "sync_like_names": {k: v for k, v in names.items()
                                if "ynchron" in k or k.startswith(("cudaMemcpy", "cuMemcpy", "cudaFree", "cuMemFree",
                                                                   "cudaMalloc", "cuMemAlloc"))}}


def step_zero_copy(kit):
    import jax
    import numpy as np
    import torch
    from ase import units

    from bridges.torch_bridge import TorchBridge, edges_from_neighbors
    from jaxpto.integrators import langevin
    from jaxpto.simulate import run_chunk, state_from_atoms
    from jaxpto.workflows.structures import check_supercell

    name = next((m for m in kit.args.models if m in TORCH_MODELS), None)
    if name is None:
        return {"skip": "no torch model among --models"}
    model, efs, _, _ = kit.model(name, "device")
    bridge = model.compute
    if not isinstance(bridge, TorchBridge):
        return {"skip": f"{name} is not bridged"}
    k = kit.args.zero_copy_steps
    atoms = check_supercell()
    second = atoms.copy()
    second.rattle(0.02, seed=3)
    state, force_fn = state_from_atoms([atoms, second], model, dtype=np.float32)
    integ = langevin(force_fn, 2 * units.fs)
    state = integ.init(state, 300.0, 0.01 / units.fs)

    def record(s):
        return s.energy

    def chunk(s):
        s, rec = run_chunk(integ, s, k, record_fn=record, record_every=1)  # lax.scan over k steps
        jax.block_until_ready(s.positions)
        return s, rec

    state, _ = chunk(state)  # compile
    bridge.trace = []
    state, rec = chunk(state)
    trace, bridge.trace = bridge.trace, None
    gpu = kit.gpu
    pairs = [p for t in trace for p in t["inputs"] + t["outputs"]]
    float_inputs = (0, 1, 5, 6)  # positions, cell, shift, mask: zero-copy; numbers/src/dst: int32 -> int64
    prepared_same = all(t["prepared"][i][0] == t["inputs"][i][0] for t in trace for i in float_inputs)
    devices = sorted({d for t in trace for d in t["devices"]})
    out = {"model": name, "steps": k, "replicas": 2, "mode": bridge.mode, "callbacks": len(trace),
           "first_call": trace[0] if trace else None, "devices": devices}
    checks = {"one_callback_per_step": {"callbacks": len(trace), "steps": k, "passed": len(trace) == k},
              "buffer_callback_mode": {"mode": bridge.mode, "passed": bridge.mode == "buffer_callback"},
              "pointers_equal": {"pairs": len(pairs), "passed": bool(pairs) and all(a == b for a, b in pairs)},
              "float_inputs_reach_model_uncopied": {"passed": bool(trace) and prepared_same},
              "on_expected_device": {"devices": devices,
                                     "passed": bool(devices) and all(d.startswith("cuda" if gpu else "cpu")
                                                                     for d in devices)},
              "records_finite": {"passed": bool(np.all(np.isfinite(np.asarray(rec))))}}
    if gpu:
        streams = [t.get("stream") for t in trace]
        checks["torch_on_xla_stream"] = {"streams": streams[:2],
                                         "passed": bool(streams) and all(s and s["xla"] == s["torch"] for s in streams)}
    # Synchronisation: jaxpto's chunk against k direct calls of the model on the same edges.
    pos = state.positions
    src, dst, shift, mask = (np.asarray(x) for x in jax.jit(edges_from_neighbors, static_argnums=3)(
        pos, state.cell, state.neighbors, float(model.cutoff)))
    tdev = efs.device
    t = lambda x, dt=None: torch.as_tensor(np.asarray(x), device=tdev, dtype=dt)  # noqa: E731
    args = (t(pos), t(state.cell), t(atoms.numbers, torch.int64), t(src, torch.int64), t(dst, torch.int64), t(shift),
            t(mask))

    def bare():  # no synchronisation of its own: the profiler's stop waits for the device
        for _ in range(k):
            efs(*args)

    bare()
    try:
        jaxpto_sync = _sync_counts(lambda: chunk(state), gpu)
        bare_sync = _sync_counts(bare, gpu)
        # The model's own stream synchronisations (host reads of device values: masks, counts) are
        # the floor: jaxpto's per step should equal the bare calls' (the bridge adds none per step).
        out["sync"] = {"jaxpto_chunk": jaxpto_sync, "bare_calls": bare_sync,
                       "stream_syncs_per_step": {"jaxpto": jaxpto_sync["stream_or_event"] / k,
                                                 "bare": bare_sync["stream_or_event"] / k}}
        if gpu:
            control = _sync_counts(lambda: [torch.cuda.synchronize() for _ in range(3)], True)
            sees = control["device_wide"] >= 3
            out["sync"]["positive_control"] = control
            checks["no_device_wide_sync_per_step"] = {
                "device_wide_in_chunk": jaxpto_sync["device_wide"], "steps": k,
                "profiler_sees_syncs": sees,
                "passed": (jaxpto_sync["device_wide"] == 0) if sees else None,
                "note": None if sees else "inconclusive: the profiler did not see 3 explicit torch.cuda.synchronize()"}
        else:
            out["sync"]["note"] = "CPU dry run: no CUDA synchronisation to count (the profiler path ran)"
    except Exception as exc:
        out["sync"] = {"error": f"{type(exc).__name__}: {exc}"}
        if gpu:
            checks["no_device_wide_sync_per_step"] = {"passed": None, "note": f"profiler failed: {exc}"}
    out["checks"] = checks
    return out


_CHILD = r"""
import json, os
out = {"preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")}
try:
    import torch
    cuda = torch.cuda.is_available()
except ImportError:
    cuda = False
if cuda:  # device memory free before JAX starts (torch's own context already counted)
    free0, total = torch.cuda.mem_get_info()
import jax, jax.numpy as jnp
x = jnp.zeros((1024,), jnp.float32) + 1.0
x.block_until_ready()
out.update(backend=jax.default_backend(), jax_memory_stats=jax.devices()[0].memory_stats())
if cuda:
    free1, total = torch.cuda.mem_get_info()
    out.update(jax_took_gb=(free0 - free1) / 2**30, device_total_gb=total / 2**30)
print("CHILD " + json.dumps(out))
"""


def _children():
    """Two fresh processes that start JAX with one small array, one after the other (each measures
    the device memory JAX took: free memory before and after, read by torch): JAX's default and
    jaxpto's setting."""
    from bridges.gpu_memory import PREALLOCATE, USER_SETTINGS

    base = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    out = {}
    for key, env in (("jax_default", base), ("jaxpto_setting", {**base, PREALLOCATE: "false"})):
        try:
            proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120)
            text = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired:
            text = "timed out after 120 s"
        line = [ln for ln in text.splitlines() if ln.startswith("CHILD ")]
        out[key] = json.loads(line[-1][6:]) if line else {"error": text[-2000:]}
    return out


def memory_snapshot():
    import jax

    snap = {"jax_memory_stats": jax.devices()[0].memory_stats()}
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            snap.update(torch_reserved_gb=torch.cuda.memory_reserved() / 2**30,
                        torch_max_reserved_gb=torch.cuda.max_memory_reserved() / 2**30,
                        torch_allocated_gb=torch.cuda.memory_allocated() / 2**30,
                        device_used_gb=(total - free) / 2**30, device_total_gb=total / 2**30)
    except Exception as exc:
        snap["torch_error"] = str(exc)
    import resource

    snap["host_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return snap


def step_memory(kit):
    from bridges import gpu_memory

    out = {"setting": dict(gpu_memory.status), "preallocate_env": os.environ.get(gpu_memory.PREALLOCATE),
           "this_process": memory_snapshot(), "fresh_processes": _children()}
    checks = {}
    if kit.gpu:
        d, j = out["fresh_processes"].get("jax_default", {}), out["fresh_processes"].get("jaxpto_setting", {})
        checks["jaxpto_setting_applied"] = {"action": gpu_memory.status.get("action"),
                                            "passed": gpu_memory.status.get("action") == "set"
                                            and os.environ.get(gpu_memory.PREALLOCATE) == "false"}
        if "jax_took_gb" in d and "jax_took_gb" in j:
            total = d["device_total_gb"]
            # JAX's default takes ~75 % (the problem is real); jaxpto's setting its context and the array
            checks["jax_default_reserves_most"] = {"fraction": d["jax_took_gb"] / total,
                                                   "passed": d["jax_took_gb"] / total > 0.5}
            checks["jaxpto_setting_reserves_little"] = {"fraction": j["jax_took_gb"] / total,
                                                        "passed": j["jax_took_gb"] / total < 0.05}
    out["checks"] = checks
    return out


def step_suite(kit):
    import suite

    a = kit.args
    args = argparse.Namespace(steps=a.steps, repeats=a.repeats, replicas=a.replicas, max_total_atoms=10**7,
                              ase_max_atoms=a.ase_max_atoms, torchsim_max_atoms=0)
    suite_deadline = kit.deadline - a.npt_reserve_s
    out = {"args": vars(args), "points": [], "skipped": [], "targets": {}, "checks": {}}
    for n in a.sizes:  # the largest first: the targets are at 625 atoms
        for name in a.models:
            left = suite_deadline - time.perf_counter()
            if left < 15:
                out["skipped"].append({"model": name, "n_atoms": 5 * n**3, "reason": f"time budget ({left:.0f} s left)"})
                continue
            try:
                model, efs, calc_factory, desc = kit.model(name, "device")
            except Exception as exc:
                out["skipped"].append({"model": name, "reason": f"{type(exc).__name__}: {exc}"})
                continue
            if calc_factory is None:
                out["skipped"].append({"model": name, "reason": "not in benchmarks/suite.py's models"})
                continue
            p = suite.measure_point(name, model, efs, calc_factory, desc, n, args, out["skipped"],
                                    time_left=lambda: suite_deadline - time.perf_counter())
            out["points"].append(p)
            kit.log("suite " + suite.point_line(p))
            kit.save()
    big = max(a.sizes)
    for p in out["points"]:
        if p["cells"] != big or "error" in p:
            continue
        vals = {"jaxpto_over_bare": p.get("jaxpto_over_bare"), "ase_over_jaxpto": p.get("ase_over_jaxpto"),
                "r8_throughput_over_r1": p.get("replicas", {}).get("8", {}).get("throughput_over_R1")}
        tg = {}
        for key, (op, ref) in TARGETS.items():
            v = vals[key]
            tg[key] = {"value": v, "target": f"{op} {ref}",
                       "met": None if v is None else bool(v <= ref if op == "<=" else v >= ref)}
        out["targets"][f"{p['model']}@{p['n_atoms']}"] = tg
    out["checks"]["points_without_error"] = {"errors": [f"{p['model']}@{p['n_atoms']}: {p['error']}"
                                                        for p in out["points"] if "error" in p],
                                             "passed": bool(out["points"]) and all("error" not in p for p in out["points"])}
    return out


def step_npt_chunk(kit):
    import numpy as np

    from jaxpto.workflows.dynamics import run_sweep, study_npt

    a = kit.args
    name = a.npt_model
    model = kit.model(name, "device")[0]
    n_atoms = 5 * a.npt_supercell**3
    R = len(a.npt_temperatures)
    point = next((p for p in kit.result["steps"].get("suite", {}).get("points", [])
                  if p["model"] == name and p["n_atoms"] == n_atoms and "nvt" in p), None)
    per_step = setup = None
    if point is not None:
        r = point.get("replicas", {}).get(str(R))
        per_step = (r["ms_per_step"] if r else R * point["bare"]["ms_per_step"]) / 1e3
        setup = 2.0 * (point.get("jaxpto_setup_s") or 10.0)
    steps = a.npt_steps
    if per_step is None:  # no suite point to predict the speed from: two chunks only, bounded
        steps = min(steps, 2 * a.npt_chunk)
    else:
        fit = int((kit.left() - 10 - setup) / per_step) // a.npt_chunk * a.npt_chunk
        steps = min(steps, fit)
        if steps < 2 * a.npt_chunk:
            return {"skip": f"time budget: {kit.left():.0f} s left, ~{per_step * 1e3:.0f} ms/step + "
                               f"~{setup:.0f} s compile: fewer than two {a.npt_chunk}-step chunks fit"}
    protocol = study_npt(steps=steps, chunk_steps=a.npt_chunk, record_every=10, supercell=a.npt_supercell,
                         temperatures_k=tuple(a.npt_temperatures), average_last_ps=steps * 2e-3 / 2)
    t0 = time.perf_counter()
    res = run_sweep(model, protocol, model_name=name, progress=False)
    wall = time.perf_counter() - t0
    series = res.pop("series")
    res.pop("final_state", None)
    out = {"model": name, "n_atoms": res["n_atoms"], "temperatures_k": list(a.npt_temperatures), "steps": steps,
           "steps_asked": a.npt_steps, "wall_s": wall, "speed": res["speed"], "finished": res["finished"],
           "replicas": [{k: r.get(k) for k in ("temperature_k", "status", "reason", "mean_temperature_k", "a", "b", "c",
                                              "c_over_a", "site_rms_a")} for r in res["replicas"]],
           "temperature_series_k": np.asarray(series["temperature"])[: steps // 10].tolist()}
    sps = res["speed"].get("steps_per_s")
    if sps:
        out["full_sweep_50000_steps_h"] = 50_000 / sps / 3600
    out["checks"] = {"all_replicas_ok": {"statuses": [r["status"] for r in res["replicas"]],
                                         "passed": all(r["status"] == "ok" for r in res["replicas"])},
                     "finite_and_timed": {"passed": bool(sps) and bool(np.all(np.isfinite(out["temperature_series_k"])))}}
    if steps < a.npt_steps:
        out["note"] = f"{steps} of {a.npt_steps} steps: the time budget allowed no more"
    return out


STEPS = (("environment", step_environment), ("agreement", step_agreement), ("zero_copy", step_zero_copy),
         ("memory", step_memory), ("suite", step_suite), ("npt_chunk", step_npt_chunk))
MIN_SECONDS = {"environment": 0, "agreement": 30, "zero_copy": 20, "memory": 10, "suite": 30, "npt_chunk": 20}


def verdict(result):
    checks, failed, unknown = {}, [], []
    for sname, sec in result["steps"].items():
        for cname, c in (sec.get("checks") or {}).items():
            key = f"{sname}.{cname}"
            checks[key] = c.get("passed")
            if c.get("passed") is False:
                failed.append(key)
            elif c.get("passed") is None:
                unknown.append(key)
        if sec.get("status") in ("error", "killed"):
            failed.append(f"{sname} ({sec['status']}: {sec.get('error', '')})")
    targets = {k: v for sec in result["steps"].values() for k, v in (sec.get("targets") or {}).items()}
    skipped_models = (result["steps"].get("agreement") or {}).get("skipped_models") or {}
    return {"checks": checks, "failed": failed, "inconclusive": unknown, "models_not_checked": skipped_models,
            "skipped_steps": [s for s, sec in result["steps"].items() if sec.get("status") == "skipped"],
            "all_checks_passed": not failed and bool(checks), "targets": targets}


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    st = result["steps"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    ax = axes[0, 0]
    models = {k: v for k, v in st.get("agreement", {}).get("models", {}).items() if "cells" in v}
    for i, (m, e) in enumerate(models.items()):
        vals = [c["vs_cpu"]["max_dF"] for c in e["cells"].values()]
        own = [c["vs_own_calculator"]["max_dF"] for c in e["cells"].values() if "vs_own_calculator" in c]
        ax.scatter([i] * len(vals), np.maximum(vals, 1e-12), marker="o", color="C0", label="vs CPU" if i == 0 else None)
        if own:
            ax.scatter([i + 0.15] * len(own), np.maximum(own, 1e-12), marker="s", color="C1",
                       label="vs own calculator" if i == 0 else None)
        ax.scatter([i - 0.15], [e["negative_control"]["max_dF"]], marker="x", color="C3",
                   label="negative control (x1.001)" if i == 0 else None)
    ax.axhline(TOL["max_dF"], color="k", ls="--", lw=1, label="tolerance")
    ax.set_xticks(range(len(models)), list(models), fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("max |dF| (eV/A)")
    ax.set_title("agreement on the PbTiO3 cells (0 drawn at 1e-12)")
    ax.legend(fontsize=6)
    ax = axes[0, 1]
    pts = [p for p in st.get("suite", {}).get("points", []) if "nvt" in p]
    paths = ("bare", "nvt", "npt", "ase")
    for j, key in enumerate(paths):
        y = [p[key]["ms_per_step"] if key in p else np.nan for p in pts]
        ax.bar(np.arange(len(pts)) + 0.2 * j, y, width=0.2, label=key)
    y8 = [p.get("replicas", {}).get("8", {}).get("ms_per_step", np.nan) / 8 for p in pts]
    ax.bar(np.arange(len(pts)) + 0.8, y8, width=0.2, label="R=8 per replica")
    ax.set_xticks(np.arange(len(pts)) + 0.4, [f"{p['model']}\n{p['n_atoms']}" for p in pts], fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("ms / step")
    ax.set_title("suite")
    ax.legend(fontsize=6)
    ax = axes[1, 0]
    mem = st.get("memory", {})
    bars = {}
    for key, c in (mem.get("fresh_processes") or {}).items():
        if "jax_took_gb" in c:
            bars[f"fresh JAX\n{key}"] = c["jax_took_gb"]
    snap = (st.get("suite") or {}).get("memory_after") or mem.get("this_process") or {}
    if "device_used_gb" in snap:
        bars["kit process\n(all models)"] = snap["device_used_gb"]
        bars["of which torch\nreserved (peak)"] = snap.get("torch_max_reserved_gb", np.nan)
    ax.bar(range(len(bars)), list(bars.values()), color=["C3", "C2", "C0", "C1"][:len(bars)])
    ax.set_xticks(range(len(bars)), list(bars), fontsize=7)
    ax.set_ylabel("GPU memory taken (GiB)")
    ax.set_title("memory (JAX default vs jaxpto's setting)" if bars else "memory: no GPU")
    ax = axes[1, 1]
    npt = st.get("npt_chunk", {})
    if npt.get("temperature_series_k"):
        ser = np.asarray(npt["temperature_series_k"], float)
        t_ps = np.arange(1, len(ser) + 1) * 10 * 2e-3
        for r, T in enumerate(npt["temperatures_k"]):
            ax.plot(t_ps, ser[:, r], lw=1, label=f"{T:.0f} K")
        ax.set_xlabel("time (ps)")
        ax.set_ylabel("T (K)")
        sp = npt.get("speed", {})
        ax.set_title(f"NPT chunk {npt['model']}, {npt['n_atoms']} atoms x {len(npt['temperatures_k'])} T: "
                     f"{sp.get('ms_per_step', float('nan')):.0f} ms/step", fontsize=8)
        ax.legend(fontsize=6, ncol=2)
    else:
        ax.set_title("NPT chunk: not run")
    env = st.get("environment", {})
    dev = (env.get("torch_device_0") or {}).get("name") or env.get("jax_backend", "?")
    fig.suptitle(f"jaxpto GPU check kit: {dev} ({result['mode']}); all checks passed: "
                 f"{result.get('verdict', {}).get('all_checks_passed')}")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="the dry run: JAX and torch on the CPU, tiny sizes")
    ap.add_argument("--out", default=None, help="output folder (default: $OUT, else benchmarks/results/gpu-check-<mode>)")
    ap.add_argument("--budget-s", type=float, default=None, help="seconds this script may run (default per mode)")
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--sizes", nargs="+", type=int, default=None, help="supercells n (5 n^3 atoms), largest first")
    ap.add_argument("--replicas", nargs="+", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per timed chunk of the suite")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--ase-max-atoms", type=int, default=None)
    ap.add_argument("--npt-model", default=None)
    ap.add_argument("--npt-supercell", type=int, default=None)
    ap.add_argument("--npt-temperatures", nargs="+", type=float, default=None)
    ap.add_argument("--npt-steps", type=int, default=None)
    ap.add_argument("--npt-chunk", type=int, default=None)
    ap.add_argument("--npt-reserve-s", type=float, default=None, help="seconds kept for the NPT chunk after the suite")
    ap.add_argument("--zero-copy-steps", type=int, default=None)
    ap.add_argument("--agreement-share", type=float, default=0.35,
                    help="fraction of the budget the agreement step may take before it skips the remaining models")
    ap.add_argument("--only", nargs="+", choices=[s for s, _ in STEPS], default=None, help="run only these steps")
    ap.add_argument("--nequix-dir", default=None,
                    help="folder with nequix-mp-1.nqx (default: $JAXPTO_NEQUIX_DIR, .whl/nequix, ../shared/models/nequix)")
    args = ap.parse_args(argv)
    mode = "cpu" if args.cpu else "gpu"
    for key, value in PROFILES[mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = os.environ.get("OUT") or os.path.join(HERE, "results", f"gpu-check-{mode}")
    if args.nequix_dir is None:
        for cand in (os.environ.get("JAXPTO_NEQUIX_DIR"), os.path.join(ROOT, ".whl", "nequix"),
                     os.path.join(ROOT, "..", "shared", "models", "nequix")):
            if cand and os.path.isdir(cand):
                args.nequix_dir = os.path.abspath(cand)
                break
        else:
            args.nequix_dir = os.path.join(ROOT, ".whl", "nequix")
    args.sizes = sorted(args.sizes, reverse=True)
    return args, mode


def main(argv=None):
    args, mode = parse(sys.argv[1:] if argv is None else argv)
    if mode == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # torch on the CPU too
    # Before JAX starts: what jaxpto does for torch models (bridges/gpu_memory.py, jaxpto/host_allocator.py).
    from bridges import gpu_memory
    from jaxpto import host_allocator

    if mode == "cpu":
        host_allocator.tune()
    else:
        gpu_memory.share_gpu_with_torch("cuda")
    warnings.simplefilter("ignore")
    kit = Kit(args, mode)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    kit.log(f"GPU check kit ({kit.result['mode']}), budget {args.budget_s:.0f} s, output {args.out}")
    kit.save()
    killed = False
    for sname, fn in STEPS:
        if args.only and sname not in args.only:
            continue
        if killed:
            kit.result["steps"][sname] = {"status": "skipped", "reason": "the kit was stopped by a signal"}
            continue
        if kit.left() < MIN_SECONDS[sname]:
            kit.result["steps"][sname] = {"status": "skipped",
                                          "reason": f"time budget: {kit.left():.0f} s left of {args.budget_s:.0f} s"}
            kit.log(f"{sname}: skipped (time budget)")
            kit.save()
            continue
        kit.log(f"{sname} ...")
        t0 = time.perf_counter()
        try:
            sec = fn(kit)
            if "skip" in sec:  # the step could not run at all: why
                sec["status"] = "skipped"
                sec["reason"] = sec.pop("skip")
            else:
                checks = sec.get("checks") or {}
                sec["status"] = "failed" if any(c.get("passed") is False for c in checks.values()) else "ok"
        except Killed as exc:
            sec = {"status": "killed", "error": f"stopped by {exc}"}
            killed = True
        except Exception as exc:
            sec = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        sec["seconds"] = time.perf_counter() - t0
        if sname == "suite" and mode == "gpu":
            sec["memory_after"] = memory_snapshot()
        kit.result["steps"][sname] = sec
        kit.log(f"{sname}: {sec['status']} in {sec['seconds']:.1f} s"
                + (f" ({sec.get('error') or sec.get('reason')})" if sec["status"] in ("error", "skipped", "killed") else ""))
        kit.save()
    kit.result["verdict"] = verdict(kit.result)
    kit.save()
    try:
        plot(kit.result, os.path.join(args.out, "gpu_check.png"))
    except Exception as exc:  # the JSON is the result; a failed plot must not lose it
        kit.log(f"plot failed: {type(exc).__name__}: {exc}")
    v = kit.result["verdict"]
    kit.log(f"verdict: all checks passed: {v['all_checks_passed']}; failed: {v['failed'] or 'none'}; "
            f"inconclusive: {v['inconclusive'] or 'none'}; skipped steps: {v['skipped_steps'] or 'none'}; "
            f"models not checked: {v['models_not_checked'] or 'none'}")
    for key, tg in v["targets"].items():
        kit.log("target " + key + ": " + ", ".join(f"{k} {t['value'] if t['value'] is None else round(t['value'], 3)} "
                                                  f"({t['target']}: {t['met']})" for k, t in tg.items()))
    kit.log(f"wrote {kit.json_path}")
    return 0 if v["all_checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
