"""The one contract between the engine and the models.

A *model* maps batched positions, cells and atomic numbers to energies, forces
and stresses. The integrators only ever see a :class:`Model`; they never know
which framework (JAX, PyTorch through a bridge, ...) computed the numbers.

Shapes and units (ASE's everywhere):

* ``positions``: ``[R, N, 3]`` in Angstrom, ``R`` replicas of the same ``N`` atoms;
* ``cell``: ``[R, 3, 3]`` in Angstrom, rows are the lattice vectors (ASE convention);
* ``numbers``: ``[N]`` integer atomic numbers (shared by all replicas);
* ``neighbors``: a :class:`jaxpto.neighbors.NeighborList` built by the engine
  (on the device, reused with a skin) for ``model.cutoff``;
* output ``energy`` ``[R]`` in eV, ``forces`` ``[R, N, 3]`` in eV/A and
  ``stress`` ``[R, 3, 3]`` in eV/A^3 with ASE's sign (positive in tension;
  ``stress = (1/V) dE/d(strain)``), potential part only (no kinetic term);
* optional ``extras``: what else the model computes in the same call, under ASE's property
  names (``"energies"`` per-atom energies, ``"magmoms"``, ``"charges"``, ...), each ``[R, N, ...]``
  (per atom) or ``[R, ...]`` (per structure). A model names them in :attr:`Model.extras`; the engine
  carries them in the state (``MDState.extras``) and the ASE layer writes them into
  ``atoms.calc.results`` as the model's own calculator does. A model without extras costs nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
from flax import struct


#: The results every model gives (ASE's names); ``Model.extras`` are the others.
MAIN_RESULTS = frozenset({"energy", "free_energy", "forces", "stress"})


@struct.dataclass
class ModelOutput:
    """Energies [R] (eV), forces [R,N,3] (eV/A), stresses [R,3,3] (eV/A^3, ASE sign), and the
    model's ``extras`` (``{ASE property name: [R, N, ...] or [R, ...]}``, empty by default)."""

    energy: jax.Array
    forces: jax.Array
    stress: jax.Array
    extras: dict = struct.field(default_factory=dict)


ComputeFn = Callable[[jax.Array, jax.Array, jax.Array, Any], ModelOutput]
SiteEnergyFn = Callable[[jax.Array, jax.Array, jax.Array, Any], jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A force field as the engine sees it.

    Attributes
    ----------
    compute:
        ``compute(positions [R,N,3], cell [R,3,3], numbers [N], neighbors) -> ModelOutput``.
        Must be traceable by JAX (pure JAX, or a bridge that calls out through
        ``buffer_callback``/``pure_callback``).
    cutoff:
        Interaction range in Angstrom; the engine builds neighbour lists for it.
    elements:
        Atomic numbers the model covers, or ``None`` if it covers every element.
    name:
        Human-readable name, used in logs and results.
    site_energies:
        Optional. ``site_energies(positions [R,N,3], cell [R,3,3], numbers [N], neighbors) ->
        [R, N]`` per-atom energies in eV whose sum over atoms is ``compute``'s energy. Only
        needed where a subset of the atoms' energies counts: a LAMMPS rank sums the energies
        of the atoms it owns (:mod:`jaxpto.workflows.lammps_export`). A site energy must be
        *local*: it depends only on positions reached through the neighbour list within
        ``receptive_hops`` hops of the atom (no global quantity such as the composition).
    receptive_hops:
        Required with ``site_energies``: how many neighbour-list hops reach an atom's site
        energy, i.e. positions up to ``receptive_hops * cutoff`` away can change it. 1 for pair
        and embedded-atom potentials (EMT), the number of message-passing layers for a graph
        network.
    extras:
        The names (ASE property names) of the extra results ``compute`` returns in
        ``ModelOutput.extras``, computed in the same call (e.g. ``("energies",)`` for per-atom
        energies, ``("magmoms",)``); ``()`` (default): none. Each is ``[R, N, ...]`` per atom or
        ``[R, ...]`` per structure, with static shapes (they are carried through ``jit``/``scan``).
    """

    compute: ComputeFn
    cutoff: float
    elements: frozenset[int] | None = None
    name: str = "model"
    site_energies: SiteEnergyFn | None = None
    receptive_hops: int | None = None
    extras: tuple[str, ...] = ()

    def __post_init__(self):
        names = (self.extras,) if isinstance(self.extras, str) else tuple(self.extras)
        if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"model {self.name!r}: extras must be distinct property names (strings), got "
                             f"{self.extras!r}")
        reserved = sorted(set(names) & MAIN_RESULTS)
        if reserved:
            raise ValueError(f"model {self.name!r}: {reserved} are the model's main outputs, not extras")
        object.__setattr__(self, "extras", names)
        if self.site_energies is not None:
            hops = self.receptive_hops
            if hops is None or int(hops) != hops or hops < 1:
                raise ValueError(
                    f"model {self.name!r} gives site_energies but receptive_hops={hops!r}; give the "
                    "number of neighbour-list hops that reach a site energy (1 for pair and EMT-like "
                    "potentials, the number of message-passing layers for a graph network)")

    def __call__(self, positions, cell, numbers, neighbors) -> ModelOutput:
        return self.compute(positions, cell, numbers, neighbors)

    def check_elements(self, numbers: Iterable[int]) -> None:
        """Raise a ``ValueError`` naming the atomic numbers this model does not cover."""
        if self.elements is None:
            return
        from ase.data import chemical_symbols

        missing = sorted({int(z) for z in numbers} - set(self.elements))
        if missing:
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" if 0 <= z < len(chemical_symbols) else
                              f"Z={z} (not an element)" for z in missing)
            covered = ", ".join(chemical_symbols[z] for z in sorted(self.elements))
            raise ValueError(
                f"model {self.name!r} does not cover {names}; it covers: {covered}. "
                "Use a model trained on these elements."
            )


def strain_derivative_stress(energy_fn: Callable[..., jax.Array], has_aux: bool = False):
    """Build ``compute`` for one replica from a scalar energy function by autodiff.

    ``energy_fn(positions [N,3], cell [3,3], numbers [N], neighbors) -> E`` (eV), or with
    ``has_aux`` ``-> (E, aux)``: ``aux`` (e.g. the per-atom energies whose sum is ``E``) comes out
    of the same evaluation, as a fourth result, without a second pass.

    Forces are ``F = -dE/dr``. The stress is the strain derivative

    .. math:: \\sigma_{ab} = \\frac{1}{V} \\frac{\\partial E}{\\partial \\varepsilon_{ab}}
              \\Big|_{\\varepsilon = 0}

    where positions and cell rows are both deformed, ``r -> r (1 + eps)``,
    ``h -> h (1 + eps)``; the symmetric part is returned (ASE sign: positive in tension).
    """

    def strained_energy(positions, strain, cell, numbers, neighbors):
        deformation = jnp.eye(3, dtype=positions.dtype) + strain
        return energy_fn(positions @ deformation, cell @ deformation, numbers, neighbors)

    grad_fn = jax.value_and_grad(strained_energy, argnums=(0, 1), has_aux=has_aux)

    def single(positions, cell, numbers, neighbors):
        zero = jnp.zeros((3, 3), positions.dtype)
        value, (dE_dr, dE_deps) = grad_fn(positions, zero, cell, numbers, neighbors)
        energy, aux = value if has_aux else (value, None)
        volume = jnp.abs(jnp.linalg.det(cell))
        # Non-periodic systems may have no cell: report zero stress rather than inf/NaN.
        safe = jnp.where(volume > 0, volume, 1.0)
        stress = jnp.where(volume > 0, 0.5 * (dE_deps + dE_deps.T) / safe, 0.0)
        if has_aux:
            return energy, -dE_dr, stress, aux
        return energy, -dE_dr, stress

    return single


def energy_model(
    energy_fn: Callable[..., jax.Array],
    cutoff: float,
    elements: Iterable[int] | None = None,
    name: str = "jax-model",
    extras: Iterable[str] = (),
) -> Model:
    """Wrap a per-replica JAX energy function into a batched :class:`Model`.

    ``energy_fn(positions [N,3], cell [3,3], numbers [N], neighbors_for_one_replica)``
    returns the potential energy in eV; forces and stress come from autodiff
    (:func:`strain_derivative_stress`) and the function is vmapped over replicas.
    With ``extras`` (property names) it returns ``(E, {name: value})`` instead, the values
    per atom ``[N, ...]`` or per structure, computed in the same pass (``ModelOutput.extras``).
    """
    extras = tuple(extras)
    single = strain_derivative_stress(energy_fn, has_aux=bool(extras))

    def compute(positions, cell, numbers, neighbors):
        out = jax.vmap(single, in_axes=(0, 0, None, 0))(positions, cell, numbers, neighbors)
        if not extras:
            energy, forces, stress = out
            return ModelOutput(energy=energy, forces=forces, stress=stress)
        energy, forces, stress, aux = out
        if sorted(aux) != sorted(extras):
            raise ValueError(f"model {name!r} declares extras {sorted(extras)} but its energy function "
                             f"returned {sorted(aux)}")
        return ModelOutput(energy=energy, forces=forces, stress=stress, extras=dict(aux))

    return Model(
        compute=compute,
        cutoff=float(cutoff),
        elements=None if elements is None else frozenset(int(z) for z in elements),
        name=name,
        extras=extras,
    )


def site_energy_model(
    site_energy_fn: Callable[..., jax.Array],
    cutoff: float,
    *,
    receptive_hops: int,
    elements: Iterable[int] | None = None,
    name: str = "jax-model",
    report_energies: bool = False,
) -> Model:
    """Like :func:`energy_model`, from per-atom energies ``E = sum_i e_i``.

    ``site_energy_fn(positions [N,3], cell [3,3], numbers [N], neighbors_for_one_replica)``
    returns ``e_i`` [N] in eV. Forces and stress come from autodiff of the sum; the model also
    carries ``site_energies`` (vmapped) and ``receptive_hops`` (see :class:`Model`).
    ``report_energies``: ``compute`` also returns the ``e_i`` as the extra ``"energies"`` (ASE's
    name for per-atom energies), from the same pass as the forces.
    """
    base = per_atom_energy_model(site_energy_fn, cutoff, elements, name, report_energies)

    def site_energies(positions, cell, numbers, neighbors):
        return jax.vmap(site_energy_fn, in_axes=(0, 0, None, 0))(positions, cell, numbers, neighbors)

    return dataclasses.replace(base, site_energies=site_energies, receptive_hops=int(receptive_hops))


def per_atom_energy_model(site_energy_fn, cutoff: float, elements=None, name: str = "jax-model",
                          report_energies: bool = False) -> Model:
    """:func:`energy_model` of ``E = sum_i e_i`` (``site_energy_fn -> e_i [N]``); with
    ``report_energies`` the ``e_i`` are also returned as the extra ``"energies"`` [R, N], from the
    same autodiff pass (no second evaluation). No ``site_energies``: for a model whose ``e_i``
    are not local (see :class:`Model`) but still sum to its energy."""
    if report_energies:
        def energy_and_energies(*a):
            e = site_energy_fn(*a)
            return jnp.sum(e), {"energies": e}

        return energy_model(energy_and_energies, cutoff, elements, name, extras=("energies",))
    return energy_model(lambda *a: jnp.sum(site_energy_fn(*a)), cutoff, elements, name)
