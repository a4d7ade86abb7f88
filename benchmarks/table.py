"""Render a benchmark JSON (engine_benchmark.py or suite.py) as the Markdown table used in README.md.

    python benchmarks/table.py benchmarks/results/engine-cpu.json
    python benchmarks/table.py benchmarks/results/suite-cpu.json
"""

import json
import sys


def engine_table(res: dict) -> str:
    m = res["machine"]
    head = (f"Machine: {m.get('cpu_model', m.get('processor'))}, {m.get('cpu_count')} cores, "
            f"JAX {m['jax']} ({m['jax_backend']}), ASE {m.get('ase')}, {res['dtype']}, dt = {res['dt_fs']} fs.\n\n")
    rows = ["| potential | integrator | atoms | R | jaxpto ms/step | atom-steps/s | ASE ms/step (R=1) | ASE / jaxpto |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in res["points"]:
        ase = "" if p["ase_ms_per_step"] is None else f"{p['ase_ms_per_step']:.1f}"
        ratio = "" if p["ase_over_jaxpto"] is None else f"{p['ase_over_jaxpto']:.1f}"
        rows.append(f"| {p['potential']} | {p['integrator']} | {p['n_atoms']} | {p['replicas']} | "
                    f"{p['jaxpto_ms_per_step']:.2f} | {p['jaxpto_atom_steps_per_s']:.3g} | {ase} | {ratio} |")
    return head + "\n".join(rows) + "\n"


def _allocator(machine: dict) -> str:
    alloc = machine.get("host_allocator")
    if alloc is None:
        return "; glibc malloc defaults (before jaxpto.host_allocator)"
    return "; glibc malloc tuned by jaxpto.host_allocator" if alloc.get("applied") else \
        f"; glibc malloc not tuned ({alloc.get('reason')})"


def suite_table(res: dict) -> str:
    m = res["machine"]
    ts_versions = sorted({p["torchsim_version"] for p in res["points"] if "torchsim_version" in p})
    head = (f"Machine: {m.get('gpu') or m.get('cpu_model') or m.get('processor') or m.get('platform')}, "
            f"{m.get('cpu_count')} cores, JAX {m['jax']} ({m['jax_backend']}), torch {m.get('torch')}, "
            f"ASE {m.get('ase', '?')}, TorchSim {', '.join(ts_versions) or 'not run'}, float32, dt = 2 fs, "
            f"Langevin NVT 300 K (NPT: Melchionna); median of {res['args'].get('repeats')} round-robin rounds"
            f"{_allocator(m)}.\n\n")
    isolated = bool(res["args"].get("isolate"))
    head += ("Peak memory: each point ran in its own process (`--isolate`): host peak RSS of that process "
             "(all its paths), or the GPU peaks." if isolated else
             "Peak memory: host peak RSS of the whole run so far (it only grows), or the GPU peaks.") + "\n\n"
    reps_shown = sorted({int(r) for p in res["points"] for r in p.get("replicas", {})})
    rows = ["| model | atoms | bare ms | jaxpto NVT ms | NPT ms | us/atom/step | ns/day | jaxpto/bare | ASE ms "
            "| ASE/jaxpto | TorchSim ms | TorchSim/jaxpto | peak MB | "
            + (" / ".join(f"R={r}" for r in reps_shown) + " throughput vs R=1" if reps_shown else "replicas") + " |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]

    def ms(x):
        return f"{x:.3g}" if x < 10 else f"{x:.0f}"

    for p in res["points"]:
        if "nvt" not in p:
            err = p.get("error", "?").replace("|", "/")
            if "can't allocate memory" in err or "Cannot allocate memory" in err:
                where = (p.get("traceback") or "").strip().splitlines()
                err = "out of memory" + (f" (`--memory-limit-gb {res['args']['memory_limit_gb']:g}`)"
                                         if res["args"].get("memory_limit_gb") else "")
                path = next((w for w in ("prepare_bare", "prepare_jaxpto", "prepare_ase", "prepare_torchsim")
                             if any(w in ln for ln in where)), None)
                if path:
                    err += f" in {path.replace('prepare_', '')} path set-up"
            rows.append(f"| {p['model']} | {p['n_atoms']} | {err[:160]} |" + " |" * 12)
            continue
        reps = " / ".join(f"{p['replicas'][str(r)]['throughput_over_R1']:.2f}" for r in reps_shown
                          if str(r) in p.get("replicas", {}))
        mem = p.get("memory", {})
        peak = mem.get("torch_cuda_peak_mb", 0) + mem.get("jax_device_peak_mb", 0) or mem.get("host_peak_rss_mb")
        peak = f"{peak:.0f}" if peak else ""
        ase = ms(p["ase"]["ms_per_step"]) if "ase" in p else ""
        ratio = f"{p['ase_over_jaxpto']:.2f}" if "ase_over_jaxpto" in p else ""
        if "torchsim" in p:
            ts, ts_ratio = ms(p["torchsim"]["ms_per_step"]), f"{p['torchsim_over_jaxpto']:.2f}"
        else:
            ts, ts_ratio = ("n/a" if "torchsim_skipped" in p else "failed"), ""
        rows.append(f"| {p['model']} | {p['n_atoms']} | {ms(p['bare']['ms_per_step'])} | {ms(p['nvt']['ms_per_step'])} | "
                    f"{ms(p['npt']['ms_per_step'])} | {p['nvt']['us_per_atom_step']:.3g} | {p['nvt']['ns_per_day']:.3g} | "
                    f"{p['jaxpto_over_bare']:.2f} | {ase} | {ratio} | {ts} | {ts_ratio} | {peak} | {reps} |")
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        data = json.load(f)
    print(suite_table(data) if "args" in data and "points" in data and "dtype" not in data else engine_table(data))
