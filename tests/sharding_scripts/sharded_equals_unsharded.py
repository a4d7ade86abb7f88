"""Run by tests/test_sharding.py in a fresh process with 4 host devices: sharded vs unsharded runs.

Prints one JSON line: per case the largest relative position deviation and energy deviation, the
sharding of the result, and for the torch bridge the batch sizes the model was called with.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402
from ase import units  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution  # noqa: E402

from jaxpto import simulate  # noqa: E402
from jaxpto.integrators import langevin, melchionna_npt, replica_exchange  # noqa: E402
from jaxpto.potentials.emt import emt  # noqa: E402

TEMPS = [300.0 + 50 * i for i in range(8)]


def replicas():
    out = []
    for i, T in enumerate(TEMPS):
        a = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
        MaxwellBoltzmannDistribution(a, temperature_K=T, rng=np.random.default_rng(i))
        out.append(a)
    return out


def run(case, model, devices):
    state, force_fn = simulate.state_from_atoms(replicas(), model, devices=devices)
    if case == "melchionna":
        integ = melchionna_npt(force_fn, 2 * units.fs, mask=np.eye(3))
        state = integ.init(state, TEMPS, ttime=25 * units.fs, pfactor=(75 * units.fs) ** 2 * 140 * units.GPa,
                           externalstress=0.0)
    else:
        integ = langevin(force_fn, 2 * units.fs)
        if case == "replica_exchange":
            integ = replica_exchange(integ, 5, seed=1)
        state = integ.init(state, TEMPS, 0.02 / units.fs)
    state, rec = simulate.run(integ, state, 100, record_fn=lambda s: {"energy": s.energy}, record_every=10,
                              chunk_size=50)
    return np.asarray(state.positions), rec["energy"], state


def main():
    out = {"devices": len(jax.devices())}
    for case in ("langevin", "melchionna", "replica_exchange"):
        (p0, e0, _), (p1, e1, s1) = run(case, emt(), None), run(case, emt(), "all")
        out[case] = {"positions_rel": float(np.abs(p1 - p0).max() / np.abs(p0).max()),
                     "energy_rel": float(np.abs(e1 - e0).max() / np.abs(e0).max()),
                     "shards": len(s1.positions.sharding.device_set)}
        if case == "replica_exchange":
            out[case]["walkers_equal"] = bool(np.array_equal(np.asarray(run(case, emt(), None)[2].variables.walker),
                                                             np.asarray(s1.variables.walker)))
    from bridges.torch_bridge import as_jax_model
    from test_torch_bridge import TorchLJ

    efs = TorchLJ()
    model = as_jax_model(efs)
    p0, e0, _ = run("langevin", model, None)
    efs.calls.clear()
    p1, e1, _ = run("langevin", model, "all")
    out["torch_bridge"] = {"positions_rel": float(np.abs(p1 - p0).max() / np.abs(p0).max()),
                           "call_batch_sizes": sorted({c[0] for c in efs.calls}), "n_calls": len(efs.calls)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
