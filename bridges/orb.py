"""ORB (orb-models) as a torch EFS object for jaxpto, with ORB's graph built in torch on the device.

``load("orb-v2" | "orb-d3-v2" | "orb-v3-conservative-inf-omat" | ... | path, device=None,
dtype=None)`` returns an :class:`ORBEFS`, the torch-side object that
``bridges.torch_bridge.as_jax_model`` wraps (contract in that module's docstring)::

    efs(positions [R,N,3], cell [R,3,3], numbers [N] int64,
        edge_src [R,E] int64, edge_dst [R,E] int64, edge_shift [R,E,3] (float, integer values),
        edge_mask [R,E] bool) -> (energy [R] eV, forces [R,N,3] eV/A, stress [R,3,3] eV/A^3)

ORB's graph
-----------
ORB's ASE calculator (``ORBCalculator`` -> ``ase_atoms_to_atom_graphs`` ->
``featurization_utilities.compute_pbc_radius_graph``) wraps the positions into the cell, builds a
supercell of images and asks a k-nearest-neighbour search (scipy ``KDTree`` on the CPU, ``topk`` of
a ``cdist`` on a GPU) for the ``max_num_neighbors + 1`` nearest points of every atom within
``radius``, drops the first (the atom itself) and keeps, per *sender* (the centre atom), the
``max_num_neighbors`` nearest receivers, nearest first; distances are taken in float64 (scipy,
and ORB's brute force casts to float64 on purpose). Edges are ordered by sender, then by length.
The edge vector is ``pos[receiver] + unit_shift @ cell - pos[sender]``. A pair closer than the
radius may therefore be kept in one direction only (the cap is per sender), and ORB-v2 (cap 20) sees
only part of the 6 A sphere: the cap is part of the model.

:func:`build_graph` does the same in torch on the model's device from the engine's full list (one
batch for all ``R`` replicas, no Python loop over atoms or replicas): the engine's sender/receiver
are ``edge_src``/``edge_dst`` and its ``edge_shift`` is ORB's unit shift. The arithmetic is ORB's:
positions wrapped into the cell in float64 (its ``map_to_pbc_cell``; unit shifts corrected to
match), rounded to the model's dtype, image positions and edge vectors formed in that dtype,
distances in float64 from those coordinates; edges with ``|d| < radius`` are kept, sorted by
(sender, length) and cut at ``max_num_neighbors`` per sender. So a near-tie at the cap that the
float32 rounding decides (typically an atom's own images at ``+S`` and ``-S``, equally far in
exact arithmetic) is decided as in ORB, and the graph is ORB's edge for edge (tests: 5-atom,
40-atom and triclinic PbTiO3 cells in float32; in float64 the triclinic cell has an exact tie).

*Exact ties* at the cap (equal distances even after rounding, e.g. an atom at a position whose
images ``pos +/- c`` round symmetrically) are resolved by ORB through its search's traversal
order: the KD-tree (CPU) and the brute force (GPU) pick differently -- in about one of five
rattled 10-atom PbTiO3 cells here, where the ``+c``/``-c`` self-images sit at the 20th place
(cells shorter than the 6 A radius). No rule reproduces both; here exact ties are broken by
receiver index, then by image offset, so the graph does not depend on the engine's slot order or
on neighbour-list rebuilds, and it equals ORB's up to exchanging edges of exactly equal length.
Cells longer than the radius along every axis (every self-image beyond 6 A) and the "-inf"
(120-neighbour) models are not affected.

Model evaluation
----------------
The graph goes into ORB's own ``AtomGraphs`` and the model's own ``predict``, as the calculator
does: a *direct* model (orb-v2, orb-d3-*, orb-v3-direct-*) returns forces and stress from output
heads (``forces``, ``stress``; no autograd, run under ``torch.no_grad``), a *conservative* model
(orb-v3-conservative-*) differentiates the energy inside ``predict`` (``grad_forces``,
``grad_stress``; ORB's symmetric strain displacement). Units, checked against ``ORBCalculator``:
energy eV, forces eV/A, stress eV/A^3 in Voigt order (xx, yy, zz, yz, xz, xy) with ASE's sign (the
calculator hands ORB's Voigt stress to ASE unchanged); it is returned here as the symmetric 3x3
tensor. ZBL pair repulsion (orb-v3) is part of ``predict`` and thus included. Models without a
stress output (the OMol25 models) return a zero stress (``has_stress`` False).

Precision: float32 (ORB's training precision, default) or float64 (``dtype=torch.float64``; ORB
supports it through ``precision="float64"``). ORB's loaders change process-wide torch settings
(``torch.set_default_dtype``, ``set_float32_matmul_precision``); :func:`load` restores both. No
``torch.compile`` unless ``compile=True`` is passed (ORB compiles by default).

Weights: ORB downloads them with ``cached_path`` from its public S3 bucket into
``~/.cache/cached_path`` (``CACHED_PATH_CACHE_ROOT`` overrides). :func:`load` looks there first
(ORB's own ``cached_path`` would first ask the server for an ETag, retrying ~30 s when offline)
and, when the file is absent, probes the URL once (a few seconds at most) before letting ORB
download it, so an offline machine gets a clear error at once.

orb-models versions: written against 0.5.5 (the last release for Python 3.11) and run with it.
The 0.6/0.7 API (Python >= 3.12, read, not run here) moved the modules (``AtomGraphs`` to
``orb_models.common.atoms.batch.graph_batch``, the calculator to
``orb_models.forcefield.inference.calculator``), made the pretrained loaders return
``(model, atoms_adapter)`` with ``radius``/``max_num_neighbors`` on the adapter instead of
``model.system_config``, renamed the spin feature ``total_spin`` -> ``spin_multiplicity`` and
return the energy in float64; the graph semantics (radius, nearest-first cap per sender, vector
convention) and ``predict``'s output names are unchanged. Those differences are handled here;
0.6+'s ``D3SumModel`` (a model summed with a separately built D3 graph) is not supported.

This module owns ORB's graph (:func:`build_graph`: wrapping, radius, nearest-first cap), :class:`ORBEFS`,
:func:`load`, :func:`efs_from_calculator`, :func:`model_identity` and :func:`ase_calculator`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
import zipfile
from dataclasses import dataclass

import torch

from bridges._download import require_download
from bridges.graph import batched_edges
from bridges.registry import family_names
from bridges.torch_bridge import resolve_device, torch_float_dtype

__all__ = ["MODEL_NAMES", "ORBEFS", "OrbGraph", "build_graph", "load", "looks_like", "efs_from_calculator",
           "model_identity", "ase_calculator"]

# jaxpto names = ORB's own (``orb_models.forcefield.pretrained.ORB_PRETRAINED_MODELS``). The deprecated
# v1 names and the "separate-d3/d4" dispersion-only models are not listed (ORB's ``load`` still
# accepts any name of its table).
MODEL_NAMES: dict[str, str] = family_names("orb")

# ORB's atom embedding and one-hot features have 118 classes indexed by Z: Z = 1 ... 117.
ORB_ELEMENTS = frozenset(range(1, 118))


# ----------------------------------------------------------------------------- orb-models API (0.5 / 0.6+)


def _atom_graphs_cls():
    try:  # orb-models >= 0.6
        from orb_models.common.atoms.batch.graph_batch import AtomGraphs
    except ImportError:  # 0.5.x
        from orb_models.forcefield.base import AtomGraphs
    return AtomGraphs


def _calculator_classes() -> tuple:
    """``ORBCalculator`` of 0.5.x (``forcefield.calculator``) and/or 0.6+ (``forcefield.inference.calculator``)."""
    import importlib

    classes = []
    for module in ("orb_models.forcefield.calculator", "orb_models.forcefield.inference.calculator"):
        try:
            classes.append(importlib.import_module(module).ORBCalculator)
        except (ImportError, AttributeError):
            continue
    return tuple(classes)


def _pretrained_table() -> dict:
    from orb_models.forcefield.pretrained import ORB_PRETRAINED_MODELS

    return ORB_PRETRAINED_MODELS


def _is_conservative_model(model) -> bool:
    # ORB's calculator tests the same attribute (0.5.5); 0.6+ tests the class, which has it too.
    return hasattr(model, "grad_forces_name")


def _expects_charge_and_spin(model) -> bool:
    conditioner = getattr(getattr(model, "model", None), "conditioner", None)
    return conditioner is not None and type(conditioner).__name__ == "ChargeSpinConditioner"


# ----------------------------------------------------------------------------- the graph


@dataclass
class OrbGraph:
    """ORB's graph for ``R`` replicas of ``N`` atoms (global atom index ``r*N + i``), edges in ORB's order.

    ``senders``/``receivers`` [D] int64 (centre, neighbour), ``unit_shifts`` [D,3] float64 (integer
    values, for the *wrapped* positions), ``vectors`` [D,3] in the graph dtype, ``n_edge`` [R] int64,
    ``positions`` [R*N,3] float64 wrapped into the cell, ``edge_index`` [D] the edge's flat index
    into the engine's ``[R*E]`` list.
    """

    senders: torch.Tensor
    receivers: torch.Tensor
    unit_shifts: torch.Tensor
    vectors: torch.Tensor
    n_edge: torch.Tensor
    positions: torch.Tensor
    edge_index: torch.Tensor

    @property
    def n_edges(self) -> int:
        return int(self.senders.shape[0])


def _wrap(positions: torch.Tensor, cell: torch.Tensor):
    """``(wrapped positions, integer offsets)``, ``positions = wrapped + offsets @ cell`` up to rounding (float64).

    ORB's ``map_to_pbc_cell``: fractional coordinates from a linear solve, taken modulo 1, times
    the cell (the same arithmetic, so that the float32 rounding of the result is ORB's). A replica
    with a singular cell (no periodicity) is left as it is.
    """
    det = torch.linalg.det(cell)
    periodic = det.abs() > 1e-12
    eye = torch.eye(3, dtype=cell.dtype, device=cell.device).expand_as(cell)
    safe = torch.where(periodic[:, None, None], cell, eye)
    frac = torch.linalg.solve(safe.transpose(1, 2), positions.transpose(1, 2)).transpose(1, 2)
    wrapped = torch.bmm(torch.remainder(frac, 1.0), cell)
    offsets = torch.floor(frac)  # exact: frac - frac % 1
    keep = ~periodic[:, None, None]
    return torch.where(keep, positions, wrapped), torch.where(keep, torch.zeros_like(offsets), offsets)


@torch.no_grad()
def build_graph(positions, cell, edge_src, edge_dst, edge_shift, edge_mask, *, radius: float,
                max_num_neighbors: int | None, dtype: torch.dtype = torch.float32) -> OrbGraph:
    """ORB's radius graph with its per-sender nearest-first cap, from the engine's padded full edge list.

    Everything stays on ``positions.device``. The arithmetic is ORB's (``ase_atoms_to_atom_graphs``
    with graph-construction dtype ``dtype``, the model's): positions wrapped in float64 and rounded
    to ``dtype``, image positions ``pos + S @ cell`` and edge vectors formed in ``dtype``, distances
    for the radius and the cap in float64 from those ``dtype`` coordinates (ORB's KD-tree and brute
    force both do so). Near-ties at the cap, which the ``dtype`` rounding decides (e.g. an atom's
    own images at ``+S`` and ``-S``), are therefore decided as in ORB. ``max_num_neighbors=None``
    keeps every edge within ``radius``.
    """
    f64 = torch.float64
    R, N = positions.shape[0], positions.shape[1]
    E = edge_src.shape[1]
    dev = positions.device
    cel = cell.detach().to(device=dev, dtype=f64)
    mask = edge_mask.to(device=dev, dtype=torch.bool)
    src = torch.where(mask, edge_src.to(device=dev, dtype=torch.int64), 0)
    dst = torch.where(mask, edge_dst.to(device=dev, dtype=torch.int64), 0)
    pos_w, offsets = _wrap(positions.detach().to(f64), cel)
    # Unit shifts for the wrapped positions: d = pos[dst] + S h - pos[src]
    #                                          = pos_w[dst] + (S + o[dst] - o[src]) h - pos_w[src].
    o_src = torch.gather(offsets, 1, src[..., None].expand(R, E, 3))
    o_dst = torch.gather(offsets, 1, dst[..., None].expand(R, E, 3))
    shift_w = edge_shift.detach().to(device=dev, dtype=f64) + o_dst - o_src
    pos_g = pos_w.to(dtype)
    p_src = torch.gather(pos_g, 1, src[..., None].expand(R, E, 3))
    image = torch.gather(pos_g, 1, dst[..., None].expand(R, E, 3)) + torch.bmm(shift_w.to(dtype), cel.to(dtype))
    vec = image - p_src  # ORB: supercell_positions[receivers] - positions[senders]
    d64 = image.to(f64) - p_src.to(f64)
    len2 = (d64 * d64).sum(-1)
    # The bridge has cut the list at the radius in the engine's arithmetic; ORB's own test, in
    # float64 from the dtype-rounded coordinates, decides the pairs at the boundary as ORB does.
    edges = batched_edges(src, dst, shift_w, mask & (len2 < float(radius) ** 2), N)
    vectors, lengths = vec.reshape(R * E, 3)[edges.index], len2.reshape(R * E)[edges.index]
    if edges.src.numel():
        order = _nearest_first(edges, lengths, R * N, max_num_neighbors)
        edges, vectors = edges.select(order), vectors[order]
    n_edge = torch.zeros(R, dtype=torch.int64, device=dev).index_add_(0, edges.replica, torch.ones_like(edges.replica))
    return OrbGraph(senders=edges.src, receivers=edges.dst, unit_shifts=edges.shift, vectors=vectors,
                    n_edge=n_edge, positions=pos_w.reshape(R * N, 3), edge_index=edges.index)


def _nearest_first(edges, lengths, n_nodes: int, max_num_neighbors: int | None) -> torch.Tensor:
    """The edge order of ORB's graph (by sender, then nearest first), cut at ``max_num_neighbors`` per sender.

    Exact ties: receiver, then image offset (a canonical choice, independent of the engine's slot
    order; see the module docstring). Image offsets of wrapped positions are bounded by
    radius / (cell height) + 1, far below 64 for any physical cell; a larger one would only
    reorder exact ties, never lengths.
    """
    img = torch.round(edges.shift).to(torch.int64).clamp(-64, 64) + 64
    tie = ((edges.dst * 129 + img[:, 0]) * 129 + img[:, 1]) * 129 + img[:, 2]
    order = torch.argsort(tie, stable=True)
    order = order[torch.argsort(lengths[order], stable=True)]
    order = order[torch.argsort(edges.src[order], stable=True)]
    if max_num_neighbors is None:
        return order
    s_sorted = edges.src[order]
    counts = torch.zeros(n_nodes, dtype=torch.int64, device=s_sorted.device).index_add_(
        0, s_sorted, torch.ones_like(s_sorted))  # (bincount would sync a GPU for its size)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(s_sorted.numel(), device=s_sorted.device) - start[s_sorted]
    return order[rank < int(max_num_neighbors)]


# ----------------------------------------------------------------------------- the EFS object


def _voigt_to_full(v: torch.Tensor) -> torch.Tensor:
    """[R,6] (xx, yy, zz, yz, xz, xy) -> [R,3,3] symmetric."""
    xx, yy, zz, yz, xz, xy = v.unbind(-1)
    return torch.stack([torch.stack([xx, xy, xz], -1),
                        torch.stack([xy, yy, yz], -1),
                        torch.stack([xz, yz, zz], -1)], -2)


class ORBEFS:
    """Energy, forces and stress of an ORB model for batched replicas (torch EFS object).

    Parameters
    ----------
    model:
        A ``DirectForcefieldRegressor`` or ``ConservativeForcefieldRegressor``. It is moved to
        ``device``/``dtype``, put in ``eval()`` mode and its parameters are frozen.
    radius, max_num_neighbors:
        ORB's graph settings (``SystemConfig`` / atoms adapter of the model, 6 A and 20 or 120 for
        the pretrained models).
    conservative:
        ``None``: as ORB's calculator, autograd forces/stress for a conservative model and the
        output heads for a direct one. ``False`` on a conservative model uses its direct heads
        (only if it has a ``forces`` head).
    charge, spin:
        Total charge and spin multiplicity, required by models with a charge/spin conditioner
        (OMol25 models; ORB's calculator reads them from ``atoms.info``), fixed for the run.
    """

    def __init__(self, model, *, radius: float, max_num_neighbors: int | None, name: str,
                 device=None, dtype: torch.dtype = torch.float32, conservative: bool | None = None,
                 charge: float | None = None, spin: float | None = None):
        if getattr(model, "xc_model", None) is not None:
            raise TypeError("ORB's D3SumModel (a model plus a separately built D3 graph) is not supported by the "
                            "jaxpto bridge; load the model without D3 summation")
        dtype = torch_float_dtype(dtype, "ORB", default=torch.float32)
        self.device = resolve_device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.name = name
        self.radius = float(radius)
        self.cutoff = self.radius
        self.max_num_neighbors = None if max_num_neighbors is None else int(max_num_neighbors)
        self.elements = ORB_ELEMENTS
        model_conservative = _is_conservative_model(model)
        self.conservative = model_conservative if conservative is None else bool(conservative)
        if self.conservative and not model_conservative:
            raise ValueError("conservative=True needs a ConservativeForcefieldRegressor (an orb-v3-conservative "
                             "model); this model predicts forces directly")
        heads = self.model.heads
        if self.conservative:
            self._keys = (model.energy_name, model.grad_forces_name,
                          model.grad_stress_name if model.has_stress else None)
        else:
            if "forces" not in heads:
                raise ValueError("this ORB model has no direct forces head: use conservative=True")
            self._keys = ("energy", "forces", "stress" if "stress" in heads else None)
        self.has_stress = self._keys[2] is not None
        self.needs_charge_and_spin = _expects_charge_and_spin(self.model)
        if self.needs_charge_and_spin and (charge is None or spin is None):
            raise ValueError(f"ORB model {name!r} is conditioned on the total charge and spin multiplicity: pass "
                             "charge= and spin= (ORB's calculator reads atoms.info['charge'] and ['spin'])")
        if not self.needs_charge_and_spin and (charge is not None or spin is not None):
            raise ValueError(f"ORB model {name!r} takes no charge/spin")
        self.charge = None if charge is None else float(charge)
        self.spin = None if spin is None else float(spin)

    def __repr__(self) -> str:
        kind = "conservative" if self.conservative else "direct"
        return (f"ORBEFS(name={self.name!r}, {kind}, radius={self.radius}, "
                f"max_num_neighbors={self.max_num_neighbors}, device={self.device}, dtype={self.dtype})")

    def graph(self, positions, cell, edge_src, edge_dst, edge_shift, edge_mask) -> OrbGraph:
        """ORB's graph for these inputs (see :func:`build_graph`)."""
        return build_graph(torch.as_tensor(positions, device=self.device), cell, edge_src, edge_dst, edge_shift,
                           edge_mask, radius=self.radius, max_num_neighbors=self.max_num_neighbors,
                           dtype=self.dtype)

    def atom_graphs(self, positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask):
        """ORB's ``AtomGraphs`` batch (model dtype, model device) of the ``R`` replicas."""
        dev, dt = self.device, self.dtype
        positions = torch.as_tensor(positions, device=dev)
        cell = torch.as_tensor(cell, device=dev)
        R, N = positions.shape[0], positions.shape[1]
        g = self.graph(positions, cell, edge_src, edge_dst, edge_shift, edge_mask)
        z = torch.as_tensor(numbers, device=dev).to(torch.int64).reshape(N).repeat(R)
        cell_f = cell.detach().to(dt)
        node_features = {
            "positions": g.positions.to(dt),
            "atomic_numbers": z,
            "atomic_numbers_embedding": torch.nn.functional.one_hot(z, num_classes=118).to(dt),
            "atom_identity": torch.arange(N, device=dev).repeat(R),
        }
        edge_features = {"vectors": g.vectors.to(dt), "unit_shifts": g.unit_shifts.to(dt)}
        system_features = {"cell": cell_f, "pbc": (cell_f != 0).reshape(R, 9).any(-1, keepdim=True).expand(R, 3)}
        if self.needs_charge_and_spin:
            system_features["total_charge"] = torch.full((R,), self.charge, device=dev, dtype=dt)
            # 0.5.x reads "total_spin", 0.6+ "spin_multiplicity" (both: ORB's atoms.info["spin"])
            system_features["total_spin"] = torch.full((R,), self.spin, device=dev, dtype=dt)
            system_features["spin_multiplicity"] = system_features["total_spin"]
        return _atom_graphs_cls()(
            senders=g.senders, receivers=g.receivers,
            n_node=torch.full((R,), N, dtype=torch.int64, device=dev), n_edge=g.n_edge,
            node_features=node_features, edge_features=edge_features, system_features=system_features,
            node_targets={}, edge_targets={}, system_targets={}, system_id=None, fix_atoms=None,
            tags=torch.zeros(R * N, device=dev, dtype=dt), radius=self.radius,
            max_num_neighbors=torch.full((R,), -1 if self.max_num_neighbors is None else self.max_num_neighbors,
                                         dtype=torch.int64, device=dev),
        )

    def __call__(self, positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask):
        positions = torch.as_tensor(positions, device=self.device)
        R, N = positions.shape[0], positions.shape[1]
        batch = self.atom_graphs(positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask)
        e_key, f_key, s_key = self._keys
        # ORB creates some constants (e.g. the Gaussian centres of orb-v2's edge basis) in torch's
        # default dtype; its float64 mode sets that globally. Match it for the duration of the call.
        with _default_dtype(self.dtype):
            if self.conservative:
                with torch.inference_mode(False), torch.enable_grad():
                    out = self.model.predict(batch)
            else:
                with torch.no_grad():
                    out = self.model.predict(batch)
        energy = out[e_key].detach().reshape(R)
        forces = out[f_key].detach().reshape(R, N, 3)
        voigt = None if s_key is None else out.get(s_key)  # (0.6+ can switch a stress head off)
        if voigt is None:
            stress = torch.zeros((R, 3, 3), device=forces.device, dtype=forces.dtype)
        else:
            stress = _voigt_to_full(voigt.detach().reshape(R, 6))
        return energy, forces, stress


# ----------------------------------------------------------------------------- loading


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    if previous == dtype:
        yield
        return
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def _torch_globals_restored():
    """ORB's loaders call ``torch.set_default_dtype`` and ``set_float32_matmul_precision``: undo both."""
    dtype = torch.get_default_dtype()
    precision = torch.get_float32_matmul_precision()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(default dtype|precision=float32-high).*")
            yield
    finally:
        torch.set_default_dtype(dtype)
        torch.set_float32_matmul_precision(precision)


def _unpack(result):
    """A pretrained loader's result -> ``(model, radius, max_num_neighbors)`` (0.5.x: model; 0.6+: pair)."""
    adapter = None
    if isinstance(result, tuple):
        result, adapter = result
    if adapter is not None:
        return result, float(adapter.radius), adapter.max_num_neighbors
    config = getattr(result, "system_config", None)
    if config is None:
        return result, None, None
    return result, float(config.radius), config.max_num_neighbors


def _weights_url(fn) -> str | None:
    default = inspect.signature(fn).parameters.get("weights_path")
    url = None if default is None else default.default
    return url if isinstance(url, str) else None


def _pretrained_weights(key: str, fn, probe_timeout: float) -> str:
    """A local file of ORB's pretrained weights ``key``, or the URL for ORB's own download once it is reachable."""
    url = _weights_url(fn)
    if url is None or os.path.isfile(url):
        return url
    from cached_path import get_cache_dir
    from cached_path.util import find_latest_cached

    cached = find_latest_cached(url)
    if cached is not None:
        return str(cached)
    require_download(url, f"the weights of ORB model {key!r}", timeout=probe_timeout, local_hint=(
        f"they are not in orb-models' cache {get_cache_dir()} either. On a machine with network access run "
        f"`python -c \"from orb_models.forcefield import pretrained; pretrained.{fn.__name__}(device='cpu')\"` "
        f"and copy the cache, or download the file and pass its path: "
        f"load_model('/path/{os.path.basename(url)}', family='orb')"))
    return url


def _architecture_for_file(path: str) -> str | None:
    """ORB's model name whose download URL has this file's name (a file from ORB's bucket), or None."""
    base = os.path.basename(path)
    for key, fn in _pretrained_table().items():
        url = _weights_url(fn)
        if url is not None and os.path.basename(url) == base:
            return key
    return None


def _build(fn, weights_path: str, dtype: torch.dtype, compile: bool):
    precision = "float64" if dtype == torch.float64 else "float32-highest"
    with _torch_globals_restored():
        return fn(weights_path=weights_path, device="cpu", precision=precision, compile=compile)


def load(name_or_path, *, device=None, dtype=None, architecture=None, radius: float | None = None,
         max_num_neighbors: int | None = None, conservative: bool | None = None, charge: float | None = None,
         spin: float | None = None, compile: bool = False, probe_timeout: float = 5.0) -> ORBEFS:
    """Load an ORB model as a torch EFS object.

    Parameters
    ----------
    name_or_path:
        One of ORB's pretrained names (:data:`MODEL_NAMES`, e.g. ``"orb-v2"``,
        ``"orb-v3-conservative-inf-omat"``; any key of ORB's ``ORB_PRETRAINED_MODELS``), or a
        checkpoint file (a ``state_dict`` saved by ``torch.save``, ORB's weight format).
    architecture:
        For a checkpoint file: the ORB name whose architecture and graph settings it has (ORB's
        way of loading fine-tuned weights, ``pretrained.orb_v2(weights_path=...)``), or a
        callable returning an (untrained) ORB regressor of the checkpoint's architecture (for
        other sizes: ``functools.partial(pretrained.orb_v2_architecture,
        num_message_passing_steps=4, system_config=SystemConfig(6.0, 20))``). May be omitted
        for a file with the name of one of ORB's downloads.
    device:
        Torch device (default: JAX's platform, :func:`bridges.torch_bridge.resolve_device`).
    dtype:
        ``float32`` (default) or ``float64`` (torch dtype, numpy/JAX dtype or name).
    radius, max_num_neighbors:
        Override the model's graph radius (A) and neighbour cap (ORB's calculator's argument of
        that name). Needed with an ``architecture`` callable whose model carries no
        ``system_config`` (orb-models >= 0.6 keeps them on the atoms adapter instead).
    conservative, charge, spin:
        See :class:`ORBEFS`.
    compile:
        ``torch.compile`` the network (ORB's default; off here: graphs change size every step).
    probe_timeout:
        Seconds to wait for ORB's download server when weights are not cached.

    Raises ``ValueError`` for an unknown name, ``RuntimeError`` (within ``probe_timeout``) when
    pretrained weights are neither cached nor downloadable.
    """
    torch_dtype = torch_float_dtype(dtype, "ORB", default=torch.float32)
    model, label, (radius, mnn) = _network_for(name_or_path, torch_dtype, architecture, compile, probe_timeout,
                                               radius, max_num_neighbors)
    efs = ORBEFS(model, radius=radius, max_num_neighbors=mnn, name=label, device=device, dtype=torch_dtype,
                 conservative=conservative, charge=charge, spin=spin)
    if not efs.has_stress:
        warnings.warn(f"ORB model {label!r} has no stress output: the bridge returns zero stress (no NPT)",
                      stacklevel=2)
    return efs


def _network_for(name_or_path, dtype, architecture, compile: bool, probe_timeout: float, radius, max_num_neighbors):
    """``(ORB regressor, label, (radius, max_num_neighbors))`` for a pretrained name or a checkpoint file."""
    name = os.fspath(name_or_path)
    key = name.strip().lower()
    table = _pretrained_table()
    if key in table:
        fn = table[key]
        result, label = _build(fn, _pretrained_weights(key, fn, probe_timeout), dtype, compile), key
    elif os.path.isfile(name):
        result, label = _from_checkpoint(name, architecture, table, dtype, compile), f"orb:{os.path.basename(name)}"
    else:
        raise ValueError(f"unknown ORB model {name!r} (and no such file); known: {', '.join(MODEL_NAMES)}")
    model, model_radius, mnn = _unpack(result)
    radius = model_radius if radius is None else float(radius)
    if max_num_neighbors is not None:
        mnn = int(max_num_neighbors)
    if radius is None or mnn is None:
        raise ValueError("the ORB model carries no graph settings: pass radius= and max_num_neighbors= (or build "
                         "it with system_config=SystemConfig(radius=6.0, max_num_neighbors=...) on orb-models 0.5)")
    return model, label, (radius, mnn)


def _from_checkpoint(path: str, architecture, table: dict, dtype, compile: bool):
    """ORB's way of loading fine-tuned weights: an architecture (a name of ORB's or a callable) + the state dict."""
    arch = architecture if architecture is not None else _architecture_for_file(path)
    if arch is None:
        raise ValueError(f"which ORB architecture does {path!r} have? Pass architecture= one of "
                         f"{', '.join(k for k in table if k in MODEL_NAMES)} or a callable building the model")
    if isinstance(arch, str):
        if arch.lower() not in table:
            raise ValueError(f"unknown ORB architecture {arch!r}; known: {', '.join(table)}")
        return _build(table[arch.lower()], path, dtype, compile)
    if not callable(arch):
        raise TypeError(f"architecture must be an ORB model name or a callable, not {type(arch).__name__}")
    with _torch_globals_restored():
        result = arch()
        model = result[0] if isinstance(result, tuple) else result
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    if compile:
        model.compile(mode="default", dynamic=True)
    return result


# ----------------------------------------------------------------------------- registry hooks


def looks_like(path) -> bool:
    """Whether ``path`` is an ORB checkpoint: a file named as one of ORB's downloads, or a torch
    zip checkpoint whose pickled ``state_dict`` keys are ORB's (``gnn_stacks`` and ``_encoder`` of
    its graph network simulator). Reads only the small pickle entry of the zip; never raises."""
    try:
        path = os.fspath(path)
        if not os.path.isfile(path):
            return False
        with contextlib.suppress(Exception):
            if _architecture_for_file(path) is not None:
                return True
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not pkl or zf.getinfo(pkl[0]).file_size > 16 * 2**20:
                return False
            data = zf.read(pkl[0])
        return b"gnn_stacks." in data and b"_encoder." in data
    except Exception:
        return False


def _own_settings(calc):
    """``(model, radius, max_num_neighbors, conservative)`` of an ``ORBCalculator`` (exact class) the
    bridge reproduces, or None."""
    classes = _calculator_classes()
    if not classes or type(calc) not in classes:
        return None
    model = calc.model
    if getattr(model, "xc_model", None) is not None or getattr(calc, "expects_charge_and_spin", False):
        return None
    config = getattr(calc, "system_config", None) or getattr(calc, "adapter", None)
    if config is None or next(model.parameters()).dtype not in (torch.float32, torch.float64):
        return None
    mnn = getattr(calc, "max_num_neighbors", None) or config.max_num_neighbors
    return model, float(config.radius), mnn, getattr(calc, "conservative", None)


def efs_from_calculator(calc) -> ORBEFS | None:
    """An :class:`ORBEFS` on an ``ORBCalculator``'s own loaded model and graph settings, or None.

    Exactly ORB's calculator class (0.5.x ``orb_models.forcefield.calculator`` or 0.6+
    ``orb_models.forcefield.inference.calculator``), not subclasses. Its radius and neighbour cap
    (``calc.system_config`` / ``calc.adapter`` and ``calc.max_num_neighbors``), force mode
    (``calc.conservative``) and device are used; the dtype is the model's. None for models that
    read charge and spin from ``atoms.info`` at every call (OMol25) and for ``D3SumModel``.
    (The model is put in ``eval()`` mode with frozen parameters, which is how ORB's loaders
    return it; the calculator's results are unaffected.)
    """
    own = _own_settings(calc)
    if own is None:
        return None
    model, radius, mnn, conservative = own
    return ORBEFS(model, radius=radius, max_num_neighbors=mnn, name=f"ORBCalculator.model[{type(model).__name__}]",
                  device=calc.device, dtype=next(model.parameters()).dtype, conservative=conservative)


def model_identity(calc):
    """What makes two ORB calculators compute the same thing: the model object and its graph/force settings."""
    own = _own_settings(calc)
    if own is None:
        return None
    from bridges.resolver import Same

    return Same(own[0]), *own[1:]


def ase_calculator(name_or_path, *, device=None, dtype=None, architecture=None, max_num_neighbors: int | None = None,
                   conservative: bool | None = None, probe_timeout: float = 5.0):
    """ORB's own ``ORBCalculator`` on the same network :func:`load` would run."""
    torch_dtype = torch_float_dtype(dtype, "ORB", default=torch.float32)
    model, _, (_, mnn) = _network_for(name_or_path, torch_dtype, architecture, False, probe_timeout, None,
                                      max_num_neighbors)
    calculator = _calculator_classes()[-1]
    return calculator(model.to(resolve_device(device)), device=str(resolve_device(device)), max_num_neighbors=mnn,
                      conservative=conservative)
