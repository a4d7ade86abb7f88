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
observers are called, then after every step the observers due at that step. jaxpto runs
all steps between two observer events (and at most ``chunk_size`` steps) as ONE compiled
``fori_loop`` chunk whose length is a traced argument (:func:`run_steps`; like
:func:`jaxpto.simulate.run_chunk`, with the same neighbour-list overflow handling), so an
integrator compiles once whatever the pattern of ``run(n)`` calls and observer intervals
(``run(1)`` then ``run(200)`` does not recompile), then writes the state
back into the Atoms object (positions, momenta, cell) and calls the observers due at that
step, in ASE's order. ``irun`` therefore yields after every chunk (at every observer event
and at the end), not after every step.

Calculator results: after each chunk the user's calculator stays ``atoms.calc``; its result
cache is filled with the simulated energy, forces and stress of the written configuration
(``calc.atoms``/``calc.results``, exactly what ASE's calculators do after a calculation), so
``atoms.get_potential_energy()``/``get_forces()``/``get_stress()``, ``MDLogger`` and
``Trajectory.write`` see the simulated values without recomputation. Properties that were
not simulated (e.g. EMT's ``energies``) are recomputed by the calculator on request. If the
same calculator object is shared by several Atoms of a replica list, only the last one keeps
the cache (the others recompute on request; still correct).

Forces: with a :class:`~jaxpto.calculator.JaxptoCalculator` its model is used directly. ASE's
``EMT``, ``LennardJones`` and ``MorsePotential`` are replaced by their JAX twins from
:mod:`jaxpto.potentials` (same parameters; checked against the ASE calculator on the first
configuration, falling back to the callback path below if they disagree). SevenNet's
``sevenn.calculator.SevenNetCalculator`` and CHGNet's ``chgnet.model.dynamics.CHGNetCalculator``
are swapped for jaxpto's torch bridge (:func:`bridges.torch_bridge.as_jax_model`) around the
*calculator's own, already loaded* torch model (same object, same weights, no second load; see
:func:`_torch_bridge_efs`), checked against the calculator on the first configuration (energy
1e-5 eV/atom, forces 1e-4 eV/A, stress 1e-5 eV/A^3: float32 models), falling back to the
callback path (with a warning saying why) if they disagree. Any other ASE calculator is called
through ``jax.pure_callback`` on a copy of the atoms (correct, slower; a warning says so). The
path taken is recorded in ``dyn.force_kind``: ``"jaxpto"``, ``"twin"``, ``"bridge"`` or
``"callback"``.

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
Observers are called once per event (not once per replica).

Not supported: constraints (``NotImplementedError``), Filters, MPI ``comm``/``master``.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase import units
from ase.calculators.calculator import BaseCalculator, PropertyNotImplementedError
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.md import process_temperature
from ase.stress import full_3x3_to_voigt_6_stress
from ase.utils import IOContext

from jaxpto import neighbors as nl
from jaxpto.model import Model, ModelOutput
from jaxpto.state import _evaluate_jit, default_dtype

__all__ = ["VelocityVerlet", "Langevin", "Bussi", "NoseHooverChainNVT", "NPT", "MelchionnaNPT",
           "MTKNPT", "MaskedMTKNPT", "IsotropicMTKNPT"]


# ---------------------------------------------------------------------------
# Forces from atoms.calc
# ---------------------------------------------------------------------------


def _jax_twin(calc):
    """The JAX-native model of ASE's EMT / LennardJones / MorsePotential with the same parameters, or None."""
    from ase.calculators.emt import EMT
    from ase.calculators.lj import LennardJones
    from ase.calculators.morse import MorsePotential

    p = dict(calc.parameters)
    if type(calc) is EMT:
        from jaxpto.potentials.emt import emt
        return emt(asap_cutoff=bool(p.get("asap_cutoff", False)))
    if type(calc) is LennardJones:
        from jaxpto.potentials.pair import lennard_jones
        return lennard_jones(sigma=p.get("sigma", 1.0), epsilon=p.get("epsilon", 1.0), rc=p.get("rc"),
                             ro=p.get("ro"), smooth=bool(p.get("smooth", False)))
    if type(calc) is MorsePotential:
        from jaxpto.potentials.pair import morse
        return morse(epsilon=p.get("epsilon", 1.0), r0=p.get("r0", 1.0), rho0=p.get("rho0", 6.0),
                     rcut1=p.get("rcut1", 1.9), rcut2=p.get("rcut2", 2.7))
    return None


# Tolerances of the bridge check on the first configuration (float32 torch models).
# Tolerances of the first-configuration check of a bridged model against its own calculator
# (eV/atom, eV/A, eV/A^3). They catch a wrong model (other weights or head: differences of
# 1e-2 eV/atom and more), not float32 noise: the bridge forms float32 edge vectors from
# float32 absolute positions while the calculators form them in float64 and then round, which
# for the 625-atom PbTiO3 box (20 A) gave |dE| = 2.7e-5 eV/atom with 7net-0 (measured).
BRIDGE_E_TOL, BRIDGE_F_TOL, BRIDGE_S_TOL = 2e-4, 2e-3, 5e-5

_SEVENNET_CALC_EFS = None  # the class below, built on first use (imports torch and sevenn)


def _sevennet_calculator_efs_class():
    """:class:`bridges.sevenn.SevenNetEFS` around a SevenNetCalculator's loaded network (built lazily)."""
    global _SEVENNET_CALC_EFS
    if _SEVENNET_CALC_EFS is not None:
        return _SEVENNET_CALC_EFS
    import torch
    from bridges.sevenn import SevenNetEFS

    class SevenNetCalculatorEFS(SevenNetEFS):
        """SevenNetEFS on ``calc.model`` itself (no checkpoint load; ``SevenNetEFS.__init__`` only loads).

        ``SevenNetEFS.__call__`` needs exactly the attributes set here. The calculator keeps its
        network in single-graph mode (``set_is_batch_data(False)``) while the bridge feeds one
        batched graph, so the mode is switched to batched for the duration of each bridge call and
        switched back afterwards (the calculator itself keeps working on the same object).
        """

        def __init__(self, calc):
            import sevenn._keys as KEY

            self._KEY = KEY
            self.model = calc.model
            self.device = torch.device(calc.device)
            self.dtype = torch.float32
            self.cutoff = float(calc.cutoff)
            self.elements = frozenset(int(z) for z in calc.type_map)
            self._z_known = torch.zeros(128, dtype=torch.bool, device=self.device)
            self._z_known[torch.tensor(sorted(self.elements), device=self.device)] = True
            self.modal = calc.modal
            self.name = "SevenNetCalculator.model" + (f"[{self.modal}]" if self.modal else "")

        def __call__(self, *args):
            net = self.model
            previous = bool(getattr(net, "is_batch_data", False))
            net.set_is_batch_data(True)
            try:
                return super().__call__(*args)
            finally:
                net.set_is_batch_data(previous)

    _SEVENNET_CALC_EFS = SevenNetCalculatorEFS
    return SevenNetCalculatorEFS


def _torch_bridge_efs(calc):
    """A torch EFS object (see :mod:`bridges.torch_bridge`) on ``calc``'s already loaded model, or None.

    * ``sevenn.calculator.SevenNetCalculator`` (any checkpoint: 7net-0, 7net-l3i5, 7net-mf-0 with
      the calculator's ``modal``, ...): ``bridges.sevenn.SevenNetEFS`` can only load a checkpoint,
      so a subclass reuses ``calc.model`` (the same ``AtomGraphSequential`` object), its
      ``cutoff``, ``type_map``, ``modal`` and ``device``; float32 (SevenNet's only dtype).
    * ``chgnet.model.dynamics.CHGNetCalculator``: ``bridges.chgnet.CHGNetEFS(calc.model, ...)``
      takes a loaded CHGNet directly, on ``calc.device`` in the model's own parameter dtype.
      (``CHGNetEFS`` puts the model in ``eval()`` mode and freezes its parameters,
      ``requires_grad=False``; inference, the calculator's own results, is unaffected.)

    * MACE (``MACECalculator``), ORB (``ORBCalculator``), matgl (``PESCalculator``) and DeePMD
      (``deepmd.calculator.DP``): ``bridges.<family>.efs_from_calculator(calc)`` reuses the
      calculator's loaded network with its settings (head, radius and neighbour cap, units, ...).

    Only these exact classes (not subclasses, which may compute something else); the module is
    looked at first so that neither torch nor the model package is imported for other calculators.
    """
    module = type(calc).__module__ or ""
    if module.startswith("sevenn"):
        from sevenn.calculator import SevenNetCalculator
        from sevenn.nn.sequential import AtomGraphSequential

        if type(calc) is not SevenNetCalculator or not isinstance(calc.model, AtomGraphSequential):
            return None
        return _sevennet_calculator_efs_class()(calc)
    if module.startswith("chgnet"):
        from chgnet.model.dynamics import CHGNetCalculator

        if type(calc) is not CHGNetCalculator:
            return None
        from bridges.chgnet import CHGNetEFS

        model = calc.model
        dtype = next(model.parameters()).dtype
        version = getattr(model, "version", None)
        name = f"CHGNetCalculator.model[{version}]" if version else "CHGNetCalculator.model"
        return CHGNetEFS(model, name=name, device=calc.device, dtype=dtype)
    # MACE, ORB, matgl, DeePMD: each bridge module knows its own calculator classes.
    for prefix, family in (("mace", "mace"), ("orb_models", "orb"), ("matgl", "matgl"), ("deepmd", "deepmd")):
        if module.startswith(prefix):
            from bridges.registry import family_module

            hook = getattr(family_module(family), "efs_from_calculator", None)
            return None if hook is None else hook(calc)
    return None


def _bridge_settings(calc):
    """What, beyond the model object, makes two calculators of one kind compute the same thing."""
    # MACECalculator keeps its network in ``models`` (a list), matgl's PESCalculator in ``potential``.
    model = getattr(calc, "model", None) or (getattr(calc, "models", None) or [None])[0]
    return (type(calc), id(model), id(getattr(calc, "potential", None)),
            getattr(calc, "modal", None), getattr(calc, "stress_weight", None),
            getattr(calc, "conversion_factor", None), getattr(calc, "head", None),
            getattr(calc, "default_dtype", None), getattr(calc, "max_num_neighbors", None),
            getattr(calc, "conservative", None), repr(getattr(calc, "system_config", None)),
            id(getattr(calc, "dp", None)), tuple(sorted((getattr(calc, "type_dict", None) or {}).items())))


def callback_model(calc, template, need_stress: bool) -> Model:
    """A :class:`Model` evaluating an arbitrary ASE calculator on the host through ``jax.pure_callback``."""
    pbc3 = bool(np.all(template.pbc))

    def host(positions, cell):
        positions = np.asarray(positions)
        cell = np.asarray(cell)
        R, N = positions.shape[:2]
        energy = np.zeros(R, positions.dtype)
        forces = np.zeros((R, N, 3), positions.dtype)
        stress = np.zeros((R, 3, 3), positions.dtype)
        for r in range(R):
            a = template.copy()
            a.set_cell(cell[r].astype(float))
            a.set_positions(positions[r].astype(float))
            a.calc = calc
            energy[r] = a.get_potential_energy()
            forces[r] = a.get_forces()
            if pbc3:
                try:
                    stress[r] = a.get_stress(voigt=False)
                except PropertyNotImplementedError:
                    if need_stress:
                        raise
        return energy, forces, stress

    def compute(positions, cell, numbers, neighbors):
        R, N = positions.shape[:2]
        dt = positions.dtype
        shapes = (jax.ShapeDtypeStruct((R,), dt), jax.ShapeDtypeStruct((R, N, 3), dt),
                  jax.ShapeDtypeStruct((R, 3, 3), dt))
        e, f, s = jax.pure_callback(host, shapes, positions, cell)
        return ModelOutput(energy=e, forces=f, stress=s)

    return Model(compute=compute, cutoff=0.0, name=f"ase-callback:{type(calc).__name__}")


# ---------------------------------------------------------------------------
# One compiled program per integrator, whatever the chunk length
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def chunk_program(step):
    """``program(state, n)``: ``n`` steps (a traced int32, so every chunk length shares one compilation)."""

    @jax.jit
    def program(state, n):
        return jax.lax.fori_loop(0, n, lambda _, s: step(s), state)

    return program


def run_steps(integrator, state, n_steps: int):
    """As :func:`jaxpto.simulate.run_chunk` (re-allocating the neighbour list on overflow), any ``n_steps``, one program."""
    if n_steps <= 0:
        return state
    program = chunk_program(integrator.step)
    n = jnp.asarray(n_steps, jnp.int32)
    for _ in range(8):
        new_state = program(state, n)
        nbrs = new_state.neighbors
        if nbrs is None or not bool(jnp.any(nbrs.did_overflow)):
            return new_state
        state = state.replace(neighbors=nl.reallocate(state.neighbors, state.positions, state.cell))
    raise RuntimeError("neighbour list kept overflowing after 8 re-allocations; the system is probably "
                       "collapsing (atoms far closer than the cutoff); check the time step and structure")


# ---------------------------------------------------------------------------
# The shared machinery
# ---------------------------------------------------------------------------


class _JaxDynamics(IOContext):
    """Common base: ASE's MolecularDynamics interface around one jaxpto integrator."""

    _honours_changes = True  # VelocityVerlet/Langevin/Bussi: ASE reads the atoms every step
    _raises_on_changes = False  # Melchionna NPT
    _needs_stress = False
    chunk_size = 1000

    def __init__(self, atoms, timestep, *, trajectory=None, logfile=None, loginterval=1,
                 append_trajectory=False, dtype=None, seed=None, rng=None):
        self.dt = float(timestep)
        self._single = not isinstance(atoms, (list, tuple))
        self._atoms_list = [atoms] if self._single else list(atoms)
        if not self._atoms_list:
            raise ValueError("no Atoms given")
        self.atoms = atoms
        self.dtype = default_dtype() if dtype is None else jnp.dtype(dtype)
        if seed is None:
            seed = int(rng.integers(0, 2**31 - 1)) if hasattr(rng, "integers") else int(np.random.randint(0, 2**31 - 1))
        self.seed = int(seed)
        self.observers: list = []
        self.nsteps = 0
        self.max_steps = 0
        self._state = None
        self._integrator = None
        self._written = None
        self._time_elapsed = 0.0
        for a in self._atoms_list:
            if a.constraints:
                raise NotImplementedError("jaxpto.md does not support constraints (yet)")
            if 0 in a.get_masses():
                warnings.warn("Zero mass encountered in atoms; this will likely lead to errors if the massless "
                              "atoms are unconstrained.")
            if not a.has("momenta"):
                a.set_momenta(np.zeros((len(a), 3)))
        R = len(self._atoms_list)
        self.masses = self._atoms_list[0].get_masses().reshape(-1, 1)

        # Trajectory (as ASE's BaseDynamics: attached with interval=loginterval).
        self._traj_targets = None
        if trajectory is not None:
            targets = self._per_replica_names(trajectory, R)
            for i, t in enumerate(targets):
                if not hasattr(t, "write") and not append_trajectory:
                    Path(t).unlink(missing_ok=True)
            self._traj_targets = targets
            self.attach(self._traj_write_image, interval=loginterval, description={"interval": loginterval})
        self.trajectory = trajectory
        if logfile:
            from ase.md.logger import MDLogger
            names = [logfile] * R if (logfile == "-" or hasattr(logfile, "write")) else \
                self._per_replica_names(logfile, R)
            for a, name in zip(self._atoms_list, names):
                logger = self.closelater(MDLogger(dyn=self, atoms=a, logfile=name))
                self.attach(logger, loginterval)

    # -- ASE interface ------------------------------------------------------

    def _per_replica_names(self, value, R):
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

    def _traj_write_image(self, description: dict):
        from ase.io.trajectory import Trajectory
        for a, t in zip(self._atoms_list, self._traj_targets):
            if hasattr(t, "write"):
                t.set_description(self.todict() | description)
                t.write(a)
                continue
            with Trajectory(t, mode="a") as traj:
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

    def irun(self, steps=50):
        """As ASE's ``MolecularDynamics.irun``: yields after every step (each step is then one compiled
        call, so ``run`` is the fast path: it compiles the steps between two observer events together)."""
        return self._irun(steps, per_step=True)

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
        while self.nsteps < self.max_steps:
            target = self.nsteps + 1 if per_step else self._next_event()
            k = target - self.nsteps
            self._state = run_steps(self._integrator, self._state, k)
            self._time_elapsed += k * self.dt
            self.nsteps = target
            self._write_back()
            self.call_observers()
            self._reread(between_runs=False)
            yield self.nsteps == self.max_steps

    def run(self, steps=50):
        converged = steps == 0
        for converged in self._irun(steps, per_step=False):
            pass
        return converged

    def _next_event(self) -> int:
        n = self.nsteps
        target = min(self.max_steps, n + self.chunk_size)
        for _, interval, _, _ in self.observers:
            if interval > 0:
                nxt = (n // interval + 1) * interval
            else:
                nxt = abs(interval) if abs(interval) > n else None
            if nxt is not None:
                target = min(target, nxt)
        return target

    # -- state <-> atoms ------------------------------------------------------

    def _model(self):
        first = self._atoms_list[0]
        calc = first.calc
        for a in self._atoms_list[1:]:
            if type(a.calc) is not type(calc):
                raise ValueError("all Atoms of a replica list need the same kind of calculator")
        if calc is None:
            raise RuntimeError("The atoms have no calculator: set atoms.calc before running dynamics")
        from jaxpto.calculator import JaxptoCalculator
        if isinstance(calc, JaxptoCalculator):
            return calc.model, "jaxpto"
        twin = _jax_twin(calc)
        if twin is not None:
            return twin, "twin"
        try:
            efs = _torch_bridge_efs(calc)
        except Exception as exc:  # an unusual model object, ...
            warnings.warn(f"jaxpto.md: could not put {type(calc).__name__}'s model on the torch bridge "
                          f"({type(exc).__name__}: {exc}); falling back to the callback", stacklevel=4)
            efs = None
        if efs is not None:
            if any(_bridge_settings(a.calc) != _bridge_settings(calc) for a in self._atoms_list[1:]):
                warnings.warn(f"jaxpto.md: the replicas' {type(calc).__name__}s do not share one model object "
                              "and settings; falling back to the callback", stacklevel=4)
                return None, "callback"
            from bridges.torch_bridge import as_jax_model
            return as_jax_model(efs, device=str(efs.device), dtype=efs.dtype), "bridge"
        return None, "callback"

    def _build(self):
        from jaxpto.simulate import state_from_atoms

        model, kind = self._model()
        state = None
        if kind == "twin":
            try:
                state, force_fn = state_from_atoms(self._atoms_list, model, seed=self.seed, dtype=self.dtype)
                if not self._twin_agrees(state):
                    state = None
            except Exception:  # elements not covered, ...
                state = None
            if state is None:
                kind = "callback"
        elif kind == "bridge":
            calc = self._atoms_list[0].calc
            try:
                state, force_fn = state_from_atoms(self._atoms_list, model, seed=self.seed, dtype=self.dtype)
                why = self._bridge_disagreement(state)
            except Exception as exc:  # elements not covered, ...
                state, why = None, f"{type(exc).__name__}: {exc}"
            if why is not None:
                warnings.warn(f"jaxpto.md: the torch bridge of {type(calc).__name__}'s model does not reproduce the "
                              f"calculator on the first configuration ({why}); falling back to the callback",
                              stacklevel=3)
                state = None
                kind = "callback"
        if kind == "callback":
            calc = self._atoms_list[0].calc
            warnings.warn(f"jaxpto.md: {type(calc).__name__} is not a JAX model; it is called on the host through "
                          "jax.pure_callback every step (correct but slower; use a JaxptoCalculator for speed)",
                          stacklevel=3)
            template = self._atoms_list[0].copy()
            model = callback_model(calc, template, self._needs_stress)
        if state is None:
            state, force_fn = state_from_atoms(self._atoms_list, model, seed=self.seed, dtype=self.dtype)
        self.force_kind = kind
        self._model_obj = model
        self._integrator = self._make_integrator(force_fn)
        self._state = self._init_state(self._integrator, state)

    def _twin_agrees(self, state) -> bool:
        a = self._atoms_list[0].copy()
        a.calc = self._atoms_list[0].calc
        e = a.get_potential_energy()
        f = a.get_forces()
        tol = 1e-8 if self.dtype == jnp.float64 else 1e-4
        ej = float(state.energy[0])
        fj = np.asarray(state.forces[0])
        scale = max(1.0, np.abs(f).max())
        return abs(ej - e) <= tol * max(1.0, abs(e)) and np.abs(fj - f).max() <= tol * scale

    def _bridge_disagreement(self, state):
        """None if the bridged model equals ``atoms.calc`` on replica 0 as the state holds it, else why not.

        The calculator is evaluated on the state's own (possibly float32-rounded) positions and cell,
        so only the models are compared. Tolerances: ``BRIDGE_E_TOL`` eV/atom, ``BRIDGE_F_TOL`` eV/A,
        ``BRIDGE_S_TOL`` eV/A^3 (stress only for a periodic cell).
        """
        first = self._atoms_list[0]
        a = first.copy()
        a.set_cell(np.asarray(state.cell[0], dtype=float), scale_atoms=False)
        a.set_positions(np.asarray(state.positions[0], dtype=float))
        a.calc = first.calc
        e = a.get_potential_energy()
        f = a.get_forces()
        n = len(a)
        de = abs(float(state.energy[0]) - e) / n
        df = float(np.abs(np.asarray(state.forces[0], dtype=float) - f).max()) if n else 0.0
        problems = []
        if not (de <= BRIDGE_E_TOL):
            problems.append(f"|dE| = {de:.2e} eV/atom > {BRIDGE_E_TOL:g}")
        if not (df <= BRIDGE_F_TOL):
            problems.append(f"max |dF| = {df:.2e} eV/A > {BRIDGE_F_TOL:g}")
        if a.cell.rank == 3 and all(a.pbc):
            from ase.calculators.calculator import PropertyNotImplementedError

            try:
                s = a.get_stress(voigt=False)
            except PropertyNotImplementedError:  # e.g. a potential built without stress: nothing to compare
                s = None
            ds = 0.0 if s is None else float(np.abs(np.asarray(state.stress[0], dtype=float) - s).max())
            if not (ds <= BRIDGE_S_TOL):
                problems.append(f"max |dS| = {ds:.2e} eV/A^3 > {BRIDGE_S_TOL:g}")
        return "; ".join(problems) if problems else None

    def _write_back(self):
        s = self._state
        pos = np.asarray(s.positions, dtype=float)
        mom = np.asarray(s.momenta, dtype=float)
        cell = np.asarray(s.cell, dtype=float)
        energy = np.asarray(s.energy, dtype=float)
        forces = np.asarray(s.forces, dtype=float)
        stress = np.asarray(s.stress, dtype=float)
        if not np.all(np.isfinite(pos)):
            bad = np.flatnonzero(~np.all(np.isfinite(pos), axis=(1, 2))).tolist()
            warnings.warn(f"replica(s) {bad} have non-finite positions after step {self.nsteps}; "
                          "reduce the time step or check the starting structure")
        written = []
        for r, a in enumerate(self._atoms_list):
            a.set_cell(cell[r], scale_atoms=False)
            a.set_positions(pos[r], apply_constraint=False)
            a.set_momenta(mom[r], apply_constraint=False)
            results = {"energy": float(energy[r]), "free_energy": float(energy[r]), "forces": forces[r].copy()}
            if a.cell.rank == 3 and all(a.pbc):
                results["stress"] = full_3x3_to_voigt_6_stress(stress[r])
            calc = a.calc
            if isinstance(calc, BaseCalculator) and hasattr(calc, "results"):
                calc.atoms = a.copy()
                calc.results = results
            else:
                a.calc = SinglePointCalculator(a, **results)
            written.append((a.positions.copy(), a.get_momenta().copy(), a.cell.array.copy()))
        self._written = written

    def _changes(self):
        pos_changed = mom_changed = False
        for a, (p, m, c) in zip(self._atoms_list, self._written):
            if not (np.array_equal(a.positions, p) and np.array_equal(a.cell.array, c)):
                pos_changed = True
            if not np.array_equal(a.get_momenta(), m):
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
        mom = jnp.asarray(np.stack([a.get_momenta() for a in self._atoms_list]), dt)
        s = s.replace(momenta=mom)
        if pos_changed:
            pos = jnp.asarray(np.stack([a.positions for a in self._atoms_list]), dt)
            cell = jnp.asarray(np.stack([a.cell.array for a in self._atoms_list]), dt)
            s = s.replace(positions=pos, cell=cell)
            force_fn = self._integrator_force_fn
            new = _evaluate_jit(s, force_fn)
            if new.neighbors is not None and bool(jnp.any(new.neighbors.did_overflow)):
                s = s.replace(neighbors=nl.reallocate(s.neighbors, pos, cell))
                new = _evaluate_jit(s, force_fn)
            s = new
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

    def __init__(self, atoms, timestep=None, trajectory=None, logfile=None, loginterval=1, *,
                 append_trajectory=False, dtype=None, seed=None, dt=None):
        if timestep is None:
            if dt is None:
                raise TypeError("missing timestep argument")
            timestep = dt
        super().__init__(atoms, timestep, trajectory=trajectory, logfile=logfile, loginterval=loginterval,
                         append_trajectory=append_trajectory, dtype=dtype, seed=seed)

    def _make_integrator(self, force_fn):
        from jaxpto.integrators.verlet import velocity_verlet
        self._integrator_force_fn = force_fn
        return velocity_verlet(force_fn, self.dt)

    def _init_state(self, integrator, state):
        return integrator.init(state)


class Langevin(_JaxDynamics):
    """Langevin NVT, as ``ase.md.langevin.Langevin`` (jaxpto's own PRNG: ``seed=``; ``rng`` only seeds it)."""

    def __init__(self, atoms, timestep, temperature=None, friction=None, fixcm=True, *, temperature_K=None,
                 rng=None, trajectory=None, logfile=None, loginterval=1, append_trajectory=False, dtype=None,
                 seed=None):
        if friction is None:
            raise TypeError("Missing 'friction' argument.")
        self.fr = friction
        self.temp_K = _temperature_K(temperature, temperature_K, "eV")
        self.temp = units.kB * np.asarray(self.temp_K)
        self.fix_com = fixcm
        super().__init__(atoms, timestep, trajectory=trajectory, logfile=logfile, loginterval=loginterval,
                         append_trajectory=append_trajectory, dtype=dtype, seed=seed, rng=rng)

    def todict(self):
        d = super().todict()
        d.update({"temperature_K": _plain(self.temp_K), "friction": _plain(self.fr), "fixcm": self.fix_com})
        return d

    def _make_integrator(self, force_fn):
        from jaxpto.integrators.langevin import langevin
        self._integrator_force_fn = force_fn
        return langevin(force_fn, self.dt, fixcm=self.fix_com)

    def _init_state(self, integrator, state):
        return integrator.init(state, temperature_K=self.temp_K, friction=self.fr)

    def _refresh(self):
        # New constants for the running state; its PRNG keys and dynamics carry on.
        if self._state is not None:
            self._integrator = self._make_integrator(self._integrator_force_fn)
            self._state = self._init_state(self._integrator, self._state)

    def set_timestep(self, timestep):
        self.dt = float(timestep)
        self._refresh()

    def set_friction(self, friction):
        self.fr = friction
        self._refresh()

    def set_temperature(self, temperature=None, temperature_K=None):
        self.temp_K = _temperature_K(temperature, temperature_K, "eV")
        self.temp = units.kB * np.asarray(self.temp_K)
        self._refresh()


class Bussi(_JaxDynamics):
    """Bussi velocity rescaling, as ``ase.md.bussi.Bussi`` (jaxpto's own PRNG: ``seed=``; ``rng`` only seeds it)."""

    def __init__(self, atoms, timestep, temperature_K, taut, rng=None, *, trajectory=None, logfile=None,
                 loginterval=1, append_trajectory=False, dtype=None, seed=None):
        self.temp_K = temperature_K
        self.taut = taut
        atoms_list = [atoms] if not isinstance(atoms, (list, tuple)) else list(atoms)
        for a in atoms_list:
            if np.isclose(a.get_kinetic_energy(), 0.0, rtol=0, atol=1e-12):
                raise ValueError("Initial kinetic energy is zero. Please set the initial velocities before "
                                 "running Bussi NVT.")
        super().__init__(atoms, timestep, trajectory=trajectory, logfile=logfile, loginterval=loginterval,
                         append_trajectory=append_trajectory, dtype=dtype, seed=seed, rng=rng)
        # ASE's public attributes (same order of operations, ASE's test compares with ==).
        self.temp = temperature_K * units.kB if np.ndim(temperature_K) == 0 else units.kB * np.asarray(temperature_K)
        self.ndof = atoms_list[0].get_number_of_degrees_of_freedom()
        self.target_kinetic_energy = 0.5 * self.temp * self.ndof

    def _make_integrator(self, force_fn):
        from jaxpto.integrators.bussi import bussi
        self._integrator_force_fn = force_fn
        return bussi(force_fn, self.dt)

    def _init_state(self, integrator, state):
        return integrator.init(state, temperature_K=self.temp_K, taut=self.taut)

    @property
    def transferred_energy(self):
        v = self._state.integrator.transferred_energy if self._state is not None else np.zeros(1)
        v = np.asarray(v, float)
        return float(v[0]) if self._single else v


class NoseHooverChainNVT(_JaxDynamics):
    """Nose-Hoover chain NVT, as ``ase.md.nose_hoover_chain.NoseHooverChainNVT``."""

    _honours_changes = False

    def __init__(self, atoms, timestep, temperature_K, tdamp, tchain=3, tloop=1, *, trajectory=None,
                 logfile=None, loginterval=1, append_trajectory=False, dtype=None, seed=None):
        self.temperature_K, self.tdamp, self.tchain, self.tloop = temperature_K, tdamp, tchain, tloop
        super().__init__(atoms, timestep, trajectory=trajectory, logfile=logfile, loginterval=loginterval,
                         append_trajectory=append_trajectory, dtype=dtype, seed=seed)

    def _make_integrator(self, force_fn):
        from jaxpto.integrators.nose_hoover_chain import nose_hoover_chain_nvt
        self._integrator_force_fn = force_fn
        return nose_hoover_chain_nvt(force_fn, self.dt, tchain=self.tchain, tloop=self.tloop)

    def _init_state(self, integrator, state):
        return integrator.init(state, temperature_K=self.temperature_K, tdamp=self.tdamp)

    def get_conserved_energy(self):
        from jaxpto.integrators.nose_hoover_chain import nhc_conserved_energy
        if self._state is None:
            self._build()
        return _scalar_or_list(nhc_conserved_energy(self._state), self._single)


class MTKNPT(_JaxDynamics):
    """MTK NPT with a fully flexible cell, as ``ase.md.nose_hoover_chain.MTKNPT``."""

    _honours_changes = False
    _needs_stress = True
    _mask = None

    def __init__(self, atoms, timestep, temperature_K, pressure_au, tdamp, pdamp, tchain=3, pchain=3, tloop=1,
                 ploop=1, *, trajectory=None, logfile=None, loginterval=1, append_trajectory=False, dtype=None,
                 seed=None):
        self.temperature_K, self.pressure_au, self.tdamp, self.pdamp = temperature_K, pressure_au, tdamp, pdamp
        self.tchain, self.pchain, self.tloop, self.ploop = tchain, pchain, tloop, ploop
        super().__init__(atoms, timestep, trajectory=trajectory, logfile=logfile, loginterval=loginterval,
                         append_trajectory=append_trajectory, dtype=dtype, seed=seed)

    def _make_integrator(self, force_fn):
        from jaxpto.integrators.mtk import mtk_npt
        self._integrator_force_fn = force_fn
        return mtk_npt(force_fn, self.dt, tchain=self.tchain, pchain=self.pchain, tloop=self.tloop,
                       ploop=self.ploop, mask=self._mask)

    def _init_state(self, integrator, state):
        return integrator.init(state, temperature_K=self.temperature_K, pressure_au=self.pressure_au,
                               tdamp=self.tdamp, pdamp=self.pdamp)

    def get_conserved_energy(self):
        from jaxpto.integrators.mtk import mtk_conserved_energy
        if self._state is None:
            self._build()
        return _scalar_or_list(mtk_conserved_energy(self._state), self._single)


class MaskedMTKNPT(MTKNPT):
    """MTK NPT with cell fluctuations along the masked axes only, as ``ase.md.nose_hoover_chain.MaskedMTKNPT``.

    ``mask=(a, b, c)`` booleans (True: that axis fluctuates). jaxpto implements the documented
    behaviour; ASE 3.29's own class ignores a tuple mask with any False in it (NumPy reads a
    tuple of bools as indices), so compare with ASE by passing ``np.array(mask)`` there.
    """

    def __init__(self, *args, mask, **kwargs):
        self.mask = tuple(bool(m) for m in mask)
        self._mask = self.mask
        super().__init__(*args, **kwargs)


class IsotropicMTKNPT(MTKNPT):
    """MTK NPT with isotropic volume fluctuations, as ``ase.md.nose_hoover_chain.IsotropicMTKNPT``."""

    def _make_integrator(self, force_fn):
        from jaxpto.integrators.mtk import isotropic_mtk_npt
        self._integrator_force_fn = force_fn
        return isotropic_mtk_npt(force_fn, self.dt, tchain=self.tchain, pchain=self.pchain, tloop=self.tloop,
                                 ploop=self.ploop)


class MelchionnaNPT(_JaxDynamics):
    """Melchionna NPT, as ``ase.md.melchionna.MelchionnaNPT`` (and ``ase.md.npt.NPT``).

    As ASE, the centre-of-mass momentum is removed from the atoms at construction
    (``p -= sum(p) / N``) and the backwards start-up step is taken at the first ``run``.
    """

    _raises_on_changes = True
    _needs_stress = True

    def __init__(self, atoms, timestep, temperature=None, externalstress=None, ttime=None, pfactor=None, *,
                 temperature_K=None, mask=None, trajectory=None, logfile=None, loginterval=1,
                 append_trajectory=False, dtype=None, seed=None):
        super().__init__(atoms, timestep, trajectory=trajectory, logfile=logfile, loginterval=loginterval,
                         append_trajectory=append_trajectory, dtype=dtype, seed=seed)
        if externalstress is None and pfactor is not None:
            raise TypeError("Missing 'externalstress' argument.")
        for a in self._atoms_list:
            p = a.get_momenta()
            a.set_momenta(p - p.sum(0) / len(a))
        self.temperature_K = _temperature_K(temperature, temperature_K, "eV")
        self.temperature = units.kB * np.asarray(self.temperature_K)
        self.externalstress = externalstress
        self.ttime = ttime
        self.pfactor_given = pfactor
        self.mask = mask
        self.frac_traceless = 1

    def set_fraction_traceless(self, fracTraceless):
        if self._state is not None:
            raise RuntimeError("jaxpto.md: set_fraction_traceless must be called before the first run")
        self.frac_traceless = fracTraceless

    def get_time(self):
        return self._time_elapsed

    def _make_integrator(self, force_fn):
        from jaxpto.integrators.melchionna import melchionna_npt
        self._integrator_force_fn = force_fn
        return melchionna_npt(force_fn, self.dt, mask=self.mask, frac_traceless=self.frac_traceless)

    def _init_state(self, integrator, state):
        ttime = self.ttime
        return integrator.init(state, self.temperature_K, ttime=ttime, pfactor=self.pfactor_given,
                               externalstress=self.externalstress)

    def get_gibbs_free_energy(self):
        from jaxpto.integrators.melchionna import melchionna_gibbs_energy
        if self._state is None:
            self._build()
        return _scalar_or_list(melchionna_gibbs_energy(self._state), self._single)


class NPT(MelchionnaNPT):
    """Alias of :class:`MelchionnaNPT`, as ``ase.md.npt.NPT`` (without ASE's deprecation warning)."""

    classname = "NPT"


def _plain(x):
    a = np.asarray(x)
    return float(a) if a.ndim == 0 else a.tolist()


def _scalar_or_list(x, single):
    a = np.asarray(x, float)
    return float(a[0]) if single else a
