"""The JAX reference potentials equal ASE's calculators (float64, 1e-10) and are self-consistent.

* energy, forces, stress against ``LennardJones`` (shifted and smooth),
  ``MorsePotential`` and ``EMT`` (both cutoff conventions) on distorted triclinic
  cells, including 1-atom cells far smaller than twice the cutoff (many
  periodic images), multi-element EMT alloys, a slab and a cluster with an
  isolated atom;
* forces and stress against central finite differences of the energy;
* the batched ``model.compute`` path (R = 3 replicas, a skin and padded
  neighbour slots) against single evaluations and ASE;
* clear errors for elements EMT does not cover.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.calculators.lj import LennardJones
from ase.calculators.morse import MorsePotential
from ase.stress import full_3x3_to_voigt_6_stress

import bridge_harness as h
from jaxpto import neighbors as nl
from jaxpto.calculator import JaxptoCalculator
from jaxpto.potentials import emt, lennard_jones, morse
from jaxpto.potentials.emt import EMT_ELEMENTS

RTOL = 1e-10  # relative to the largest reference component, with a floor of 1 (eV, eV/A, eV/A^3)
ALLOY = ["Cu", "Au", "Ag", "Ni", "Pd", "Pt", "Al"]


def distort(atoms, seed, strain=0.04, rattle=0.05):
    """Random (non-symmetric) strain of the cell with the atoms, then a rattle: a triclinic cell."""
    rng = np.random.default_rng(seed)
    atoms = atoms.copy()
    deformation = np.eye(3) + strain * rng.uniform(-1, 1, (3, 3))
    atoms.set_cell(atoms.cell.array @ deformation, scale_atoms=True)
    atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
    return atoms


def alloy(n_rep=(2, 2, 2), seed=0, a=3.8):
    atoms = bulk("Cu", "fcc", a=a, cubic=True) * n_rep
    rng = np.random.default_rng(seed)
    symbols = [ALLOY[k % len(ALLOY)] for k in range(len(atoms))]  # every alloy element present
    atoms.symbols = list(rng.permutation(symbols))
    return distort(atoms, seed)


# name -> (jaxpto model factory, ASE calculator factory). The pair models share one
# cutoff (6.75 A) so that their neighbour lists compile once per structure.
MORSE = dict(epsilon=0.35, r0=2.5, rho0=4.5)  # default rcut1 = 1.9, rcut2 = 2.7 -> cutoff 6.75 A
PAIR_RC = 2.7 * 2.5  # the same float as MorsePotential's rcut2 * r0
MODELS = {
    "lj-shifted": (lambda: lennard_jones(sigma=2.3, epsilon=0.12, rc=PAIR_RC),
                   lambda: LennardJones(sigma=2.3, epsilon=0.12, rc=PAIR_RC)),
    "lj-smooth": (lambda: lennard_jones(sigma=2.3, epsilon=0.12, rc=PAIR_RC, smooth=True),
                  lambda: LennardJones(sigma=2.3, epsilon=0.12, rc=PAIR_RC, smooth=True)),
    "lj-smooth-ro": (lambda: lennard_jones(sigma=2.3, epsilon=0.12, rc=PAIR_RC, ro=5.0, smooth=True),
                     lambda: LennardJones(sigma=2.3, epsilon=0.12, rc=PAIR_RC, ro=5.0, smooth=True)),
    "lj-default": (lambda: lennard_jones(), lambda: LennardJones()),  # sigma = 1, rc = 3
    "morse": (lambda: morse(**MORSE), lambda: MorsePotential(**MORSE)),
    "morse-rcut1": (lambda: morse(**MORSE, rcut1=1.5), lambda: MorsePotential(**MORSE, rcut1=1.5)),
    "emt": (lambda: emt(), lambda: EMT()),
    "emt-asap": (lambda: emt(asap_cutoff=True), lambda: EMT(asap_cutoff=True)),
}

_model_cache = {}


def get_model(name):
    if name not in _model_cache:
        _model_cache[name] = MODELS[name][0]()
    return _model_cache[name]


def structures(name):
    """Distorted periodic test structures for a model; 1-atom cells are far smaller than
    twice the cutoff (many periodic images)."""
    if name.startswith("emt"):
        return {
            "cu-1atom": distort(bulk("Cu", "fcc", a=3.61), 1),
            "alloy-32": alloy(),  # Cu, Au, Ag, Ni, Pd, Pt, Al
            "cuo-hcp-2atom": distort(Atoms("CuO", scaled_positions=[[0, 0, 0], [1 / 3, 2 / 3, 0.5]],
                                           cell=bulk("Cu", "hcp", a=2.6, c=4.2).cell, pbc=True), 3),
        }
    if name == "lj-default":  # sigma = 1, rc = 3: a 1.6 A cubic cell
        return {"4atom": distort(bulk("Ar", "fcc", a=1.6, cubic=True), 5)}
    return {"1atom": distort(bulk("Cu", "fcc", a=3.7), 6),
            "4atom": distort(bulk("Cu", "fcc", a=3.7, cubic=True), 7)}


def ase_results(atoms, calc):
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if all(atoms.pbc):
        out["stress"] = atoms.get_stress()
    return out


def jaxpto_results(atoms, model, **kwargs):
    atoms = atoms.copy()
    atoms.calc = JaxptoCalculator(model, **kwargs)
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if all(atoms.pbc):
        out["stress"] = atoms.get_stress()
    return out


def max_rel_dev(got, ref):
    """Largest deviation relative to the largest reference component (floor 1)."""
    got, ref = np.asarray(got, float), np.asarray(ref, float)
    return float(np.max(np.abs(got - ref)) / max(1.0, float(np.max(np.abs(ref)))))


def assert_matches(got, ref, label, rtol=RTOL):
    for key in ref:
        dev = max_rel_dev(got[key], ref[key])
        print(f"{label:40s} {key:7s} max dev {dev:.2e}")
        assert dev <= rtol, f"{label} {key}: deviation {dev:.3e} > {rtol}"


# ----------------------------------------------------------------------------
# Equal to ASE
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_equals_ase(name):
    model = get_model(name)
    for label, atoms in structures(name).items():
        ref = ase_results(atoms, MODELS[name][1]())
        # the test is not trivial (a 1-atom Bravais cell has zero forces by symmetry)
        assert np.max(np.abs(ref["forces"])) > 1e-3 or len(atoms) == 1
        assert np.max(np.abs(ref["stress"])) > 1e-4
        assert_matches(jaxpto_results(atoms, model), ref, f"{name}/{label}")


def test_emt_cutoff_conventions():
    """Both EMT conventions are really exercised (they disagree on pure Cu), and with
    asap_cutoff restricting the elements shortens the list without changing the result."""
    atoms = structures("emt")["cu-1atom"]
    e_default = jaxpto_results(atoms, get_model("emt"))["energy"]
    e_asap = jaxpto_results(atoms, get_model("emt-asap"))["energy"]
    assert abs(e_default - e_asap) > 1e-4
    cu_only = emt(atoms.numbers, asap_cutoff=True)
    assert cu_only.elements == {29}
    assert cu_only.cutoff < get_model("emt-asap").cutoff < get_model("emt").cutoff
    assert_matches(jaxpto_results(atoms, cu_only), ase_results(atoms, EMT(asap_cutoff=True)),
                   "emt-asap(Cu only)/cu-1atom")
    # the same element set given as symbols
    assert emt(["Cu", "Au", "Cu"]).elements == {29, 79}


def test_emt_non_periodic():
    """A slab (pbc in 2D) and a cluster with one isolated atom (no neighbours: E_i = -E0_i)."""
    slab = fcc111("Pt", size=(2, 2, 3), vacuum=5.0, a=3.92)
    slab.symbols[[0, 5, 7]] = ["Au", "Ni", "Cu"]
    slab.rattle(0.05, seed=10)
    cluster = Atoms("Cu3AuAg", positions=[[0, 0, 0], [2.5, 0.1, 0], [1.2, 2.2, 0.2],
                                          [1.3, 0.8, 2.1], [30.0, 30.0, 30.0]], pbc=False)
    for label, atoms, name in [("pt-slab", slab, "emt"), ("cluster+isolated", cluster, "emt-asap")]:
        assert_matches(jaxpto_results(atoms, get_model(name)),
                       ase_results(atoms, MODELS[name][1]()), f"{name}/{label}")


# ----------------------------------------------------------------------------
# Self-consistency: forces and stress are derivatives of the energy
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lj-shifted", "lj-smooth", "morse", "emt", "emt-asap"])
def test_finite_differences(name):
    """F = -dE/dr and sigma = (1/V) dE/d(strain) by central differences (ASE's fd helpers)."""
    systems = structures(name)
    picked = ["cu-1atom", "cuo-hcp-2atom", "alloy-32"] if name.startswith("emt") else ["1atom", "4atom"]
    for label in picked:
        atoms = systems[label].copy()
        atoms.calc = JaxptoCalculator(get_model(name))
        forces = atoms.get_forces()
        stress = atoms.get_stress()
        iatoms = range(min(len(atoms), 6))
        fd_forces = calculate_numerical_forces(atoms, eps=1e-5, iatoms=iatoms)
        forces = forces[list(iatoms)]
        fd_stress = calculate_numerical_stress(atoms, eps=1e-6)
        df = float(np.max(np.abs(forces - fd_forces)))
        ds = float(np.max(np.abs(stress - fd_stress)))
        print(f"{name}/{label}: |F - F_fd| {df:.1e} eV/A, |sigma - sigma_fd| {ds:.1e} eV/A^3")
        assert df < 1e-7 * max(1.0, np.max(np.abs(forces)))
        assert ds < 1e-7


# ----------------------------------------------------------------------------
# Batched model.compute path
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lj-smooth", "morse", "emt"])
def test_batched_compute(name):
    """R = 3 differently distorted replicas, skin 1 A and padded slots: equal to single runs and ASE."""
    model = get_model(name)
    base = alloy((1, 1, 2), seed=5) if name == "emt" else bulk("Cu", "fcc", a=3.7, cubic=True) * (1, 1, 2)
    replicas = [distort(base, 20 + r, strain=0.03) for r in range(3)]
    pos = jnp.asarray(np.stack([a.positions for a in replicas]))
    cell = jnp.asarray(np.stack([a.cell.array for a in replicas]))
    numbers = jnp.asarray(base.numbers)
    nbrs = nl.allocate(pos, cell, model.cutoff, skin=1.0, capacity_factor=1.6)
    assert not bool(jnp.any(nbrs.did_overflow))
    assert int(jnp.max(nbrs.max_count)) < nbrs.capacity  # some padded slots exist
    compute = jax.jit(model.compute)
    out = compute(pos, cell, numbers, nbrs)
    assert out.energy.shape == (3,) and out.forces.shape == (3, len(base), 3)
    assert out.stress.shape == (3, 3, 3)
    for r, atoms in enumerate(replicas):
        # the same replica alone, with its own list (no skin, same capacity: one compilation)
        one = nl.allocate(pos[r:r + 1], cell[r:r + 1], model.cutoff, skin=0.0, capacity=nbrs.capacity)
        single = compute(pos[r:r + 1], cell[r:r + 1], numbers, one)
        for key in ("energy", "forces", "stress"):
            np.testing.assert_allclose(getattr(out, key)[r], getattr(single, key)[0], rtol=0, atol=1e-12)
        got = {"energy": float(out.energy[r]), "forces": np.asarray(out.forces[r]),
               "stress": full_3x3_to_voigt_6_stress(np.asarray(out.stress[r]))}
        assert_matches(got, ase_results(atoms, MODELS[name][1]()), f"{name}/batched replica {r}")


@pytest.mark.parametrize("name", ["emt", "lj-smooth"])
def test_bridge_harness_checks(name):
    """The checks every bridged family passes (tests/bridge_harness.py), on the JAX-native potentials:
    jit agreement with ASE's own calculator, R = 3 in one call equal to single calls, and a 20-step
    NVE run (jit + lax.scan) on ASE's VelocityVerlet trajectory."""
    model = get_model(name)
    base = alloy((1, 1, 2), seed=5) if name == "emt" else bulk("Cu", "fcc", a=3.7, cubic=True) * (1, 1, 2)
    structures = [distort(base, 30 + r, strain=0.03) for r in range(3)]
    calc = MODELS[name][1]()
    for atoms in structures:
        h.assert_agrees(h.evaluate(model, [atoms]), h.reference(calc, atoms), h.FLOAT64, len(atoms), name)
    h.assert_batched_equals_single(lambda s: h.evaluate(model, s), structures, h.Tolerance(1e-13, 1e-12, 1e-12),
                                   distinct_digits=6)
    atoms = structures[0].copy()
    atoms.set_momenta(np.random.default_rng(2).normal(0.0, 0.3, (len(atoms), 3)))
    run = h.nve_against_ase(model, calc, atoms, 20, 2.0 * units.fs, dtype=jnp.float64)
    run.report(name)
    assert np.abs(run.jax_energy - run.ase_energy).max() < 1e-9 * max(1.0, np.abs(run.ase_energy).max())
    assert np.abs(run.jax_positions - run.ase_positions).max() < 1e-9


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


def test_emt_unsupported_element():
    model = get_model("emt")
    assert model.elements == EMT_ELEMENTS
    assert EMT_ELEMENTS == {1, 6, 7, 8, 13, 28, 29, 46, 47, 78, 79}
    atoms = bulk("Cu", "fcc", a=3.61) * (2, 1, 1)
    atoms.symbols[1] = "Fe"
    h.assert_refuses_element(model, atoms, engine_match=r"Fe \(Z=26\)", calculator_too=True, dtype=jnp.float64)
    with pytest.raises(ValueError, match="does not cover"):
        model.check_elements(atoms.numbers)
    with pytest.raises(ValueError, match="EMT has no parameters for Fe"):
        emt(["Cu", "Fe"])
    with pytest.raises(ValueError, match=r"Au \(Z=79\)"):
        emt(["Cu"]).check_elements([29, 79])
    with pytest.raises(ValueError, match="unknown element"):
        emt(["Xx"])


def test_emt_table_is_ase_table():
    from ase.calculators import emt as ase_emt

    from jaxpto.potentials.emt import BETA, PARAMETERS

    assert PARAMETERS == ase_emt.parameters
    assert BETA == ase_emt.beta


def test_pair_bad_parameters():
    with pytest.raises(ValueError):
        lennard_jones(sigma=1.0, rc=3.0, ro=3.5, smooth=True)
    with pytest.raises(ValueError):
        morse(rcut1=2.7, rcut2=1.9)


# ----------------------------------------------------------------------------
# Timing (printed, not asserted)
# ----------------------------------------------------------------------------


def test_emt_timing_4000_cu():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (10, 10, 10)
    atoms.rattle(0.02, seed=0)
    model = get_model("emt")
    pos = jnp.asarray(atoms.positions)[None]
    cell = jnp.asarray(atoms.cell.array)[None]
    numbers = jnp.asarray(atoms.numbers)
    nbrs = nl.allocate(pos, cell, model.cutoff, skin=0.5)
    fn = jax.jit(model.compute)
    out = jax.block_until_ready(fn(pos, cell, numbers, nbrs))
    assert np.all(np.isfinite(np.asarray(out.forces)))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(pos, cell, numbers, nbrs))
        times.append(time.perf_counter() - t0)
    print(f"EMT, 4000 Cu atoms, K={nbrs.capacity} slots, skin 0.5 A, {jax.devices()[0].platform}: "
          f"energy+forces+stress {1e3 * min(times):.1f} ms (min of 5), "
          f"median {1e3 * np.median(times):.1f} ms")


@pytest.mark.parametrize("make", [
    lambda: lennard_jones(sigma=2.0, epsilon=0.05, rc=5.0, smooth=True),
    lambda: lennard_jones(sigma=1.1, epsilon=0.3, rc=3.6),
    lambda: morse(epsilon=0.4, r0=2.6, rho0=5.0),
])
def test_pair_row_sums_equal_autodiff(make):
    """The pair models' analytic row sums (forces, virial) equal reverse-mode autodiff of E."""
    from jaxpto.model import energy_model

    assert jax.config.jax_enable_x64  # conftest: float64 everywhere
    model = make()
    rng = np.random.default_rng(3)
    systems = []
    for r in range(2):
        a = bulk("Cu", "fcc", a=3.7) * (2, 2, 3)
        a.set_cell(a.cell.array @ (np.eye(3) + 0.06 * rng.normal(size=(3, 3))), scale_atoms=True)
        a.rattle(0.15, seed=r)
        systems.append(a)
    pos = jnp.asarray(np.stack([a.positions for a in systems]))
    cell = jnp.asarray(np.stack([a.cell.array for a in systems]))
    z = jnp.asarray(systems[0].numbers)
    nbrs = nl.allocate(pos, cell, model.cutoff, skin=0.5)

    def energy(p, c, numbers, nb):
        # Total energy from the model's own compute (its energy output needs no derivative).
        return model.compute(p[None], c[None], numbers, jax.tree_util.tree_map(lambda x: x[None], nb)).energy[0]

    reference = energy_model(energy, cutoff=model.cutoff).compute(pos, cell, z, nbrs)
    out = model.compute(pos, cell, z, nbrs)
    np.testing.assert_allclose(out.energy, reference.energy, rtol=1e-13)
    scale = float(jnp.max(jnp.abs(reference.forces)))
    np.testing.assert_allclose(out.forces, reference.forces, atol=1e-11 * scale)
    np.testing.assert_allclose(out.stress, reference.stress, atol=1e-11 * float(jnp.max(jnp.abs(reference.stress))))
    assert scale > 1e-3  # a real test: forces are not trivially zero
