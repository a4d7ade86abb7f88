"""Static part and phonons of the PTO-test, and the calculator's batch evaluation.

Independent references:

* ``JaxptoCalculator.calculate_batch`` against one call per structure (float64, 1e-10), with the
  replicas seen by the model in ONE call;
* :func:`relax`/:func:`pto_static` with the JAX EMT against the same ASE relaxation on ASE's own
  ``EMT`` (a polar P4mm-distorted Cu3Au that must relax back to cubic L1_2), and the LJ fcc
  lattice constant against a numpy lattice sum minimised by scipy;
* :func:`phonon_bands` (displaced supercells in one batch) against phonopy's usual per-supercell
  path on ASE's ``EMT``, on B2 CuAu, which EMT makes unstable at the zone boundary (flagged);
  the imaginary-mode criterion on synthetic acoustic/optical modes;
* CHGNet 0.3.0 (float32 torch model): tetragonal PbTiO3 relaxes supertetragonal and has no
  imaginary modes after refinement (8 displacements), cubic PbTiO3 has the soft polar mode.
"""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from jaxpto.calculator import JaxptoCalculator
from jaxpto.model import Model
from jaxpto.potentials import emt, lennard_jones
from jaxpto.workflows.phonons import (P4MM_SPECIAL_POINTS, acoustic_weight, flag_imaginary_modes, make_phonopy,
                                      phonon_bands, plot_phonon_bands, pto_phonons)
from jaxpto.workflows.static import atoms_from_dict, plot_static, pto_static, relax
from jaxpto.workflows.structures import cubic_pbtio3, tetragonal_pbtio3


@pytest.fixture(scope="module")
def emt_model():
    return emt()


@pytest.fixture(scope="module")
def one_torch_thread():
    """CHGNet on 5-40 atoms: one intra-op thread is several times faster on this shared 2-core CPU
    than two (thread synchronisation dominates such small graphs); restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cu3au(a=3.75, c=None, dz=(0.0, 0.0)):
    """L1_2 Cu3Au in a 4-atom cell; ``dz`` shifts the Cu atoms along z (P4mm when non-zero)."""
    c = a if c is None else c
    scaled = [[0, 0, 0], [0.5, 0.5, dz[0]], [0.5, 0, 0.5 + dz[1]], [0, 0.5, 0.5 + dz[1]]]
    return Atoms("AuCu3", scaled_positions=scaled, cell=np.diag([a, a, c]), pbc=True)


# ------------------------------------------------------------------------------------------------
# 1. Batch evaluation
# ------------------------------------------------------------------------------------------------


def test_calculate_batch_equals_single_calls_in_one_model_call(emt_model):
    images = []
    for k in range(3):
        at = cu3au(3.71)
        strain = np.eye(3) + 0.02 * np.random.default_rng(k).standard_normal((3, 3))
        at.set_cell(at.cell.array @ strain, scale_atoms=True)
        at.rattle(0.05, seed=10 + k)
        images.append(at)
    seen = []

    def recording_compute(positions, cell, numbers, neighbors):
        seen.append(positions.shape)  # at trace time: the replica count the model is called with
        return emt_model.compute(positions, cell, numbers, neighbors)

    calc = JaxptoCalculator(Model(recording_compute, emt_model.cutoff, emt_model.elements, "recording-emt"))
    batch = calc.calculate_batch(images)
    assert seen == [(3, 4, 3)]  # one traced call with all three replicas

    single = JaxptoCalculator(emt_model)
    for at, res in zip(images, batch):
        at.calc = single
        ref = at.copy()
        ref.calc = EMT()
        for got, want in ((res["energy"], at.get_potential_energy()), (res["forces"], at.get_forces()),
                          (res["stress"], at.get_stress())):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
        np.testing.assert_allclose(res["forces"], ref.get_forces(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(res["energy"], ref.get_potential_energy(), rtol=0, atol=1e-10)

    only_forces = single.calculate_batch(images[:2], properties=("forces",), max_batch=1)
    assert [set(r) for r in only_forces] == [{"forces"}, {"forces"}]
    np.testing.assert_allclose(only_forces[1]["forces"], batch[1]["forces"], rtol=0, atol=1e-10)


def test_calculate_batch_rejects_mixed_structures(emt_model):
    calc = JaxptoCalculator(emt_model)
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    swapped = cu.copy()
    swapped.symbols[2] = "Au"
    with pytest.raises(ValueError, match="same species in the same order.*index 2"):
        calc.calculate_batch([cu, swapped])
    with pytest.raises(ValueError, match="structure 1 has 8 atoms, structure 0 has 4"):
        calc.calculate_batch([cu, cu * (2, 1, 1)])
    slab = cu.copy()
    slab.pbc = (True, True, False)
    with pytest.raises(ValueError, match="same pbc"):
        calc.calculate_batch([cu, slab])
    with pytest.raises(ValueError, match="unknown properties"):
        calc.calculate_batch([cu], properties=("magmoms",))
    with pytest.raises(ValueError, match=r"does not cover Ti \(Z=22\), Pb"):
        calc.calculate_batch([cubic_pbtio3()])
    assert calc.calculate_batch([]) == []


# ------------------------------------------------------------------------------------------------
# 2. Relaxation and the static PTO part
# ------------------------------------------------------------------------------------------------


def test_pto_static_equals_ase_emt_and_detects_collapse_to_cubic(emt_model):
    """A polar, tetragonally strained Cu3Au start relaxes back to cubic L1_2 under EMT (no polar
    minimum): the same pipeline on ASE's EMT gives the same numbers, the collapse is reported."""
    starts = dict(tetragonal_start=cu3au(3.68, 3.80, (0.02, 0.01)), cubic_start=cu3au(3.72))
    fmax = 1e-3
    got = pto_static(emt_model, fmax=fmax, **starts)
    ref = pto_static(EMT(), fmax=fmax, **starts)

    for key in ("a", "c", "c_over_a", "volume", "delta_e_ev_per_fu", "cubic_a"):
        assert got[key] == pytest.approx(ref[key], abs=1e-8), key
    for phase in ("tetragonal", "cubic"):
        assert got[phase]["steps"] == ref[phase]["steps"]
        assert got[phase]["energy"] == pytest.approx(ref[phase]["energy"], abs=1e-9)
        np.testing.assert_allclose(got["structures"][phase]["cell"], ref["structures"][phase]["cell"], atol=1e-8)
        rec = got[phase]
        assert rec["converged"] and rec["max_force"] < fmax
        # FrechetCellFilter's cell criterion: |V sigma| / N < fmax.
        assert rec["max_stress"] * rec["volume"] / 4 < fmax
    assert got["cubic"]["space_group"]["symbol"] == "Pm-3m"
    assert got["cubic"]["a"] == got["cubic"]["b"] == got["cubic"]["c"]
    assert got["cubic"]["a"] == pytest.approx(got["cubic_a"], abs=1e-12)
    assert got["tetragonal"]["space_group_start"]["symbol"] == "P4mm"
    assert got["tetragonal_relaxed_to_cubic"] is True
    assert any("relaxed to the cubic structure" in w for w in got["warnings"])
    assert abs(got["c_over_a"] - 1) < 1e-3  # soft tetragonal shear: fmax 1e-3 leaves ~2e-4
    assert abs(got["delta_e_ev_per_fu"]) < 1e-6
    assert got["a"] == pytest.approx(got["cubic_a"], abs=5e-4)
    # Structures rebuild from the JSON lists with the same energy.
    rebuilt = atoms_from_dict(got["structures"]["cubic"])
    rebuilt.calc = EMT()
    assert rebuilt.get_potential_energy() == pytest.approx(got["cubic"]["energy"], abs=1e-9)


def test_relax_lj_fcc_to_lattice_sum_minimum():
    """LJ fcc from a tetragonal strain: the relaxed cubic a equals the minimum of a lattice sum."""
    from scipy.optimize import minimize_scalar

    sigma, eps, rc = 2.0, 0.1, 5.0
    model = lennard_jones(sigma=sigma, epsilon=eps, rc=rc)

    grid = np.arange(-4, 5)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cells = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1).reshape(-1, 1, 3)
    frac = (cells + basis[None]).reshape(-1, 3)  # fcc sites in units of a, 9^3 conventional cells

    def energy_per_atom(a):  # shifted LJ (ASE's default), all neighbours of one atom within rc
        r = np.linalg.norm(frac, axis=1) * a
        r = r[(r > 1e-9) & (r <= rc)]
        u = 4 * eps * ((sigma / r) ** 12 - (sigma / r) ** 6) - 4 * eps * ((sigma / rc) ** 12 - (sigma / rc) ** 6)
        return 0.5 * u.sum()

    a0 = minimize_scalar(energy_per_atom, bounds=(2.6, 3.6), method="bounded", options={"xatol": 1e-10}).x
    start = bulk("Ar", "fcc", a=3.0, cubic=True)
    start.set_cell(np.diag([3.0, 3.0, 3.15]), scale_atoms=True)
    relaxed, rec = relax(model, start, fmax=1e-4)
    assert rec["converged"]
    assert rec["space_group_start"]["symbol"] == "I4/mmm" and rec["space_group"]["symbol"] == "Fm-3m"
    np.testing.assert_allclose([rec["a"], rec["b"], rec["c"]], a0, atol=1e-5)
    assert rec["energy_per_atom"] == pytest.approx(energy_per_atom(a0), abs=1e-8)
    assert len(relaxed.constraints) == 0 and relaxed.calc is None


# ------------------------------------------------------------------------------------------------
# 3. Phonons
# ------------------------------------------------------------------------------------------------


def _phonopy_on_ase_calc(atoms, calc, supercell, qpaths):
    """phonopy's usual path: one ASE calculation per displaced supercell, no refinement."""
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    unit = PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=atoms.cell.array,
                        scaled_positions=atoms.get_scaled_positions(), masses=atoms.get_masses())
    ph = Phonopy(unit, supercell_matrix=np.diag(supercell), primitive_matrix="P")
    ph.generate_displacements(distance=0.01)
    forces = []
    for sc in ph.supercells_with_displacements:
        at = Atoms(sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
        at.calc = calc
        forces.append(at.get_forces())
    ph.forces = forces
    ph.produce_force_constants()
    ph.symmetrize_force_constants()
    ph.run_band_structure(qpaths)
    return ph


def test_batched_phonons_equal_phonopy_on_ase_emt_and_flag_instability(emt_model):
    """B2 (CsCl) CuAu under EMT: two inequivalent sites (2 displaced supercells, one batch) and a
    zone-boundary instability at (0, 1/2, 1/2), checked against phonopy on ASE's EMT."""
    from phonopy.phonon.band_structure import get_band_qpoints

    atoms = Atoms("CuAu", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=3.03 * np.eye(3), pbc=True)
    path = "GXMGRX"
    got = phonon_bands(emt_model, atoms, supercell=(2, 2, 2), path=path, npoints=21)
    pts = P4MM_SPECIAL_POINTS
    qpaths = get_band_qpoints([[pts[a], pts[b]] for a, b in zip(path[:-1], path[1:])], npoints=21)
    ref = _phonopy_on_ase_calc(atoms, EMT(), (2, 2, 2), qpaths).band_structure
    assert got["n_displacements"] == 2 and got["space_group"]["symbol"] == "Pm-3m"
    assert got["protocol"]["batched"]
    for s in range(len(qpaths)):
        np.testing.assert_allclose(got["bands"]["qpoints"][s], ref.qpoints[s], atol=1e-12)
        np.testing.assert_allclose(got["bands"]["distances"][s], ref.distances[s], atol=1e-12)
        # Compare nu*|nu| (eigenvalues): at Gamma the acoustic zeros are sqrt(round-off) ~ 1e-7 THz.
        f, f_ref = np.asarray(got["bands"]["frequencies"][s]), ref.frequencies[s]
        np.testing.assert_allclose(f * np.abs(f), f_ref * np.abs(f_ref), rtol=0, atol=1e-8)
    assert got["bands"]["tick_labels"] == list(path)
    assert np.sort(np.abs(got["gamma_frequencies_thz"]))[:3] == pytest.approx([0, 0, 0], abs=1e-4)

    f_all = np.concatenate([np.ravel(f) for f in ref.frequencies])
    assert f_all.min() < -0.3  # the instability is real (phonopy + ASE), beyond the 0.2 THz tolerance
    assert got["has_imaginary"]
    assert got["min_frequency_thz"] == pytest.approx(f_all.min(), abs=1e-6)
    assert got["min_frequency_q"] == [0.0, 0.5, 0.5] and not got["min_frequency_is_acoustic_noise"]
    worst = got["imaginary_modes"][0]
    assert worst["q"] == [0.0, 0.5, 0.5] and worst["frequency_thz"] == got["min_frequency_thz"]
    assert worst["frequency_cm1"] == pytest.approx(worst["frequency_thz"] * 33.35641)
    # R is shared by the G-R and R-X segments but counted once.
    assert sum(m["q"] == [0.0, 0.5, 0.5] and m["branch"] == 0 for m in got["imaginary_modes"]) == 1


def test_imaginary_criterion_on_synthetic_modes():
    """Acoustic noise near Gamma is tolerated; the same value away from Gamma, or a 0.6 THz
    (20 cm^-1) soft optical mode even at Gamma, is flagged."""
    masses = np.array([1.0, 4.0])
    z = np.array([0, 0, 1.0])
    trans_z = np.concatenate([np.sqrt(masses[0]) * z, np.sqrt(masses[1]) * z])  # rigid translation along z
    trans_z /= np.linalg.norm(trans_z)
    optical_z = np.concatenate([np.sqrt(masses[1]) * z, -np.sqrt(masses[0]) * z])  # orthogonal to it
    optical_z /= np.linalg.norm(optical_z)
    ev = np.stack([trans_z, optical_z], axis=1)  # [6, 2]: columns are modes
    w = acoustic_weight(ev, masses)
    assert w == pytest.approx([1.0, 0.0], abs=1e-12)
    w2 = np.stack([w] * 4)
    qpts = np.array([[0.05, 0, 0], [0.4, 0, 0], [0, 0, 0], [1.0, 0.0, 0.97]])  # last: next to a Gamma image
    freqs = np.array([[-0.17, 3.0], [-0.17, 3.0], [0.0, -0.6], [-0.3, -0.1]])
    flagged, noise = flag_imaginary_modes(qpts, freqs, w2)
    assert flagged.tolist() == [[False, False], [False, False], [False, True], [False, False]]
    assert noise.tolist() == [[True, False], [False, False], [False, False], [True, False]]
    freqs[1, 0] = -0.25  # beyond the 0.2 THz tolerance, away from Gamma: flagged
    freqs[0, 0] = -0.7  # acoustic but beyond the 0.5 THz acoustic tolerance: flagged
    flagged, _ = flag_imaginary_modes(qpts, freqs, w2)
    assert flagged[:, 0].tolist() == [True, True, False, False]


def test_refinement_restores_symmetry_of_a_noisy_cell():
    """The phonon trap: a P4mm cell with 1e-4 A of float32-like noise looks P1 to phonopy (30
    displacements); refined to its space group at symprec 1e-3 it needs 8."""
    atoms = tetragonal_pbtio3()
    atoms.positions += 1e-4 * np.random.default_rng(0).standard_normal(atoms.positions.shape)
    noisy, _, info_noisy = make_phonopy(atoms, refine=False)
    clean, cell, info = make_phonopy(atoms, refine=True)
    assert info_noisy["space_group"]["symbol"] == "P1" and len(noisy.displacements) == 30
    assert info["space_group"]["symbol"] == "P4mm" and len(clean.displacements) == 8
    assert info["space_group_unrefined"]["symbol"] == "P1"
    assert np.abs(cell.positions - atoms.positions).max() < 1e-3  # a small correction, same atom order
    assert (cell.numbers == atoms.numbers).all()


# ------------------------------------------------------------------------------------------------
# Real model: CHGNet 0.3.0 on PbTiO3, and the figures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chgnet(one_torch_thread):
    import jaxpto

    return jaxpto.load_model("chgnet-0.3.0")


@pytest.fixture(scope="module")
def chgnet_static(chgnet):
    return pto_static(chgnet, fmax=1e-3)


def test_chgnet_static_pbtio3_supertetragonal(chgnet_static):
    r = chgnet_static
    assert r["converged"]
    assert r["c_over_a"] > 1.02  # CHGNet 0.3.0: c/a ~ 1.32, far above PBEsol 1.084 and experiment 1.06
    assert r["delta_e_ev_per_fu"] < 0 and not r["tetragonal_relaxed_to_cubic"]
    assert r["tetragonal"]["space_group"]["symbol"] == "P4mm" and r["cubic"]["space_group"]["symbol"] == "Pm-3m"
    assert r["cubic"]["c_over_a"] == pytest.approx(1.0, abs=1e-12)
    assert 3.8 < r["cubic_a"] < 4.1  # perovskite scale; PBEsol 3.92
    assert r["volume"] == pytest.approx(r["a"] ** 2 * r["c"], rel=1e-10)
    assert r["structures"]["tetragonal"]["scaled_positions"][0] == [0.0, 0.0, 0.0]  # Pb at the origin
    assert r["tetragonal"]["max_force"] < 1e-3


@pytest.fixture(scope="module")
def chgnet_phonons(chgnet, chgnet_static):
    n0 = chgnet.compute.n_calls
    tet = pto_phonons(chgnet, chgnet_static["structures"]["tetragonal"])
    n_calls = chgnet.compute.n_calls - n0
    cub = pto_phonons(chgnet, cubic_pbtio3(chgnet_static["cubic_a"]), npoints=11)
    return {"tetragonal": tet, "cubic": cub, "tetragonal_model_calls": n_calls}


def test_chgnet_phonons_one_batch_stable_tetragonal_soft_cubic(chgnet_phonons):
    tet, cub = chgnet_phonons["tetragonal"], chgnet_phonons["cubic"]
    assert chgnet_phonons["tetragonal_model_calls"] == 1  # all 8 displaced supercells in ONE model call
    assert tet["n_displacements"] == 8 and tet["space_group"]["symbol"] == "P4mm"
    assert tet["n_supercell_atoms"] == 40 and tet["warnings"] == []
    assert not tet["has_imaginary"], tet["imaginary_modes"][:3]
    assert tet["lowest_optical_thz"] > 0.2
    assert tet["bands"]["tick_labels"] == list("GXMGZRAZ") and len(tet["bands"]["frequencies"]) == 7
    assert len(tet["bands"]["frequencies"][0]) == 101 and len(tet["bands"]["frequencies"][0][0]) == 15

    assert cub["n_displacements"] == 3 and cub["space_group"]["symbol"] == "Pm-3m"
    assert cub["has_imaginary"]
    gamma = np.sort(cub["gamma_frequencies_thz"])
    assert gamma[0] < -1.0 and gamma[0] == pytest.approx(gamma[2], abs=1e-6)  # triply degenerate polar soft mode
    assert cub["min_frequency_thz"] == pytest.approx(gamma[0], abs=1e-6)
    assert any(m["q"] == [0.0, 0.0, 0.0] and m["acoustic_weight"] < 1e-6 for m in cub["imaginary_modes"])


def test_plots_write_pngs(tmp_path, chgnet_static, chgnet_phonons):
    other = dict(chgnet_static, a=3.90, c=4.15, c_over_a=4.15 / 3.90, delta_e_ev_per_fu=-0.05)
    for name, write in (("static.png", lambda p: plot_static({"chgnet-0.3.0": chgnet_static, "constructed": other}, p)),
                        ("bands.png", lambda p: plot_phonon_bands({"tetragonal": chgnet_phonons["tetragonal"],
                                                                    "cubic (11 pts)": chgnet_phonons["cubic"]}, p))):
        path = write(tmp_path / name)
        data = open(path, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
