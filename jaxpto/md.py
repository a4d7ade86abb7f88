"""Drop-in replacements for ASE's molecular-dynamics classes: change one import.

::

    from ase.md.npt import NPT            # before
    from jaxpto.md import NPT             # after: same script, same numbers, one compiled program

Every class here takes ASE's constructor signature (keyword names and defaults)
plus two jaxpto keywords:

* ``dtype=``: floating type of the simulation (float64 when JAX x64 is on, else float32);
* ``seed=``: seed of jaxpto's own JAX PRNG (stochastic integrators). ASE's ``rng=`` is
  accepted, but jaxpto never draws from it: if ``seed`` is None a seed is taken from
  ``rng.integers`` (when ``rng`` has it) or from ``numpy.random``; the random streams
  therefore differ from ASE's (the statistics are the same; at ``T = 0`` the
  trajectories agree).

How a run works
---------------
``run(steps)``/``irun(steps)`` follow ASE's ``MolecularDynamics.irun``: at step 0 the
observers are called, then after every step the observers due at that step. The steps
between two observer events (at most ``chunk_size``) run as ONE compiled chunk of the one
driver, :func:`jaxpto.simulate.chunks` (traced chunk length: ``run(1)`` then ``run(200)``
does not recompile; neighbour-list overflow re-allocated from what the chunk met; every
replica's health checked). After each chunk the state is written back into the Atoms
(positions, momenta, cell) and the observers due at that step are called, in ASE's order.
``irun`` therefore yields after every chunk (at every observer event and at the end).
A replica that blows up (non-finite coordinates, a box length changed by more than 50 %,
a temperature above 5x the target) is reported once with a warning, and runs on as ASE's would.

Per-replica parameters are state: ``Langevin.set_temperature``/``set_friction`` and
``NPT.set_temperature``/``set_stress`` change them between runs without recompiling.

Calculator results: after each chunk the user's calculator stays ``atoms.calc``; its result
cache is filled with the simulated energy, forces and stress of the written configuration
(``calc.atoms``/``calc.results``, exactly what ASE's calculators do after a calculation), so
``atoms.get_potential_energy()``/``get_forces()``/``get_stress()``, ``MDLogger`` and
``Trajectory.write`` see the simulated values without recomputation. What else the calculator
reports and the model computes in the same call (``Model.extras``: EMT's and LJ's per-atom
``energies``, CHGNet's ``magmoms`` and ``crystal_fea``, ...) is written too, under the same keys
and with the dtypes and shapes the calculator itself stores (so trajectory frames carry them as
under ASE). Properties the model does not compute are named in a warning at the first run and
recomputed by the calculator on request. If the
same calculator object is shared by several Atoms of a replica list, only the last one keeps
the cache (the others recompute on request; still correct). A replica whose coordinates
became non-finite reports NaN energy, forces and stress: its ``atoms.calc`` becomes a
:class:`NonFiniteStateCalculator` (ASE's calculators would recompute at NaN positions), which
hands back to the user's calculator (``atoms.calc.calculator``) at finite coordinates.

Faults: a starting configuration with non-finite energy or forces (coincident atoms, ...) is a
``ValueError`` before any step, naming the closest atoms; an unphysical replica (blow-up rules of
:func:`jaxpto.simulate.blow_up_reason`, box lengths compared with the first run's) is reported
with one ``RuntimeWarning`` per dynamics object, however many ``run`` calls follow.

Forces: the calculator is handed to the one model resolver, :func:`bridges.from_calculator`:
a :class:`~jaxpto.calculator.JaxptoCalculator`'s model is used directly; ASE's ``EMT``,
``LennardJones`` and ``MorsePotential`` are replaced by their JAX twins (same parameters);
the calculators of the bridged families (SevenNet, CHGNet, MACE, ORB, matgl, DeePMD) are
swapped for jaxpto's torch bridge around the calculator's *own, already loaded* network. A
twin or bridge is checked against the calculator on the first configuration (twins: 1e-8
relative in float64, 1e-4 in float32; bridges: ``BRIDGE_E_TOL`` eV/atom, ``BRIDGE_F_TOL`` eV/A,
``BRIDGE_S_TOL`` eV/A^3) and the calculator is called through ``jax.pure_callback`` instead
(with a warning saying why) if they disagree. Any other ASE calculator is called through
``jax.pure_callback`` on a copy of the atoms (correct, slower; a warning says so), each
replica with its own calculator. The path taken is recorded in ``dyn.force_kind``:
``"jaxpto"``, ``"twin"``, ``"bridge"``, ``"native"`` or ``"callback"``. Replicas whose
calculators compute different things (other parameters, other models) cannot share one
compiled model: that is an error before any step, naming the replicas.

Observers that modify the atoms: as ASE, per class. ``VelocityVerlet``, ``Langevin`` and
``Bussi`` read the atoms every step in ASE, so changed positions/momenta/cell are re-read into
the state (forces recomputed if positions or cell changed). ``NoseHooverChainNVT``,
``MTKNPT`` and ``IsotropicMTKNPT`` keep private copies in ASE, which overwrite such changes at
the next step; jaxpto does the same (and warns). ``NPT``/``MelchionnaNPT`` raise
``NotImplementedError`` when positions or cell were modified between runs, as ASE; jaxpto also
raises when an observer modifies positions, momenta or cell during a run (ASE would silently
mix the modified momenta into its thermostat and discard the positions).

Replicas: ``atoms`` may be a list of Atoms (same species, same order); per-replica parameters
(``temperature_K``, ``externalstress``, ``pressure_au``, ``ttime``, ``tdamp``, ...) may be
sequences. All replicas run in one program; each Atoms object is updated as above. A string
``trajectory``/``logfile`` then names one file per replica (``md.traj`` -> ``md_0.traj``,
``md_1.traj``, ...; ``'-'`` logs every replica to standard output); a list gives the names.
Observers are called once per event (not once per replica). ``swap_interval=K`` (thermostatted
classes) adds temperature replica exchange every ``K`` steps, on the device
(:mod:`jaxpto.integrators.replica_exchange`): the Atoms of replica ``r`` always hold the configuration
at temperature ``r``; ``dyn.get_exchange_statistics()`` gives acceptances, walkers and round trips.

Not supported: constraints (``NotImplementedError``), Filters, MPI ``comm``/``master``.
Units are ASE's throughout (eV, Angstrom, amu, ASE time units; stress in eV/A^3).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from ase import units
from ase.calculators.calculator import BaseCalculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.md import process_temperature
from ase.stress import full_3x3_to_voigt_6_stress
from ase.utils import IOContext

from jaxpto import simulate
from jaxpto.model import MAIN_RESULTS
from jaxpto.state import default_dtype

__all__ = ["VelocityVerlet", "Langevin", "Bussi", "NoseHooverChainNVT", "NPT", "MelchionnaNPT",
           "MTKNPT", "MaskedMTKNPT", "IsotropicMTKNPT"]

# Tolerances of the first-configuration check of a bridged model against its own calculator
# (eV/atom, eV/A, eV/A^3). They catch a wrong model (other weights or head: differences of
# 1e-2 eV/atom and more), not float32 noise: the bridge forms float32 edge vectors from
# float32 absolute positions while the calculators form them in float64 and then round, which
# for the 625-atom PbTiO3 box (20 A) gave |dE| = 2.7e-5 eV/atom with 7net-0 (measured).
BRIDGE_E_TOL, BRIDGE_F_TOL, BRIDGE_S_TOL = 2e-4, 2e-3, 5e-5


# ---------------------------------------------------------------------------
# Forces from atoms.calc
# ---------------------------------------------------------------------------

def _resolve_replicas(atoms_list):
    """``(model, kind)`` shared by every replica's calculator (:func:`bridges.from_calculator`, the one
    model resolver), or ``(None, "callback")`` for calculators no family knows.

    Raises ``ValueError`` before any step if the replicas' calculators compute different things (a
    shared compiled model would silently give every replica replica 0's forces).
    """
    from bridges import calculator_identity, from_calculator

    calcs = [a.calc for a in atoms_list]
    if any(c is None for c in calcs):
        r = next(i for i, c in enumerate(calcs) if c is None)
        raise RuntimeError(f"The atoms have no calculator (replica {r}): set atoms.calc before running dynamics")
    identities = [calculator_identity(c) for c in calcs]
    if identities[0] is None:
        return None, "callback"
    differ = [r for r, ident in enumerate(identities) if ident != identities[0]]
    if differ:
        raise ValueError(
            f"jaxpto.md: the calculators of replica(s) {differ} compute something different from replica 0's "
            f"({type(calcs[0]).__name__} with other parameters, another model or another kind); one batched "
            "program needs one model for all replicas. Give every replica the same calculator (or equal "
            "parameters), or run the different models as separate dynamics objects.")
    try:
        resolved = from_calculator(calcs[0])
    except Exception as exc:  # an unusual model object, ...
        warnings.warn(f"jaxpto.md: could not put {type(calcs[0]).__name__}'s model on the engine "
                      f"({type(exc).__name__}: {exc}); falling back to the callback", stacklevel=4)
        return None, "callback"
    return (None, "callback") if resolved is None else (resolved.model, resolved.kind)


def _checked_state(dyn, model, kind):
    """``(state, force_fn, kind)``: the state on ``model``, or ``(None, None, "callback")`` if the twin
    or bridge does not reproduce the calculator on the first configuration (a warning says why)."""
    from jaxpto.simulate import state_from_atoms

    try:
        state, force_fn = state_from_atoms(dyn._atoms_list, model, seed=dyn.seed, dtype=dyn.dtype)
        if not (np.all(np.isfinite(np.asarray(state.energy))) and np.all(np.isfinite(np.asarray(state.forces)))):
            return state, force_fn, kind  # the start is broken whatever computes it: _check_start says why
        why = _twin_disagreement(dyn, state) if kind == "twin" else _bridge_disagreement(dyn, state)
    except Exception as exc:  # elements not covered, ...
        state, why = None, f"{type(exc).__name__}: {exc}"
    if why is None:
        return state, force_fn, kind
    if kind != "twin":  # a twin that does not apply (e.g. an element EMT lacks) falls back quietly
        calc = dyn._atoms_list[0].calc
        warnings.warn(f"jaxpto.md: the {'torch bridge' if kind == 'bridge' else 'JAX-native model'} of "
                      f"{type(calc).__name__}'s model does not reproduce the "
                      f"calculator on the first configuration ({why}); falling back to the callback", stacklevel=4)
    return None, None, "callback"


def _twin_disagreement(dyn, state):
    """None if the JAX twin equals the ASE calculator on replica 0, else why not."""
    a = dyn._atoms_list[0].copy()
    a.calc = dyn._atoms_list[0].calc
    e = a.get_potential_energy()
    f = a.get_forces()
    dyn._results_template = _results_template(a.calc)
    tol = 1e-8 if dyn.dtype == jnp.float64 else 1e-4
    ej = float(state.energy[0])
    fj = np.asarray(state.forces[0])
    scale = max(1.0, np.abs(f).max())
    if abs(ej - e) <= tol * max(1.0, abs(e)) and np.abs(fj - f).max() <= tol * scale:
        return None
    return f"|dE| = {abs(ej - e):.2e} eV, max |dF| = {np.abs(fj - f).max():.2e} eV/A"


def _bridge_disagreement(dyn, state):
    """None if the bridged model equals ``atoms.calc`` on replica 0 as the state holds it, else why not.

    The calculator is evaluated on the state's own (possibly float32-rounded) positions and cell,
    so only the models are compared. Tolerances: ``BRIDGE_E_TOL`` eV/atom, ``BRIDGE_F_TOL`` eV/A,
    ``BRIDGE_S_TOL`` eV/A^3 (stress only for a periodic cell).
    """
    from ase.calculators.calculator import PropertyNotImplementedError

    first = dyn._atoms_list[0]
    a = first.copy()
    a.set_cell(np.asarray(state.cell[0], dtype=float), scale_atoms=False)
    a.set_positions(np.asarray(state.positions[0], dtype=float))
    a.calc = first.calc
    n = len(a)
    de = abs(float(state.energy[0]) - a.get_potential_energy()) / n
    df = float(np.abs(np.asarray(state.forces[0], dtype=float) - a.get_forces()).max()) if n else 0.0
    problems = []
    if not (de <= BRIDGE_E_TOL):
        problems.append(f"|dE| = {de:.2e} eV/atom > {BRIDGE_E_TOL:g}")
    if not (df <= BRIDGE_F_TOL):
        problems.append(f"max |dF| = {df:.2e} eV/A > {BRIDGE_F_TOL:g}")
    if a.cell.rank == 3 and all(a.pbc):
        try:
            s = a.get_stress(voigt=False)
        except PropertyNotImplementedError:  # e.g. a potential built without stress: nothing to compare
            s = None
        ds = 0.0 if s is None else float(np.abs(np.asarray(state.stress[0], dtype=float) - s).max())
        if not (ds <= BRIDGE_S_TOL):
            problems.append(f"max |dS| = {ds:.2e} eV/A^3 > {BRIDGE_S_TOL:g}")
    dyn._results_template = _results_template(a.calc)
    return "; ".join(problems) if problems else None


def _results_template(calc) -> dict:
    """``{name: (dtype, shape)}`` of every numeric result as ``calc`` itself stores it in
    ``calc.results`` (e.g. CHGNet: float32 forces, a 3x3 stress, float32 magmoms; EMT: float64, a
    Voigt 6-vector), so that the simulated results written back (and hence trajectory frames) are
    what ASE writes when it runs the calculator itself."""
    results = getattr(calc, "results", None) or {}
    template = {}
    for key, value in results.items():
        arr = _numeric(value)
        if arr is not None:
            template[key] = (arr.dtype, arr.shape)
    return template


def _numeric(value):
    """``value`` as a numeric (bool/int/float) numpy array, or None for anything else."""
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - e.g. an object without an array form
        return None
    return arr if arr.dtype.kind in "biuf" else None


def _unsimulated_results(dyn, model) -> list[str]:
    """Results the calculator stores (``dyn._results_template``) that the model does not compute
    (neither energy/forces/stress nor one of ``model.extras``), among those ASE's writers save."""
    from ase.calculators.calculator import all_properties

    given = MAIN_RESULTS | set(getattr(model, "extras", ()))
    return sorted(k for k in (dyn._results_template or {}) if k in all_properties and k not in given)


# ---------------------------------------------------------------------------
# Replicas that blew up
# ---------------------------------------------------------------------------


class NonFiniteStateCalculator(SinglePointCalculator):
    """``atoms.calc`` of a replica whose coordinates became non-finite: energy, forces and stress are NaN.

    ASE's calculators compare the atoms with their cached ones by value, and NaN != NaN, so at
    NaN positions they would recompute (ASE's EMT then returns a finite, meaningless energy).
    This one compares NaN-aware: for the written (NaN) configuration it returns NaN. Once the
    atoms hold finite coordinates again (the user reset them), every request goes to
    ``calculator``, the user's own calculator, which it replaced.
    """

    def __init__(self, atoms, calculator, **results):
        super().__init__(atoms, **results)
        self.calculator = calculator

    def check_state(self, atoms, tol=1e-15):
        a = self.atoms
        same = (_same(a.positions, atoms.positions) and _same(a.cell.array, atoms.cell.array)
                and np.array_equal(a.numbers, atoms.numbers) and np.array_equal(a.pbc, atoms.pbc))
        return [] if same else ["positions"]

    def get_property(self, name, atoms=None, allow_calculation=True):
        if atoms is not None and self.check_state(atoms) and self.calculator is not None \
                and np.all(np.isfinite(atoms.positions)) and np.all(np.isfinite(atoms.cell.array)):
            return self.calculator.get_property(name, atoms, allow_calculation)
        return super().get_property(name, atoms, allow_calculation)


def _closest_pairs(atoms, below: float = 0.5) -> str:
    """`` (atoms i and j are d A apart, ...)`` for pairs closer than ``below`` A (at most three), or ''."""
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, below)
    keep = i < j
    i, j, d = i[keep], j[keep], d[keep]
    if not len(d):
        return ""
    order = np.argsort(d)[:3]
    return " (" + ", ".join(f"atoms {i[k]} and {j[k]} are {d[k]:.3g} A apart" for k in order) + ")"


def _check_start(state, atoms_list):
    """A clear error before any step if the model gives non-finite energy or forces at the start."""
    energy = np.asarray(state.energy, dtype=float)
    forces = np.asarray(state.forces, dtype=float)
    bad = ~(np.isfinite(energy) & np.all(np.isfinite(forces), axis=(1, 2)))
    if not bad.any():
        return
    r = int(np.flatnonzero(bad)[0])
    others = f" (and replica(s) {np.flatnonzero(bad)[1:].tolist()})" if bad.sum() > 1 else ""
    raise ValueError(f"jaxpto.md: the model gives non-finite energy or forces at the starting configuration of "
                     f"replica {r}{others}{_closest_pairs(atoms_list[r])}; fix the structure (overlapping or "
                     "coincident atoms?) before running dynamics")


# ---------------------------------------------------------------------------
# The shared machinery
# ---------------------------------------------------------------------------


def _serial_comm(comm):
    """ASE's ``comm=`` (MPI communicator): jaxpto runs the replicas of one process; a communicator of
    more than one rank is refused (ASE's default, ``ase.parallel.world``, is one rank in a serial run)."""
    from ase.parallel import world

    comm = world if comm is None else comm
    if getattr(comm, "size", 1) > 1:
        raise NotImplementedError(
            f"jaxpto.md runs in one process; comm= has {comm.size} ranks. Run one jaxpto process per "
            "rank, or batch the systems as replicas (a list of Atoms) instead of MPI")
    return comm


def _per_replica_names(value, R):
    """One file (name or object) per replica: a list as given, ``md.traj`` -> ``md_0.traj``, ..."""
    if isinstance(value, (list, tuple)):
        if len(value) != R:
            raise ValueError(f"{len(value)} file names for {R} replicas")
        return list(value)
    if R == 1 or hasattr(value, "write"):
        if R > 1:
            raise ValueError("give one file (name) per replica for a list of Atoms")
        return [value]
    p = Path(value)
    return [str(p.with_name(f"{p.stem}_{r}{p.suffix}")) for r in range(R)]


def _same(a, b) -> bool:
    """Array equality that counts NaN == NaN (a blown-up replica's coordinates did not 'change')."""
    return np.array_equal(a, b, equal_nan=True)


class _JaxDynamics(IOContext):
    """Common base: ASE's MolecularDynamics interface around one jaxpto integrator."""

    _honours_changes = True  # VelocityVerlet/Langevin/Bussi: ASE reads the atoms every step
    _raises_on_changes = False  # Melchionna NPT
    _needs_stress = False
    _draws_random = False  # Langevin, Bussi (and any class with swap_interval): a seed is drawn when none is given
    _step_returns_forces = True  # ASE's VelocityVerlet/Langevin/Bussi.step() return the new forces
    chunk_size = 1000

    def __init__(self, atoms, timestep, *, trajectory=None, logfile=None, loginterval=1,
                 append_trajectory=False, dtype=None, seed=None, rng=None, swap_interval=None,
                 master=None, comm=None):
        self.dt = float(timestep)
        self.swap_interval = None if swap_interval is None else int(swap_interval)
        self._single = not isinstance(atoms, (list, tuple))
        self._atoms_list = [atoms] if self._single else list(atoms)
        if not self._atoms_list:
            raise ValueError("no Atoms given")
        self.atoms = atoms
        self.comm = _serial_comm(comm)
        self._master = master
        self.dtype = default_dtype() if dtype is None else jnp.dtype(dtype)
        if seed is None:
            # Only where jaxpto draws random numbers (as ASE, whose deterministic classes never touch
            # NumPy's global generator): a seed from ``rng`` or from numpy.random.
            if not (self._draws_random or self.swap_interval is not None):
                seed = 0
            elif hasattr(rng, "integers"):
                seed = int(rng.integers(0, 2**31 - 1))
            else:
                seed = int((rng if hasattr(rng, "randint") else np.random).randint(0, 2**31 - 1))
        self.seed = int(seed)
        self.observers: list = []
        self.nsteps = 0
        self.max_steps = 0
        self._state = None
        self._integrator = None
        self._written = None
        self._results_template = None  # the calculator's own dtypes/shapes, from the first-configuration check
        self._time_elapsed = 0.0
        self._check_atoms()
        self.masses = self._atoms_list[0].get_masses().reshape(-1, 1)
        self._attach_files(trajectory, logfile, loginterval, append_trajectory)

    def _check_atoms(self):
        from jaxpto.validation import check_atomic_numbers

        for r, a in enumerate(self._atoms_list):
            check_atomic_numbers(a.numbers, f"replica {r}" if len(self._atoms_list) > 1 else "the atoms")
            if a.constraints:
                raise NotImplementedError("jaxpto.md does not support constraints (yet)")
            if 0 in a.get_masses():
                warnings.warn("Zero mass encountered in atoms; this will likely lead to errors if the massless "
                              "atoms are unconstrained.")
            if not a.has("momenta"):
                a.set_momenta(np.zeros((len(a), 3)))

    def _attach_files(self, trajectory, logfile, loginterval, append_trajectory):
        """Trajectory and log files as ASE's ``MolecularDynamics`` attaches them (interval = loginterval)."""
        R = len(self._atoms_list)
        self._traj_targets = None
        if trajectory is not None:
            targets = _per_replica_names(trajectory, R)
            for t in targets:
                if not hasattr(t, "write") and not append_trajectory:
                    Path(t).unlink(missing_ok=True)
            self._traj_targets = targets
            self.attach(self._traj_write_image, interval=loginterval, description={"interval": loginterval})
        self.trajectory = trajectory
        if logfile:
            from ase.md.logger import MDLogger
            names = [logfile] * R if (logfile == "-" or hasattr(logfile, "write")) else \
                _per_replica_names(logfile, R)
            for a, name in zip(self._atoms_list, names):
                logger = self.closelater(MDLogger(dyn=self, atoms=a, logfile=name))
                self.attach(logger, loginterval)

    # -- ASE interface ------------------------------------------------------

    def _traj_write_image(self, description: dict):
        from ase.io.trajectory import Trajectory
        for a, t in zip(self._atoms_list, self._traj_targets):
            if hasattr(t, "write"):
                t.set_description(self.todict() | description)
                t.write(a)
                continue
            with Trajectory(t, mode="a", master=self._master) as traj:
                traj.set_description(self.todict() | description)
                traj.write(a)

    def todict(self) -> dict[str, Any]:
        return {"type": "molecular-dynamics", "md-type": self.__class__.__name__, "timestep": self.dt}

    def get_number_of_steps(self):
        return self.nsteps

    def get_time(self):
        return self.nsteps * self.dt

    def attach(self, function, interval=1, *args, **kwargs):
        """As ASE: ``interval > 0``: every ``interval`` steps (step 0 included); ``interval <= 0``: only at step ``|interval|``."""
        if not callable(function):
            function = function.write
        self.observers.append((function, interval, args, kwargs))

    def insert_observer(self, function, position=0, interval=1, *args, **kwargs):
        if not callable(function):
            function = function.write
        self.observers.insert(position, (function, interval, args, kwargs))

    def call_observers(self):
        for function, interval, args, kwargs in self.observers:
            if (interval > 0 and self.nsteps % interval == 0) or (interval <= 0 and self.nsteps == abs(interval)):
                function(*args, **kwargs)

    def converged(self, gradient=None):
        return self.nsteps >= self.max_steps

    def log(self):
        return None

    # -- ASE's helpers (class surface of ase.md.md.MolecularDynamics / BaseDynamics) ---------------

    # ASE's ``process_temperature`` as a static method, exactly as ASE exposes it.
    _process_temperature = staticmethod(process_temperature)

    def _get_com_velocity(self, velocity):
        """The centre-of-mass velocity of ``velocity`` [N,3] (ASE's helper): sum_i m_i v_i / M."""
        return np.dot(self.masses.ravel(), velocity) / self.masses.sum()

    def _refresh_properties(self):
        """As ASE: make sure the forces are cached for the observers (they always are after a chunk)."""
        for a in self._atoms_list:
            a.get_forces()

    def _get_gradient(self, forces=None):
        """The energy gradient ``-forces`` (flattened, eV/A) of the atoms, as ASE's optimizer helper."""
        if forces is not None:
            warnings.warn("Please do not pass forces to step().  This argument will be removed in ase 3.28.0.")
            return -np.asarray(forces).ravel()
        return -self._first_atoms().get_forces().ravel()

    @contextlib.contextmanager
    def _opentraj(self):
        """The attached trajectory, open for appending (ASE's helper; one replica's file)."""
        from ase.io.trajectory import Trajectory

        assert self._traj_targets is not None, "no trajectory attached"
        target = self._first(self._traj_targets, "trajectory")
        if hasattr(target, "write"):
            yield target
            return
        with Trajectory(target, master=self._master, mode="a") as traj:
            yield traj

    def _traj_is_empty(self):
        with self._opentraj() as traj:
            return len(traj) == 0

    def step(self, forces=None):
        """One time step, as ASE's ``step()``: the atoms move on by ``dt``; ``nsteps`` and the observers
        are left alone (``run`` counts and observes). Returns the new forces (eV/A) where ASE's class
        does (VelocityVerlet, Langevin, Bussi), else None (the other classes' ``step()`` takes no
        argument, as ASE's). The step is the compiled chunk program with one step (no recompilation
        between ``step()`` and ``run()``). ``forces``: ASE's deprecated argument; jaxpto steps with the
        forces it computed, so only those are accepted."""
        return self._step(forces)

    def _step(self, forces=None):
        if forces is not None:
            current = np.asarray(self._first_atoms().get_forces(), float)
            if np.shape(forces) != current.shape or not np.allclose(forces, current, rtol=1e-6, atol=1e-8):
                raise NotImplementedError(
                    "jaxpto.md steps with the forces it computed itself; step(forces=...) with other forces "
                    "is not supported (ASE deprecates the argument too): call step() without it")
        if self._state is None:
            self._build()
        else:
            self._reread(between_runs=True)
        for chunk in self._chunks(1, next_stop=None):
            self._state = chunk.state
        self._time_elapsed += self.dt
        self._write_back()
        if self._step_returns_forces:
            return self._each(lambda a: a.get_forces(md=True))
        return None

    # -- helpers for one Atoms or a list of replicas --------------------------------------------

    def _first_atoms(self):
        return self._atoms_list[0]

    def _first(self, items, what):
        if len(items) != 1:
            raise ValueError(f"this dynamics runs {len(items)} replicas, each with its own {what}; "
                             "ASE's single-Atoms helper does not apply")
        return items[0]

    def _each(self, fn):
        """``fn(atoms)`` for one Atoms (as ASE), or the list of ``fn(atoms_r)`` for replicas."""
        return fn(self.atoms) if self._single else [fn(a) for a in self._atoms_list]

    def irun(self, steps=50):
        """As ASE's ``MolecularDynamics.irun``: yields after every step (each step is then one compiled
        call, so ``run`` is the fast path: it compiles the steps between two observer events together)."""
        return self._irun(steps, per_step=True)

    def run(self, steps=50):
        converged = steps == 0
        for converged in self._irun(steps, per_step=False):
            pass
        return converged

    def _irun(self, steps, per_step):
        self.max_steps = self.nsteps + steps
        if self._state is None:
            self._build()
        else:
            self._reread(between_runs=True)
        if self.nsteps == 0:
            self._write_back()
            self.call_observers()
            self._reread(between_runs=False)
        yield self.nsteps == self.max_steps
        if self.nsteps >= self.max_steps:
            return
        base = self.nsteps

        def next_stop(done):
            return done + 1 if per_step else self._next_event(base + done) - base

        for chunk in self._chunks(self.max_steps - base, next_stop=next_stop):
            self._time_elapsed += (base + chunk.done - self.nsteps) * self.dt
            self.nsteps = base + chunk.done
            self._state = chunk.state
            self._write_back()
            self.call_observers()
            self._reread(between_runs=False)
            chunk.state = self._state
            yield self.nsteps == self.max_steps

    def _chunks(self, n_steps, next_stop):
        """The one driver (:func:`jaxpto.simulate.chunks`) on this object's integrator and state."""
        return simulate.chunks(self._integrator, self._state, n_steps, chunk_size=self.chunk_size,
                               next_stop=next_stop, on_unhealthy="warn", reference_lengths=self._start_lengths,
                               reported=self._reported)

    def _next_event(self, n: int) -> int:
        """The step (absolute) of the next observer event after ``n``, at most ``n + chunk_size``."""
        target = min(self.max_steps, n + self.chunk_size)
        for _, interval, _, _ in self.observers:
            if interval > 0:
                nxt = (n // interval + 1) * interval
            else:
                nxt = abs(interval) if abs(interval) > n else None
            if nxt is not None:
                target = min(target, nxt)
        return target

    # -- model and state ------------------------------------------------------

    def _build(self):
        from jaxpto.calculator import ase_callback_model
        from jaxpto.simulate import state_from_atoms

        model, kind = _resolve_replicas(self._atoms_list)
        state = force_fn = None
        if kind in ("twin", "bridge", "native"):
            state, force_fn, kind = _checked_state(self, model, kind)
        if kind == "callback":
            calc = self._atoms_list[0].calc
            warnings.warn(f"jaxpto.md: {type(calc).__name__} is not a JAX model; it is called on the host through "
                          "jax.pure_callback every step (correct but slower; use a JaxptoCalculator for speed)",
                          stacklevel=3)
            model = ase_callback_model([a.calc for a in self._atoms_list], self._atoms_list[0].copy(),
                                       self._needs_stress, extras=self._callback_extras())
        if state is None:
            state, force_fn = state_from_atoms(self._atoms_list, model, seed=self.seed, dtype=self.dtype)
        _check_start(state, self._atoms_list)
        missing = _unsimulated_results(self, model)
        if missing:
            calc = self._atoms_list[0].calc
            warnings.warn(f"jaxpto.md: {type(calc).__name__} also reports {missing}, which jaxpto's model of it "
                          "does not compute: atoms.calc.results and trajectory frames lack them (the calculator "
                          "recomputes them on request, e.g. atoms.calc.get_property(name, atoms))", stacklevel=3)
        self.force_kind = kind
        self._model_obj = model
        self._integrator_force_fn = force_fn
        self._integrator = self._exchanging(self._make_integrator(force_fn))
        self._integrator_dt = self.dt
        self._state = self._init_state(self._integrator, state)
        # The blow-up rules compare with the box at the first run, and report a replica once per object.
        self._start_lengths = np.linalg.norm(np.asarray(state.cell, dtype=float), axis=-1)
        self._reported = set()

    def _callback_extras(self) -> dict:
        """``{name: shape per replica}`` of the results beyond energy/forces/stress that the calculator
        stores on the first configuration (among ASE's properties: ``energies``, ``magmoms``,
        ``charges``, ...), for the callback model to return every step; the calculator's dtypes and
        shapes become the results template."""
        from ase.calculators.calculator import PropertyNotImplementedError, all_properties

        first = self._atoms_list[0]
        a = first.copy()
        a.calc = first.calc
        try:
            a.get_potential_energy()
            a.get_forces()
            if a.cell.rank == 3 and all(a.pbc):
                a.get_stress()
        except PropertyNotImplementedError:
            pass
        except Exception:  # noqa: BLE001 - a broken start: the callback model's own call reports it
            return {}
        self._results_template = _results_template(a.calc)
        return {k: shape for k, (_, shape) in self._results_template.items()
                if k in all_properties and k not in MAIN_RESULTS}

    def _exchanging(self, integrator):
        """With ``swap_interval``: temperature replica exchange between the replicas (see
        :mod:`jaxpto.integrators.replica_exchange`); the Atoms of replica ``r`` then always hold the
        configuration at temperature ``r``."""
        if self.swap_interval is None:
            return integrator
        from jaxpto.integrators.replica_exchange import replica_exchange
        return replica_exchange(integrator, self.swap_interval, seed=self.seed)

    def _state_or_built(self):
        """The state (built on first use), with the integrator's own variables."""
        if self._state is None:
            self._build()
        return self._unwrapped_state()

    def _unwrapped_state(self):
        """The state with the integrator's own variables (inside a replica-exchange wrapper's)."""
        v = self._state.variables
        return self._state.replace(variables=v.inner) if hasattr(v, "walker") and hasattr(v, "inner") else self._state

    def get_exchange_statistics(self) -> dict:
        """Replica exchange so far: acceptance per pair of neighbouring temperatures, the walker in
        each replica's Atoms, round trips per walker and the mean round-trip time (ps)."""
        from jaxpto.integrators.replica_exchange import exchange_statistics
        if self.swap_interval is None:
            raise RuntimeError("no replica exchange: give swap_interval= (steps) to the constructor")
        if self._state is None:
            self._build()
        return exchange_statistics(self._state, self.dt)

    def _set_parameters(self, **parameters):
        """New per-replica parameters for the running state (no recompilation); before the first run
        they are taken by ``_init_state`` from the attributes the caller already set."""
        if self._state is not None:
            self._state = self._integrator.set_parameters(self._state, **parameters)

    # -- state <-> atoms ------------------------------------------------------

    def _write_back(self):
        s = self._state
        pos = np.asarray(s.positions, dtype=float)
        mom = np.asarray(s.momenta, dtype=float)
        cell = np.asarray(s.cell, dtype=float)
        energy = np.asarray(s.energy, dtype=float)
        forces = np.asarray(s.forces, dtype=float)
        stress = np.asarray(s.stress, dtype=float)
        extras = {k: np.asarray(v) for k, v in s.extras.items()}
        finite = np.all(np.isfinite(pos), axis=(1, 2))
        written = []
        for r, a in enumerate(self._atoms_list):
            a.set_cell(cell[r], scale_atoms=False)
            a.set_positions(pos[r], apply_constraint=False)
            a.set_momenta(mom[r], apply_constraint=False)
            self._set_results(a, energy[r], forces[r], stress[r], finite[r], self._results_template,
                              {k: v[r] for k, v in extras.items()})
            written.append((a.positions.copy(), a.get_momenta().copy(), a.cell.array.copy()))
        self._written = written

    @staticmethod
    def _set_results(a, energy, forces, stress, finite, template=None, extras=None):
        """The simulated results in ``a.calc``'s cache, with the dtypes and shapes of ``template``
        (:func:`_results_template`; the calculator's own on the first configuration), else ASE's
        defaults (float64; stress as a Voigt 6-vector). ``extras``: the model's other results for
        this replica (``MDState.extras``, e.g. ``energies``, ``magmoms``), stored under their names;
        a 3x3 per-atom or per-structure tensor whose template is a Voigt 6-vector (``stresses``)
        is stored as ASE's calculators store it.

        A replica whose coordinates are not finite gets a :class:`NonFiniteStateCalculator` holding
        NaN results (the model's numbers at NaN positions mean nothing, and ASE's own calculators
        would recompute at NaN positions, since NaN != NaN reads as "the atoms changed", and some
        return finite garbage); it hands back to the user's calculator once the coordinates are
        finite again.
        """
        calc = a.calc
        if isinstance(calc, NonFiniteStateCalculator):
            calc = calc.calculator
        if not finite:
            results = {"energy": np.nan, "free_energy": np.nan, "forces": np.full_like(forces, np.nan)}
            if all(a.pbc):
                results["stress"] = np.full(6, np.nan)
            a.calc = NonFiniteStateCalculator(a, calc, **results)
            return
        a.calc = calc
        results = {"energy": float(energy), "free_energy": float(energy), "forces": forces.copy()}
        if a.cell.rank == 3 and all(a.pbc):
            results["stress"] = full_3x3_to_voigt_6_stress(stress)
        tensors = {"stress": stress}
        for key, value in (extras or {}).items():
            if template is not None and key not in template:
                continue  # the calculator does not report it here (e.g. LJ's stresses without a 3D cell)
            value = np.array(value, dtype=np.result_type(value.dtype, np.float64))
            if value.shape[-2:] == (3, 3):  # ASE's default for a 3x3 tensor: Voigt, as the stress
                tensors[key] = value
                value = full_3x3_to_voigt_6_stress(value)
            results[key] = value if value.shape else float(value)
        for key, (dtype, shape) in (template or {}).items():
            if key not in results:
                continue
            value = np.asarray(tensors[key] if key in tensors and shape[-2:] == (3, 3) else results[key])
            if value.shape != shape:  # a template that does not fit these results: ASE's defaults
                continue
            results[key] = value.astype(dtype) if shape else dtype.type(value)
        if isinstance(calc, BaseCalculator) and hasattr(calc, "results"):
            calc.atoms = a.copy()
            calc.results = results
        else:
            a.calc = SinglePointCalculator(a, **results)

    def _changes(self):
        pos_changed = mom_changed = False
        for a, (p, m, c) in zip(self._atoms_list, self._written):
            if not (_same(a.positions, p) and _same(a.cell.array, c)):
                pos_changed = True
            if not _same(a.get_momenta(), m):
                mom_changed = True
        return pos_changed, mom_changed

    def _reread(self, between_runs: bool):
        if self._written is None:
            return
        pos_changed, mom_changed = self._changes()
        if not (pos_changed or mom_changed):
            return
        if self._raises_on_changes:
            if pos_changed or not between_runs:
                raise NotImplementedError("You have modified the atoms since the last timestep.")
            # ASE does not check momenta between runs; it uses them as they are.
        elif not self._honours_changes:
            warnings.warn(f"{type(self).__name__}: the atoms were modified outside the dynamics; as in ASE, "
                          "these changes are overwritten by the integrator's own variables", stacklevel=3)
            self._write_back()
            return
        s = self._state
        dt = s.positions.dtype
        s = s.replace(momenta=jnp.asarray(np.stack([a.get_momenta() for a in self._atoms_list]), dt))
        if pos_changed:
            s = s.replace(positions=jnp.asarray(np.stack([a.positions for a in self._atoms_list]), dt),
                          cell=jnp.asarray(np.stack([a.cell.array for a in self._atoms_list]), dt))
            s = simulate.refresh_forces(s, self._integrator_force_fn)
        self._state = s
        if pos_changed:
            self._write_back()  # the calculator cache now holds the new forces
        else:
            self._written = [(p, a.get_momenta().copy(), c) for a, (p, m, c) in zip(self._atoms_list, self._written)]

    # -- to be provided by each class ----------------------------------------

    def _make_integrator(self, force_fn):
        raise NotImplementedError

    def _init_state(self, integrator, state):
        raise NotImplementedError


def _temperature_K(temperature, temperature_K, orig_unit):
    """ASE's ``process_temperature``, also for one value per replica."""
    if (temperature is not None) + (temperature_K is not None) != 1:
        raise TypeError("Exactly one of the parameters 'temperature', and 'temperature_K', must be given")
    if temperature is not None and np.ndim(temperature) > 0:
        warnings.warn(FutureWarning("Specify the temperature in K using the 'temperature_K' argument"))
        return np.asarray(temperature, float) / units.kB
    if temperature_K is not None and np.ndim(temperature_K) > 0:
        return np.asarray(temperature_K, float)
    return process_temperature(temperature, temperature_K, orig_unit)

# ---------------------------------------------------------------------------
# The classes
# ---------------------------------------------------------------------------


class VelocityVerlet(_JaxDynamics):
    """NVE velocity Verlet, as ``ase.md.verlet.VelocityVerlet`` (see :mod:`jaxpto.md`)."""

    def __init__(self, atoms, timestep, trajectory=None, logfile=None, loginterval=1, *,
                 append_trajectory=False, master=None, comm=None, dtype=None, seed=None):
        super().__init__(atoms, timestep, trajectory=trajectory, logfile=logfile, loginterval=loginterval,
                         append_trajectory=append_trajectory, dtype=dtype, seed=seed, master=master, comm=comm)

    def _make_integrator(self, force_fn):
        from jaxpto.integrators.verlet import velocity_verlet
        return velocity_verlet(force_fn, self.dt)

    def _init_state(self, integrator, state):
        return integrator.init(state)


class Langevin(_JaxDynamics):
    """Langevin NVT, as ``ase.md.langevin.Langevin`` (jaxpto's own PRNG: ``seed=``; ``rng`` only seeds it)."""

    _lgv_version = 5  # ASE's version of its Langevin propagator (Asap reads it); jaxpto implements that one
    _draws_random = True

    def __init__(self, atoms, timestep, temperature=None, friction=None, fixcm=True, *, temperature_K=None,
                 rng=None, trajectory=None, logfile=None, loginterval=1, append_trajectory=False, master=None,
                 comm=None, dtype=None, seed=None, swap_interval=None):
        if friction is None:
            raise TypeError("Missing 'friction' argument.")
        self.fr = friction
        self.temp_K = _temperature_K(temperature, temperature_K, "eV")
        self.temp = units.kB * np.asarray(self.temp_K)
        self.fix_com = fixcm
        self.rng = np.random if rng is None else rng
        super().__init__(atoms, timestep, trajectory=trajectory, logfile=logfile, loginterval=loginterval,
                         append_trajectory=append_trajectory, dtype=dtype, seed=seed, rng=rng,
                         swap_interval=swap_interval, master=master, comm=comm)

    def todict(self):
        d = super().todict()
        d.update({"temperature_K": _plain(self.temp_K), "friction": _plain(self.fr), "fixcm": self.fix_com})
        return d

    def _make_integrator(self, force_fn):
        from jaxpto.integrators.langevin import langevin
        return langevin(force_fn, self.dt, fixcm=self.fix_com)

    def _init_state(self, integrator, state):
        return integrator.init(state, temperature_K=self.temp_K, friction=self.fr)

    def set_timestep(self, timestep):
        self.dt = float(timestep)
        self.updatevars()

    def set_friction(self, friction):
        self.fr = friction
        self.updatevars()

    def set_temperature(self, temperature=None, temperature_K=None):
        self.temp_K = _temperature_K(temperature, temperature_K, "eV")
        self.temp = units.kB * np.asarray(self.temp_K)
        self.updatevars()

    def updatevars(self):
        """As ASE: take ``self.dt``, ``self.temp`` (eV) and ``self.fr`` (1/ASE time) as they are now.

        Temperature and friction are per-replica state (no recompilation); ``dt`` is a constant of
        the compiled step, so a new time step builds (and compiles) a new program."""
        self.temp_K = np.asarray(self.temp) / units.kB if np.ndim(self.temp) else float(self.temp) / units.kB
        if self._state is None:
            return
        if self.dt != self._integrator_dt:
            self._integrator = self._exchanging(self._make_integrator(self._integrator_force_fn))
            self._integrator_dt = self.dt
        self._set_parameters(temperature_K=self.temp_K, friction=self.fr)


class Bussi(_JaxDynamics):
    """Bussi velocity rescaling, as ``ase.md.bussi.Bussi`` (jaxpto's own PRNG: ``seed=``; ``rng`` only seeds it)."""

    _draws_random = True

    def __init__(self, atoms, timestep, temperature_K, taut, rng=None, *, trajectory=None, logfile=None,
                 loginterval=1, append_trajectory=False, master=None, comm=None, dtype=None, seed=None,
                 swap_interval=None):
        self.temp_K = temperature_K
        self.taut = taut
        self.rng = np.random if rng is None else rng
        atoms_list = [atoms] if not isinstance(atoms, (list, tuple)) else list(atoms)
        for a in atoms_list:
            if np.isclose(a.get_kinetic_energy(), 0.0, rtol=0, atol=1e-12):
                raise ValueError("Initial kinetic energy is zero. Please set the initial velocities before "
                                 "running Bussi NVT.")
        super().__init__(atoms, timestep, trajectory=trajectory, logfile=logfile, loginterval=loginterval,
                         append_trajectory=append_trajectory, dtype=dtype, seed=seed, rng=rng,
                         swap_interval=swap_interval, master=master, comm=comm)
        # ASE's public attributes (same order of operations, ASE's test compares with ==).
        self.temp = temperature_K * units.kB if np.ndim(temperature_K) == 0 else units.kB * np.asarray(temperature_K)
        self.ndof = atoms_list[0].get_number_of_degrees_of_freedom()
        self.target_kinetic_energy = 0.5 * self.temp * self.ndof

    def _make_integrator(self, force_fn):
        from jaxpto.integrators.bussi import bussi
        return bussi(force_fn, self.dt)

    def _init_state(self, integrator, state):
        return integrator.init(state, temperature_K=self.temp_K, taut=self.taut)

    @property
    def transferred_energy(self):
        v = self._unwrapped_state().variables.transferred_energy if self._state is not None else np.zeros(1)
        v = np.asarray(v, float)
        return float(v[0]) if self._single else v


class NoseHooverChainNVT(_JaxDynamics):
    """Nose-Hoover chain NVT, as ``ase.md.nose_hoover_chain.NoseHooverChainNVT``."""

    _honours_changes = False

    _step_returns_forces = False

    def __init__(self, atoms, timestep, temperature_K, tdamp, tchain=3, tloop=1, *, trajectory=None,
                 logfile=None, loginterval=1, append_trajectory=False, master=None, comm=None, dtype=None,
                 seed=None, swap_interval=None):
        self.temperature_K, self.tdamp, self.tchain, self.tloop = temperature_K, tdamp, tchain, tloop
        super().__init__(atoms, timestep, trajectory=trajectory, logfile=logfile, loginterval=loginterval,
                         append_trajectory=append_trajectory, dtype=dtype, seed=seed, swap_interval=swap_interval,
                         master=master, comm=comm)

    def _make_integrator(self, force_fn):
        from jaxpto.integrators.nose_hoover_chain import nose_hoover_chain_nvt
        return nose_hoover_chain_nvt(force_fn, self.dt, tchain=self.tchain, tloop=self.tloop)

    def _init_state(self, integrator, state):
        return integrator.init(state, temperature_K=self.temperature_K, tdamp=self.tdamp)

    def get_conserved_energy(self):
        from jaxpto.integrators.nose_hoover_chain import nhc_conserved_energy
        if self._state is None:
            self._build()
        return _scalar_or_list(nhc_conserved_energy(self._unwrapped_state()), self._single)

    def step(self):
        """One time step, as ASE's ``step()`` (see :meth:`VelocityVerlet.step`); returns None."""
        return self._step()

    def _update_atoms(self):
        """As ASE: the integrator's positions and momenta (and cell) into the atoms."""
        if self._state is None:
            self._build()
        self._write_back()

    def _get_forces(self):
        """As ASE: the atoms brought up to date, then their forces (eV/A)."""
        self._update_atoms()
        return self._each(lambda a: a.get_forces(md=True))


class MTKNPT(_JaxDynamics):
    """MTK NPT with a fully flexible cell, as ``ase.md.nose_hoover_chain.MTKNPT``."""

    _honours_changes = False
    _needs_stress = True
    _mask = None

    _step_returns_forces = False

    def __init__(self, atoms, timestep, temperature_K, pressure_au, tdamp, pdamp, tchain=3, pchain=3, tloop=1,
                 ploop=1, *, trajectory=None, logfile=None, loginterval=1, append_trajectory=False, master=None,
                 comm=None, dtype=None, seed=None, swap_interval=None):
        self.temperature_K, self.pressure_au, self.tdamp, self.pdamp = temperature_K, pressure_au, tdamp, pdamp
        self.tchain, self.pchain, self.tloop, self.ploop = tchain, pchain, tloop, ploop
        super().__init__(atoms, timestep, trajectory=trajectory, logfile=logfile, loginterval=loginterval,
                         append_trajectory=append_trajectory, dtype=dtype, seed=seed, swap_interval=swap_interval,
                         master=master, comm=comm)

    def _make_integrator(self, force_fn):
        from jaxpto.integrators.mtk import mtk_npt
        return mtk_npt(force_fn, self.dt, tchain=self.tchain, pchain=self.pchain, tloop=self.tloop,
                       ploop=self.ploop, mask=self._mask)

    def _init_state(self, integrator, state):
        return integrator.init(state, temperature_K=self.temperature_K, pressure_au=self.pressure_au,
                               tdamp=self.tdamp, pdamp=self.pdamp)

    def get_conserved_energy(self):
        from jaxpto.integrators.mtk import mtk_conserved_energy
        if self._state is None:
            self._build()
        return _scalar_or_list(mtk_conserved_energy(self._unwrapped_state()), self._single)

    @property
    def mask(self):
        """As ASE: None for the fully flexible cell, the (a, b, c) booleans for :class:`MaskedMTKNPT`."""
        return self._mask

    @mask.setter
    def mask(self, mask):
        raise AttributeError("MTKNPT has no mask; use MaskedMTKNPT(..., mask=(a, b, c))")

    step = NoseHooverChainNVT.step
    _update_atoms = NoseHooverChainNVT._update_atoms
    _get_forces = NoseHooverChainNVT._get_forces

    def _variables(self):
        if self._state is None:
            self._build()
        return self._unwrapped_state().variables

    def _get_volume(self):
        """As ASE: the cell volume (A^3)."""
        return _scalar_or_list(np.abs(np.linalg.det(np.asarray(self._state_or_built().cell, float))), self._single)

    def _get_stress(self):
        """As ASE: minus the stress with its ideal-gas part, 3x3 (eV/A^3; positive = pressure)."""
        self._update_atoms()
        return self._each(lambda a: -a.get_stress(voigt=False, include_ideal_gas=True))

    @property
    def _p_g(self):
        """The cell momenta as a 3x3 matrix (eV * ASE time), as ASE's ``_p_g``."""
        from jaxpto.integrators.mtk import _full_p_g
        p_g = np.asarray(_full_p_g(self._variables(), self._mask), float)
        return p_g[0] if self._single else p_g

    def _get_cell_kinetic_energy(self):
        """As ASE: the kinetic energy of the cell momenta, sum(p^2) / (2 W) (eV)."""
        v = self._variables()
        p = np.asarray(v.p_cell, float)
        return _scalar_or_list(np.sum(p.reshape(p.shape[0], -1) ** 2, axis=1) / (2 * np.asarray(v.W, float)),
                               self._single)


class MaskedMTKNPT(MTKNPT):
    """MTK NPT with cell fluctuations along the masked axes only, as ``ase.md.nose_hoover_chain.MaskedMTKNPT``.

    ``mask=(a, b, c)`` booleans (True: that axis fluctuates). jaxpto implements the documented
    behaviour; ASE 3.29's own class ignores a tuple mask with any False in it (NumPy reads a
    tuple of bools as indices), so compare with ASE by passing ``np.array(mask)`` there.
    """

    def __init__(self, *args, mask, **kwargs):
        self.mask = mask
        super().__init__(*args, **kwargs)

    @property
    def mask(self):
        """The (a, b, c) booleans of the axes that fluctuate."""
        return self._mask

    @mask.setter
    def mask(self, mask):
        if getattr(self, "_state", None) is not None:
            raise RuntimeError("MaskedMTKNPT: the mask is fixed once the dynamics has run (the barostat's "
                               "degrees of freedom follow it); set it before the first run")
        self._mask = tuple(bool(m) for m in mask)


class IsotropicMTKNPT(MTKNPT):
    """MTK NPT with isotropic volume fluctuations, as ``ase.md.nose_hoover_chain.IsotropicMTKNPT``."""

    def _make_integrator(self, force_fn):
        from jaxpto.integrators.mtk import isotropic_mtk_npt
        return isotropic_mtk_npt(force_fn, self.dt, tchain=self.tchain, pchain=self.pchain, tloop=self.tloop,
                                 ploop=self.ploop)

    def _get_pressure(self):
        """As ASE: the pressure with its ideal-gas part, -tr(stress) / 3 (eV/A^3)."""
        self._update_atoms()
        return self._each(lambda a: -np.trace(a.get_stress(voigt=False, include_ideal_gas=True)) / 3)

    @property
    def _p_g(self):
        raise AttributeError("IsotropicMTKNPT has one volume momentum (p_eps), not a 3x3 cell momentum")

    def _get_cell_kinetic_energy(self):
        """The kinetic energy of the volume momentum, p_eps^2 / (2 W) (eV)."""
        v = self._variables()
        return _scalar_or_list(np.asarray(v.p_eps, float) ** 2 / (2 * np.asarray(v.W, float)), self._single)


class MelchionnaNPT(_JaxDynamics):
    """Melchionna NPT, as ``ase.md.melchionna.MelchionnaNPT`` (and ``ase.md.npt.NPT``).

    As ASE, the centre-of-mass momentum is removed from the atoms at construction
    (``p -= sum(p) / N``, with ASE's warning on standard error when it was not small) and the
    backwards start-up step is taken at the first ``run`` (or ``initialize()``).

    ASE's attributes of the integrator are properties on the compiled state: ``eta`` (strain
    rate, 1/ASE time), ``zeta`` (thermostat friction), ``zeta_integrated``, ``h``/``h_past``
    (cell now and one step back, A), ``eta_past``, ``zeta_past``, ``tfact``, ``pfact``,
    ``desiredEkin`` (eV), ``timeelapsed``, ``initialized``. Set before the first run, ``eta``,
    ``zeta``, ``zeta_integrated``, ``tfact``, ``pfact`` and ``desiredEkin`` are what the start-up
    step starts from (as ASE's ``initialize()`` reads them; ``read_from_trajectory`` relies on
    it), while the ``*_past`` values and ``h`` are recomputed there (as ASE does); set later,
    they replace the state's (the next step uses them, as ASE's next step does). ``mask`` and
    ``frac_traceless`` are constants of the compiled step: changing them after the first run
    builds (and compiles) a new program. For a list of replicas each property holds one value
    per replica.
    """

    classname = "MelchionnaNPT"  # written into trajectories' descriptions, as ASE
    _npt_version = 2  # ASE's version number of this integrator (Asap reads it); jaxpto implements that one
    _raises_on_changes = True
    _needs_stress = True
    _step_returns_forces = False

    def __init__(self, atoms, timestep, temperature=None, externalstress=None, ttime=None, pfactor=None, *,
                 temperature_K=None, mask=None, trajectory=None, logfile=None, loginterval=1,
                 append_trajectory=False, dtype=None, seed=None,
                 swap_interval=None):
        self._pending = {}  # start values set before the first run (see the class docstring)
        self._frac_traceless = 1
        super().__init__(atoms, timestep, trajectory=trajectory, logfile=logfile, loginterval=loginterval,
                         append_trajectory=append_trajectory, dtype=dtype, seed=seed, swap_interval=swap_interval)
        if externalstress is None and pfactor is not None:
            raise TypeError("Missing 'externalstress' argument.")
        self.zero_center_of_mass_momentum(verbose=1)
        self.temperature_K = _temperature_K(temperature, temperature_K, "eV")
        self.temperature = units.kB * np.asarray(self.temperature_K)
        self.externalstress = None
        if externalstress is not None:
            self.set_stress(externalstress)
        self.set_mask(mask)
        self.ttime = ttime
        self.pfactor_given = pfactor

    # -- ASE's setters and getters ------------------------------------------------------------

    def set_temperature(self, temperature=None, *, temperature_K=None):
        """As ASE: the new temperature (K; ``temperature`` in eV is deprecated) also recomputes the
        constants (``_calculateconstants``, the barostat's with the current cell). No recompilation."""
        self.temperature_K = _temperature_K(temperature, temperature_K, "eV")
        self.temperature = units.kB * np.asarray(self.temperature_K)
        self._calculateconstants()

    def set_stress(self, stress):
        """As ASE: a pressure, a Voigt 6-vector or a symmetric 3x3 (eV/A^3, ASE sign); per replica too.
        Stored as ASE stores it (the Voigt 6-vector, or one per replica)."""
        from jaxpto.integrators.melchionna import _external_stress

        R = len(self._atoms_list)
        voigt = _external_stress(stress, R)  # raises ASE's errors (shape, symmetry)
        self.externalstress = voigt[0] if self._single else voigt
        self._set_parameters(externalstress=voigt)

    def set_mask(self, mask):
        """As ASE: None (all of the box may change), a 3-vector of 0/1 (``(1, 1, 0)``: the z length is
        fixed) or a symmetric 3x3 0/1 array of the strain components that may change; stored as
        ASE's 3x3 boolean ``mask``. After the first run this compiles a new program."""
        if mask is None:
            mask = np.ones((3,))
        if not hasattr(mask, "shape"):
            mask = np.array(mask)
        if mask.shape != (3,) and mask.shape != (3, 3):
            raise RuntimeError("The mask has the wrong shape (must be a 3-vector or 3x3 matrix)")
        mask = np.not_equal(mask, 0)
        self.mask = np.outer(mask, mask) if mask.shape == (3,) else mask
        self._rebuild_integrator()

    @property
    def frac_traceless(self):
        return self._frac_traceless

    @frac_traceless.setter
    def frac_traceless(self, value):
        self._frac_traceless = value
        self._rebuild_integrator()

    def set_fraction_traceless(self, fracTraceless):
        """As ASE: the fraction of the traceless part of the force on ``eta`` that is kept (0: the volume
        may change, the shape may not). After the first run this compiles a new program."""
        self.frac_traceless = fracTraceless

    def get_strain_rate(self):
        """As ASE: the strain rate ``eta`` as a triangular 3x3 matrix (1/ASE time)."""
        return np.array(self.eta, copy=True)

    def set_strain_rate(self, rate):
        """As ASE: set the strain rate (a triangular 3x3 matrix, 1/ASE time; per replica too). After
        the start-up step, ``h(t-dt)`` and ``eta(t-dt)`` are recomputed to match it (ASE's
        ``_initialize_eta_h``). ASE 3.29's own method calls a missing ``_triangular`` and raises
        AttributeError; this is the method as ASE documents it."""
        rate = np.asarray(rate, dtype=float)
        rates = rate if rate.ndim == 3 else rate[None]
        if not (rates.shape[1:] == (3, 3) and all(self._istriangular(r) for r in rates)):
            raise ValueError("Strain rate must be a triangular matrix.")
        self.eta = rate
        if self._state is not None:
            self._initialize_eta_h()

    def get_time(self):
        "Get the elapsed time."
        return self._time_elapsed

    def irun(self, steps):
        """As ASE's ``MelchionnaNPT.irun`` (``steps`` required): yields after every chunk (see :mod:`jaxpto.md`)."""
        return super().irun(steps)

    def run(self, steps):
        """As ASE's ``MelchionnaNPT.run`` (``steps`` required)."""
        return super().run(steps)

    def step(self):
        """One time step, as ASE's ``step()`` (the start-up step is taken first if needed); returns None."""
        return self._step()

    def get_center_of_mass_momentum(self):
        """As ASE: the sum of the momenta (amu A / ASE time), not mass weighted."""
        return self._each(lambda a: a.get_momenta().sum(0))

    def zero_center_of_mass_momentum(self, verbose=0):
        """As ASE: ``p_i -= sum_j p_j / N`` in the atoms (with ASE's warning if ``verbose`` and it was not small)."""
        for a in self._atoms_list:
            cm = a.get_momenta().sum(0)
            if verbose and np.sqrt(np.sum(cm * cm)) > 1e-4:
                self._warning(self.classname + ": Setting the center-of-mass momentum to zero "
                              "(was %.6g %.6g %.6g)" % tuple(cm))
            a.set_momenta(a.get_momenta() - cm / len(a))

    def forcecalculator(self):
        """As ASE: the atoms' forces (eV/A)."""
        return self._each(lambda a: a.get_forces(md=True))

    def stresscalculator(self):
        """As ASE: the atoms' stress with its ideal-gas part (Voigt, eV/A^3)."""
        return self._each(lambda a: a.get_stress(include_ideal_gas=True))

    def initialize(self):
        """As ASE: the backwards start-up step (called by the first ``run``); builds the compiled state."""
        if self._state is None:
            self._build()

    def have_the_atoms_been_changed(self):
        """As ASE: 1 (with ASE's warning) if the box or the positions were modified since the last step, else 0."""
        if self._written is None:
            return 0
        limit = 1e-10
        for a, (p, _, c) in zip(self._atoms_list, self._written):
            if np.max(np.abs(a.cell.array - c)) > limit:
                self._warning("The computational box has been modified.")
                return 1
            err = np.max(np.abs(a.positions - p)) if len(a) else 0.0
            if err > limit:
                self._warning("The atomic positions have been modified: " + str(err))
                return 1
        return 0

    def attach(self, function, interval=1, *args, **kwargs):
        """As ASE: a trajectory with ``set_extra_data`` (a BundleTrajectory) also stores the dynamics'
        data (``get_init_data`` once, ``get_data`` per frame), so that :meth:`read_from_trajectory`
        can restore it."""
        if hasattr(function, "set_extra_data"):
            from ase.md.npt import WeakMethodWrapper

            function.set_extra_data("npt_init", WeakMethodWrapper(self, "get_init_data"), once=True)
            function.set_extra_data("npt_dynamics", WeakMethodWrapper(self, "get_data"))
        super().attach(function, interval, *args, **kwargs)

    def get_init_data(self):
        """As ASE: what a new dynamics needs (dt, temperature in eV, constants, stress, mask, ...)."""
        return {"dt": self.dt, "temperature": self.temperature, "desiredEkin": self.desiredEkin,
                "externalstress": self.externalstress, "mask": self.mask, "ttime": self.ttime,
                "tfact": self.tfact, "pfactor_given": self.pfactor_given, "pfact": self.pfact,
                "frac_traceless": self.frac_traceless}

    def get_data(self):
        """As ASE: the dynamics' state (eta, zeta and their pasts, the cells, the elapsed time)."""
        self.initialize()
        return {"eta": self.eta, "eta_past": self.eta_past, "zeta": self.zeta, "zeta_past": self.zeta_past,
                "zeta_integrated": self.zeta_integrated, "h": self.h, "h_past": self.h_past,
                "timeelapsed": self.timeelapsed}

    @classmethod
    def read_from_trajectory(cls, trajectory, frame=-1, atoms=None):
        """As ASE: the dynamics and atoms of a BundleTrajectory written with this dynamics attached
        (``'name.bundle'`` or an open BundleTrajectory); ``frame`` (default: the last)."""
        if isinstance(trajectory, str):
            if trajectory.endswith("/"):
                trajectory = trajectory[:-1]
            if trajectory.endswith(".bundle"):
                from ase.io.bundletrajectory import BundleTrajectory
                trajectory = BundleTrajectory(trajectory)
            else:
                raise ValueError(f"Cannot open '{trajectory}': unsupported file format")
        if atoms is None:
            atoms = trajectory[frame]
        init_data = trajectory.read_extra_data("npt_init", 0)
        frame_data = trajectory.read_extra_data("npt_dynamics", frame)
        dyn = cls(atoms, timestep=init_data["dt"], temperature=init_data["temperature"],
                  externalstress=init_data["externalstress"], ttime=init_data["ttime"],
                  pfactor=init_data["pfactor_given"], mask=init_data["mask"])
        dyn.desiredEkin = init_data["desiredEkin"]
        dyn.tfact = init_data["tfact"]
        dyn.pfact = init_data["pfact"]
        dyn.frac_traceless = init_data["frac_traceless"]
        for k, v in frame_data.items():
            setattr(dyn, k, v)
        return dyn, atoms

    def attach_atoms(self, atoms):
        """As ASE: only for a dynamics without atoms; a jaxpto dynamics always has its atoms."""
        raise RuntimeError("Cannot call attach_atoms on a dynamics which already has atoms.")

    # -- ASE's helper methods ---------------------------------------------------------------------

    @staticmethod
    def _isuppertriangular(m) -> bool:
        "Check that a 3x3 matrix is of upper triangular form."
        return m[1, 0] == m[2, 0] == m[2, 1] == 0.0

    @classmethod
    def _islowertriangular(cls, m) -> bool:
        "Check that a 3x3 matrix is of lower triangular form."
        return cls._isuppertriangular(m.T)

    @classmethod
    def _istriangular(cls, m) -> bool:
        "Check that a 3x3 matrix is of triangular form."
        return cls._isuppertriangular(m) or cls._islowertriangular(m)

    @staticmethod
    def _issymmetric(m, tol=1e-12) -> bool:
        "Check that a 3x3 matrix is symmetric (what ASE's set_stress asks for; ASE 3.29 lacks it)."
        m = np.asarray(m, dtype=float)
        return bool(np.allclose(m, m.T, rtol=0, atol=tol * max(1.0, np.abs(m).max())))

    def _getbox(self):
        "Get the computational box."
        return self._each(lambda a: a.get_cell())

    def _getmasses(self):
        "Get the masses as an Nx1 array."
        return np.reshape(self._first_atoms().get_masses(), (-1, 1))

    def _getnatoms(self):
        "Get the number of atoms."
        return len(self._first_atoms())

    def _separatetrace(self, mat):
        """As ASE: ``(trace part, traceless part)`` of a 3x3 matrix."""
        trace_part = ((mat[0][0] + mat[1][1] + mat[2][2]) / 3.) * np.identity(3)
        return trace_part, mat - trace_part

    def _warning(self, text):
        "Emit a warning (on standard error, as ASE)."
        sys.stderr.write("WARNING: " + text + "\n")
        sys.stderr.flush()

    def _synchronize(self):
        """ASE's hook for parallel simulations; a serial run has nothing to synchronise."""

    def _maketriangular(self, sixvector):
        "Make 3x3 triangular matrix from a 6-vector (the triangle of the current box, as ASE)."
        h = np.asarray(self.h if self._single else self.h[0])
        if self._isuppertriangular(h):
            return np.array(((sixvector[0], sixvector[5], sixvector[4]),
                             (0, sixvector[1], sixvector[3]),
                             (0, 0, sixvector[2])))
        if self._islowertriangular(h):
            return np.array(((sixvector[0], 0, 0),
                             (sixvector[5], sixvector[1], 0),
                             (sixvector[4], sixvector[3], sixvector[2])))
        return None

    def _setbox_and_positions(self, h, q):
        """As ASE: set the box ``h`` and the positions ``(q + 1/2) h`` from scaled coordinates ``q``."""
        a = self._first(self._atoms_list, "Atoms")
        a.set_cell(h)
        a.set_positions(np.dot(q + 0.5, h))

    def _calculateconstants(self):
        """As ASE: ``tfact``, ``pfact`` (with the current box) and ``desiredEkin`` from ``temperature``,
        ``ttime`` and ``pfactor_given`` as they are now (a thermostat or barostat switched on or off
        with ``ttime``/``pfactor_given = None``). No recompilation."""
        for key in ("tfact", "pfact", "desired_ekin"):
            self._pending.pop(key, None)
        self._set_parameters(temperature_K=self.temperature_K, ttime=self.ttime, pfactor=self.pfactor_given)

    def _initialize_eta_h(self):
        """As ASE: ``h(t-dt)`` and ``eta(t-dt)`` recomputed from the strain rate ``eta`` and the current stress."""
        from jaxpto.integrators.melchionna import melchionna_strain_rate

        if self._state is None:
            return
        v = self._unwrapped_state().variables
        self._replace_variables(lambda s: melchionna_strain_rate(s, np.asarray(v.eta), dt=self.dt, mask=self.mask,
                                                                 frac_traceless=self.frac_traceless).variables)

    # -- the integrator's variables as ASE's attributes ------------------------------------------

    def _replace_variables(self, fn):
        """``fn(unwrapped state) -> variables`` put back (inside a replica-exchange wrapper's variables)."""
        inner = fn(self._unwrapped_state())
        v = self._state.variables
        if hasattr(v, "walker") and hasattr(v, "inner"):
            inner = v.replace(inner=inner)
        self._state = self._state.replace(variables=inner)

    def _host_default(self, key):
        """What ASE's ``__init__`` sets before the start-up step (constants from the current box)."""
        R = len(self._atoms_list)
        n = len(self._first_atoms())
        if key == "eta":
            return np.zeros((R, 3, 3))
        if key in ("zeta", "zeta_integrated"):
            return np.zeros(R)
        kT = np.broadcast_to(units.kB * np.asarray(self.temperature_K, float), (R,))
        if key == "desired_ekin":
            return 1.5 * (n - 1) * kT
        if key == "tfact":
            ttime = self.ttime
            return np.zeros(R) if ttime is None else 2.0 / (3 * n * kT * np.asarray(ttime, float) ** 2)
        if key == "pfact":
            if self.pfactor_given is None:
                return np.zeros(R)
            det = np.array([np.linalg.det(a.cell.array) for a in self._atoms_list])
            return 1.0 / (np.asarray(self.pfactor_given, float) * det)
        raise KeyError(key)

    def _variable(self, key, state_name=None):
        if self._state is not None:
            value = np.asarray(getattr(self._unwrapped_state().variables, state_name or key), float)
        else:
            value = np.asarray(self._pending.get(key, self._host_default(key)), float)
        return value[0] if self._single else value

    def _set_variable(self, key, value, state_name=None):
        R = len(self._atoms_list)
        value = np.asarray(value, dtype=float)
        shape = (3, 3) if key in ("eta", "eta_past", "h_past") else ()
        per_replica = np.broadcast_to(value, (R,) + shape) if value.shape == shape else value
        if per_replica.shape != (R,) + shape:
            raise ValueError(f"{key} must have shape {shape} (or one per replica), got {value.shape}")
        if self._state is None:
            self._pending[key] = per_replica.copy()
            return
        dt = self._state.positions.dtype
        self._replace_variables(lambda s: s.variables.replace(**{state_name or key: jnp.asarray(per_replica, dt)}))

    eta = property(lambda self: self._variable("eta"), lambda self, v: self._set_variable("eta", v),
                   doc="Strain rate (triangular 3x3, 1/ASE time).")
    zeta = property(lambda self: self._variable("zeta"), lambda self, v: self._set_variable("zeta", v),
                    doc="Thermostat friction (1/ASE time).")
    zeta_integrated = property(lambda self: self._variable("zeta_integrated"),
                               lambda self, v: self._set_variable("zeta_integrated", v),
                               doc="Time integral of zeta.")
    tfact = property(lambda self: self._variable("tfact"), lambda self, v: self._set_variable("tfact", v),
                     doc="2 / (3 N kT ttime^2), 0 without thermostat.")
    pfact = property(lambda self: self._variable("pfact"), lambda self, v: self._set_variable("pfact", v),
                     doc="1 / (pfactor det h_0), 0 without barostat.")
    desiredEkin = property(lambda self: self._variable("desired_ekin"),
                           lambda self, v: self._set_variable("desired_ekin", v),
                           doc="1.5 (N - 1) kT (eV).")

    def _past(key):
        def get(self):
            self.initialize()
            return self._variable(key)

        def set_(self, value):
            if self._state is None:
                return  # ASE's start-up step recomputes it from eta, zeta and the box
            self._set_variable(key, value)
        return property(get, set_, doc=f"{key} (one step back), as ASE's attribute.")

    eta_past = _past("eta_past")
    zeta_past = _past("zeta_past")
    h_past = _past("h_past")
    del _past

    @property
    def h(self):
        """The box (rows = lattice vectors, A), as ASE's attribute."""
        cell = np.asarray(self._state.cell, float) if self._state is not None else \
            np.stack([a.cell.array for a in self._atoms_list])
        return cell[0] if self._single else cell

    @h.setter
    def h(self, value):
        if self._state is not None:
            raise AttributeError("MelchionnaNPT.h is the box of the running state; change the atoms' cell "
                                 "between runs instead (ASE then refuses to continue, as jaxpto does)")
        # before the start-up step ASE takes the box from the atoms: nothing to keep

    @property
    def timeelapsed(self):
        return self._time_elapsed

    @timeelapsed.setter
    def timeelapsed(self, value):
        self._time_elapsed = float(value)

    @property
    def initialized(self):
        """1 once the start-up step was taken (ASE's flag)."""
        return int(self._state is not None)

    # -- jaxpto -------------------------------------------------------------------------------------

    def _rebuild_integrator(self):
        # mask and frac_traceless are constants of the compiled step
        if getattr(self, "_state", None) is not None:
            self._integrator = self._exchanging(self._make_integrator(self._integrator_force_fn))

    def _make_integrator(self, force_fn):
        from jaxpto.integrators.melchionna import melchionna_npt
        return melchionna_npt(force_fn, self.dt, mask=self.mask, frac_traceless=self.frac_traceless)

    def _init_state(self, integrator, state):
        state = integrator.init(state, self.temperature_K, ttime=self.ttime, pfactor=self.pfactor_given,
                                externalstress=self.externalstress if self._single or self.externalstress is None
                                else np.asarray(self.externalstress), **self._pending)
        self._pending = {}
        return state

    def get_gibbs_free_energy(self):
        from jaxpto.integrators.melchionna import melchionna_gibbs_energy
        if self._state is None:
            self._build()
        return _scalar_or_list(melchionna_gibbs_energy(self._unwrapped_state()), self._single)


class NPT(MelchionnaNPT):
    """Alias of :class:`MelchionnaNPT`, as ``ase.md.npt.NPT`` (without ASE's deprecation warning)."""

    classname = "NPT"


def _plain(x):
    a = np.asarray(x)
    return float(a) if a.ndim == 0 else a.tolist()


def _scalar_or_list(x, single):
    a = np.asarray(x, float)
    return float(a[0]) if single else a
