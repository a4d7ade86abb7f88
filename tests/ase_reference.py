"""Shared by the ASE-equivalence tests of the Nose-Hoover-chain family (NVT and MTK NPT).

Both sides run ``N_CHUNKS * CHUNK`` steps and are compared at every chunk boundary.
"""

import jax
import jax.numpy as jnp
import numpy as np

N_CHUNKS, CHUNK = 5, 100


def max_rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


_RUNNERS = {}


def run_jaxpto(integrator, state, conserved):
    """500 steps in one compiled program: an outer scan over 5 chunks of an inner scan of 100 steps.

    One jitted runner per integrator, so runs with other parameters (same shapes) reuse the program.
    """
    if integrator not in _RUNNERS:
        _RUNNERS[integrator] = _make_runner(integrator, conserved)
    final, snaps = _RUNNERS[integrator](state)
    assert not bool(jnp.any(final.neighbors.did_overflow | final.neighbors.layout_bad))
    return final, [np.asarray(x) for x in snaps]


def _make_runner(integrator, conserved):
    def chunk(s, _):
        s = jax.lax.scan(lambda c, _: (integrator.step(c), None), s, None, length=CHUNK)[0]
        return s, (s.positions, s.momenta, s.cell, conserved(s))

    return jax.jit(lambda s: jax.lax.scan(chunk, s, None, length=N_CHUNKS))


def run_ase(dyn, atoms):
    snaps = [], [], [], []
    for _ in range(N_CHUNKS):
        dyn.run(CHUNK)
        for lst, x in zip(snaps, (atoms.positions, atoms.get_momenta(), atoms.cell.array,
                                  dyn.get_conserved_energy())):
            lst.append(np.array(x))
    return [np.asarray(x) for x in snaps]


def compare(jax_snaps, ase_snaps, replica=0):
    """Max relative deviation of positions, momenta, cell over the checkpoints; max |dE_conserved| (eV)."""
    worst = {}
    for name, k in (("positions", 0), ("momenta", 1), ("cell", 2)):
        worst[name] = max(max_rel(jax_snaps[k][c, replica], ase_snaps[k][c]) for c in range(N_CHUNKS))
    worst["conserved_eV"] = float(np.abs(jax_snaps[3][:, replica] - ase_snaps[3]).max())
    return worst
