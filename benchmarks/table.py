"""Render a benchmark JSON (from engine_benchmark.py) as the Markdown table used in README.md.

    python benchmarks/table.py benchmarks/results/engine-cpu.json
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


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(engine_table(json.load(f)))
