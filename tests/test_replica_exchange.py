"""Replica exchange (jaxpto.integrators.replica_exchange) against exact answers.

* Uncoupled 3D harmonic oscillators (N atoms tethered to sites, ``U = k/2 sum |r - r0|^2``): at
  temperature ``T`` the potential energy is Gamma-distributed with shape ``3N/2`` and scale ``kT``,
  so each temperature's sampled distribution (Kolmogorov-Smirnov, significance 1e-3 per
  temperature, samples thinned beyond the correlation time) and the acceptance of every pair
  (``E[min(1, exp((b_i - b_j)(U_i - U_j)))]`` over the two Gamma laws, to 4 block-averaged
  standard errors) are known exactly.
* Detailed balance: in equilibrium, accepted swaps with ``Delta`` in ``[a, b]`` are as many as
  accepted swaps with ``Delta`` in ``[-b, -a]`` (each is the other's reverse move): counted, to 4
  Poisson standard errors.
* EMT Cu, NVT (Langevin) and NPT (Melchionna at 5 GPa, where the ``P dV`` term matters): the
  per-temperature averages with exchange equal those of independent runs within block errors.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from scipy import stats

from jaxpto import simulate
from jaxpto.integrators import langevin, melchionna_npt, nose_hoover_chain_nvt, replica_exchange
from jaxpto.integrators.replica_exchange import exchange_statistics, log_acceptance
from jaxpto.model import energy_model
from jaxpto.potentials.emt import emt
from jaxpto.state import create_state, volume

TEMPS = np.array([300.0, 420.0, 590.0, 830.0])


def _oscillators(n_atoms=4, k=4.0, seed=0):
    sites = np.random.default_rng(seed).uniform(0, 6, (n_atoms, 3))
    model = energy_model(lambda p, c, z, nb: 0.5 * k * jnp.sum((p - sites) ** 2), cutoff=0.0, name="oscillators")
    R = len(TEMPS)
    state, force_fn = create_state(np.broadcast_to(sites, (R, n_atoms, 3)), np.broadcast_to(np.eye(3) * 10, (R, 3, 3)),
                                   np.full(n_atoms, 18), np.full(n_atoms, 40.0), model, seed=1)
    return state, force_fn


def _block_sem(x, n_blocks=20):
    x = np.asarray(x, float)
    m = len(x) // n_blocks
    blocks = x[: m * n_blocks].reshape(n_blocks, m).mean(axis=1)
    return blocks.std(ddof=1) / np.sqrt(n_blocks)


@pytest.fixture(scope="module")
def oscillator_run():
    state, force_fn = _oscillators()
    swap = 20
    integ = replica_exchange(langevin(force_fn, 2 * units.fs, fixcm=False), swap, seed=3)
    state = integ.init(state, TEMPS, 0.03 / units.fs)

    def record(s):
        v = s.variables
        return {"energy": s.energy, "delta": v.last_delta, "accepted": v.last_accepted, "walker": v.walker}

    state, rec = simulate.run(integ, state, 120_000, record_fn=record, record_every=swap, chunk_size=20_000)
    return state, rec


def test_each_temperature_samples_its_boltzmann_distribution(oscillator_run):
    state, rec = oscillator_run
    kT = TEMPS * units.kB
    thinned = rec["energy"][100::5]  # 100 steps apart: beyond the oscillators' correlation time
    for r in range(len(TEMPS)):
        p = stats.kstest(thinned[:, r], stats.gamma(a=1.5 * 4, scale=kT[r]).cdf).pvalue
        assert p > 1e-3, f"slot {r} ({TEMPS[r]} K): KS p = {p:.2e}"


def test_a_wrong_temperature_fails_the_distribution_test(oscillator_run):
    """Negative control: the same samples against the law of a temperature 20 % off are rejected."""
    _, rec = oscillator_run
    thinned = rec["energy"][100::5, 0]
    assert stats.kstest(thinned, stats.gamma(a=6.0, scale=1.2 * TEMPS[0] * units.kB).cdf).pvalue < 1e-3


def test_acceptance_equals_the_analytic_overlap(oscillator_run):
    state, rec = oscillator_run
    kT = TEMPS * units.kB
    rng = np.random.default_rng(7)
    st = exchange_statistics(state, 2 * units.fs)
    for k in range(len(TEMPS) - 1):
        ui, uj = rng.gamma(6.0, kT[k], 2_000_000), rng.gamma(6.0, kT[k + 1], 2_000_000)
        exact = np.mean(np.minimum(1.0, np.exp((1 / kT[k] - 1 / kT[k + 1]) * (ui - uj))))
        proposed = np.isfinite(rec["delta"][:, k])
        indicator = rec["accepted"][proposed, k].astype(float)
        assert indicator.sum() == st["accepted"][k] and proposed.sum() == st["attempts"][k]
        measured = indicator.mean()
        assert abs(measured - exact) < 4 * _block_sem(indicator) + 1e-3, (k, measured, exact)
    assert all(t > 0 for t in st["round_trips"]) and st["mean_round_trip_ps"] > 0


def test_detailed_balance_accepted_swaps_both_ways(oscillator_run):
    _, rec = oscillator_run
    delta = rec["delta"][:, :-1]
    accepted = rec["accepted"][:, :-1]
    d = delta[accepted & np.isfinite(delta)]
    edges = np.array([0.05, 0.3, 0.6, 1.0, 2.0])
    for a, b in zip(edges[:-1], edges[1:]):
        forward = np.sum((d >= a) & (d < b))
        backward = np.sum((d <= -a) & (d > -b))
        assert abs(forward - backward) <= 4 * np.sqrt(forward + backward) + 1, (a, b, forward, backward)
    # The Metropolis rule itself: every proposal with Delta >= 0 was accepted.
    prop = np.isfinite(delta)
    assert np.all(accepted[prop & (delta >= 0)])


def test_walkers_are_a_permutation_and_the_wrapper_does_not_touch_the_dynamics():
    state, force_fn = _oscillators()
    plain = langevin(force_fn, 2 * units.fs, fixcm=False)
    never = replica_exchange(plain, 10_000)  # no attempt within the run: must equal the plain integrator
    s0 = plain.init(state, TEMPS, 0.03 / units.fs)
    s1 = never.init(state, TEMPS, 0.03 / units.fs)
    a, _ = simulate.run(plain, s0, 300)
    b, _ = simulate.run(never, s1, 300)
    np.testing.assert_array_equal(np.asarray(a.positions), np.asarray(b.positions))
    often = replica_exchange(plain, 1)
    c, _ = simulate.run(often, often.init(state, TEMPS, 0.03 / units.fs), 300)
    assert sorted(np.asarray(c.variables.walker).tolist()) == [0, 1, 2, 3]


def test_acceptance_includes_the_p_dv_term():
    energy = jnp.array([-10.0, -9.5])
    vol = jnp.array([100.0, 104.0])
    kT = units.kB * jnp.array([300.0, 600.0])
    pressure = jnp.array([0.03, 0.03])
    got = log_acceptance(energy, vol, kT, pressure, jnp.array([0]), jnp.array([1]))[0]
    b = 1 / kT
    expected = (b[0] - b[1]) * (-0.5) + (b[0] - b[1]) * 0.03 * (-4.0)
    assert float(got) == pytest.approx(float(expected), rel=1e-12)


def _cu_replicas(temps, seed=0):
    cu = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    out = []
    for i, T in enumerate(temps):
        a = cu.copy()
        MaxwellBoltzmannDistribution(a, temperature_K=T, rng=np.random.default_rng([seed, i]))
        out.append(a)
    return out


def _averages(series, skip):
    return series[skip:].mean(0), np.array([_block_sem(series[skip:, r]) for r in range(series.shape[1])])


@pytest.mark.slow
@pytest.mark.parametrize("ensemble", ["nvt", "npt"])
def test_emt_averages_with_exchange_equal_independent_runs(ensemble):
    temps = [400.0, 520.0, 680.0]
    results = {}
    for exchange in (False, True):
        state, force_fn = simulate.state_from_atoms(_cu_replicas(temps), emt())
        if ensemble == "nvt":
            inner = langevin(force_fn, 4 * units.fs)
            args, kw = (temps, 0.02 / units.fs), {}
        else:
            inner = melchionna_npt(force_fn, 4 * units.fs, mask=np.eye(3))
            args, kw = (temps,), dict(ttime=25 * units.fs, pfactor=(75 * units.fs) ** 2 * 140 * units.GPa,
                                      externalstress=5 * units.GPa)
        integ = replica_exchange(inner, 10) if exchange else inner
        state = integ.init(state, *args, **kw)

        def record(s):
            return {"energy": s.energy, "volume": volume(s.cell)}

        state, rec = simulate.run(integ, state, 8000, record_fn=record, record_every=10, chunk_size=4000)
        results[exchange] = rec
        if exchange:
            st = exchange_statistics(state)
            assert all(0.05 < a < 0.95 for a in st["acceptance"]), st
    for key in ("energy", "volume") if ensemble == "npt" else ("energy",):
        m0, e0 = _averages(results[False][key], 100)
        m1, e1 = _averages(results[True][key], 100)
        assert np.all(np.abs(m1 - m0) < 4 * np.hypot(e0, e1)), (key, m0, m1, e0, e1)


def test_nose_hoover_chain_exchange_keeps_the_chain_velocities():
    state, force_fn = _oscillators()
    integ = replica_exchange(nose_hoover_chain_nvt(force_fn, 2 * units.fs), 1)
    state = integ.init(state, TEMPS, 50 * units.fs)
    state, _ = simulate.run(integ, state, 200)
    chain = state.variables.inner
    assert np.all(np.isfinite(np.asarray(chain.p_eta))) and int(np.sum(state.variables.accepted)) > 0
    # The masses stay with the slots (Q ~ kT of the slot's temperature).
    np.testing.assert_allclose(np.asarray(chain.Q[:, 1] / chain.kT), np.asarray(chain.Q[0, 1] / chain.kT[0]),
                               rtol=1e-12)


def test_exchange_needs_a_thermostat_and_distinct_temperatures():
    from jaxpto.integrators import velocity_verlet

    state, force_fn = _oscillators()
    with pytest.raises(ValueError, match="NVE"):
        replica_exchange(velocity_verlet(force_fn, 1.0), 10)
    with pytest.raises(ValueError, match="different temperature"):
        replica_exchange(langevin(force_fn, 1.0), 10).init(state, 300.0, 0.01)
    with pytest.raises(ValueError, match="swap_interval"):
        replica_exchange(langevin(force_fn, 1.0), 0)


@pytest.mark.parametrize("ens", ["npt", "nvt"])
def test_sweep_with_exchange_resumes_bit_for_bit(ens, tmp_path):
    import dataclasses

    from jaxpto import potentials
    from jaxpto.workflows.dynamics import run_sweep, series_by_walker, study_npt, study_nvt

    lj = potentials.lennard_jones(sigma=1.8, epsilon=0.02, rc=4.5, smooth=True)
    p = (study_npt if ens == "npt" else study_nvt)(temperatures_k=(300.0, 340.0, 390.0), supercell=2, steps=60,
                                                   chunk_steps=20, record_every=5, average_last_ps=0.06,
                                                   skin=0.5, swap_interval=5)
    full = run_sweep(lj, p, progress=False, dtype=np.float64)
    ck = str(tmp_path / f"{ens}.ckpt")
    part = run_sweep(lj, p, progress=False, dtype=np.float64, checkpoint=ck, stop_after_chunks=1)
    assert not part["finished"]
    resumed = run_sweep(lj, p, progress=False, dtype=np.float64, checkpoint=ck)
    for key in ("lattice", "temperature", "epot_per_atom", "walker"):
        np.testing.assert_array_equal(resumed["series"][key], full["series"][key], err_msg=key)
    assert resumed["replica_exchange"] == full["replica_exchange"]
    ex = full["replica_exchange"]
    assert sum(ex["attempts"]) == 60 // 5 and sum(ex["accepted"]) > 0
    walkers = full["series"]["walker"]
    assert all(sorted(row.astype(int).tolist()) == [0, 1, 2] for row in walkers)
    # Per-walker series: walker w's value at record t is the value of the slot that held it.
    by = series_by_walker(full["series"])["epot_per_atom"]
    t = len(walkers) - 1
    for slot, w in enumerate(walkers[t].astype(int)):
        assert by[t, w] == full["series"]["epot_per_atom"][t, slot]
    # Without exchange the protocol (and its checkpoint fingerprint) is the same as before the option.
    assert "swap_interval" not in dataclasses.replace(p, swap_interval=None).to_dict()


def test_ase_layer_exchange_equals_the_core():
    import warnings

    from ase.calculators.emt import EMT

    import jaxpto.md as jmd

    temps = [300.0, 400.0, 550.0]
    atoms = _cu_replicas(temps, seed=4)
    for a in atoms:
        a.calc = EMT()
    state, force_fn = simulate.state_from_atoms([a.copy() for a in atoms], emt(), seed=11)
    core = replica_exchange(langevin(force_fn, 4 * units.fs), 10, seed=11)
    state, _ = simulate.run(core, core.init(state, temps, 0.02 / units.fs), 200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        dyn = jmd.Langevin(atoms, 4 * units.fs, temperature_K=temps, friction=0.02 / units.fs, seed=11,
                           swap_interval=10)
    dyn.run(200)
    for r, a in enumerate(atoms):
        np.testing.assert_allclose(a.positions, np.asarray(state.positions[r]), rtol=0, atol=1e-12)
    st = dyn.get_exchange_statistics()
    assert st == exchange_statistics(state, 4 * units.fs) and sum(st["attempts"]) == 20


def test_cli_replica_exchange(tmp_path):
    import json

    from jaxpto.cli import main

    out = tmp_path / "out"
    rc = main(["nvt-polarization", "--model", "lj", "--supercell", "2", "--steps", "40", "--chunk-steps", "20",
               "--record-every", "10", "--temperatures", "300,350", "--replica-exchange", "5",
               "--average-last-ps", "0.04", "--out", str(out), "--no-progress"])
    assert rc == 0
    entry = json.loads((out / "results.json").read_text())["models"][0]
    assert entry["nvt_replica_exchange"]["swap_interval"] == 5 and sum(entry["nvt_replica_exchange"]["attempts"]) == 4  # 8 attempts, the one pair on alternate ones
    series = np.load(out / "lj" / "nvt_series.npz")
    assert "walker" in series and "epot_per_atom_by_walker" in series
