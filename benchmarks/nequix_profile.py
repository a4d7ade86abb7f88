"""Where the time of one Nequix energy+forces+stress evaluation goes: jaxpto's native path against
ASE's ``NequixCalculator``, same weights, same structure, float32, this device.

Parts timed (median of ``--repeats`` after a warm-up; each line's work is independent):

* ``calculator_total``   -- ``NequixCalculator.calculate`` (what ASE's MD pays per step);
* ``calculator_graph``   -- its host part: matscipy neighbour list (``preprocess_graph``), jraph
  tuple and padding (``_pad_graph_jax``, 1.1x the edges, rounded up to 64);
* ``calculator_network`` -- its compiled network call on that padded graph (``eqx.filter_jit``);
* ``native_packed``      -- jaxpto's ``Model.compute`` in one ``jit`` on the engine's list (skin
  1 A): cutoff filter, packing into the static edge buffer, network (the default path);
* ``native_exact``       -- the same with the edge buffer cut to the real pair count (rounded up to
  64): the network's floor on this graph;
* ``native_unpacked``    -- the same on all the engine's slots (``edge_fraction=1``: no packing;
  up to ``--unpacked-max-atoms``, its backward pass holds 2.2x the edge tensors);
* ``neighbor_build``     -- one rebuild of the engine's neighbour list (MD rebuilds it every
  ~10-50 steps, see ``step_profile.py``);
* ``tensor_products``    -- the network's edge tensor products alone (``e3nn.tensor_product`` of
  each layer's irreps with the spherical harmonics, as ``NequixConvolution`` calls it), forward
  and backward to both inputs, on as many edges as ``native_packed`` has, random inputs: the part
  of the network that neither path can avoid (the same e3nn-jax code runs in both).

Edge counts of every variant are recorded next to the times (network cost ~ edges).

    python benchmarks/nequix_profile.py --sizes 2 5 --out benchmarks/results/nequix-profile-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def _median(fn, repeats):
    """Median seconds of ``fn`` after one warm-up call (compilation)."""
    from suite import _median_time

    fn()
    return _median_time(fn, repeats)


def _tensor_products_time(network, n_edges: int, repeats: int) -> float:
    """Seconds of all layers' edge tensor products, forward + backward (see the module docstring)."""
    import e3nn_jax as e3nn
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    sh_irreps = e3nn.s2_irreps(network.lmax)
    vectors = jnp.asarray(rng.normal(size=(n_edges, 3)), jnp.float32)
    args, specs = [], []
    for layer in network.layers:
        irreps_in = layer.linear_1.irreps_in
        args.append(jnp.asarray(rng.normal(size=(n_edges, irreps_in.dim)), jnp.float32))
        probe = e3nn.tensor_product(irreps_in, sh_irreps, filter_ir_out=layer.tp_irreps)
        specs.append((irreps_in, layer.tp_irreps, jnp.asarray(rng.normal(size=(n_edges, probe.dim)), jnp.float32)))

    def loss(xs, vec):
        sh = e3nn.spherical_harmonics(sh_irreps, vec, normalize=True, normalization="component")
        total = 0.0
        for x, (irreps_in, tp_irreps, w) in zip(xs, specs):
            tp = e3nn.tensor_product(e3nn.IrrepsArray(irreps_in, x), sh, filter_ir_out=tp_irreps)
            total = total + jnp.vdot(w, tp.array)  # a linear read-out: the backward pass MD needs
        return total

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    with jax.default_matmul_precision("highest"):
        return _median(lambda: jax.block_until_ready(grad(args, vectors)), repeats)


def profile(n: int, name: str, repeats: int, unpacked_max_atoms: int = 200) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jraph  # noqa: F401
    from ase.neighborlist import neighbor_list
    from nequix.data import dict_to_graphstuple, preprocess_graph

    from suite import _atoms, _nequix_weights
    from bridges import nequix as bn
    from jaxpto import neighbors as nl

    path = _nequix_weights(name)
    atoms = _atoms(n)
    N = len(atoms)
    calc = bn.ase_calculator(path)
    a = atoms.copy()
    a.calc = calc
    out = {"model": name, "n_atoms": N}

    def calc_total():
        calc.results.clear()
        calc.calculate(a, ["energy", "forces", "stress"])

    out["calculator_total_s"] = _median(calc_total, repeats)

    def calc_graph():
        g = dict_to_graphstuple(preprocess_graph(a, calc.atom_indices, calc.cutoff, False))
        return calc._pad_graph_jax(g, False)

    out["calculator_graph_s"] = _median(calc_graph, repeats)
    graph = calc_graph()
    net = eqx.filter_jit(calc.model)
    out["calculator_network_s"] = _median(lambda: jax.block_until_ready(net(graph)), repeats)
    out["calculator_edges"] = int(graph.senders.shape[0])

    real = len(neighbor_list("i", atoms, calc.cutoff))
    out["real_pairs"] = real
    pos = jnp.asarray(atoms.positions[None], jnp.float32)
    cell = jnp.asarray(np.asarray(atoms.cell)[None], jnp.float32)
    nbrs = nl.allocate(pos, cell, calc.cutoff, skin=1.0)
    z = jnp.asarray(atoms.numbers)
    out["engine_slots"] = N * nbrs.capacity
    network, config = bn.read_nqx(path)
    variants = [("native_packed", None), ("native_exact", real / (N * nbrs.capacity))]
    if N <= unpacked_max_atoms:
        variants.append(("native_unpacked", 1.0))
    for key, fraction in variants:
        model = bn.native_model(network, config["atomic_numbers"], edge_fraction=fraction)
        f = jax.jit(model.compute)
        out[f"{key}_s"] = _median(lambda: jax.block_until_ready(f(pos, cell, z, nbrs)), repeats)
        out[f"{key}_edges"] = bn.edge_capacity(N, nbrs, calc.cutoff, fraction)
        assert model.compute.n_unpacked == 0 or key == "native_unpacked"
    out["tensor_products_s"] = _tensor_products_time(network, out["native_packed_edges"], repeats)
    out["tensor_products_share_of_native"] = out["tensor_products_s"] / out["native_packed_s"]
    build = jax.jit(nl.build)
    out["neighbor_build_s"] = _median(lambda: jax.block_until_ready(build(nbrs, pos, cell).idx), repeats)
    out["calculator_over_native"] = out["calculator_total_s"] / out["native_packed_s"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=int, default=[2, 5])
    ap.add_argument("--model", default="nequix-mp-1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--unpacked-max-atoms", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import jax

    from suite import machine

    dev = "gpu" if jax.default_backend() == "gpu" else "cpu"
    out = args.out or os.path.join(HERE, "results", f"nequix-profile-{dev}.json")
    result = {"machine": machine(), "args": vars(args), "points": []}
    for n in args.sizes:
        p = profile(n, args.model, args.repeats, args.unpacked_max_atoms)
        result["points"].append(p)
        print(json.dumps(p), flush=True)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as fh:
            json.dump(result, fh, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
