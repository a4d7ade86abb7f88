"""Nequix (JAX: equinox + e3nn-jax) as a :class:`jaxpto.model.Model`, with no bridge at all.

Nequix (Koker, Kotak, Smidt, arXiv:2508.16067, 2025; phonon fine-tuning: Koker et al.,
arXiv:2601.07742, 2026) is an E(3)-equivariant NequIP-type network written in JAX. Its
``Nequix.node_energies(displacements, species, senders, receivers)`` is a pure JAX function, so
jaxpto calls it inside the compiled MD step (``jit``/``lax.scan``) on a graph built on the device
from the engine's neighbour list: no callback, no host round trip, no re-padding between steps.

Graph. The engine's list (:mod:`jaxpto.neighbors`) holds, per replica, ``K`` slots per atom ``i``
with neighbours ``j`` and image offsets ``S`` such that ``d_ij = r_j + S h - r_i``, for all pairs
within ``cutoff + skin`` (padding slots hold ``j = N``). Nequix's own graph (``nequix.data.
preprocess_graph``, matscipy ``"ijS"``) has ``receivers = i``, ``senders = j`` and the edge vector
``r[senders] - r[receivers] + S h``: the same vector, messages flow from ``j`` into ``i``. Only
pairs strictly inside the model's cutoff (``|d| < r_c``, matscipy's rule) become edges.

Static shapes. All ``R`` replicas form one graph of ``R N + 1`` nodes; node ``R N`` is a dummy that
every unused edge slot points to (sender = receiver = dummy) with a constant edge vector longer
than the cutoff, so an unused slot adds exactly zero to every real atom (Nequix's polynomial
envelope is exactly 0 at and beyond ``r_c``, and the dummy's energy is not summed). The engine
keeps pairs up to ``r_c + skin`` with head-room in ``K`` (2.2-2.5x the pairs inside ``r_c`` for
PbTiO3 at ``r_c`` = 6 A, skin 1 A), and a tensor product per edge is most of the network's cost
(and padded slots cost as much as real ones), so the pairs inside ``r_c`` are first packed into a
smaller static edge buffer (:func:`edge_capacity`): ``N K (r_c/(r_c + skin))^3 / 1.3`` slots per
replica, the pair count the engine's list was sized for (``K`` = 1.3 x the largest count within
``r_c + skin``, rounded up to 16) scaled by the volume ratio of the two spheres: 1.05-1.24x the
pairs really inside ``r_c`` for the PbTiO3 cells of 5-625 atoms (``NequixCalculator`` pads its
own graph by 1.1x). Should a configuration have more (compression), a ``lax.cond`` evaluates the
full list instead: the same result, slower (through a host callback, so that the compiled step
holds one copy of the network, not two); nothing is ever dropped. Such calls are counted
(``NequixCompute.n_unpacked``) and warned about once; ``edge_fraction=`` sets the buffer.

Energy, forces, stress (ASE units and sign). ``E = sum_i e_i`` over real atoms (Nequix's per-atom
energies include its scale, shift and isolated-atom energies). Forces ``F = -dE/dr`` and the
stress ``sigma = (1/V) dE/d eps`` at ``eps = 0`` under the symmetric strain ``r -> r (1 + eps)``,
``h -> h (1 + eps)`` come from one reverse-mode pass, as ``Nequix.__call__`` computes them for its
ASE calculator (``NequixCalculator`` hands that stress to ASE unchanged: positive in tension).

Site energies (``Model.site_energies``, for :mod:`jaxpto.workflows.lammps_bundle`): the ``e_i``
above, ``[R, N]``; each depends on atoms up to ``n_layers`` graph hops away (every layer passes
messages one cutoff further), so ``receptive_hops = n_layers`` (4 for both published files).

Precision. The published weights are float32 and Nequix computes in float32 (the default here).
``dtype="float64"`` casts the weights to float64 (needs ``jax_enable_x64``): e3nn-jax's operations
are dtype-generic, so the whole network then runs in float64 (used to verify energy conservation).
Inputs are cast to the model's dtype and results back to the engine's dtype.

Weights. ``load("nequix-mp-1" | "nequix-mp-1-pft" | "<file>.nqx")``. Names use nequix's own
download and cache (``~/.cache/nequix/models/<name>.nqx``, the URL table
``nequix.calculator.NequixCalculator.URLS``); when the file is not cached and the server cannot be
reached, loading fails within seconds naming the URL, the cache path and how to pass a file.
A ``.nqx`` file is one JSON line (the training config: cutoff, irreps, elements, ...) followed by
equinox's serialised leaves; it is read here into a skeleton built with ``eqx.filter_eval_shape``
(no random initialisation: 0.05 s instead of nequix's ~8 s for the same weights).

Kernels: ``NequixCalculator(use_kernel=True)`` (its default) needs OpenEquivariance's GPU kernels;
this module loads the model without them (``kernel=False``, e3nn-jax's tensor products). A
calculator's own model object is used as it is (:func:`model_from_calculator`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from bridges._download import require_download
from bridges.registry import family_names
from jaxpto import neighbors as nl
from jaxpto.model import Model, ModelOutput

__all__ = ["MODEL_NAMES", "load", "looks_like", "read_nqx", "native_model", "NequixCompute", "model_from_calculator",
           "model_identity", "ase_calculator", "cache_path", "edge_capacity"]

# jaxpto name -> nequix's own name (bridges.registry holds the table); the URLs come from nequix's
# own table (NequixCalculator.URLS) at load time.
MODEL_NAMES: dict[str, str] = family_names("nequix")
# Keys a .nqx config line must have for nequix.model.load_model to rebuild the network.
_CONFIG_KEYS = ("atomic_numbers", "hidden_irreps", "lmax", "cutoff", "n_layers", "radial_basis_size",
                "radial_mlp_size", "radial_mlp_layers", "radial_polynomial_p", "mlp_init_scale",
                "index_weights", "layer_norm", "shift", "scale", "avg_n_neighbors")


# ----------------------------------------------------------------------------- files


def _read_config_line(path) -> dict | None:
    """The JSON config of a ``.nqx`` file, or None if the file does not start with one."""
    with open(path, "rb") as f:
        line = f.readline(1 << 20)  # configs are a few kB; never read a large binary whole
    try:
        config = json.loads(line.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) else None


def looks_like(path) -> bool:
    """Is ``path`` a Nequix ``.nqx`` file (a JSON config line with Nequix's keys, then weights)?"""
    try:
        path = os.fspath(path)
        if not os.path.isfile(path):
            return False
        config = _read_config_line(path)
        return config is not None and all(k in config for k in _CONFIG_KEYS)
    except Exception:
        return False


def read_nqx(path, *, kernel: bool = False):
    """``(nequix.model.Nequix, config)`` from a ``.nqx`` file (what ``nequix.model.load_model`` reads).

    The network skeleton comes from ``eqx.filter_eval_shape`` (shapes only) and is filled by
    ``eqx.tree_deserialise_leaves``; the weights are the file's, bit for bit.
    """
    import equinox as eqx
    from nequix.model import Nequix

    path = os.fspath(path)
    config = _read_config_line(path)
    missing = [k for k in _CONFIG_KEYS if config is not None and k not in config]
    if config is None or missing:
        why = "no JSON config line" if config is None else f"config lacks {', '.join(missing)}"
        raise ValueError(f"{path!r} is not a Nequix .nqx file ({why}); a .nqx file is one JSON config "
                         "line followed by equinox-serialised weights (nequix.model.save_model)")
    kwargs = dict(
        n_species=len(config["atomic_numbers"]), hidden_irreps=config["hidden_irreps"], lmax=config["lmax"],
        cutoff=config["cutoff"], n_layers=config["n_layers"], radial_basis_size=config["radial_basis_size"],
        radial_mlp_size=config["radial_mlp_size"], radial_mlp_layers=config["radial_mlp_layers"],
        radial_polynomial_p=config["radial_polynomial_p"], mlp_init_scale=config["mlp_init_scale"],
        index_weights=config["index_weights"], layer_norm=config["layer_norm"], shift=config["shift"],
        scale=config["scale"], avg_n_neighbors=config["avg_n_neighbors"], kernel=kernel)
    # Shapes in float32, the dtype the weights are stored in: under jax_enable_x64 the random
    # initialiser would otherwise give float64 leaves that the stored float32 ones cannot fill.
    with jax.enable_x64(False):
        skeleton = eqx.filter_eval_shape(lambda: Nequix(key=jax.random.key(0), **kwargs))
    with open(path, "rb") as f:
        f.readline()
        try:
            model = eqx.tree_deserialise_leaves(f, skeleton)
        except Exception as exc:
            raise ValueError(f"{path!r}: the weights after the config line do not fit the network the config "
                             f"describes ({type(exc).__name__}: {exc})") from exc
    return model, config


def cache_path(name: str) -> str:
    """Where nequix caches a named model (``nequix.calculator.from_pretrained``'s own rule)."""
    return os.path.join(os.path.expanduser("~/.cache/nequix/models"), f"{MODEL_NAMES[name]}.nqx")


def _url(name: str) -> str:
    from nequix.calculator import NequixCalculator

    return NequixCalculator.URLS[MODEL_NAMES[name]]


def _named_file(name: str, timeout: float) -> str:
    """The cached ``.nqx`` of a named model, downloaded by nequix if needed (fails fast offline)."""
    url = _url(name)
    cached = cache_path(name)
    if os.path.isfile(cached):
        return cached
    require_download(url, f"Nequix model {name!r}", timeout=timeout, local_hint=(
        f"it is not in nequix's cache ({cached}). Offline: pass the .nqx file path instead, e.g. "
        f"load_model('/path/to/{name}.nqx'), or copy the file to {cached}"))
    from nequix.calculator import from_pretrained

    try:  # nequix's own download into its cache (it loads the file too; that copy is dropped)
        from_pretrained(MODEL_NAMES[name], backend="jax", use_kernel=False)
    except Exception as exc:
        raise RuntimeError(f"downloading Nequix model {name!r} from {url} failed ({type(exc).__name__}: {exc}); "
                           f"pass the .nqx file path instead, e.g. load_model('/path/to/{name}.nqx')") from exc
    if not os.path.isfile(cached):
        raise RuntimeError(f"nequix did not write {cached} for {name!r}; pass the .nqx file path instead")
    return cached


# ----------------------------------------------------------------------------- the Model


def _float_dtype(dtype):
    """``None`` -> float32 (the weights' own); float32/float64 by name or dtype; else a clear error."""
    if dtype is None:
        return jnp.dtype(jnp.float32)
    try:
        out = jnp.dtype(str(dtype).removeprefix("torch.") if isinstance(dtype, str) else dtype)
    except TypeError:
        out = None
    if out not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise ValueError(f"unsupported dtype {dtype!r} for Nequix; use float32 or float64")
    if out == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype float64 needs JAX's 64-bit mode: call jax.config.update('jax_enable_x64', True) "
                         "before loading the model (else JAX silently computes in float32)")
    return out


def _cast_weights(model, dtype):
    """``model`` itself when its float leaves are already ``dtype``, else a copy cast to it."""
    import equinox as eqx

    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    if all(x.dtype == dtype for x in leaves):
        return model

    def cast(x):
        return x.astype(dtype) if eqx.is_inexact_array(x) and x.dtype != dtype else x

    return jax.tree.map(cast, model)


_ENGINE_CAPACITY_FACTOR = 1.3  # jaxpto.neighbors.allocate(capacity_factor=1.3), state.create_state's default


def edge_capacity(n_atoms: int, neighbors, cutoff: float, fraction: float | None = None) -> int:
    """Static edge slots per replica for the pairs inside ``cutoff`` (see the module docstring).

    ``fraction`` of the engine's ``N K`` slots; default ``(r_c / (r_c + skin))^3 / 1.3``: the
    volume ratio of the two spheres over the head-room factor of the engine's capacity
    (:func:`jaxpto.neighbors.allocate`'s default ``capacity_factor``). Rounded up to a multiple
    of 64, at most ``N K``.
    """
    total = n_atoms * neighbors.capacity
    if fraction is None:
        fraction = (cutoff / (neighbors.cutoff + neighbors.skin)) ** 3 / _ENGINE_CAPACITY_FACTOR
    return int(min(total, 64 * math.ceil(max(fraction, 0.0) * total / 64)))


class NequixCompute:
    """``compute(positions [R,N,3], cell [R,3,3], numbers [N], neighbors) -> ModelOutput`` of a Nequix network.

    Pure JAX (traced into the caller's ``jit``/``lax.scan``). Attributes: ``network`` (the
    ``nequix.model.Nequix`` evaluated, in ``dtype``), ``atomic_numbers`` (sorted), ``cutoff``
    (A), ``dtype``, ``edge_fraction`` (see :func:`edge_capacity`). See the module docstring
    for the graph, the padding and the physics.
    """

    def __init__(self, network, atomic_numbers, *, cutoff: float, dtype, edge_fraction: float | None = None):
        self.dtype = _float_dtype(dtype)
        self.network = _cast_weights(network, self.dtype)
        self.cutoff = float(cutoff)
        self.atomic_numbers = tuple(sorted(int(z) for z in atomic_numbers))
        self.edge_fraction = edge_fraction
        # atomic number -> species index (rank in sorted order, nequix.data.atomic_numbers_to_indices);
        # -1 for uncovered elements, including every Z above the largest covered one (clipped index).
        table = np.full(max(self.atomic_numbers) + 2, -1, np.int32)
        table[list(self.atomic_numbers)] = np.arange(len(self.atomic_numbers), dtype=np.int32)
        self._species_table = table
        self._grad = jax.grad(self._energies, argnums=(0, 1), has_aux=True)
        self.n_unpacked = 0  # calls that took the unpacked fallback (see the module docstring)
        self._warned = False
        self._evaluate_jit = None

    def _unpacked_on_host(self, pos, cel, species, i, j, shifts, inside, count, cap):
        """The fallback (see ``_compute``): count it, warn once, evaluate the full list."""
        self.n_unpacked += 1
        if not self._warned:
            self._warned = True
            warnings.warn(f"Nequix: {int(count)} pairs inside the {self.cutoff} A cutoff exceed the packed edge "
                          f"buffer ({int(cap)} per replica), so this and such later calls evaluate the engine's "
                          "full list (same result, up to ~2.5x slower). For a denser system, load the model with "
                          "a larger edge_fraction=, e.g. 1.0.", RuntimeWarning, stacklevel=2)
        if self._evaluate_jit is None:
            self._evaluate_jit = jax.jit(self._evaluate)
        with self._precision():
            out = self._evaluate_jit(pos, cel, species, i, j, shifts, inside)
        return tuple(np.asarray(x, self.dtype) for x in out)

    def __repr__(self) -> str:
        return f"NequixCompute(cutoff={self.cutoff}, dtype={self.dtype.name}, elements={len(self.atomic_numbers)})"

    def _site_energies(self, pos_r, cell_r, graph):
        """Nequix's per-atom energies ``e_i`` [R, n] (eV) of the replicas on ``graph`` (:meth:`_graph`).

        ``e_i`` includes Nequix's scale, shift and isolated-atom energy; the dummy node's is dropped.
        """
        species, senders, receivers, shifts, edge_replica, valid = graph
        dt = self.dtype
        R, n = pos_r.shape[:2]
        flat = jnp.concatenate([pos_r.reshape(R * n, 3), jnp.zeros((1, 3), dt)])  # + the dummy node
        d = flat[senders] - flat[receivers] + nl.image_displacements(shifts, cell_r[edge_replica])
        # Unused slots: a constant vector beyond the cutoff (envelope exactly 0, no gradient).
        d = jnp.where(valid[:, None], d, jnp.asarray([2.0 * self.cutoff, 0.0, 0.0], dt))
        return self.network.node_energies(d, species, senders, receivers)[: R * n, 0].reshape(R, n)

    def _energies(self, pos_r, strain, cell_r, graph):
        """(sum of the energies, per-replica energies [R]) of the strained replicas ``r (1 + eps)``,
        ``h (1 + eps)``; ``eps`` symmetrised, so ``dE/d eps`` is the symmetric virial."""
        deformation = jnp.eye(3, dtype=self.dtype) + 0.5 * (strain + jnp.swapaxes(strain, 1, 2))
        pos_r = jnp.einsum("rni,rij->rnj", pos_r, deformation)
        cell_r = jnp.einsum("rij,rjk->rik", cell_r, deformation)
        per_replica = jnp.sum(self._site_energies(pos_r, cell_r, graph), axis=1)
        return jnp.sum(per_replica), per_replica

    @staticmethod
    def _graph(species_r, i, j, shifts, valid):
        """All replicas as one graph of ``R n + 1`` nodes from per-replica edge slots ``[R, E]``
        (``i`` receiver, ``j`` sender, ``valid`` the slots holding a pair inside the cutoff):
        ``(species, senders, receivers, shifts, edge_replica, valid)``, flat; unused slots join the
        dummy node ``R n`` to itself."""
        R, n = species_r.shape
        E = i.shape[1]
        offset = (jnp.arange(R, dtype=jnp.int32) * n)[:, None]
        dummy = R * n
        receivers = jnp.where(valid, i + offset, dummy).reshape(R * E)
        senders = jnp.where(valid, j + offset, dummy).reshape(R * E)
        edge_replica = jnp.broadcast_to(jnp.arange(R, dtype=jnp.int32)[:, None], (R, E)).reshape(R * E)
        species = jnp.concatenate([species_r.reshape(R * n), jnp.zeros((1,), jnp.int32)])
        return species, senders, receivers, shifts.reshape(R * E, 3), edge_replica, valid.reshape(R * E)

    def _evaluate(self, pos_r, cell_r, species_r, i, j, shifts, valid):
        """Energy [R], forces [R,N,3], stress [R,3,3] on per-replica edge slots (see :meth:`_graph`)."""
        zero = jnp.zeros((pos_r.shape[0], 3, 3), self.dtype)
        (dE_dr, dE_deps), energy = self._grad(pos_r, zero, cell_r, self._graph(species_r, i, j, shifts, valid))
        volume = jnp.abs(jnp.linalg.det(cell_r))
        stress = dE_deps / jnp.where(volume > 0, volume, 1.0)[:, None, None]
        return energy, -dE_dr, stress

    def _precision(self):
        """The numerics the network is traced under (a context manager).

        * full-precision float32 matmuls: nequix sets this process-wide at import (its choice
          for reproducible GPU results); scoped here too, so the step does not depend on it;
        * a float32 model traced in float32 mode even under ``jax_enable_x64``: nequix's code
          makes float64 constants there (``jnp.linspace`` in its radial basis), which would
          silently turn the whole network into float64 arithmetic on float32 weights.
        """
        stack = contextlib.ExitStack()
        stack.enter_context(jax.default_matmul_precision("highest"))
        if self.dtype == jnp.float32:
            stack.enter_context(jax.enable_x64(False))
        return stack

    def _cast_inputs(self, positions, cell, numbers, neighbors):
        """Inputs in the model's dtype; done before the float32 context of :meth:`_precision`,
        where int64/float64 inputs would be truncated with warnings."""
        if neighbors is None:
            raise ValueError("Nequix needs the engine's neighbour list (a model with cutoff > 0 always gets one)")
        positions, cell = positions.astype(self.dtype), cell.astype(self.dtype)
        numbers = np.asarray(numbers, np.int32) if isinstance(numbers, np.ndarray) else jnp.asarray(numbers, jnp.int32)
        return positions, cell, numbers, neighbors.replace(shifts=neighbors.shifts.astype(self.dtype))

    def __call__(self, positions, cell, numbers, neighbors) -> ModelOutput:
        out_dtype = positions.dtype
        args = self._cast_inputs(positions, cell, numbers, neighbors)
        with self._precision():
            energy, forces, stress = self._compute(*args)
        # Back to the engine's dtype outside the float32 context (inside it float64 does not exist).
        return ModelOutput(energy=energy.astype(out_dtype), forces=forces.astype(out_dtype),
                           stress=stress.astype(out_dtype))

    def site_energies(self, positions, cell, numbers, neighbors):
        """Per-atom energies ``e_i`` [R, N] in eV (Nequix's node energies), ``sum_i e_i`` = the energy.

        ``e_i`` depends on atoms up to ``n_layers`` hops of the graph away (``receptive_hops`` of the
        :class:`Model`), through the neighbour list only. Evaluated on all the list's slots inside
        the cutoff (no packed buffer, no host fallback), so the function has no callback and can be
        exported (:mod:`jaxpto.workflows.lammps_bundle`); NaN for an uncovered element.
        """
        out_dtype = positions.dtype
        args = self._cast_inputs(positions, cell, numbers, neighbors)
        with self._precision():
            pos, cel, species, uncovered, i, jj, shifts, inside = self._pairs(*args)
            e = self._site_energies(pos, cel, self._graph(species, i, jj, shifts, inside))
            e = jnp.where(uncovered, jnp.asarray(jnp.nan, self.dtype), e)
        return e.astype(out_dtype)

    def _pairs(self, pos, cel, numbers, neighbors):
        """Species [R, N] (``uncovered``: any element the network lacks) and the list's slots
        ``i, j, shifts [R, N K]`` with ``inside``, the slots holding a pair inside the cutoff."""
        R, n = pos.shape[:2]
        table = jnp.asarray(self._species_table)
        species = table[jnp.clip(jnp.asarray(numbers), 0, table.shape[0] - 1)]
        # An uncovered element reaching this point bypassed Model.check_elements: NaN, never a
        # silently wrong number (one_hot(-1) would read as "no element").
        uncovered = jnp.any(species < 0)
        species = jnp.broadcast_to(jnp.maximum(species, 0), (R, n))
        i, j, shifts, slot = nl.as_pairs(neighbors)  # [R, N*K]
        shifts = shifts.astype(self.dtype)
        jj = jnp.where(slot, j, i)
        d = (jnp.take_along_axis(pos, jj[..., None], axis=1) - jnp.take_along_axis(pos, i[..., None], axis=1)
             + nl.image_displacements(shifts, cel[:, None]))
        inside = slot & (jnp.sum(d * d, axis=-1) < self.cutoff ** 2)  # matscipy's rule: |d| < cutoff
        return pos, cel, species, uncovered, i, jj, shifts, inside

    def _compute(self, positions, cell, numbers, neighbors):
        pos, cel, species, uncovered, i, jj, shifts, inside = self._pairs(positions, cell, numbers, neighbors)
        R, n = pos.shape[:2]
        cap = edge_capacity(n, neighbors, self.cutoff, self.edge_fraction)
        if cap >= i.shape[1]:
            energy, forces, stress = self._evaluate(pos, cel, species, i, jj, shifts, inside)
        else:
            count = jnp.sum(inside, axis=1)

            def packed():
                # Slot numbers of the first `cap` pairs inside the cutoff, per replica (a cumsum
                # along each row and one scatter: cheap next to the network).
                rank = jnp.cumsum(inside, axis=1) - 1
                target = jnp.where(inside & (rank < cap), rank, cap)
                source = jnp.broadcast_to(jnp.arange(i.shape[1], dtype=jnp.int32), i.shape)
                sel = jnp.zeros((R, cap + 1), jnp.int32).at[jnp.arange(R)[:, None], target].set(source)[:, :cap]
                valid = jnp.arange(cap)[None, :] < count[:, None]
                sh = jnp.take_along_axis(shifts, sel[..., None], axis=1)
                return self._evaluate(pos, cel, species, jnp.take_along_axis(i, sel, axis=1),
                                      jnp.take_along_axis(jj, sel, axis=1), sh, valid)

            def unpacked():
                # More pairs than the packed buffer holds: the network on the full list, on the host
                # side of a callback (compiled there on first use). A second traced copy of the
                # network here would double the compile time of every program for a rare case.
                shapes = (jax.ShapeDtypeStruct((R,), self.dtype), jax.ShapeDtypeStruct((R, n, 3), self.dtype),
                          jax.ShapeDtypeStruct((R, 3, 3), self.dtype))
                return jax.pure_callback(self._unpacked_on_host, shapes, pos, cel, species, i, jj, shifts, inside,
                                         jnp.max(count), cap, vmap_method="sequential")

            energy, forces, stress = jax.lax.cond(jnp.all(count <= cap), packed, unpacked)
        nan = jnp.asarray(jnp.nan, self.dtype)
        return tuple(jnp.where(uncovered, nan, x) for x in (energy, forces, stress))


def native_model(network, atomic_numbers, *, cutoff: float | None = None, dtype=None, name: str = "nequix",
                 edge_fraction: float | None = None) -> Model:
    """A :class:`jaxpto.model.Model` whose ``compute`` (a :class:`NequixCompute`) evaluates a Nequix network.

    Parameters
    ----------
    network:
        A ``nequix.model.Nequix`` (used as it is when already in ``dtype``, else a cast copy).
    atomic_numbers:
        The elements the network was trained on (the config's ``atomic_numbers``); species
        index = rank in sorted order, as ``nequix.data.atomic_numbers_to_indices``.
    cutoff:
        Graph cutoff in Angstrom; default the network's own (``network.cutoff``).
    dtype:
        ``float32`` (default, the weights' own) or ``float64`` (needs ``jax_enable_x64``).
    name:
        Label in logs and results.
    edge_fraction:
        Size of the packed edge buffer as a fraction of the engine's slots (see
        :func:`edge_capacity`); ``1.0`` disables packing. Results do not depend on it.
    """
    compute = NequixCompute(network, atomic_numbers, cutoff=float(network.cutoff if cutoff is None else cutoff),
                            dtype=dtype, edge_fraction=edge_fraction)
    # A node's energy sees the graph through n_layers message-passing layers: n_layers hops of the list.
    return Model(compute=compute, cutoff=compute.cutoff, elements=frozenset(compute.atomic_numbers), name=name,
                 site_energies=compute.site_energies, receptive_hops=len(compute.network.layers))


def load(name_or_path, *, dtype=None, download_timeout: float = 10.0, edge_fraction: float | None = None,
         **kw) -> Model:
    """A Nequix model as a :class:`jaxpto.model.Model` (energy in eV, forces eV/A, stress eV/A^3).

    Parameters
    ----------
    name_or_path:
        "nequix-mp-1" or "nequix-mp-1-pft" (case insensitive; nequix's download and cache), or
        the path of a ``.nqx`` file.
    dtype:
        ``float32`` (default, the weights' own) or ``float64`` (needs ``jax_enable_x64``).
    download_timeout:
        Seconds to wait for the download server (only when a named model is not cached).
    edge_fraction:
        See :func:`native_model` (a performance knob; results do not depend on it).
    """
    if kw:
        raise TypeError(f"unexpected arguments for a Nequix model: {', '.join(kw)}")
    name = os.fspath(name_or_path)
    key = name.strip().lower()
    if key in MODEL_NAMES:
        path, label = _named_file(key, download_timeout), key
    elif os.path.isfile(name):
        path, label = name, f"nequix:{os.path.basename(name)}"
    else:
        raise ValueError(f"unknown Nequix model {name!r} (and no such file); known: {', '.join(MODEL_NAMES)}, "
                         "or the path of a .nqx file")
    network, config = read_nqx(path)
    return native_model(network, config["atomic_numbers"], cutoff=config["cutoff"], dtype=dtype, name=label,
                        edge_fraction=edge_fraction)


# ----------------------------------------------------------------------------- ASE calculators


def _is_nequix_calculator(calc) -> bool:
    module = type(calc).__module__ or ""
    if not module.startswith("nequix"):
        return False
    from nequix.calculator import NequixCalculator

    return type(calc) is NequixCalculator


def model_from_calculator(calc) -> Model | None:
    """The native :class:`Model` on a ``NequixCalculator``'s own loaded network, or None.

    Only the exact class with the JAX backend (its ``model`` is a ``nequix.model.Nequix``); the
    network object is used as it is (same weights, its own dtype; a kernel model keeps its
    OpenEquivariance tensor products). Anything else returns None (the caller then runs the
    calculator itself).
    """
    if not _is_nequix_calculator(calc) or getattr(calc, "backend", "jax") != "jax":
        return None
    from nequix.model import Nequix

    network = getattr(calc, "model", None)
    if not isinstance(network, Nequix):
        return None
    import equinox as eqx

    dtypes = {x.dtype for x in jax.tree.leaves(eqx.filter(network, eqx.is_inexact_array))}
    dtype = dtypes.pop() if len(dtypes) == 1 else jnp.float32
    return native_model(network, calc.config["atomic_numbers"], cutoff=calc.cutoff, dtype=dtype,
                        name="NequixCalculator.model")


def model_identity(calc):
    """What makes two ``NequixCalculator`` s compute the same thing: the network object, backend
    and cutoff (``capacity_multiplier`` only pads the calculator's own graph). None for other
    calculators."""
    if not _is_nequix_calculator(calc):
        return None
    from bridges.resolver import Same

    return Same(getattr(calc, "model", None)), getattr(calc, "backend", None), float(getattr(calc, "cutoff", 0.0))


def ase_calculator(name_or_path):
    """Nequix's own ASE calculator for a name or ``.nqx`` file (the reference the native path replaces).

    ``use_kernel=False``: the e3nn-jax tensor products (OpenEquivariance's kernels need a GPU and
    are not installed by ``jaxpto[nequix]``). Names resolve through :func:`load`'s cache rule.
    """
    from nequix.calculator import NequixCalculator

    name = os.fspath(name_or_path)
    key = name.strip().lower()
    path = _named_file(key, 10.0) if key in MODEL_NAMES else name
    if not looks_like(path):
        raise ValueError(f"{name!r} is neither a Nequix model name ({', '.join(MODEL_NAMES)}) nor a .nqx file")
    # nequix.model.load_model initialises its network in JAX's default float dtype, which cannot hold
    # the stored float32 weights under jax_enable_x64: build it in float32 mode.
    with jax.enable_x64(False):
        return NequixCalculator(model_name=MODEL_NAMES.get(key), model_path=path, use_kernel=False)
