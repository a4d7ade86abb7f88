"""``jaxpto check-model``: is a model's energy, forces and stress one consistent, invariant function?

Any :class:`~jaxpto.model.Model` (a name or file through ``load_model``, a bridged torch model, a
JAX-native potential) gets the same five checks, on small cells of elements it covers (PbTiO3
if it covers Pb, Ti and O, else a rattled, sheared fcc crystal of one of its elements), and one
verdict table:

1. ``forces = -dE/dr``: fourth-order central differences of the energy,
   ``F_fd = -[E(r - 2h) - 8 E(r - h) + 8 E(r + h) - E(r + 2h)] / 12h``, for every Cartesian
   direction of up to six atoms;
2. ``stress = dE/dstrain``: the same differences over a symmetric strain ``e`` of the cell with
   the atoms, ``sigma_ab = (1/V) dE/de_ab`` (ASE's sign: positive in tension; the off-diagonal
   strains are applied as ``e/2`` to both ``ab`` and ``ba``, as
   ``ase.calculators.fd.calculate_numerical_stress``). Virial sign conventions are among the most
   reported problems of these model packages: a stress with the wrong sign fails here;
3. batched == single: three different structures in one call equal three single calls;
4. invariance: a rigid rotation ``Q`` of positions and cell leaves the energy unchanged and turns
   forces and stress as vectors and tensors (``F -> F Q^T``, ``sigma -> Q sigma Q^T``); a rigid
   translation changes nothing;
5. a short NVE run (velocity Verlet, 300 K Maxwell-Boltzmann start, 1 fs, 100 steps, jit +
   ``lax.scan``): the largest change of the total energy per atom (a model whose forces jump at
   its cutoff, e.g. a shifted rather than smoothed pair potential, fails it for that reason).

All displaced and strained configurations of checks 1 and 2 are replicas of ONE batched model
call. Steps and tolerances follow the precision the model computes in (:data:`SETTINGS`):
float64 models are checked tightly, float32 models at the level their round-off allows (every
tolerance still far below what a 1 % force error or a flipped stress sign produces). Units are
ASE's: eV, Angstrom, eV/A, eV/A^3.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["CHECKS", "SETTINGS", "Check", "ModelReport", "check_model", "default_structure", "evaluate",
           "main_check", "numerical_forces_and_stress"]


@dataclass(frozen=True)
class Settings:
    """Finite-difference steps and tolerances for one precision (lengths A, energies eV)."""

    displacement: float  # A, for forces
    strain: float  # dimensionless, for stress
    forces_rel: float  # of max |F| (floor 0.1 eV/A), for F vs -dE/dr
    stress_abs: float  # eV/A^3, plus stress_rel of max |sigma|
    stress_rel: float
    batched: tuple[float, float, float]  # |dE|/atom, max |dF|, max |dS| between batched and single
    invariance: tuple[float, float, float]  # the same, between a structure and its rotation/translation
    nve_drift: float  # eV/atom, max |E_tot - E_tot(0)| over the NVE run


SETTINGS = {
    "float64": Settings(displacement=1e-4, strain=1e-5, forces_rel=1e-6, stress_abs=1e-9, stress_rel=1e-6,
                        batched=(1e-9, 1e-8, 1e-9), invariance=(1e-8, 1e-7, 1e-8), nve_drift=1e-3),
    "float32": Settings(displacement=2e-2, strain=5e-3, forces_rel=2e-3, stress_abs=1e-4, stress_rel=5e-3,
                        batched=(1e-5, 1e-4, 1e-5), invariance=(2e-5, 5e-4, 5e-5), nve_drift=1e-3),
}


@dataclass
class Check:
    """One row of the verdict table: the largest deviation found and the tolerance it is held to."""

    name: str
    passed: bool
    value: float
    tolerance: float
    unit: str
    detail: str = ""

    def __post_init__(self):  # plain Python numbers (JSON)
        self.passed, self.value, self.tolerance = bool(self.passed), float(self.value), float(self.tolerance)


@dataclass
class ModelReport:
    model: str
    precision: str
    structure: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def table(self) -> str:
        """The verdict table as markdown."""
        lines = [f"## check-model: {self.model} ({self.precision}, {self.structure})", "",
                 "| check | verdict | largest deviation | tolerance | detail |", "|---|---|---|---|---|"]
        for c in self.checks:
            lines.append(f"| {c.name} | {'PASS' if c.passed else 'FAIL'} | {c.value:.3e} {c.unit} | "
                         f"{c.tolerance:.1e} {c.unit} | {c.detail} |")
        lines += ["", f"verdict: {'PASS' if self.passed else 'FAIL'} "
                      f"({sum(c.passed for c in self.checks)}/{len(self.checks)} checks passed)"]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"schema": "jaxpto.check-model/1", "model": self.model, "precision": self.precision,
                "structure": self.structure, "passed": self.passed, "checks": [asdict(c) for c in self.checks]}


# ----------------------------------------------------------------------------- evaluation


def evaluate(model, atoms_list, dtype=None, skin: float = 1.0):
    """``(energy [R], forces [R,N,3], stress [R,3,3])`` of ``model.compute`` on the replicas, inside
    ``jax.jit`` with the engine's neighbour list, as float64 numpy (ASE units)."""
    import jax
    import jax.numpy as jnp

    from jaxpto import neighbors as nl
    from jaxpto.state import default_dtype

    dtype = dtype or default_dtype()
    pos = jnp.asarray(np.stack([a.positions for a in atoms_list]), dtype)
    cell = jnp.asarray(np.stack([np.asarray(a.cell) for a in atoms_list]), dtype)
    nbrs = nl.allocate(pos, cell, model.cutoff, skin=skin, pbc=tuple(bool(p) for p in atoms_list[0].pbc))
    out = jax.jit(model.compute)(pos, cell, jnp.asarray(atoms_list[0].numbers), nbrs)
    return np.asarray(out.energy, float), np.asarray(out.forces, float), np.asarray(out.stress, float)


def model_precision(model) -> str:
    """"float32" or "float64": what the model computes in (a torch model's dtype, else the engine's)."""
    from jaxpto.state import default_dtype

    efs_dtype = getattr(getattr(model.compute, "efs", None), "dtype", None)
    if efs_dtype is not None:
        return str(efs_dtype).removeprefix("torch.")
    return np.dtype(default_dtype()).name


# ----------------------------------------------------------------------------- structures


def default_structure(model):
    """``(atoms, label)``: a small rattled, strained cell of elements the model covers."""
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states

    def covers(*symbols):
        return model.elements is None or all(atomic_numbers[s] in model.elements for s in symbols)

    rng = np.random.default_rng(0)
    if covers("Pb", "Ti", "O"):
        from ase import Atoms

        frac = [(0, 0, 0), (0.5, 0.5, 0.54), (0.5, 0.5, 0.11), (0.5, 0, 0.62), (0, 0.5, 0.62)]
        atoms = Atoms("PbTiO3", scaled_positions=frac, cell=np.diag([3.87411, 3.87411, 4.19948]), pbc=True)
        atoms = atoms.repeat((2, 1, 1))
        label = "PbTiO3 2x1x1 (10 atoms), strained and rattled"
    else:
        symbol = next((s for s in ("Cu", "Al", "Ni", "Pd", "Ag", "Pt", "Au") if covers(s)), None)
        if symbol is None:
            raise ValueError(f"model {model.name!r} covers none of Pb/Ti/O or Cu, Al, Ni, Pd, Ag, Pt, Au: pass "
                             "structure= (an ASE Atoms of elements it covers; CLI: --structure FILE)")
        a = reference_states[atomic_numbers[symbol]]["a"]
        atoms = bulk(symbol, "fcc", a=a, cubic=True).repeat((2, 1, 1))
        label = f"fcc {symbol} 2x1x1 (8 atoms), strained and rattled"
    strain = np.eye(3) + np.array([[0.02, 0.03, -0.01], [0.01, -0.015, 0.025], [-0.02, 0.01, 0.01]])
    atoms.set_cell(np.asarray(atoms.cell) @ strain, scale_atoms=True)
    atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
    return atoms, label


def _rotation(seed: int = 3) -> np.ndarray:
    """A random proper rotation (QR of a Gaussian matrix, det +1)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _transformed(atoms, rotation=None, translation=None):
    out = atoms.copy()
    if rotation is not None:
        out.set_cell(np.asarray(atoms.cell) @ rotation.T, scale_atoms=False)
        out.positions = atoms.positions @ rotation.T
    if translation is not None:
        out.positions = out.positions + translation
    return out


# ----------------------------------------------------------------------------- the checks


def numerical_forces_and_stress(model, atoms, s: Settings, dtype=None, n_atoms: int = 6):
    """``(F_fd [n,3], sigma_fd [3,3])``: fourth-order central differences of the energy,
    ``f'(0) = [E(-2h) - 8 E(-h) + 8 E(h) - E(2h)] / 12h``, for every direction of the first
    ``n_atoms`` atoms and the six symmetric strains, all from ONE batched model call (ASE units)."""
    n_fd = min(len(atoms), n_atoms)
    replicas = []
    for i in range(n_fd):
        for k in range(3):
            for step in _STENCIL:
                a = atoms.copy()
                a.positions[i, k] += step * s.displacement
                replicas.append(a)
    for i, j in _STRAINS:
        for step in _STENCIL:
            x = np.eye(3)
            x[i, j] += step * s.strain / (1 if i == j else 2)
            x[j, i] += 0 if i == j else step * s.strain / 2
            a = atoms.copy()
            a.set_cell(np.asarray(atoms.cell) @ x, scale_atoms=True)
            replicas.append(a)
    energy = evaluate(model, replicas, dtype)[0].reshape(-1, len(_STENCIL)) @ _WEIGHTS
    f_fd = -energy[:3 * n_fd].reshape(n_fd, 3) / s.displacement
    s_fd = np.zeros((3, 3))
    for (i, j), de in zip(_STRAINS, energy[3 * n_fd:]):
        s_fd[i, j] = s_fd[j, i] = de / (s.strain * atoms.get_volume())
    return f_fd, s_fd


_STENCIL = (-2.0, -1.0, 1.0, 2.0)  # steps, in units of h
_WEIGHTS = np.array([1.0, -8.0, 8.0, -1.0]) / 12.0  # f'(0) h = sum_k w_k f(s_k h) + O(h^5)
_STRAINS = [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2)]


def _finite_differences(model, atoms, s: Settings, dtype):
    """Checks 1 and 2: the model's forces and stress against central differences of its energy."""
    f_fd, s_fd = numerical_forces_and_stress(model, atoms, s, dtype)
    _, forces, stress = evaluate(model, [atoms], dtype)
    return _force_check(forces[0][:len(f_fd)], f_fd, s, len(f_fd)), _stress_check(stress[0], s_fd, s)


def _force_check(forces, f_fd, s: Settings, n_fd: int) -> Check:
    scale = max(float(np.abs(f_fd).max()), 0.1)
    dev = float(np.abs(forces - f_fd).max())
    return Check("forces = -dE/dr", dev <= s.forces_rel * scale, dev, s.forces_rel * scale, "eV/A",
                 f"4th-order central differences, h = {s.displacement:g} A, {n_fd} atoms x 3 directions; "
                 f"max |F| {scale:.3g} eV/A")


def _stress_check(stress, s_fd, s: Settings) -> Check:
    tol = s.stress_abs + s.stress_rel * float(np.abs(s_fd).max())
    dev = float(np.abs(stress - s_fd).max())
    sign = ""
    if np.abs(s_fd).max() > 10 * tol and np.abs(stress + s_fd).max() < np.abs(stress - s_fd).max():
        sign = "; the stress has the opposite sign of dE/dstrain (a virial sign convention bug?)"
    return Check("stress = dE/dstrain", dev <= tol, dev, tol, "eV/A^3",
                 f"4th-order central differences, strain {s.strain:g}; max |sigma| {np.abs(s_fd).max():.3g} "
                 f"eV/A^3{sign}")


def _deviation_check(name: str, a, b, n_atoms: int, tol, detail: str) -> Check:
    """``a`` vs ``b``, each ``(E, F, S)``: the worst of the three deviations relative to its tolerance."""
    devs = (abs(a[0] - b[0]) / n_atoms, float(np.abs(a[1] - b[1]).max()), float(np.abs(a[2] - b[2]).max()))
    ratios = [d / t for d, t in zip(devs, tol)]
    worst = int(np.argmax(ratios))
    units = ("eV/atom", "eV/A", "eV/A^3")
    what = ("|dE|/atom", "max |dF|", "max |dsigma|")[worst]
    return Check(name, max(ratios) <= 1.0, devs[worst], tol[worst], units[worst],
                 f"{detail}; worst: {what} (E {devs[0]:.1e}, F {devs[1]:.1e}, sigma {devs[2]:.1e})")


def _batched_check(model, atoms, s: Settings, dtype) -> Check:
    rng = np.random.default_rng(1)
    structures = [atoms.copy() for _ in range(3)]
    structures[1].positions += rng.normal(0.0, 0.05, atoms.positions.shape)
    structures[2].set_cell(np.asarray(atoms.cell) * 1.02, scale_atoms=True)
    e, f, st = evaluate(model, structures, dtype)
    worst = None
    for r, a in enumerate(structures):
        single = evaluate(model, [a], dtype)
        check = _deviation_check("batched == single", (e[r], f[r], st[r]), tuple(x[0] for x in single), len(a),
                                 s.batched, "3 structures in one call vs 3 single calls")
        worst = check if worst is None or check.value / check.tolerance > worst.value / worst.tolerance else worst
    return worst


def _invariance_check(model, atoms, s: Settings, dtype) -> Check:
    q = _rotation()
    moved = [atoms, _transformed(atoms, rotation=q), _transformed(atoms, translation=np.array([0.31, -0.47, 0.83]))]
    e, f, st = evaluate(model, moved, dtype)
    rotated = (e[1], f[1] @ q, q.T @ st[1] @ q)  # back to the original frame
    by_rotation = _deviation_check("rotation invariance", rotated, (e[0], f[0], st[0]), len(atoms),
                                   s.invariance, "random rotation of positions and cell")
    by_translation = _deviation_check("translation invariance", (e[2], f[2], st[2]), (e[0], f[0], st[0]),
                                      len(atoms), s.invariance, "rigid shift (0.31, -0.47, 0.83) A")
    return by_rotation, by_translation


def _nve_check(model, atoms, s: Settings, dtype, steps: int = 100) -> Check:
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from jaxpto.integrators import velocity_verlet
    from jaxpto.simulate import run, state_from_atoms
    from jaxpto.state import kinetic_energy

    start = atoms.copy()
    MaxwellBoltzmannDistribution(start, temperature_K=300, rng=np.random.default_rng(2))
    Stationary(start)
    state, force_fn = state_from_atoms(start, model, dtype=dtype)
    integrator = velocity_verlet(force_fn, 1.0 * units.fs)
    state = integrator.init(state)

    def total(st):
        return st.energy + kinetic_energy(st.momenta, st.masses)

    e0 = float(total(state)[0])
    state, rec = run(integrator, state, steps, record_fn=total, record_every=1)
    etot = np.concatenate([[e0], np.asarray(rec, float)[:, 0]])
    drift = float(np.abs(etot - etot[0]).max()) / len(atoms) if np.all(np.isfinite(etot)) else float("inf")
    return Check("NVE energy drift", drift <= s.nve_drift, drift, s.nve_drift, "eV/atom",
                 f"velocity Verlet, 300 K start, 1 fs x {steps} steps (jit + lax.scan)")


CHECKS = ("finite-differences", "batched", "invariance", "nve")


def check_model(model, *, structure=None, precision: str | None = None, dtype=None, nve_steps: int = 100,
                checks=CHECKS, echo=None) -> ModelReport:
    """Run the checks of the module docstring on ``model``; returns the report (``.table()``).

    ``structure``: an ASE ``Atoms`` (default :func:`default_structure`); ``precision``:
    "float32"/"float64" (default: what the model computes in, :func:`model_precision`); ``dtype``:
    the engine's float type (default: float64 with JAX x64, else float32); ``checks``: a subset
    of :data:`CHECKS` ("finite-differences" gives the forces and the stress rows).
    """
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown check(s) {sorted(unknown)}; choose from {', '.join(CHECKS)}")
    precision = precision or model_precision(model)
    s = SETTINGS["float64" if precision == "float64" else "float32"]
    if structure is None:
        structure, label = default_structure(model)
    else:
        label = f"{structure.get_chemical_formula()} ({len(structure)} atoms, given)"
    model.check_elements(structure.numbers)
    report = ModelReport(model=model.name, precision=precision, structure=label)
    runs = {"finite-differences": lambda: _finite_differences(model, structure, s, dtype),
            "batched": lambda: (_batched_check(model, structure, s, dtype),),
            "invariance": lambda: _invariance_check(model, structure, s, dtype),
            "nve": lambda: (_nve_check(model, structure, s, dtype, nve_steps),)}
    for name in CHECKS:
        if name in checks:
            if echo is not None:
                echo(f"check-model: {name} ...")
            report.checks.extend(runs[name]())
    return report


def main_check(name_or_path, *, out: str | None = None, structure: str | None = None, nve_steps: int = 100,
               echo=print, **load_kw) -> ModelReport:
    """The ``jaxpto check-model`` command: load in float64 where the model allows it, check, print the
    table, write the JSON report to ``out``."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from bridges.registry import load_model

    try:
        model = load_model(name_or_path, dtype="float64", **load_kw)
    except ValueError as exc:  # e.g. SevenNet: float32 only
        if "float32" not in str(exc):
            raise
        echo(f"check-model: {exc}; checking the float32 model")
        model = load_model(name_or_path, **load_kw)
    atoms = None
    if structure is not None:
        from ase.io import read

        atoms = read(structure)
    report = check_model(model, structure=atoms, nve_steps=nve_steps, echo=echo)
    echo(report.table())
    if out is not None:
        with open(out, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
        echo(f"report: {out}")
    return report
