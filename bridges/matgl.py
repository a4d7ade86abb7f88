"""matgl potentials (M3GNet, TensorNet) as a torch EFS object for jaxpto, graphs built on the device.

``load("m3gnet-mp-2021.2.8-pes" | <other matgl name> | <model directory>, device=None, dtype=None)``
returns a :class:`MatglEFS`, the torch-side object that ``bridges.torch_bridge.as_jax_model`` wraps.
matgl >= 3 is PyTorch Geometric only (no DGL); this module is written against matgl 4.

Contract (torch side, all tensors on ``efs.device``)::

    efs(positions [R,N,3], cell [R,3,3], numbers [N] int64,
        edge_src [R,E] int64, edge_dst [R,E] int64, edge_shift [R,E,3] (float, integer values),
        edge_mask [R,E] bool) -> (energy [R] eV, forces [R,N,3] eV/A, stress [R,3,3] eV/A^3)

with the pair vector ``d = pos[dst] - pos[src] + shift @ cell[r]`` (ASE's ``ijS``), a full list
(both directions), padded (``edge_mask``).

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
:class:`ModelUnavailableError` within seconds instead of waiting on huggingface_hub's retries.

This module imports neither JAX nor ``bridges.torch_bridge``; matgl itself is imported lazily.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import torch

__all__ = ["MODEL_NAMES", "MatglEFS", "ModelUnavailableError", "build_graph", "efs_from_calculator",
           "load", "looks_like", "three_body_graph"]

# jaxpto name (lower case) -> matgl / Hugging Face name (``materialyze/<name>``).
MODEL_NAMES = {
    "m3gnet-mp-2021.2.8-pes": "M3GNet-MP-2021.2.8-PES",
    "m3gnet-pes-matpes-pbe-2025.2": "M3GNet-PES-MatPES-PBE-2025.2",
    "m3gnet-pes-matpes-r2scan-2025.2": "M3GNet-PES-MatPES-r2SCAN-2025.2",
    "tensornet-pes-matpes-pbe-2025.2": "TensorNet-PES-MatPES-PBE-2025.2",
    "tensornet-pes-matpes-r2scan-2025.2": "TensorNet-PES-MatPES-r2SCAN-2025.2",
}
_DESCRIPTIONS = {
    "m3gnet-mp-2021.2.8-pes": "M3GNet-MP-2021.2.8-PES (matgl, Hugging Face materialyze/; downloaded by matgl)",
    "m3gnet-pes-matpes-pbe-2025.2": "M3GNet trained on MatPES-PBE 2025.2 (matgl; downloaded by matgl)",
    "m3gnet-pes-matpes-r2scan-2025.2": "M3GNet trained on MatPES-r2SCAN 2025.2 (matgl; downloaded by matgl)",
    "tensornet-pes-matpes-pbe-2025.2": "TensorNet trained on MatPES-PBE 2025.2 (matgl; downloaded by matgl)",
    "tensornet-pes-matpes-r2scan-2025.2": "TensorNet trained on MatPES-r2SCAN 2025.2 (matgl; downloaded by matgl)",
}
_MODEL_FILES = ("model.pt", "state.pt", "model.json")
_SUPPORTED_MODELS = ("M3GNet", "TensorNet")


class ModelUnavailableError(RuntimeError):
    """Pretrained weights are neither in the local cache nor downloadable right now."""


# ----------------------------------------------------------------------------- graphs


@torch.no_grad()
def build_graph(positions, cell, edge_src, edge_dst, edge_shift, edge_mask, *, cutoff: float):
    """The batched atom graph of ``R`` replicas from the engine's padded full edge list.

    Returns ``(src, dst, replica, shift)``: ``src``/``dst`` [D] global node ids (``r*N + i``),
    ``replica`` [D] and ``shift`` [D,3] (image offsets ``S``, the float dtype of ``positions``) of
    the real pairs with ``0 < |d| < cutoff`` (pairs further apart, from the engine's skin, are
    dropped; a zero vector would be the atom itself). Edge order follows the engine's list.
    """
    R, N = positions.shape[0], positions.shape[1]
    E = edge_src.shape[1]
    dev, fdt = positions.device, positions.dtype
    mask = edge_mask.to(device=dev, dtype=torch.bool)
    rep = torch.arange(R, device=dev, dtype=torch.int64)[:, None].expand(R, E)
    src = edge_src.to(device=dev, dtype=torch.int64)[mask]
    dst = edge_dst.to(device=dev, dtype=torch.int64)[mask]
    rep = rep[mask]
    shift = edge_shift.to(device=dev, dtype=fdt)[mask]
    cell = cell.to(device=dev, dtype=fdt)
    vec = positions[rep, dst] - positions[rep, src] + torch.einsum("ek,ekl->el", shift, cell[rep])
    d2 = (vec * vec).sum(-1)
    keep = (d2 > 1e-16) & (d2 < cutoff * cutoff)
    return src[keep] + rep[keep] * N, dst[keep] + rep[keep] * N, rep[keep], shift[keep]


@torch.no_grad()
def three_body_graph(edge_src: torch.Tensor, bond_dist: torch.Tensor, n_nodes: int, threebody_cutoff: float):
    """M3GNet's line graph from the atom graph's centres ``edge_src`` [D] and bond lengths [D].

    Returns matgl's bundle: ``kept_edge_ids`` (ascending ids of the bonds with
    ``bond_dist <= threebody_cutoff``), ``line_edge_index`` [2,T] (every ordered pair of distinct
    kept bonds ``(i->j, i->k)`` sharing the centre ``i``, as parent-graph bond ids) and
    ``n_triple_ij`` [D] (number of triples each bond receives; 0 beyond the cutoff). Pairs are
    enumerated by sorting the kept bonds by centre: no Python loop over atoms, everything stays
    on ``edge_src.device``.
    """
    dev = edge_src.device
    D = int(edge_src.shape[0])
    kept = torch.nonzero(bond_dist <= threebody_cutoff, as_tuple=True)[0]
    n_triple = torch.zeros(D, dtype=torch.int64, device=dev)
    if kept.numel() == 0:
        empty = torch.zeros((2, 0), dtype=torch.int64, device=dev)
        return {"kept_edge_ids": kept, "line_edge_index": empty, "n_triple_ij": n_triple}
    centre = edge_src[kept]
    order = torch.argsort(centre, stable=True)
    cand = kept[order]                 # kept bonds grouped by centre atom
    centre = centre[order]
    counts = torch.bincount(centre, minlength=n_nodes)
    start = torch.cumsum(counts, 0) - counts
    reps = counts[centre]              # partners of each bond, itself included
    total = int(reps.sum())
    first = torch.repeat_interleave(torch.arange(cand.numel(), device=dev), reps, output_size=total)
    k = torch.arange(total, device=dev) - (torch.cumsum(reps, 0) - reps)[first]
    second = start[centre[first]] + k
    ok = first != second
    line = torch.stack([cand[first[ok]], cand[second[ok]]])
    n_triple[cand] = reps - 1
    return {"kept_edge_ids": kept, "line_edge_index": line, "n_triple_ij": n_triple}


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
        Torch device; default CUDA when available.
    dtype:
        ``torch.float32`` (default, matgl's training precision) or ``torch.float64``.
    stress_scale:
        Factor on the stress (eV/A^3 -> the unit wanted); 1 except to mimic a calculator.
    """

    def __init__(self, potential, *, name: str = "matgl", device=None, dtype=None, stress_scale: float = 1.0):
        from ase.data import atomic_numbers

        _check_matgl_version()
        _check_supported(potential)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = _as_torch_dtype(dtype)
        self.device = torch.device(device)
        self.dtype = dtype
        self.potential = potential.to(device=self.device, dtype=dtype).eval()
        for p in self.potential.parameters():
            p.requires_grad_(False)
        self.model = _inner_model(self.potential)
        self.name = name
        self.stress_scale = float(stress_scale)
        self.cutoff = float(self.model.cutoff)
        tb = getattr(self.model, "threebody_cutoff", None)
        self.threebody_cutoff = None if tb is None or type(self.model).__name__ != "M3GNet" else float(tb)
        self.element_types = tuple(self.model.element_types)
        zs = [atomic_numbers[s] for s in self.element_types]
        self.elements = frozenset(zs)
        # atomic number -> index into element_types (the model's node types); -1 = not covered
        self._z_to_type = torch.full((max(zs) + 1,), -1, dtype=torch.int64, device=self.device)
        self._z_to_type[torch.tensor(zs, device=self.device)] = torch.arange(len(zs), device=self.device)

    def __repr__(self) -> str:
        return (f"MatglEFS(name={self.name!r}, model={type(self.model).__name__}, device={self.device}, "
                f"dtype={self.dtype})")

    def node_types(self, numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers -> the model's node types; ``ValueError`` for elements it does not cover."""
        numbers = numbers.to(device=self.device, dtype=torch.int64)
        table = self._z_to_type
        inside = (numbers >= 0) & (numbers < table.shape[0])
        types = torch.where(inside, table[numbers.clamp(0, table.shape[0] - 1)], -1)
        if bool((types < 0).any()):
            bad = sorted({int(z) for z, t in zip(numbers.tolist(), types.tolist()) if t < 0})
            raise ValueError(f"{self.name} does not cover atomic numbers {bad} (its elements: "
                             f"{' '.join(self.element_types)})")
        return types

    def __call__(self, positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask):
        from matgl.graph._compute import compute_pair_vector_and_distance

        dev, dt = self.device, self.dtype
        positions = torch.as_tensor(positions, device=dev)
        cell = torch.as_tensor(cell, device=dev).to(positions.dtype)
        R, N = positions.shape[0], positions.shape[1]
        types = self.node_types(torch.as_tensor(numbers))
        src, dst, rep, shift = build_graph(positions, cell, torch.as_tensor(edge_src), torch.as_tensor(edge_dst),
                                           torch.as_tensor(edge_shift), torch.as_tensor(edge_mask), cutoff=self.cutoff)
        edge_index = torch.stack([src, dst])
        batch = torch.arange(R, device=dev, dtype=torch.int64).repeat_interleave(N)
        volume = torch.abs(torch.linalg.det(cell.detach().to(torch.float64)))
        with torch.inference_mode(False), torch.enable_grad():
            pos = positions.detach().to(dt).clone().requires_grad_(True)  # [R,N,3]
            strain = torch.zeros((R, 3, 3), device=dev, dtype=dt, requires_grad=True)
            deform = torch.eye(3, device=dev, dtype=dt) + strain
            pos_s = torch.bmm(pos, deform).reshape(R * N, 3)
            lattice = torch.bmm(cell.detach().to(dt), deform)  # [R,3,3]
            shift_dt = shift.to(dt)
            offshift = torch.einsum("ek,ekl->el", shift_dt, lattice[rep])  # S @ h'
            g = SimpleNamespace(node_type=types.repeat(R), pos=pos_s, edge_index=edge_index, pbc_offset=shift_dt,
                                pbc_offshift=offshift, batch=batch, num_graphs=R, num_nodes=R * N)
            l_g = None
            if self.threebody_cutoff is not None:
                # The same function on the same tensors as inside M3GNet.forward: bit-identical
                # lengths, so the topology passes the model's own cutoff-membership check.
                _, bond_dist = compute_pair_vector_and_distance(pos_s.detach(), edge_index, offshift.detach())
                l_g = three_body_graph(src, bond_dist, R * N, self.threebody_cutoff)
            out = self.potential.model(g=g, state_attr=None, l_g=l_g)
            energy = self.potential.data_std * out.reshape(R) + self.potential.data_mean
            if self.potential.element_refs is not None:
                energy = energy + self.potential.element_refs(g).reshape(R)
            dE_dr, dE_deps = torch.autograd.grad(energy.sum(), [pos, strain])
        forces = -dE_dr
        vol = volume.to(dt)[:, None, None]
        stress = 0.5 * (dE_deps + dE_deps.transpose(1, 2)) / torch.where(vol > 1e-3, vol, torch.ones_like(vol))
        # No cell (molecule): no stress, as the engine's own models report.
        stress = torch.where(vol > 1e-3, stress * self.stress_scale, torch.zeros_like(stress))
        return energy.detach(), forces.detach(), stress.detach()


# ----------------------------------------------------------------------------- loading


def _as_torch_dtype(dtype) -> torch.dtype:
    from bridges.torch_bridge import model_float_dtype

    return model_float_dtype(dtype, "matgl")


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


def _hub_reachable(timeout: float) -> tuple[bool, str]:
    """Can a TCP connection to the Hugging Face endpoint be opened within ``timeout`` seconds?

    Name resolution is not covered by socket timeouts (a stuck resolver can block for tens of
    seconds), so the probe runs in a daemon thread that is abandoned after ``timeout``.
    """
    import threading
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False, "HF_HUB_OFFLINE is set"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True, "through a proxy (not probed)"
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    result: list = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append("")
        except OSError as exc:
            result.append(f"{host}:{port} unreachable ({exc})")

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    if not result:
        return False, f"{host}:{port} unreachable (no answer within {timeout:g} s)"
    return (result[0] == ""), result[0]


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
    ok, why = _hub_reachable(timeout)
    if not ok:
        from matgl.config import MATGL_CACHE

        raise ModelUnavailableError(
            f"matgl model {matgl_name!r} is not in the local cache ({MATGL_CACHE}) and cannot be downloaded from "
            f"the Hugging Face Hub ({repo_id}): {why}. On a machine with network run "
            f"`python -c \"import matgl; matgl.load_model('{matgl_name}')\"` and copy {MATGL_CACHE}, or save the "
            "model with Potential.save(<dir>) and pass that directory to load_model")
    try:
        return matgl.load_model(matgl_name)
    except Exception as exc:  # matgl wraps everything in ValueError/RuntimeError
        raise ModelUnavailableError(
            f"matgl could not load {matgl_name!r} from the Hugging Face Hub ({repo_id}): {exc}. matgl >= 3 "
            "re-released its potentials there (the pre-3.0 files are not valid any more); jaxpto's matgl names: "
            f"{', '.join(MODEL_NAMES)}") from exc


def load(name_or_path, *, device=None, dtype=None, download_timeout: float = 5.0, **kw) -> MatglEFS:
    """A matgl potential as a torch EFS object.

    ``name_or_path``: a jaxpto name (:data:`MODEL_NAMES`, case insensitive, e.g.
    ``"m3gnet-mp-2021.2.8-pes"``), a matgl pretrained name or Hugging Face repo id
    (``"TensorNet-PES-MatPES-PBE-2025.2"``, ``"owner/name"``), or a model saved by matgl's
    ``Potential.save`` (its directory, or its ``model.json``/``model.pt``/``state.pt``).
    Names are resolved through matgl's own Hugging Face cache first (no network), then by
    matgl's download; an unreachable Hub fails within ``download_timeout`` seconds
    (:class:`ModelUnavailableError`). ``device``: torch device (default CUDA when available);
    ``dtype``: float32 (default) or float64.
    """
    if kw:
        raise TypeError(f"unexpected keyword arguments for the matgl loader: {', '.join(kw)}")
    import matgl

    torch_dtype = _as_torch_dtype(dtype)
    name = os.fspath(name_or_path)
    key = name.strip().lower()
    local = _model_dir(name)
    if local is not None:
        potential = matgl.load_model(local)
        label = f"matgl:{local.name}"
    elif key in MODEL_NAMES:
        potential = _load_pretrained(MODEL_NAMES[key], download_timeout)
        label = key
    elif os.path.exists(name):
        raise ValueError(f"{name!r} is not a matgl model directory (model.json, model.pt and state.pt, as written "
                         "by Potential.save)")
    else:
        potential = _load_pretrained(name.strip(), download_timeout)
        label = f"matgl:{name.strip()}"
    return MatglEFS(potential, name=label, device=device, dtype=torch_dtype)


def efs_from_calculator(calc):
    """A :class:`MatglEFS` on the potential of matgl's ASE calculator, or None.

    Only ``matgl.ext.ase.PESCalculator`` and its alias class ``M3GNetCalculator`` exactly (a
    subclass may compute something else), without a custom ``state_attr``/charges, around a
    supported potential. The EFS reuses ``calc.potential`` (the same object, on its current
    device and dtype) and reproduces the calculator's stress unit: ``PESCalculator`` defaults to
    ``stress_unit="GPa"``, and then the engine's stress is in GPa exactly as ASE would see it
    (pass ``stress_unit="eV/A3"`` for ASE units, which NPT needs).
    """
    try:
        from matgl.ext.ase import M3GNetCalculator, PESCalculator
        from matgl.utils.constants import EV_PER_ANG3_TO_GPA
    except ImportError:
        return None
    if type(calc) not in (PESCalculator, M3GNetCalculator):
        return None
    if getattr(calc, "state_attr", None) is not None or getattr(calc, "total_charge", None) is not None:
        return None
    potential = getattr(calc, "potential", None)
    try:
        _check_supported(potential)
        param = next(iter(potential.parameters()), None)
        buf = potential.data_mean
        device = (param if param is not None else buf).device
        dtype = (param if param is not None else buf).dtype
        if dtype not in (torch.float32, torch.float64):
            return None
        scale = EV_PER_ANG3_TO_GPA * float(getattr(calc, "conversion_factor", 1.0))
        kind = type(_inner_model(potential)).__name__
        return MatglEFS(potential, name=f"{type(calc).__name__}.potential[{kind}]", device=device, dtype=dtype,
                        stress_scale=scale)
    except (TypeError, NotImplementedError):
        return None


def _register_names() -> None:
    """Make the extra pretrained names loadable by name through ``bridges.registry``."""
    try:
        from bridges import registry
    except ImportError:  # pragma: no cover
        return
    for name, desc in _DESCRIPTIONS.items():
        if name not in registry.KNOWN_MODELS:
            registry.register(name, "matgl", desc)


_register_names()
