"""``JaxptoCalculator``: an ASE calculator around any jaxpto :class:`~jaxpto.model.Model`.

ASE optimizers, phonopy and users' own tools get the engine's models through it,
and the test-suite uses it to give ASE's integrators exactly the same forces as
jaxpto's. Units are ASE's (eV, eV/A, eV/A^3 with ASE's stress sign).

The other way round, :func:`ase_callback_model` makes any ASE calculator a jaxpto model (called
on the host through ``jax.pure_callback``: correct, slower), which the ASE layer uses for
calculators that have no JAX or bridged equivalent.

Batches: :meth:`JaxptoCalculator.calculate_batch` evaluates many structures with the
same atoms (species and order), e.g. phonopy's displaced supercells or strained cells,
as ``R`` replicas of ONE model call on one ``R``-replica neighbour list, instead of ``R``
calls; for torch models that is one batched graph through the bridge.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from jaxpto import neighbors as nl
from jaxpto.model import Model, ModelOutput
from jaxpto.state import default_dtype
from jaxpto.validation import check_atomic_numbers

__all__ = ["JaxptoCalculator", "ase_callback_model"]


_update = jax.jit(nl.update)


class JaxptoCalculator(Calculator):
    """ASE calculator evaluating a jaxpto model (energy, free_energy, forces, stress, and the
    model's extras such as per-atom ``energies``, :attr:`Model.extras <jaxpto.model.Model.extras>`).

    Parameters
    ----------
    model:
        A :class:`jaxpto.model.Model`.
    dtype:
        Floating type of the evaluation; float64 when JAX x64 mode is on, else float32.
    skin:
        Neighbour-list skin in Angstrom: the device list is reused between calls on the
        same atoms and rebuilt only when atoms moved more than half the skin.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: Model, dtype=None, skin: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.dtype = dtype
        self.skin = skin
        self._nbrs = None
        self._compute = jax.jit(model.compute)
        # The model's extras (e.g. per-atom "energies") are results too, as its calculator reports them.
        self.implemented_properties = list(type(self).implemented_properties) + [
            k for k in model.extras if k not in type(self).implemented_properties]

    def _evaluate(self, positions, cell, numbers, pbc):
        dtype = self.dtype or default_dtype()
        pos = jnp.asarray(positions, dtype)
        cel = jnp.asarray(cell, dtype)
        nbrs = self._nbrs
        # Reuse the device list (same atoms, pbc, dtype): refreshed on the device, re-allocated on overflow.
        if nbrs is not None and nbrs.reference_positions.shape == pos.shape and nbrs.pbc == tuple(pbc) \
                and nbrs.reference_positions.dtype == pos.dtype:
            nbrs = _update(nbrs, pos, cel)
            if bool(jnp.any(nbrs.did_overflow)):
                nbrs = None
        else:
            nbrs = None
        if nbrs is None:
            nbrs = nl.allocate(pos, cel, self.model.cutoff, skin=self.skin, pbc=pbc)
        self._nbrs = nbrs
        return self._compute(pos, cel, jnp.asarray(numbers), nbrs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if len(atoms) == 0:
            raise ValueError("JaxptoCalculator: the Atoms object has no atoms; there is nothing to compute")
        check_atomic_numbers(atoms.numbers, "the atoms given to JaxptoCalculator")
        self.model.check_elements(atoms.numbers)
        out = self._evaluate(atoms.positions[None], np.asarray(atoms.cell)[None], atoms.numbers,
                             tuple(bool(p) for p in atoms.pbc))
        energy = float(out.energy[0])
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = np.asarray(out.forces[0], dtype=float)
        if atoms.cell.rank == 3 and all(atoms.pbc):
            self.results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(out.stress[0], dtype=float))
        for name, value in out.extras.items():
            value = np.asarray(value[0], dtype=float)
            self.results[name] = value if value.shape else float(value)

    # ------------------------------------------------------------------ batches
    def calculate_batch(self, images, properties=("energy", "forces", "stress"),
                        max_batch: int | None = None) -> list[dict]:
        """Evaluate several structures as replicas of one model call.

        Parameters
        ----------
        images:
            A sequence of :class:`ase.Atoms` with the same atomic numbers in the same order
            and the same ``pbc``; positions and cells may all differ (displaced supercells,
            strained cells, snapshots).
        properties:
            Names wanted in each result, among ``implemented_properties``. The model computes
            energy, forces and stress together anyway, so this only selects what is returned.
        max_batch:
            Largest number of replicas per model call (memory bound on a GPU); ``None``
            (default) evaluates all structures in ONE call.

        Returns
        -------
        list of dict
            One dict per structure with ``energy``/``free_energy`` (eV), ``forces`` [N,3]
            (eV/A) and, for 3D-periodic cells, ``stress`` (Voigt 6, eV/A^3, ASE sign): the
            same values :meth:`calculate` gives for each structure alone.

        Why one call: the replicas share one compiled program and one neighbour-list
        allocation ([R,N,K], sized for the densest replica), and torch models receive them
        as one batched graph, so the cost is one dispatch instead of ``R``. The list is
        built fresh for the batch (the single-structure list in ``self`` is left alone).
        The calculator's own ``atoms``/``results`` are not touched.
        """
        images = list(images)
        if not images:
            return []
        unknown = [p for p in properties if p not in self.implemented_properties]
        if unknown:
            raise ValueError(f"unknown properties {unknown}; implemented: {self.implemented_properties}")
        numbers = np.asarray(images[0].numbers)
        if len(numbers) == 0:
            raise ValueError("calculate_batch: the structures have no atoms; there is nothing to compute")
        pbc = tuple(bool(p) for p in images[0].pbc)
        for k, at in enumerate(images[1:], start=1):
            if len(at) != len(numbers):
                raise ValueError(f"calculate_batch needs structures with the same atoms: structure {k} has "
                                 f"{len(at)} atoms, structure 0 has {len(numbers)}")
            if not np.array_equal(at.numbers, numbers):
                bad = int(np.flatnonzero(at.numbers != numbers)[0])
                raise ValueError(f"calculate_batch needs the same species in the same order: structure {k} has "
                                 f"{at.get_chemical_symbols()[bad]} at index {bad} where structure 0 has "
                                 f"{images[0].get_chemical_symbols()[bad]} ({at.get_chemical_formula()} vs "
                                 f"{images[0].get_chemical_formula()})")
            if tuple(bool(p) for p in at.pbc) != pbc:
                raise ValueError(f"calculate_batch needs the same pbc: structure {k} has {tuple(at.pbc)}, "
                                 f"structure 0 has {pbc}")
        self.model.check_elements(numbers)
        step = len(images) if max_batch is None else int(max_batch)
        if step < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        periodic3d = all(pbc) and all(at.cell.rank == 3 for at in images)
        dtype = self.dtype or default_dtype()
        results: list[dict] = []
        for start in range(0, len(images), step):
            chunk = images[start:start + step]
            pos = jnp.asarray(np.stack([at.positions for at in chunk]), dtype)
            cel = jnp.asarray(np.stack([np.asarray(at.cell) for at in chunk]), dtype)
            nbrs = nl.allocate(pos, cel, self.model.cutoff, skin=self.skin, pbc=pbc)
            out = self._compute(pos, cel, jnp.asarray(numbers), nbrs)
            energy = np.asarray(out.energy, dtype=float)
            forces = np.asarray(out.forces, dtype=float)
            stress = np.asarray(out.stress, dtype=float)
            extras = {k: np.asarray(v, dtype=float) for k, v in out.extras.items()}
            for r in range(len(chunk)):
                res = {"energy": float(energy[r]), "free_energy": float(energy[r]), "forces": forces[r].copy()}
                if periodic3d:
                    res["stress"] = full_3x3_to_voigt_6_stress(stress[r])
                for k, v in extras.items():
                    res[k] = v[r].copy() if v[r].shape else float(v[r])
                results.append({p: res[p] for p in properties if p in res})
        return results


def ase_callback_model(calculators, template, need_stress: bool, extras: dict | None = None) -> Model:
    """A :class:`Model` evaluating ASE calculators on the host through ``jax.pure_callback``.

    ``calculators``: one ASE calculator per replica (replica ``r`` is evaluated by
    ``calculators[r]``, so replicas with different calculators each get their own), or one
    calculator for all. ``template``: an ``Atoms`` with the system's species and ``pbc``.
    Stress is taken for 3D-periodic systems; a calculator without stress gives zeros unless
    ``need_stress`` (NPT), which then raises ASE's ``PropertyNotImplementedError``.
    ``extras``: ``{name: shape}`` of other results the calculators store in ``calc.results`` at
    every evaluation (e.g. ``{"energies": (N,)}``), returned as the model's extras ``[R, *shape]``
    (see :class:`~jaxpto.model.Model`). Units: ASE's.
    """
    pbc3 = bool(np.all(template.pbc))
    calcs = list(calculators) if isinstance(calculators, (list, tuple)) else None
    single = None if calcs is not None else calculators
    extras = {str(k): tuple(int(n) for n in shape) for k, shape in (extras or {}).items()}

    def host(positions, cell):
        positions = np.asarray(positions)
        cell = np.asarray(cell)
        R, N = positions.shape[:2]
        if calcs is not None and len(calcs) != R:
            raise ValueError(f"ase_callback_model has {len(calcs)} calculators for {R} replicas")
        energy = np.zeros(R, positions.dtype)
        forces = np.zeros((R, N, 3), positions.dtype)
        stress = np.zeros((R, 3, 3), positions.dtype)
        more = {k: np.zeros((R,) + shape, positions.dtype) for k, shape in extras.items()}
        for r in range(R):
            if not (np.all(np.isfinite(positions[r])) and np.all(np.isfinite(cell[r]))):
                # A replica that blew up: ASE calculators fail on NaN coordinates (or return
                # meaningless numbers); NaN results keep the batch going and the driver reports it.
                energy[r], forces[r], stress[r] = np.nan, np.nan, np.nan
                for v in more.values():
                    v[r] = np.nan
                continue
            a = template.copy()
            a.set_cell(cell[r].astype(float))
            a.set_positions(positions[r].astype(float))
            a.calc = single if calcs is None else calcs[r]
            energy[r] = a.get_potential_energy()
            forces[r] = a.get_forces()
            if pbc3:
                try:
                    stress[r] = a.get_stress(voigt=False)
                except PropertyNotImplementedError:
                    if need_stress:
                        raise
            for name, value in more.items():
                got = a.calc.results.get(name)
                if got is None or np.shape(got) != value.shape[1:]:
                    raise RuntimeError(
                        f"{type(a.calc).__name__} gave {name!r} with shape {np.shape(got) if got is not None else None} "
                        f"at this step, {value.shape[1:]} on the first configuration; jaxpto carries a result "
                        "of fixed shape only")
                value[r] = got
        return (energy, forces, stress, *more.values())

    def compute(positions, cell, numbers, neighbors):
        R, N = positions.shape[:2]
        dt = positions.dtype
        shapes = (jax.ShapeDtypeStruct((R,), dt), jax.ShapeDtypeStruct((R, N, 3), dt),
                  jax.ShapeDtypeStruct((R, 3, 3), dt)) + tuple(
                      jax.ShapeDtypeStruct((R,) + shape, dt) for shape in extras.values())
        e, f, s, *more = jax.pure_callback(host, shapes, positions, cell, vmap_method="sequential")
        return ModelOutput(energy=e, forces=f, stress=s, extras=dict(zip(extras, more)))

    first = single if calcs is None else calcs[0]
    return Model(compute=compute, cutoff=0.0, name=f"ase-callback:{type(first).__name__}", extras=tuple(extras))
