"""Where a JAX-native MD step's time goes beyond the bare force call (CPU or GPU), in one run.

For the suite's Lennard-Jones on PbTiO3 n^3 supercells (float32, 2 fs, 300 K) it times, interleaved
round-robin as the suite does (``suite.interleaved_seconds_per_step``):

- ``bare``:      the force call on a pre-built neighbour list, many calls in one compiled loop;
- ``langevin``:  a jaxpto Langevin NVT step (friction 0.01/fs), the suite's ``nvt`` path;
- ``rng``:       the Langevin step's random numbers alone (two N x 3 normal arrays per step);
- ``nl_check``:  the per-step neighbour-list check alone (``neighbors.needs_rebuild``);
- ``nl_build``:  one neighbour-list rebuild (``neighbors.build``),

and counts the rebuilds the Langevin run made (``neighbors.n_builds``). The step's excess over the
bare call is then accounted for as rng + nl_check + nl_build x (rebuilds per step) + the rest
(the integrator's arithmetic). Writes ``benchmarks/results/step-profile-<backend>.json``.

    python benchmarks/step_profile.py --sizes 5 6 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import suite  # noqa: E402


def _loop(fn, steps):
    """``steps`` calls of ``fn(i)`` in one compiled loop, each feeding a 1e-30 multiple of its
    output into a carried sum so that XLA cannot drop or merge them."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def run(acc):
        return jax.lax.fori_loop(0, steps, lambda i, a: a + 1e-30 * fn(i, a), acc)

    acc = jnp.zeros((), jnp.float32)
    jax.block_until_ready(run(acc))
    return lambda: jax.block_until_ready(run(acc))


def profile(n, steps=400, repeats=5):
    import jax
    import jax.numpy as jnp

    import jaxpto
    from jaxpto import neighbors as nl

    model = jaxpto.load_model("lj", **suite.LJ_PARAMS)
    atoms = suite._atoms(n)
    N = len(atoms)
    bare, k = suite.prepare_bare(model, None, atoms)
    chunk = suite.prepare_jaxpto(model, atoms, "nvt", 1, steps)  # the suite's nvt path, compiled
    holder = chunk.holder
    chunk()  # past the first re-allocation of the list, if any
    builds0 = int(jnp.max(holder["s"].neighbors.n_builds))
    s = holder["s"]
    nbrs, pos, cell = s.neighbors, s.positions, s.cell
    key = jax.random.PRNGKey(0)

    def rng(i, a):
        k1, k2 = jax.random.split(jax.random.fold_in(key, i))
        return (jax.random.normal(k1, pos.shape, jnp.float32) + jax.random.normal(k2, pos.shape, jnp.float32))[0, 0, 0]

    def check(i, a):
        return nl.needs_rebuild(nbrs, pos + a, cell).astype(jnp.float32)[0]

    def build(i, a):
        return nl.build(nbrs, pos + a, cell).idx[0, 0, 0].astype(jnp.float32)

    runners = {"bare": (bare, k), "langevin": (chunk, steps), "rng": (_loop(rng, steps), steps),
               "nl_check": (_loop(check, steps), steps), "nl_build": (_loop(build, 20), 20)}
    steps_before = int(jnp.max(holder["s"].step))
    sec = suite.interleaved_seconds_per_step(runners, repeats)
    taken = int(jnp.max(holder["s"].step)) - steps_before
    rebuilds_per_step = (int(jnp.max(holder["s"].neighbors.n_builds)) - builds0) / taken
    ms = {key: 1e3 * v for key, v in sec.items()}
    excess = ms["langevin"] - ms["bare"]
    amortised_build = ms["nl_build"] * rebuilds_per_step
    return {"n_atoms": N, "ms": ms, "langevin_over_bare": ms["langevin"] / ms["bare"],
            "rebuilds_per_step": rebuilds_per_step, "neighbor_layout": "cell list" if nbrs.grid is not None else "all pairs",
            "excess_ms": excess,
            "excess_parts_ms": {"rng": ms["rng"], "nl_check": ms["nl_check"], "nl_build_amortised": amortised_build,
                                "rest": excess - ms["rng"] - ms["nl_check"] - amortised_build}}


def main(argv=None):
    import jax

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=int, default=[5, 6, 8])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = args.out or os.path.join(HERE, "results", f"step-profile-{jax.default_backend()}.json")
    result = {"machine": suite.machine(), "args": vars(args), "points": []}
    for n in args.sizes:
        p = profile(n, args.steps, args.repeats)
        result["points"].append(p)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in p.items() if k != "ms"}),
              {k: round(v, 4) for k, v in p["ms"].items()}, flush=True)
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
