"""The bridge test harness: the checks every model family passes, written once, used in a few lines.

A family's test file supplies its model, its own ASE calculator and its tolerances; the harness
does the rest, the same way for every family (and for the JAX-native potentials):

* :func:`engine_edges` / :func:`call_efs`: the torch EFS fed exactly as the bridge feeds it
  (the engine's neighbour list through :func:`bridges.torch_bridge.edges_from_neighbors`);
* :func:`evaluate`: ``model.compute`` inside ``jax.jit`` (the DLPack bridge for torch models);
* :func:`reference` and :func:`assert_agrees`: agreement with the family's own calculator;
* :func:`assert_batched_equals_single`: R replicas as one call equal R single calls;
* :func:`nve_against_ase`: the same NVE start run by ASE's VelocityVerlet with the family's
  calculator and by ``jaxpto.simulate.run`` (jit + ``lax.scan``); the caller asserts on the two
  energy histories with its own criteria;
* :func:`assert_refuses_element`: an uncovered element fails before any torch call;
* :func:`calculator_swap`: ``jaxpto.md`` runs the calculator's own network on the bridge;
* :func:`offline` (a fixture): no network, every ``urlopen`` fails at once and is recorded.

Units are ASE's throughout (eV, Angstrom, eV/A^3 with ASE's sign).
"""

from __future__ import annotations

import contextlib
import functools
import io
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units

from _pbtio3_cells import pbtio3, strained_unit_cell, supercell, triclinic
from jaxpto import neighbors as nl

# The PbTiO3 cells: 5 atoms, 40 atoms rattled, and a triclinic cell (10 atoms rattled, or the
# strained 5-atom cell where a family's calculator is slow).
CELLS = {"5-atom": pbtio3, "2x2x2-rattled": supercell, "triclinic": triclinic}
CELLS_5 = {"5-atom": pbtio3, "2x2x2-rattled": supercell, "triclinic": strained_unit_cell}


class Tolerance(NamedTuple):
    """Largest deviations accepted: energy per atom (eV), forces (eV/A), stress (eV/A^3)."""

    energy: float
    forces: float
    stress: float


FLOAT32 = Tolerance(1e-5, 1e-4, 1e-5)
FLOAT64 = Tolerance(1e-10, 1e-9, 1e-10)


def quiet(fn, *args, **kw):
    """``fn(*args, **kw)`` without its prints and warnings (model packages announce a lot)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


# ----------------------------------------------------------------------------- evaluation


def _stack(atoms_list, dtype=np.float64):
    pos = np.stack([a.positions for a in atoms_list]).astype(dtype)
    cell = np.stack([np.asarray(a.cell) for a in atoms_list]).astype(dtype)
    return pos, cell


@functools.lru_cache(maxsize=None)
def _edges_program():
    from bridges.torch_bridge import edges_from_neighbors

    return jax.jit(edges_from_neighbors, static_argnums=3)


def engine_edges(atoms_list, cutoff: float, skin: float = 1.0) -> dict:
    """The torch EFS inputs exactly as the bridge builds them (engine list, cut at ``cutoff``)."""
    import torch

    pos, cell = _stack(atoms_list)
    nbrs = nl.allocate(pos, cell, cutoff, skin=skin)
    src, dst, shift, mask = _edges_program()(jnp.asarray(pos), jnp.asarray(cell), nbrs, float(cutoff))

    def t(x):
        return torch.from_numpy(np.array(x))

    return dict(positions=t(pos), cell=t(cell), numbers=torch.tensor(atoms_list[0].numbers, dtype=torch.int64),
                edge_src=t(src).long(), edge_dst=t(dst).long(), edge_shift=t(shift), edge_mask=t(mask))


def call_efs(efs, atoms_list, skin: float = 1.0):
    """``(energy [R], forces [R,N,3], stress [R,3,3])`` of a torch EFS called directly, as float64 numpy."""
    energy, forces, stress = efs(**engine_edges(atoms_list, efs.cutoff, skin))
    return energy.double().numpy(), forces.double().numpy(), stress.double().numpy()


def evaluate(model, atoms_list, dtype=jnp.float64, skin: float = 1.0):
    """``model.compute`` of the replicas inside ``jax.jit`` (engine neighbour list), as float64 numpy."""
    pos = jnp.asarray(np.stack([a.positions for a in atoms_list]), dtype)
    cell = jnp.asarray(np.stack([np.asarray(a.cell) for a in atoms_list]), dtype)
    nbrs = nl.allocate(pos, cell, model.cutoff, skin=skin)
    out = jax.jit(model.compute)(pos, cell, jnp.asarray(atoms_list[0].numbers), nbrs)
    return np.asarray(out.energy, float), np.asarray(out.forces, float), np.asarray(out.stress, float)


def reference(calc, atoms):
    """``(energy, forces [N,3], stress [3,3])`` of an ASE calculator on a copy of ``atoms``."""
    at = atoms.copy()
    at.calc = calc
    return at.get_potential_energy(), at.get_forces(), at.get_stress(voigt=False)


def deviations(got, ref, n_atoms: int) -> tuple[float, float, float]:
    """``(|dE|/atom, max|dF|, max|dS|)`` between replica 0 of ``got`` and a reference."""
    e, f, s = got
    e_ref, f_ref, s_ref = ref
    return (abs(float(np.ravel(e)[0]) - e_ref) / n_atoms, float(np.abs(np.reshape(f, (-1, n_atoms, 3))[0] - f_ref).max()),
            float(np.abs(np.reshape(s, (-1, 3, 3))[0] - s_ref).max()))


def assert_agrees(got, ref, tol: Tolerance, n_atoms: int, label: str = "") -> None:
    """Replica 0 of ``got`` equals the reference within ``tol`` (and the reference is not trivial:
    its stress has a component above 1e-3 eV/A^3, so the comparison is not between zeros)."""
    de, df, ds = deviations(got, ref, n_atoms)
    print(f"\n{label}: |dE|/atom={de:.2e} eV  max|dF|={df:.2e} eV/A  max|dS|={ds:.2e} eV/A^3")
    assert de < tol.energy and df < tol.forces and ds < tol.stress, (de, df, ds)
    assert np.abs(ref[2]).max() > 1e-3


def assert_efs_agrees(efs, calc, atoms, tol: Tolerance, label: str = "") -> None:
    """The torch EFS called directly (one replica) has the contract's shapes and equals ``calc``."""
    got = call_efs(efs, [atoms])
    n = len(atoms)
    assert got[0].shape == (1,) and got[1].shape == (1, n, 3) and got[2].shape == (1, 3, 3)
    assert_agrees(got, reference(calc, atoms), tol, n, label)


def assert_batched_equals_single(evaluate_fn, structures, tol: Tolerance, counter=None, distinct_digits=None,
                                 rtol: float = 0.0, per_atom: bool = True):
    """``evaluate_fn(structures)`` (one call, R replicas) equals ``evaluate_fn([s])`` for each structure.

    ``tol``: energy (per atom, or total with ``per_atom=False``), forces and stress, absolute
    (``max |d| < tol``; with ``rtol`` as ``numpy.testing.assert_allclose(rtol=rtol, atol=tol)``).
    ``counter``: a bridge (``n_calls``) that must count exactly one torch call for the batch.
    ``distinct_digits``: the replicas' energies rounded to that many digits must all differ (they
    really are different structures).
    """
    calls = None if counter is None else counter.n_calls
    e, f, s = evaluate_fn(structures)
    if counter is not None:
        assert counter.n_calls == calls + 1  # one torch call for all replicas
    n = len(structures[0])
    assert e.shape == (len(structures),) and f.shape == (len(structures), n, 3)
    assert s.shape == (len(structures), 3, 3)
    for r, atoms in enumerate(structures):
        e1, f1, s1 = evaluate_fn([atoms])
        assert abs(e[r] - e1[0]) / (n if per_atom else 1) < tol.energy
        for got, single, atol in ((f[r], f1[0], tol.forces), (s[r], s1[0], tol.stress)):
            if rtol:
                np.testing.assert_allclose(got, single, rtol=rtol, atol=atol)
            else:
                assert np.abs(got - single).max() < atol
    if distinct_digits is not None:
        assert len({round(float(x), distinct_digits) for x in e}) == len(structures)  # the replicas differ


def three_structures(base):
    """Three different structures of ``base``'s atoms: itself, rattled by 0.05 A, and strained."""
    reps = [base.copy() for _ in range(3)]
    reps[1].positions += np.random.default_rng(7).normal(0.0, 0.05, base.positions.shape)
    reps[2].set_cell(np.asarray(base.cell) @ (np.eye(3) + [[0.01, 0.02, 0.0], [0.0, -0.01, 0.03],
                                                            [0.02, 0.0, 0.02]]), scale_atoms=True)
    return reps


# ----------------------------------------------------------------------------- dynamics


def pto10(seed_rattle: int = 3, seed_momenta: int = 7):
    """10-atom PbTiO3 (2x1x1), rattled by 0.02 A, with ~300 K momenta (fixed seeds)."""
    atoms = pbtio3().repeat((2, 1, 1))
    atoms.rattle(0.02, seed=seed_rattle)
    sigma = np.sqrt(units.kB * 300 * atoms.get_masses())[:, None]
    atoms.set_momenta(sigma * np.random.default_rng(seed_momenta).normal(size=(len(atoms), 3)))
    return atoms


@dataclass
class NVERun:
    """Total energies (eV) at the start and after every step, ASE's and jaxpto's, and the final positions."""

    ase_energy: np.ndarray
    jax_energy: np.ndarray
    ase_positions: np.ndarray
    jax_positions: np.ndarray
    n_atoms: int
    steps_done: int
    seconds: tuple[float, float]

    def drift(self, which: str, per_atom: bool = False) -> float:
        """``max |E_tot - E_tot(0)|`` of ``"ase"`` or ``"jax"`` (per atom if asked)."""
        e = self.ase_energy if which == "ase" else self.jax_energy
        return float(np.abs(e - e[0]).max()) / (self.n_atoms if per_atom else 1)

    def spread(self, which: str, per_atom: bool = False) -> float:
        """``max E_tot - min E_tot`` of ``"ase"`` or ``"jax"`` (per atom if asked)."""
        e = self.ase_energy if which == "ase" else self.jax_energy
        return float(np.ptp(e)) / (self.n_atoms if per_atom else 1)

    def report(self, label: str) -> None:
        print(f"\nNVE {label}, {self.n_atoms} atoms, {self.steps_done} steps: max|Etot-Etot0| jaxpto "
              f"{self.drift('jax'):.2e} eV ({self.seconds[1]:.1f} s), ASE {self.drift('ase'):.2e} eV "
              f"({self.seconds[0]:.1f} s); max|x_jax - x_ase| {np.abs(self.jax_positions - self.ase_positions).max():.1e} A")


def nve_against_ase(model, calc, atoms, steps: int, dt: float = 1.0 * units.fs, dtype=None) -> NVERun:
    """The same start run by ASE's VelocityVerlet with ``calc`` and by jaxpto (``velocity_verlet``
    through ``jaxpto.simulate.run``: one jit-compiled ``lax.scan`` chunk calling the model)."""
    from ase.md.verlet import VelocityVerlet

    from jaxpto.integrators import velocity_verlet
    from jaxpto.simulate import run, state_from_atoms
    from jaxpto.state import kinetic_energy

    ase_atoms = atoms.copy()
    ase_atoms.calc = calc
    ase_energy = []
    dyn = VelocityVerlet(ase_atoms, dt)
    dyn.attach(lambda: ase_energy.append(ase_atoms.get_total_energy()), interval=1)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        dyn.run(steps)  # the observer also runs before the first step: steps + 1 values
    t_ase = time.perf_counter() - t0

    state, force_fn = state_from_atoms(atoms, model, dtype=dtype)
    integrator = velocity_verlet(force_fn, dt)
    state = integrator.init(state)

    def total(s):
        return s.energy + kinetic_energy(s.momenta, s.masses)

    e0 = float(total(state)[0])
    t0 = time.perf_counter()
    state, rec = run(integrator, state, steps, record_fn=total, record_every=1)
    t_jax = time.perf_counter() - t0
    jax_energy = np.concatenate([[e0], np.asarray(rec, float)[:, 0]])
    assert np.all(np.isfinite(jax_energy)) and jax_energy.shape == (steps + 1,) == np.shape(ase_energy)
    return NVERun(np.asarray(ase_energy), jax_energy, ase_atoms.positions.copy(), np.asarray(state.positions[0], float),
                  len(atoms), int(state.step), (t_ase, t_jax))


def calculator_swap(calc, make_atoms, steps: int, dtype=None):
    """``atoms.calc = calc`` + ``jaxpto.md.VelocityVerlet``: the run goes through the bridge on the
    calculator's own network (no callback), next to ASE's VelocityVerlet from the same start.

    Returns ``(dyn, atoms, ase_positions)`` for the family's own checks (which network object,
    which settings, how close to ASE).
    """
    from ase.md.verlet import VelocityVerlet as AseVelocityVerlet

    from jaxpto.md import VelocityVerlet

    ref = make_atoms()
    ref.calc = calc
    AseVelocityVerlet(ref, timestep=1.0 * units.fs).run(steps)
    atoms = make_atoms()
    atoms.calc = calc
    kw = {} if dtype is None else {"dtype": dtype}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs, **kw)
        dyn.run(steps)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "callback" in m], messages
    assert dyn.force_kind == "bridge"
    return dyn, atoms, ref.positions.copy()


def assert_calculator_still_agrees(calc, atoms, tol: float = 1e-4) -> None:
    """After the bridge used its network, the calculator on its own gives the forces written back."""
    written = atoms.get_forces().copy()
    check = atoms.copy()
    check.calc = calc
    assert np.abs(check.get_forces() - written).max() <= tol


# ----------------------------------------------------------------------------- bad input


def assert_refuses_element(model, atoms, engine_match: str, efs_match: str | None = None,
                           calculator_too: bool = False, dtype=jnp.float32) -> None:
    """An element the model does not cover fails before any torch call: in ``state_from_atoms``
    (and ``JaxptoCalculator`` if ``calculator_too``) with ``engine_match``, and, for a torch model,
    in the EFS called directly (a bypassed engine check) with ``efs_match``."""
    import jaxpto
    from jaxpto.simulate import state_from_atoms

    bridge = getattr(model.compute, "efs", None) and model.compute
    calls = None if bridge is None else bridge.n_calls
    with pytest.raises(ValueError, match=engine_match):
        state_from_atoms(atoms, model, dtype=dtype)
    if calculator_too:
        with pytest.raises(ValueError, match=engine_match):
            probe = atoms.copy()
            probe.calc = jaxpto.JaxptoCalculator(model, dtype=dtype)
            probe.get_potential_energy()
    if bridge is None:
        return
    assert bridge.n_calls == calls  # refused before torch ever ran
    if efs_match is not None:
        with pytest.raises(ValueError, match=efs_match):
            call_efs(bridge.efs, [atoms])


# ----------------------------------------------------------------------------- no network


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: every ``urllib.request.urlopen`` (the bridges' one probe) fails at once; the
    URLs tried are returned. ``XDG_CACHE_HOME`` points at an empty private cache."""
    attempts = []

    def no_network(req, *a, **kw):
        attempts.append(getattr(req, "full_url", req))
        raise urllib.error.URLError("network disabled in this test")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return attempts


def assert_fails_fast(load, error=RuntimeError, match: str | None = None, seconds: float = 5.0) -> str:
    """``load()`` raises ``error`` (matching ``match``) within ``seconds``; returns the message."""
    t0 = time.perf_counter()
    with pytest.raises(error, match=match) as info:
        load()
    elapsed = time.perf_counter() - t0
    assert elapsed < seconds, elapsed
    return str(info.value)
