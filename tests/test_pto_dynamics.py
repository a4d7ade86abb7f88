"""PTO-test physics pieces: Born-charge polarization, phase call, Curie estimate, sweeps.

References are hand computations from the structure definitions (polarization), constructed cells
(phase call) and uninterrupted runs (resume).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpto import potentials
from jaxpto.model import Model, ModelOutput
from jaxpto.workflows import phase
from jaxpto.workflows.dynamics import run_sweep, study_npt, study_nvt
from jaxpto.workflows.polarization import (E_PER_A2_TO_C_PER_M2, STUDY_CHARGES, ZHONG_1994, born_charges,
                                           cell_polarization, find_cell_topology, mean_polarization)
from jaxpto.workflows.structures import cubic_pbtio3, pbtio3_cell, polar_supercell


def _P(atoms, charges=None):
    topo = find_cell_topology(atoms)
    return np.asarray(mean_polarization(atoms.positions[None], np.asarray(atoms.cell)[None], topo, charges))[0]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_cubic_cell_has_zero_polarization(n):
    atoms = cubic_pbtio3().repeat(n)
    atoms.translate([0.37, -1.1, 2.3])  # origin must not matter (neutral cells)
    atoms.wrap()
    np.testing.assert_allclose(_P(atoms), 0.0, atol=1e-12)
    np.testing.assert_allclose(_P(atoms, born_charges("zhong1994")), 0.0, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_displaced_cell_matches_hand_computation(n):
    a, c = 3.9, 4.15
    dti, doap, doeq = 0.035, 0.10, 0.115
    atoms = pbtio3_cell(a, c, (dti, doap, doeq)).repeat(n)
    # Relative to the ideal cell: Ti moves dti*c, the 2 apical O (weight 1/2) doap*c, the 4
    # equatorial O (weight 1/2) doeq*c; Pb stays. P = e/V sum_k w_k Z_k u_k.
    zo = STUDY_CHARGES["O"]
    hand = (STUDY_CHARGES["Ti"] * dti * c + zo * doap * c + 2 * zo * doeq * c) / (a * a * c) * E_PER_A2_TO_C_PER_M2
    P = _P(atoms)
    np.testing.assert_allclose(P, [0.0, 0.0, hand], atol=1e-12)
    assert abs(abs(hand) - 0.81) < 0.01  # the study's ~0.81 C/m^2 for its polar start
    # Anisotropic (Zhong 1994) charges: apical O along z carry Z_parallel, equatorial Z_perpendicular.
    # They sum to +0.01 e per cell, so the origin matters at that level: positions are taken
    # relative to the Ti (Pb moves by -dti*c relative to it).
    z = ZHONG_1994
    hand_z = (-z["Pb"] * dti * c + z["O_parallel"] * (doap - dti) * c
              + 2 * z["O_perpendicular"] * (doeq - dti) * c) / (a * a * c)
    np.testing.assert_allclose(_P(atoms, z), [0.0, 0.0, hand_z * E_PER_A2_TO_C_PER_M2], atol=1e-12)


def test_polarization_per_cell_and_along_x():
    """A single Ti displaced along x in a 2x2x2 cell changes only its own cell (and only P_x)."""
    atoms = cubic_pbtio3(4.0).repeat(2)
    topo = find_cell_topology(atoms)
    ti0 = topo["ti"][0]
    atoms.positions[ti0, 0] += 0.1
    per_cell = np.asarray(cell_polarization(atoms.positions[None], np.asarray(atoms.cell)[None], topo))[0]
    expect = STUDY_CHARGES["Ti"] * 0.1 / 4.0**3 * E_PER_A2_TO_C_PER_M2
    np.testing.assert_allclose(per_cell[0], [expect, 0, 0], atol=1e-12)
    np.testing.assert_allclose(per_cell[1:], 0.0, atol=1e-12)


def test_polarization_rejects_non_perovskite():
    from ase.build import bulk

    with pytest.raises(ValueError, match="PbTiO3"):
        find_cell_topology(bulk("Cu", cubic=True))


def test_phase_call_constructed_cells():
    polar = polar_supercell(3, 3.9, 4.15)
    ref = polar.get_scaled_positions(wrap=False)
    lat = lambda at: np.linalg.norm(at.cell, axis=1) / 3  # noqa: E731
    # tetragonal: the polar start itself
    rms = phase.site_rms_displacement(polar.positions, polar.cell[:], ref)[0]
    call = phase.classify_phase(*lat(polar), site_rms=rms)
    assert call["phase"] == "tetragonal" and rms < 1e-12
    # cubic: the ideal cubic crystal (its O sit 0.4-0.5 A from the polar start's sites: still ordered)
    cubic = cubic_pbtio3(3.95).repeat(3)
    rms = phase.site_rms_displacement(cubic.positions, cubic.cell[:], ref)[0]
    call = phase.classify_phase(*lat(cubic), site_rms=rms)
    assert call["phase"] == "cubic" and 0.1 < rms < phase.MOLTEN_SITE_RMS, (call, rms)
    # supertetragonal: c/a = 1.25 (far beyond the relaxed 1.08)
    sup = polar_supercell(3, 3.8, 4.75)
    call = phase.classify_phase(*lat(sup), site_rms=0.1, relaxed_c_over_a=1.08)
    assert call["phase"] == "supertetragonal"
    assert phase.classify_phase(*lat(sup), site_rms=0.1, relaxed_c_over_a=1.25)["phase"] == "tetragonal"
    # disordered: same box, atoms at random positions
    rng = np.random.default_rng(1)
    dis = polar.copy()
    dis.set_scaled_positions(rng.random((len(dis), 3)))
    rms = phase.site_rms_displacement(dis.positions, dis.cell[:], ref)[0]
    assert phase.classify_phase(*lat(dis), site_rms=rms)["phase"] == "molten"
    # thermal noise on a cubic box does not make it tetragonal
    call = phase.classify_phase(3.95, 3.951, 3.953, 0.01, 0.01, 0.01, site_rms=0.2)
    assert call["phase"] == "cubic"
    assert phase.classify_phase(1, 1, 1, unstable="non-finite coordinates")["phase"] == "unstable"


def test_blow_up_reasons():
    cell = np.eye(3) * 10
    pos = np.zeros((2, 3))
    assert phase.blow_up_reason(pos, cell, cell, 300.0, 300.0) is None
    assert "non-finite" in phase.blow_up_reason(pos * np.nan, cell, cell, 300.0, 300.0)
    assert "box length" in phase.blow_up_reason(pos, cell * 1.8, cell, 300.0, 300.0)
    assert "temperature" in phase.blow_up_reason(pos, cell, cell, 5000.0, 300.0)


def test_transition_temperature():
    T = [300, 400, 500, 600]
    tc, _ = phase.transition_temperature(T, [0.8, 0.7, 0.2, 0.0])
    # half of 0.8 = 0.4 crossed between 400 (0.7) and 500 (0.2): 400 + 100 * 0.3/0.5
    assert tc == pytest.approx(460.0)
    assert phase.transition_temperature(T, [0.8, 0.8, 0.7, 0.6])[0] is None
    assert "above" in phase.transition_temperature(T, [0.8, 0.8, 0.7, 0.6])[1]


# --------------------------------------------------------------------------------------------
# Sweeps with a JAX-native potential (cheap): resume, blow-ups
# --------------------------------------------------------------------------------------------

LJ = potentials.lennard_jones(sigma=1.8, epsilon=0.02, rc=4.5, smooth=True)


def _small(ens, **kw):
    base = dict(temperatures_k=(300.0, 600.0), supercell=2, steps=40, chunk_steps=10, record_every=5,
                average_last_ps=0.04, skin=0.5)
    base.update(kw)
    return (study_npt if ens == "npt" else study_nvt)(**base)


@pytest.mark.parametrize("ens", ["npt", "nvt"])
def test_resume_equals_uninterrupted(ens, tmp_path):
    p = _small(ens)
    full = run_sweep(LJ, p, progress=False, dtype=np.float64)
    ck = str(tmp_path / f"{ens}.pkl")
    part = run_sweep(LJ, p, progress=False, dtype=np.float64, checkpoint=ck, stop_after_chunks=2)
    assert not part["finished"] and part["done_steps"] == 20
    resumed = run_sweep(LJ, p, progress=False, dtype=np.float64, checkpoint=ck)
    assert resumed["finished"]
    for key in ("lattice", "temperature", "polarization", "site_rms", "epot_per_atom"):
        np.testing.assert_array_equal(resumed["series"][key], full["series"][key], err_msg=key)
    np.testing.assert_array_equal(np.asarray(resumed["final_state"].positions), np.asarray(full["final_state"].positions))
    # a checkpoint of another protocol is refused with a clear message
    with pytest.raises(ValueError, match="different protocol"):
        run_sweep(LJ, dataclasses.replace(p, seed=7), progress=False, dtype=np.float64, checkpoint=ck)


def test_replicas_equal_separate_runs():
    p = _small("nvt", temperatures_k=(300.0, 600.0))
    both = run_sweep(LJ, p, progress=False, dtype=np.float64)
    # Replica streams are per replica (seeded by position in the list), so compare the first one alone.
    one = run_sweep(LJ, dataclasses.replace(p, temperatures_k=(300.0,)), progress=False, dtype=np.float64)
    np.testing.assert_allclose(both["series"]["lattice"][:, 0], one["series"]["lattice"][:, 0], atol=1e-12)
    np.testing.assert_allclose(both["series"]["polarization"][:, 0], one["series"]["polarization"][:, 0], atol=1e-10)


def _nan_when_far(model, reference, limit):
    """``model`` whose forces turn NaN for a replica where an atom moved > ``limit`` A (a model
    blowing up on a strange configuration, as real MLFFs do)."""
    ref = jnp.asarray(reference)

    def compute(positions, cell, numbers, neighbors):
        out = model.compute(positions, cell, numbers, neighbors)
        far = jnp.max(jnp.linalg.norm(positions - ref[None], axis=-1), axis=1) > limit  # [R]
        bad = jnp.where(far, jnp.nan, 1.0)
        return ModelOutput(energy=out.energy * bad, forces=out.forces * bad[:, None, None],
                           stress=out.stress * bad[:, None, None])

    return Model(compute=compute, cutoff=model.cutoff, elements=model.elements, name="lj-nan")


def test_blown_up_replica_is_stopped_alone():
    p = _small("nvt", temperatures_k=(300.0, 1e6), steps=60, chunk_steps=10)
    ref = polar_supercell(2, p.a, p.c, p.shifts).positions
    res = run_sweep(_nan_when_far(LJ, ref, 1.5), p, progress=False, dtype=np.float64)
    cold, hot = res["replicas"]
    assert res["finished"] and res["done_steps"] == 60
    assert cold["status"] == "ok" and np.isfinite(cold["pz"])
    assert hot["status"] in ("blew_up", "molten") and hot["stopped_at_step"] < 60, hot
    assert hot["phase"] in ("unstable", "molten")
    assert np.isfinite(res["series"]["lattice"][:, 0]).all()
