"""matgl potentials (M3GNet, TensorNet) as a torch EFS object for jaxpto, graphs built on the device.

``load("m3gnet-mp-2021.2.8-pes" | <other matgl name> | <model directory>, device=None, dtype=None)``
returns a :class:`MatglEFS`, the torch-side object that ``bridges.torch_bridge.as_jax_model`` wraps.
matgl >= 3 is PyTorch Geometric only (no DGL); this module is written against matgl 4.

Contract (torch side, all tensors on ``efs.device``)::

    efs(positions [R,N,3], cell [R,3,3], numbers [N] int64,
        edge_src [R,E] int64, edge_dst [R,E] int64, edge_shift [R,E,3] (float, integer values),
        edge_mask [R,E] bool) -> (energy [R] eV, forces [R,N,3] eV/A, stress [R,3,3] eV/A^3)

with the pair vector ``d = pos[dst] - pos[src] + shift @ cell[r]`` (ASE's ``ijS``), a full list
(both directions) cut at the model's cutoff by the bridge, padded (``edge_mask``), flattened into one
graph by :func:`bridges.graph.batched_edges`.

What matgl's own ASE calculator (``matgl.ext.ase.PESCalculator``: pymatgen neighbour list on the
host, fractional coordinates, one ``Data`` per structure, and for M3GNet the three-body line graph
built with numpy and a Python loop over atoms) does is done here in torch, for all ``R`` replicas
at once, on the model's device:

* atom graph: one batched graph, node ``r*N + i``; directed edges ``i -> j`` (``edge_index[0]`` the
  centre, as matgl's converters) with ``0 < |d| < cutoff``, integer image offsets ``pbc_offset`` and
  ``pbc_offshift = S @ h'`` (the strained cell, below); node types are indices into the model's
  ``element_types`` (not atomic numbers);
* M3GNet's three-body line graph: every ordered pair of distinct bonds ``(i->j, i->k)`` sharing the
  centre ``i`` with both ``|d| <= threebody_cutoff``, as parent-graph bond ids (matgl's
  ``line_edge_index``, row 0 the bond that receives the message), with ``kept_edge_ids`` and
  ``n_triple_ij``. The bond lengths that decide membership are computed with matgl's own
  ``compute_pair_vector_and_distance`` on the very tensors the model sees, so the model's
  consistency check (``ensure_line_graph_compatibility``) always agrees with the topology;
* the energy ``E = data_std * model(g) + data_mean + sum_i ref[type_i]`` as ``Potential.forward``,
  forces ``-dE/dr`` and the strain derivative ``dE/deps`` from one ``autograd.grad`` call
  (positions ``r (I + eps)``, cell ``h (I + eps)``; no ``create_graph``, parameters frozen).

Units and signs, checked against ``PESCalculator``: matgl's ``Potential`` returns the stress in GPa
as ``(1/V) dE/deps * 160.2`` (tension positive, as ASE); ``PESCalculator`` multiplies it by its
``conversion_factor`` (1 for its default ``stress_unit="GPa"``, ``units.GPa`` for
``stress_unit="eV/A3"``). Here the stress is ``(1/V) dE/deps`` in eV/A^3 (ASE units), symmetrised
(the engine's convention; the models are rotation invariant, so the antisymmetric part is round-off),
times ``stress_scale`` (1 except for an EFS made by :func:`efs_from_calculator`, which copies the
calculator's unit so that the engine reproduces that calculator exactly, GPa included).

Not supported (a clear error at load): charge-predicting potentials (``calc_charge``, e.g. QET),
the ZBL repulsion term (``calc_repuls``), models with global state features (``include_state``), and
matgl's CHGNet (its directed line graph is a different construction; jaxpto's ``bridges.chgnet``
covers the original CHGNet). Pre-3.0 matgl checkpoints (the old GitHub ``pretrained_models``
files, e.g. the DGL-era ``M3GNet-MP-2021.2.8-PES``) still load in matgl 4 but were trained with the
old message-passing direction, so their energies are wrong there: use the Hugging Face weights.

Weights: matgl 4 downloads pretrained models from the Hugging Face Hub (``materialyze`` org) into
``~/.cache/matgl``. :func:`load` looks in that cache first without any network access; when the
files are absent and the Hub is unreachable (or ``HF_HUB_OFFLINE`` is set) it raises
:class:`ModelUnavailableError` within seconds (:func:`bridges._download.require_download`) instead
of waiting on huggingface_hub's retries.

This module owns matgl's graphs (:func:`build_graph`, :func:`three_body_graph`), :class:`MatglEFS`,
:func:`load`, :func:`efs_from_calculator`, :func:`model_identity` and :func:`ase_calculator`; matgl
itself is imported lazily.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import torch

from bridges._download import ModelUnavailableError, require_download, unavailable
from bridges.graph import ElementIndex, batched_edges, edge_pairs, image_displacements, node_replica
from bridges.registry import family_names
from bridges.torch_bridge import resolve_device, torch_float_dtype

__all__ = ["MODEL_NAMES", "MatglEFS", "ModelUnavailableError", "build_graph", "efs_from_calculator",
           "load", "looks_like", "three_body_graph", "model_identity", "ase_calculator"]

# jaxpto name (lower case) -> matgl / Hugging Face name (``materialyze/<name>``).
MODEL_NAMES = family_names("matgl")
_MODEL_FILES = ("model.pt", "state.pt", "model.json")
_SUPPORTED_MODELS = ("M3GNet", "TensorNet")


# ----------------------------------------------------------------------------- graphs


@torch.no_grad()
def build_graph(positions, cell, edge_src, edge_dst, edge_shift, edge_mask):
    """The batched atom graph of ``R`` replicas from the bridge's padded full edge list.

    Returns ``(src, dst, replica, shift)``: ``src``/``dst`` [D] global node ids (``r*N + i``),
    ``replica`` [D] and ``shift`` [D,3] (image offsets ``S``, the float dtype of ``positions``) of
    the real pairs (already cut at the model's cutoff by the bridge). Edge order follows the
    engine's list.
    """
    edges = batched_edges(edge_src, edge_dst, edge_shift, edge_mask, positions.shape[1], device=positions.device,
                          dtype=positions.dtype)
    return edges.src, edges.dst, edges.replica, edges.shift


@torch.no_grad()
def three_body_graph(edge_src: torch.Tensor, bond_dist: torch.Tensor, n_nodes: int, threebody_cutoff: float):
    """M3GNet's line graph from the atom graph's centres ``edge_src`` [D] and bond lengths [D].

    Returns matgl's bundle: ``kept_edge_ids`` (ascending ids of the bonds with
    ``bond_dist <= threebody_cutoff``), ``line_edge_index`` [2,T] (every ordered pair of distinct
    kept bonds ``(i->j, i->k)`` sharing the centre ``i``, as parent-graph bond ids,
    :func:`bridges.graph.edge_pairs`) and ``n_triple_ij`` [D] (number of triples each bond
    receives; 0 beyond the cutoff).
    """
    kept = torch.nonzero(bond_dist <= threebody_cutoff, as_tuple=True)[0]
    first, second = edge_pairs(edge_src, kept, n_nodes)
    n_triple = torch.zeros(int(edge_src.shape[0]), dtype=torch.int64, device=edge_src.device)
    if kept.numel():
        n_triple[kept] = torch.bincount(edge_src[kept], minlength=n_nodes)[edge_src[kept]] - 1
    return {"kept_edge_ids": kept, "line_edge_index": torch.stack([first, second]), "n_triple_ij": n_triple}


# ----------------------------------------------------------------------------- the EFS object


def _inner_model(potential):
    """The energy model inside a ``Potential`` (unwrapping ``torch.compile``)."""
    model = potential.model
    return getattr(model, "_orig_mod", model)


MIN_MATGL = (4, 1)


def _check_matgl_version() -> None:
    """matgl >= 4.1: earlier 4.0.x line graphs indexed the pruned bond list (fixed in 4.1), and
    matgl < 3 is the DGL implementation with the old message-passing direction."""
    from importlib.metadata import version

    ver = version("matgl")
    parts = tuple(int(x) for x in re.findall(r"\d+", ver)[:2])
    if parts < MIN_MATGL:
        raise ImportError(f"the jaxpto matgl bridge needs matgl >= {'.'.join(map(str, MIN_MATGL))}, found {ver}; "
                          "pip install -U 'jaxpto[matgl]'")


def _check_supported(potential) -> None:
    from matgl.apps.pes import Potential

    if not isinstance(potential, Potential):
        raise TypeError(f"expected a matgl Potential (an energy model with forces/stress), got "
                        f"{type(potential).__name__}; property models (Eform, band gap) are not force fields")
    model = _inner_model(potential)
    kind = type(model).__name__
    if kind not in _SUPPORTED_MODELS:
        raise NotImplementedError(f"the jaxpto bridge supports matgl potentials around {', '.join(_SUPPORTED_MODELS)}; "
                                  f"this one wraps {kind}")
    if getattr(potential, "calc_charge", False):
        raise NotImplementedError("charge-predicting matgl potentials (calc_charge=True) are not supported by "
                                  "the bridge")
    if getattr(potential, "calc_repuls", False):
        raise NotImplementedError("matgl potentials with the ZBL repulsion term (calc_repuls=True) are not supported "
                                  "by the bridge")
    if getattr(model, "include_state", False):
        raise NotImplementedError("matgl models with global state features (include_state=True) are not supported "
                                  "by the bridge")
    element_refs = getattr(potential, "element_refs", None)
    if element_refs is not None and element_refs.property_offset.ndim != 1:
        raise NotImplementedError("multi-state element references are not supported by the bridge")


class MatglEFS:
    """Energy, forces and stress of a matgl ``Potential`` for batched replicas (torch EFS object).

    Parameters
    ----------
    potential:
        A ``matgl.apps.pes.Potential`` around an M3GNet or TensorNet model. It is moved to
        ``device``/``dtype``, put in ``eval()`` mode and its parameters frozen (inference results
        are unaffected; a shared object, e.g. a calculator's, keeps working).
    name:
        Label (``Model.name``).
    device:
        Torch device; default: JAX's platform (:func:`bridges.torch_bridge.resolve_device`).
    dtype:
        ``torch.float32`` (default, matgl's training precision) or ``torch.float64``.
    stress_scale:
        Factor on the stress (eV/A^3 -> the unit wanted); 1 except to mimic a calculator.
    """

    def __init__(self, potential, *, name: str = "matgl", device=None, dtype=None, stress_scale: float = 1.0):
        from ase.data import atomic_numbers

        _check_matgl_version()
        _check_supported(potential)
        self.device = resolve_device(device)
        self.dtype = torch_float_dtype(dtype, "matgl", default=torch.float32)
        self.potential = potential.to(device=self.device, dtype=self.dtype).eval()
        for p in self.potential.parameters():
            p.requires_grad_(False)
        self.model = _inner_model(self.potential)
        self.name = name
        self.stress_scale = float(stress_scale)
        self.cutoff = float(self.model.cutoff)
        tb = getattr(self.model, "threebody_cutoff", None)
        self.threebody_cutoff = None if tb is None or type(self.model).__name__ != "M3GNet" else float(tb)
        self.element_types = tuple(self.model.element_types)
        # atomic number -> index into element_types (the model's node types)
        self.node_types = ElementIndex({atomic_numbers[s]: k for k, s in enumerate(self.element_types)},
                                       name=name, device=self.device)
        self.elements = self.node_types.elements

    def __repr__(self) -> str:
        return (f"MatglEFS(name={self.name!r}, model={type(self.model).__name__}, device={self.device}, "
                f"dtype={self.dtype})")

    def _graph(self, types, pos_s, lattice, edges):
        """matgl's graph (and M3GNet's line graph) on the strained positions [R*N,3] and cells [R,3,3]."""
        from matgl.graph._compute import compute_pair_vector_and_distance

        R, n_nodes = lattice.shape[0], pos_s.shape[0]
        src, dst, rep, shift = edges
        edge_index = torch.stack([src, dst])
        shift = shift.to(self.dtype)
        offshift = torch.einsum("ek,ekl->el", shift, lattice[rep])  # S @ h'
        g = SimpleNamespace(node_type=types.repeat(R), pos=pos_s, edge_index=edge_index, pbc_offset=shift,
                            pbc_offshift=offshift, batch=node_replica(R, n_nodes // R, self.device), num_graphs=R,
                            num_nodes=n_nodes)
        if self.threebody_cutoff is None:
            return g, None
        # The same function on the same tensors as inside M3GNet.forward: bit-identical lengths,
        # so the topology passes the model's own cutoff-membership check.
        _, bond_dist = compute_pair_vector_and_distance(pos_s.detach(), edge_index, offshift.detach())
        return g, three_body_graph(src, bond_dist, n_nodes, self.threebody_cutoff)

    def __call__(self, positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask):
        dev, dt = self.device, self.dtype
        positions = torch.as_tensor(positions, device=dev)
        cell = torch.as_tensor(cell, device=dev).to(positions.dtype)
        R, N = positions.shape[0], positions.shape[1]
        types = self.node_types(torch.as_tensor(numbers))
        edges = build_graph(positions, cell, torch.as_tensor(edge_src), torch.as_tensor(edge_dst),
                            torch.as_tensor(edge_shift), torch.as_tensor(edge_mask))
        volume = torch.abs(torch.linalg.det(cell.detach().to(torch.float64)))
        with torch.inference_mode(False), torch.enable_grad():
            # E = data_std * model(g) + data_mean + sum_i ref[type_i], as Potential.forward; positions
            # r (I + eps), cell h (I + eps): forces and strain derivative from one grad call.
            pos = positions.detach().to(dt).clone().requires_grad_(True)  # [R,N,3]
            strain = torch.zeros((R, 3, 3), device=dev, dtype=dt, requires_grad=True)
            deform = torch.eye(3, device=dev, dtype=dt) + strain
            g, l_g = self._graph(types, torch.bmm(pos, deform).reshape(R * N, 3),
                                 torch.bmm(cell.detach().to(dt), deform), edges)
            out = self.potential.model(g=g, state_attr=None, l_g=l_g)
            energy = self.potential.data_std * out.reshape(R) + self.potential.data_mean
            if self.potential.element_refs is not None:
                energy = energy + self.potential.element_refs(g).reshape(R)
            dE_dr, dE_deps = torch.autograd.grad(energy.sum(), [pos, strain])
        vol = volume.to(dt)[:, None, None]
        stress = 0.5 * (dE_deps + dE_deps.transpose(1, 2)) / torch.where(vol > 1e-3, vol, torch.ones_like(vol))
        # No cell (molecule): no stress, as the engine's own models report.
        stress = torch.where(vol > 1e-3, stress * self.stress_scale, torch.zeros_like(stress))
        return energy.detach(), -dE_dr.detach(), stress.detach()


# ----------------------------------------------------------------------------- loading


def _model_dir(path) -> Path | None:
    """The matgl model directory for a directory or one of its three files, else None."""
    p = Path(path)
    if p.is_file() and p.name in _MODEL_FILES:
        p = p.parent
    if p.is_dir() and all((p / f).is_file() for f in _MODEL_FILES):
        return p
    return None


def looks_like(path) -> bool:
    """Is ``path`` a model saved by matgl's ``save`` (a directory with ``model.json``, ``model.pt``,
    ``state.pt``, or one of those files) whose ``model.json`` names a matgl class? Reads at most
    4 kB; never raises."""
    try:
        d = _model_dir(path)
        if d is None:
            return False
        with open(d / "model.json", encoding="utf-8") as f:
            head = f.read(4096)
        return '"@module": "matgl.' in head or '"@module":"matgl.' in head
    except Exception:
        return False


def _require_hub(matgl_name: str, repo_id: str, timeout: float) -> None:
    """Return if the Hugging Face endpoint answers within ``timeout`` s, else a clear error at once."""
    from matgl.config import MATGL_CACHE

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    what = f"matgl model {matgl_name!r} (Hugging Face repo {repo_id})"
    hint = (f"it is not in the local cache ({MATGL_CACHE}). On a machine with network run "
            f"`python -c \"import matgl; matgl.load_model('{matgl_name}')\"` and copy {MATGL_CACHE}, or save the "
            "model with Potential.save(<dir>) and pass that directory to load_model")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise unavailable(what, endpoint, "HF_HUB_OFFLINE is set", hint)
    require_download(endpoint + "/", what, hint, timeout=timeout)


def _cached_files(repo_id: str) -> dict | None:
    """The three model files of ``repo_id`` in matgl's Hugging Face cache, without network; or None."""
    from huggingface_hub import try_to_load_from_cache
    from matgl.config import MATGL_CACHE

    found = {}
    for fn in _MODEL_FILES:
        p = try_to_load_from_cache(repo_id, fn, cache_dir=str(MATGL_CACHE))
        if not isinstance(p, str):
            return None
        found[fn] = Path(p)
    return found


def _load_pretrained(matgl_name: str, timeout: float):
    import matgl

    repo_id = matgl_name if "/" in matgl_name else f"materialyze/{matgl_name}"
    cached = _cached_files(repo_id)
    if cached is not None:
        return matgl.load_model(cached["model.json"].parent)
    _require_hub(matgl_name, repo_id, timeout)
    try:
        return matgl.load_model(matgl_name)
    except Exception as exc:  # matgl wraps everything in ValueError/RuntimeError
        raise ModelUnavailableError(
            f"matgl could not load {matgl_name!r} from the Hugging Face Hub ({repo_id}): {exc}. matgl >= 3 "
            "re-released its potentials there (the pre-3.0 files are not valid any more); jaxpto's matgl names: "
            f"{', '.join(MODEL_NAMES)}") from exc


def _potential_for(name_or_path, download_timeout: float):
    """``(matgl Potential, label)`` for a name, a Hugging Face repo id or a ``Potential.save`` directory."""
    import matgl

    name = os.fspath(name_or_path)
    key = name.strip().lower()
    local = _model_dir(name)
    if local is not None:
        return matgl.load_model(local), f"matgl:{local.name}"
    if key in MODEL_NAMES:
        return _load_pretrained(MODEL_NAMES[key], download_timeout), key
    if os.path.exists(name):
        raise ValueError(f"{name!r} is not a matgl model directory (model.json, model.pt and state.pt, as written "
                         "by Potential.save)")
    return _load_pretrained(name.strip(), download_timeout), f"matgl:{name.strip()}"


def load(name_or_path, *, device=None, dtype=None, download_timeout: float = 5.0, **kw) -> MatglEFS:
    """A matgl potential as a torch EFS object.

    ``name_or_path``: a jaxpto name (:data:`MODEL_NAMES`, case insensitive, e.g.
    ``"m3gnet-mp-2021.2.8-pes"``), a matgl pretrained name or Hugging Face repo id
    (``"TensorNet-PES-MatPES-PBE-2025.2"``, ``"owner/name"``), or a model saved by matgl's
    ``Potential.save`` (its directory, or its ``model.json``/``model.pt``/``state.pt``).
    Names are resolved through matgl's own Hugging Face cache first (no network), then by
    matgl's download; an unreachable Hub fails within ``download_timeout`` seconds
    (:class:`ModelUnavailableError`). ``device``: torch device (default: JAX's platform);
    ``dtype``: float32 (default) or float64.
    """
    if kw:
        raise TypeError(f"unexpected keyword arguments for the matgl loader: {', '.join(kw)}")
    torch_dtype = torch_float_dtype(dtype, "matgl", default=torch.float32)
    potential, label = _potential_for(name_or_path, download_timeout)
    return MatglEFS(potential, name=label, device=device, dtype=torch_dtype)


def _own_potential(calc):
    """The supported potential of a ``PESCalculator``/``M3GNetCalculator`` (exact classes), or None."""
    try:
        from matgl.ext.ase import M3GNetCalculator, PESCalculator
    except ImportError:
        return None
    if type(calc) not in (PESCalculator, M3GNetCalculator):
        return None
    if getattr(calc, "state_attr", None) is not None or getattr(calc, "total_charge", None) is not None:
        return None
    potential = getattr(calc, "potential", None)
    try:
        _check_supported(potential)
    except (TypeError, NotImplementedError):
        return None
    return potential


def efs_from_calculator(calc) -> MatglEFS | None:
    """A :class:`MatglEFS` on the potential of matgl's ASE calculator, or None.

    Only ``matgl.ext.ase.PESCalculator`` and its alias class ``M3GNetCalculator`` exactly (a
    subclass may compute something else), without a custom ``state_attr``/charges, around a
    supported potential. The EFS reuses ``calc.potential`` (the same object, on its current
    device and dtype) and reproduces the calculator's stress unit: ``PESCalculator`` defaults to
    ``stress_unit="GPa"``, and then the engine's stress is in GPa exactly as ASE would see it
    (pass ``stress_unit="eV/A3"`` for ASE units, which NPT needs).
    """
    from matgl.utils.constants import EV_PER_ANG3_TO_GPA

    potential = _own_potential(calc)
    if potential is None:
        return None
    param = next(iter(potential.parameters()), None)
    ref = param if param is not None else potential.data_mean
    if ref.dtype not in (torch.float32, torch.float64):
        return None
    scale = EV_PER_ANG3_TO_GPA * float(getattr(calc, "conversion_factor", 1.0))
    kind = type(_inner_model(potential)).__name__
    return MatglEFS(potential, name=f"{type(calc).__name__}.potential[{kind}]", device=ref.device, dtype=ref.dtype,
                    stress_scale=scale)


def model_identity(calc):
    """What makes two matgl calculators compute the same thing: the potential object and the stress unit."""
    potential = _own_potential(calc)
    if potential is None:
        return None
    from bridges.resolver import Same

    return Same(potential), float(getattr(calc, "conversion_factor", 1.0))


def ase_calculator(name_or_path, *, device=None, download_timeout: float = 5.0):
    """matgl's own ``PESCalculator`` (stress in eV/A^3, as ASE's NPT needs) on the same potential."""
    import warnings

    from matgl.ext.ase import PESCalculator

    potential, _ = _potential_for(name_or_path, download_timeout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PESCalculator(potential.to(resolve_device(device)), stress_unit="eV/A3")
