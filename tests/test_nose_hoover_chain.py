"""Nose-Hoover chain NVT against ``ase.md.nose_hoover_chain.NoseHooverChainNVT``.

Both sides use the same JAX model (ASE through ``JaxptoCalculator``), the same
seeded Maxwell-Boltzmann momenta, 500 steps, compared every 100 steps.

Why 1e-8 is reachable: the two programs differ only by rounding (summation
order of the forces and of the kinetic energy, libm vs XLA ``exp``), ~1e-16
relative per step. The system is a 32-atom fcc LJ crystal at 300 K with a
1 fs step (~100 steps per vibrational period): a weakly anharmonic solid whose
largest Lyapunov exponent is small on a 0.5 ps horizon, so rounding grows by
at most a few orders of magnitude (measured: ~1e-14 after 500 steps).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units
from ase.md.nose_hoover_chain import NoseHooverChainNVT

from jaxpto.calculator import JaxptoCalculator
from jaxpto.integrators.nose_hoover_chain import (
    FOURTH_ORDER_COEFFS,
    chain_energy,
    chain_init,
    chain_propagate,
    nhc_conserved_energy,
    nose_hoover_chain_nvt,
)
from jaxpto.state import create_state, kinetic_energy
from ase_reference import CHUNK, N_CHUNKS, compare, max_rel, run_ase, run_jaxpto  # noqa: E402

DT = 1.0 * units.fs
TOL = 1e-8


def thermalised(atoms, T, seed):
    """A copy with seeded Maxwell-Boltzmann momenta (``thermalize_momenta`` from ASE 3.28 on)."""
    from ase.md import velocitydistribution as vd

    atoms = atoms.copy()
    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
    thermalize(atoms, temperature_K=T, rng=np.random.default_rng(seed))
    return atoms


@pytest.mark.parametrize("tchain,tloop", [(1, 1), (3, 1), (1, 2), (3, 2)])
def test_nvt_equals_ase(lj_model, cu_atoms, tchain, tloop):
    T, tdamp = 300.0, 50 * units.fs
    atoms = thermalised(cu_atoms, T, seed=42)
    state, force_fn = create_state(atoms.positions, atoms.cell.array, atoms.numbers, atoms.get_masses(),
                                   lj_model, momenta=atoms.get_momenta())
    integ = nose_hoover_chain_nvt(force_fn, DT, tchain=tchain, tloop=tloop)
    state = integ.init(state, temperature_K=T, tdamp=tdamp)
    e0 = float(nhc_conserved_energy(state)[0])
    final, snaps = run_jaxpto(integ, state, nhc_conserved_energy)

    ase_atoms = atoms.copy()
    ase_atoms.calc = JaxptoCalculator(lj_model)
    dyn = NoseHooverChainNVT(ase_atoms, DT, temperature_K=T, tdamp=tdamp, tchain=tchain, tloop=tloop)
    assert dyn.get_conserved_energy() == pytest.approx(e0, abs=1e-10)
    ase_snaps = run_ase(dyn, ase_atoms)

    worst = compare(snaps, ase_snaps)
    print(f"\nNHC tchain={tchain} tloop={tloop}: {worst}")
    assert worst["positions"] <= TOL and worst["momenta"] <= TOL and worst["cell"] <= TOL, worst
    assert worst["conserved_eV"] <= 1e-8, worst
    assert int(final.step) == N_CHUNKS * CHUNK
    # The thermostat acts: the chain is no longer at rest.
    assert float(jnp.abs(final.variables.p_eta[0, 0])) > 0
    # Conserved to the O(dt^2) level (measured ~2e-3 eV for 32 atoms at 1 fs), no secular drift.
    assert np.abs(snaps[3][:, 0] - e0).max() < 5e-3


def test_nvt_replicas_equal_separate_runs(lj_model, cu_atoms):
    """R=3 replicas with different temperatures, couplings and momenta in one program == 3 runs."""
    temps = [200.0, 300.0, 450.0]
    tdamps = [30 * units.fs, 50 * units.fs, 80 * units.fs]
    replicas = [thermalised(cu_atoms, T, seed=s) for T, s in zip(temps, (1, 2, 3))]
    integ_for = {}

    def build(atoms_list):
        state, force_fn = create_state(np.stack([a.positions for a in atoms_list]),
                                       np.stack([a.cell.array for a in atoms_list]), cu_atoms.numbers,
                                       cu_atoms.get_masses(), lj_model,
                                       momenta=np.stack([a.get_momenta() for a in atoms_list]))
        integ = integ_for.setdefault(len(atoms_list), nose_hoover_chain_nvt(force_fn, DT, tchain=3, tloop=2))
        return integ, state

    integ, state = build(replicas)
    state = integ.init(state, temperature_K=temps, tdamp=tdamps)
    _, batched = run_jaxpto(integ, state, nhc_conserved_energy)
    for r, atoms in enumerate(replicas):
        integ1, state1 = build([atoms])
        state1 = integ1.init(state1, temperature_K=temps[r], tdamp=tdamps[r])
        _, single = run_jaxpto(integ1, state1, nhc_conserved_energy)
        single = [x[:, 0] for x in single]
        worst = compare(batched, single, replica=r)
        print(f"\nNHC replica {r} vs separate run: {worst}")
        assert max(worst["positions"], worst["momenta"], worst["cell"]) <= 1e-10, worst
        assert worst["conserved_eV"] <= 1e-9


def test_chain_pieces():
    """The chain propagator alone: Q, Suzuki-Yoshida weights, 4th-order conservation of K + E_chain, tloop."""
    assert sum(FOURTH_ORDER_COEFFS) == pytest.approx(1.0, abs=1e-15)
    kT = jnp.array([0.5, 1.0])
    tau = jnp.array([1.0, 2.0])
    chain0 = chain_init(kT, tau, tchain=4, dof=6)
    assert chain0.Q.shape == (2, 4)
    np.testing.assert_allclose(chain0.Q[:, 0], 6 * kT * tau**2)
    np.testing.assert_allclose(chain0.Q[:, 1:], np.broadcast_to((kT * tau**2)[:, None], (2, 3)))
    masses = jnp.array([1.0, 3.0])
    p0 = jax.random.normal(jax.random.PRNGKey(0), (2, 2, 3))

    def k2(p):
        return jnp.sum(p**2 / masses[None, :, None], axis=(1, 2))

    def energy_error(delta, nloop, total=10.0):
        # Without forces the NHC flow conserves K + E_chain exactly; the splitting errs by O(delta^4).
        f = jax.jit(lambda c, q: chain_propagate(c, q, k2, delta, nloop=nloop))
        c, q = chain0, p0
        for _ in range(int(round(total / delta))):
            c, q = f(c, q)
        return np.asarray(0.5 * k2(q) + chain_energy(c) - (0.5 * k2(p0) + chain_energy(chain0))), q

    e1, q1 = energy_error(0.1, 1)
    e2, q2 = energy_error(0.05, 1)
    ratio = np.abs(e1 / e2)
    assert np.all((ratio > 12) & (ratio < 20)), ratio  # 2^4 = 16: fourth order
    # tloop=2 with delta is two Suzuki-Yoshida sub-steps of delta/2.
    e3, q3 = energy_error(0.1, 2)
    np.testing.assert_allclose(e3, e2, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(q3, q2, rtol=1e-12)


def test_init_validates_per_replica_values(lj_model, cu_atoms):
    state, force_fn = create_state(cu_atoms.positions, cu_atoms.cell.array, cu_atoms.numbers,
                                   cu_atoms.get_masses(), lj_model)
    integ = nose_hoover_chain_nvt(force_fn, DT)
    with pytest.raises(ValueError, match="replicas"):
        integ.init(state, temperature_K=[300.0, 400.0], tdamp=50 * units.fs)
    with pytest.raises(ValueError, match="positive"):
        integ.init(state, temperature_K=0.0, tdamp=50 * units.fs)
    with pytest.raises(ValueError, match="tchain"):
        nose_hoover_chain_nvt(force_fn, DT, tchain=0)
    s = integ.init(state, temperature_K=300.0, tdamp=50 * units.fs)
    assert float(nhc_conserved_energy(s)[0]) == pytest.approx(
        float(s.energy[0] + kinetic_energy(s.momenta, s.masses)[0]))
