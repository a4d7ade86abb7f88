"""DeePMD-kit (PyTorch backend) models as a torch EFS object (see :mod:`bridges.torch_bridge`).

A DeePMD model (DPA-1 ``se_atten`` such as UniPero, ``se_e2_a``, DPA-2, DPA-3, ...) is called
through its own lower interface, the one LAMMPS uses::

    model.forward_lower(extended_coord [nf, nall, 3], extended_atype [nf, nall],
                        nlist [nf, nloc, nnei], mapping [nf, nall]) -> energy, extended_force, virial

with an *extended* system built here in torch, on the model's device, from the engine's edges:

* local atoms ``0 .. N-1`` are the ``N`` atoms of a replica; every edge slot ``e`` of the engine's
  list adds one ghost atom ``N + e`` at ``pos[dst] + shift @ cell`` (the neighbour image the edge
  points to), of the neighbour's type, with ``mapping[N + e] = dst``. A periodic image that several
  centres see appears once per edge; the energy is a sum over local atoms only, so duplicates
  change nothing, and message-passing models (DPA-2/3) gather ghost features through ``mapping``.
* ``nlist[i]`` lists the ghosts of the edges centred on ``i`` within the model's ``rcut``, nearest
  first, padded with ``-1`` to ``sum(sel)`` columns; beyond ``sum(sel)`` neighbours the nearest
  are kept. That is what DeePMD's own ``build_neighbor_list`` produces (distance-sorted, capped at
  ``sum(sel)``); type-mixed descriptors (``se_atten``: one ``sel``) use it as is, type-sectioned
  ones (``se_e2_a``) are split per type by the model's ``format_nlist`` with the order kept.
  A model whose ``sum(sel)`` is exceeded depends on which equidistant neighbours are dropped: in a
  symmetric crystal DeePMD's own ``topk`` and the sort here may break such ties differently (seen:
  ``se_e2_a`` with ``sel=[20,10,10]`` on 5-atom PbTiO3, 2e-2 eV/A apart). Such a model is
  discontinuous anyway; give it a ``sel`` above the densest environment.
* all ``R`` replicas are the ``nf = R`` frames of one call. Shapes are static (``nall = N + E``,
  ``nnei = sum(sel)``): sorting and scattering, no host synchronisation (the element check aside,
  which on a GPU runs only on the first call for a system size).

Results: ``energy`` [R] (eV); forces ``F_i = sum_{a: mapping[a] = i} F_ext[a]`` (the extended
forces folded back onto their local atoms, eV/A); DeePMD's ``virial`` is
``-sum_a r_a (x) dE/dr_a`` over the extended atoms (eV), and the stress, as in DeePMD's ASE
calculator ``deepmd.calculator.DP``, is ``-(W + W^T) / (2 V)`` in eV/A^3 (positive in tension,
ASE's sign). The model computes in the precision its parameters were saved in (DeePMD's
``precision`` keys); ``dtype`` only sets the precision of the coordinates handed to it and of the
results (default: the model's).

Files: DeePMD's PyTorch formats, ``.pth`` (frozen TorchScript, ``dp --pt freeze``) and ``.pt``
(training checkpoint; multi-task checkpoints need ``head=``), loaded by DeePMD's own
``DeepPot``; and the backend-independent ``.dp``/``.yaml`` (``dp convert-backend``), rebuilt as a
PyTorch model through DeePMD's serialisation. TensorFlow ``.pb``, JAX (``.savedmodel``,
``.hlo``), ``.pt2``/``.pte`` (torch.export) and Paddle files are not run by the bridge: convert
them with ``dp convert-backend model.pb model.pth`` (needs the source backend installed).
Pretrained names of DeePMD's registry (``deepmd.pretrained``: ``DPA-3.1-3M``, ...) go through
DeePMD's own download and cache (``~/.cache/deepmd/pretrained/models``); without a network the
load fails within seconds, saying so. Not supported: models with per-atom parameters
(``aparam``), spin models, SeZM/DPA-4 models (edge-list lower interface), models with a data
modifier (``.pth`` with ``data_modifier.pth``); frame parameters (``fparam``) and charge/spin are
one constant vector for all replicas (``fparam=``/``charge_spin=``, or the model's defaults).

Installing next to a newer PyTorch
----------------------------------
``deepmd-kit``'s wheel carries compiled PyTorch operators (``libdeepmd_op_pt.so``) built for one
PyTorch release (3.2.0: torch 2.11), and its ``[torch]`` extra pins that release. jaxpto installs
plain ``deepmd-kit`` (no extra) next to its own torch. ``import deepmd.pt`` then fails in
``deepmd/pt/cxx_op.py``, which first preloads ``mpich``'s libmpi (a dependency of the ``[torch]``
extra only) and then refuses the operator library built for another torch. The operators are
optional in DeePMD: a build without them has ``deepmd.pt.cxx_op.ENABLE_CUSTOMIZED_OP = False`` and
every descriptor runs its pure-PyTorch code (only model compression, ``dp compress``, and
multi-rank LAMMPS runs need the compiled operators). DeePMD reads no environment variable to skip
them, so :func:`install_import_guard` (run when this module is imported) adds an import hook for
that one module, ``deepmd.pt.cxx_op``: the module runs unchanged, and only if it raises while
loading its libraries is it completed as a build without operators (``ENABLE_CUSTOMIZED_OP =
False``) instead of failing. No file of the installed package is changed, other modules are not
touched, and a deepmd-kit whose operators match the installed torch loads them as usual. The
guard also lets ``deepmd.calculator.DP`` work in the same process once this module was imported.
:func:`import_deepmd_pt` additionally restores the ``multiprocessing`` start method, which
``deepmd.pt.utils.env`` forces to ``"fork"`` for its training data loaders (forking a process
running JAX's threads can deadlock; inference never forks).

This module owns DeePMD's extended system (:meth:`DeePMDEFS.extended_system`), :class:`DeePMDEFS`,
the import guard, reading DeePMD files and pretrained names (:func:`load`, :func:`looks_like`,
:func:`pretrained_names`), :func:`efs_from_calculator`, :func:`model_identity` and
:func:`ase_calculator`.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from pathlib import Path

__all__ = ["DeePMDEFS", "load", "looks_like", "efs_from_calculator", "import_deepmd_pt",
           "install_import_guard", "pretrained_names", "custom_ops_fallback"]

_PT_SUFFIXES = (".pth", ".pt")
_DP_SUFFIXES = (".dp", ".yaml", ".yml")
_CONVERT_HINT = ("convert it to DeePMD's PyTorch format with `dp convert-backend {src} {dst}` "
                 "(deepmd-kit with the source backend installed), then load the .pth file")
_OTHER_BACKENDS = {
    ".pb": "a TensorFlow model (deepmd-kit's TF backend)",
    ".savedmodel": "a JAX model", ".hlo": "a JAX model", ".jax": "a JAX model",
    ".pt2": "a torch.export/AOTInductor model (pt_expt backend)", ".pte": "a torch.export model (pt_expt backend)",
    ".pd": "a Paddle model", ".json": "a Paddle model",
}

# ---------------------------------------------------------------------------------------------
# Importing deepmd.pt next to a torch its compiled operators were not built for
# ---------------------------------------------------------------------------------------------

_OPS_MODULE = "deepmd.pt.cxx_op"
# What deepmd/pt/cxx_op.py raises when its libraries do not load: no mpich distribution
# (PackageNotFoundError, an ImportError), no libmpi in it (StopIteration), dlopen failures
# (OSError), and its own ABI/version mismatch report (RuntimeError).
_OPS_ERRORS = (ImportError, OSError, RuntimeError, StopIteration)


def _raised_by_library_loading(exc: BaseException) -> bool:
    """Whether ``exc`` comes from cxx_op's ``load_library``/``load_mpi_library`` (not, e.g., a broken install)."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name in ("load_library", "load_mpi_library") and code.co_filename.endswith("cxx_op.py"):
            return True
        tb = tb.tb_next
    return False


class _OpsFallbackLoader(importlib.abc.Loader):
    """Runs ``deepmd.pt.cxx_op`` as it is; if loading the libraries fails, completes it without operators."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        try:
            self._loader.exec_module(module)
        except _OPS_ERRORS as exc:
            if not _raised_by_library_loading(exc):
                raise
            module.ENABLE_CUSTOMIZED_OP = False
            module.JAXPTO_FALLBACK_REASON = f"{type(exc).__name__}: {exc}"
            module.__all__ = ["ENABLE_CUSTOMIZED_OP"]


class _OpsFallbackFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that wraps the loader of ``deepmd.pt.cxx_op`` only (see the module docstring)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _OPS_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _OpsFallbackLoader(spec.loader)
                return spec
        return None


def install_import_guard() -> None:
    """Install the ``deepmd.pt.cxx_op`` import hook (idempotent; imports neither torch nor deepmd)."""
    if not any(isinstance(f, _OpsFallbackFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _OpsFallbackFinder())


def custom_ops_fallback() -> str | None:
    """Why DeePMD's compiled operators were not loaded (pure-PyTorch fallbacks in use), or None."""
    ops = sys.modules.get(_OPS_MODULE)
    return getattr(ops, "JAXPTO_FALLBACK_REASON", None)


def import_deepmd_pt():
    """Import ``deepmd.pt`` (with the guard installed) and return it; see the module docstring."""
    import multiprocessing

    install_import_guard()
    start_method = multiprocessing.get_start_method(allow_none=True)
    try:
        import deepmd.pt as dpt
        import deepmd.pt.utils.env  # noqa: F401  (where DeePMD sets the start method)
    finally:
        if multiprocessing.get_start_method(allow_none=True) != start_method:
            multiprocessing.set_start_method(start_method, force=True)
    return dpt


def _model_float_dtype(model) -> torch.dtype:
    """The model's compute precision: the dtype of its (first) floating-point parameter."""
    import torch

    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float64


def _check_interface(model, name: str) -> None:
    """Refuse models whose lower interface is not ``forward_lower(extended_coord, extended_atype, nlist, ...)``
    returning an energy: spin models (``extended_spin``), SeZM/DPA-4 (edge-list interface), dipole,
    polarizability, DOS and property models."""
    import inspect

    lower = getattr(model, "forward_lower", None)
    schema = getattr(lower, "schema", None)  # TorchScript method
    if schema is not None:
        params = [a.name for a in schema.arguments]
    elif lower is not None:
        params = list(inspect.signature(lower).parameters)
    else:
        params = []
    if "extended_spin" in params or "spin" in params:
        raise NotImplementedError(f"DeePMD model {name!r} is a spin model; the bridge supports energy models only")
    if "nlist" not in params:
        raise NotImplementedError(f"DeePMD model {name!r} has no neighbour-list lower interface (SeZM/DPA-4 models "
                                  "use DeePMD's edge-list interface); the bridge does not support it yet")
    try:
        outputs = list(model.model_output_type())
    except Exception:
        outputs = ["energy"]
    if "energy" not in outputs:
        raise ValueError(f"DeePMD model {name!r} predicts {outputs}, not an energy; only energy models drive MD")


class DeePMDEFS:
    """A DeePMD PyTorch energy model as a torch EFS (``cutoff``, ``elements``, ``name``, ``__call__``).

    Parameters
    ----------
    model:
        A loaded DeePMD PyTorch model (``deepmd.pt`` ``EnergyModel`` or its TorchScript form, e.g.
        ``DeepPot(...).deep_eval.dp.model["Default"]``); it is moved to ``device`` and put in
        ``eval()`` mode.
    type_dict:
        Chemical symbol -> model type index (as ``deepmd.calculator.DP``'s ``type_dict``). Default:
        the model's ``type_map`` entries that are chemical symbols. Types named otherwise (``"OW"``)
        are reachable only through ``type_dict``.
    fparam:
        Frame parameters for models with ``numb_fparam > 0`` (one vector, used for every replica);
        default: the model's ``default_fparam`` if it has one.
    charge_spin:
        ``(charge, spin)`` of the system for models conditioned on them (DeePMD's ``charge_spin``,
        ``atoms.info["charge_spin"]`` for ``DP``); default: the model's default, if it has one.
    device, dtype:
        Torch device (default: the model's) and the float dtype of the coordinates given to the
        model and of the results (default: the model's parameter precision).
    """

    def __init__(self, model, *, name: str = "deepmd", type_dict=None, fparam=None, charge_spin=None,
                 device=None, dtype=None):
        import torch

        from bridges.graph import ElementIndex
        from bridges.torch_bridge import torch_float_dtype

        self.device = torch.device(device if device is not None else next(model.parameters()).device)
        self.model = model.to(self.device)
        self.model.eval()
        self.model_dtype = _model_float_dtype(model)
        self.dtype = torch_float_dtype(dtype, "DeePMD", default=self.model_dtype)
        self.name = name
        _check_interface(model, name)
        self.cutoff = float(model.get_rcut())
        self.nnei = int(sum(model.get_sel()))
        self.type_map = list(model.get_type_map())
        if int(model.get_dim_aparam()) > 0:
            raise NotImplementedError(f"DeePMD model {name!r} needs per-atom parameters (aparam); the bridge "
                                      "does not supply them")
        self.fparam = self._constant_input("frame parameters (fparam)", fparam, int(model.get_dim_fparam()),
                                           lambda: bool(model.has_default_fparam()), "fparam=[...]")
        # Charge/spin conditioning (DPA-3 with add_chg_spin_ebd, e.g. models for molecules).
        n_cs = int(model.get_dim_chg_spin()) if hasattr(model, "get_dim_chg_spin") else 0
        self.charge_spin = self._constant_input(
            "charge/spin values", charge_spin, n_cs,
            lambda: hasattr(model, "has_default_chg_spin") and bool(model.has_default_chg_spin()),
            "charge_spin=(charge, spin)")
        self._types = ElementIndex(self._type_index(type_dict), name=f"DeePMD model {name!r} (type_map {self.type_map})",
                                   device=self.device)
        self.elements = self._types.elements

    def _constant_input(self, what: str, value, size: int, has_default, how: str):
        """One vector for every replica (``fparam``, ``charge_spin``), checked against the model's size;
        None where the model takes none or uses its own default."""
        import torch

        if size == 0:
            if value is not None:
                raise ValueError(f"DeePMD model {self.name!r} takes no {what}")
            return None
        if value is None:
            if not has_default():
                raise ValueError(f"DeePMD model {self.name!r} needs {size} {what}: pass {how}")
            return None
        vec = torch.as_tensor(value, dtype=self.dtype, device=self.device).reshape(-1)
        if vec.numel() != size:
            raise ValueError(f"DeePMD model {self.name!r} takes {size} {what}, got {vec.numel()}")
        return vec

    def _type_index(self, type_dict) -> dict:
        """``{atomic number: model type}`` from ``type_dict`` (default: the type_map's element symbols)."""
        from ase.data import atomic_numbers

        from bridges.graph import ElementIndex

        if type_dict is None:
            type_dict = {t: i for i, t in enumerate(self.type_map) if t in atomic_numbers}
        index = {}
        for sym, idx in type_dict.items():
            z = int(sym) if isinstance(sym, int) else atomic_numbers.get(str(sym))
            if z is None or not 0 < z < ElementIndex.SIZE:
                raise ValueError(f"type_dict key {sym!r} is not a chemical element")
            if not 0 <= int(idx) < len(self.type_map):
                raise ValueError(f"type_dict[{sym!r}] = {idx} is not a type of the model ({self.type_map})")
            index[z] = int(idx)
        if not index:
            raise ValueError(f"DeePMD model {self.name!r}: no type of its type_map {self.type_map} is a chemical "
                             "element; give type_dict={'O': 0, ...}")
        return index

    def to(self, device):
        import torch

        self.device = torch.device(device)
        self.model = self.model.to(self.device)
        self._types.to(self.device)
        if self.fparam is not None:
            self.fparam = self.fparam.to(self.device)
        if self.charge_spin is not None:
            self.charge_spin = self.charge_spin.to(self.device)
        return self

    def extended_system(self, positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask):
        """DeePMD's extended system for ``forward_lower``: ``(ext_coord, ext_atype, nlist, mapping)``.

        ``ext_coord`` [R, N+E, 3], ``ext_atype``/``mapping`` [R, N+E] int64, ``nlist``
        [R, N, sum(sel)] int64 (ghost indices, nearest first, ``-1`` padded); see the module docstring.
        """
        import torch

        dev, fdt = self.device, self.dtype
        R, N = positions.shape[0], positions.shape[1]
        E = edge_src.shape[1]
        pos = positions.to(device=dev, dtype=fdt)
        cell = cell.to(device=dev, dtype=fdt)
        types = self._types(numbers)
        src = edge_src.to(device=dev, dtype=torch.int64)
        dst = edge_dst.to(device=dev, dtype=torch.int64)
        mask = edge_mask.to(device=dev, dtype=torch.bool)
        shift = edge_shift.to(device=dev, dtype=fdt)

        ghost = torch.gather(pos, 1, dst[..., None].expand(R, E, 3)) + torch.einsum("rek,rkl->rel", shift, cell)
        centre = torch.gather(pos, 1, src[..., None].expand(R, E, 3))
        r2 = ((ghost - centre) ** 2).sum(-1)
        nlist = self._nearest_ghosts(src, r2, mask, N)  # the bridge has cut the list at rcut
        ext_coord = torch.cat([pos, ghost], 1)
        local = torch.arange(N, device=dev).expand(R, N)
        mapping = torch.cat([local, dst], 1)
        ext_atype = types[mapping]
        return ext_coord, ext_atype, nlist, mapping

    def _nearest_ghosts(self, src, r2, real, N: int):
        """``nlist`` [R, N, sum(sel)]: per centre the ghosts ``N + e`` of its real edges, nearest first,
        the nearest ``sum(sel)`` kept (as DeePMD's ``build_neighbor_list``), ``-1`` padded."""
        import torch

        R, E = src.shape
        S, dev = self.nnei, src.device
        # Edges ordered by (centre, distance), unreal ones last: two stable sorts.
        big = torch.finfo(r2.dtype).max
        by_dist = torch.argsort(torch.where(real, r2, big), dim=1, stable=True)
        centre_key = torch.gather(torch.where(real, src, N), 1, by_dist)
        by_centre = torch.argsort(centre_key, dim=1, stable=True)
        order = torch.gather(by_dist, 1, by_centre)  # [R, E] edge index, grouped per centre
        c_sorted = torch.gather(centre_key, 1, by_centre)  # [R, E] centre (N = none)
        counts = torch.zeros(R, N + 1, dtype=torch.int64, device=dev).scatter_add_(
            1, c_sorted, torch.ones_like(c_sorted))
        first = torch.cumsum(counts, 1) - counts  # index of each centre's first edge
        rank = torch.arange(E, device=dev)[None, :] - torch.gather(first, 1, c_sorted)
        keep = (c_sorted < N) & (rank < S)  # the nearest sum(sel) neighbours, as DeePMD keeps
        frame = torch.arange(R, device=dev)[:, None]
        slot = torch.where(keep, (frame * N + c_sorted.clamp(max=N - 1)) * S + rank, R * N * S)
        nlist = torch.full((R * N * S + 1,), -1, dtype=torch.int64, device=dev)
        nlist.scatter_(0, slot.reshape(-1), (order + N).reshape(-1))
        return nlist[:-1].view(R, N, S)

    def __call__(self, positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask):
        import torch

        R, N = positions.shape[0], positions.shape[1]
        ext_coord, ext_atype, nlist, mapping = self.extended_system(
            positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask)
        cell = cell.to(device=self.device, dtype=self.dtype)
        fparam = None if self.fparam is None else self.fparam.expand(R, -1)
        charge_spin = None if self.charge_spin is None else self.charge_spin.expand(R, -1)
        with torch.enable_grad():
            if charge_spin is None:
                out = self.model.forward_lower(ext_coord, ext_atype, nlist, mapping, fparam=fparam)
            else:
                out = self.model.forward_lower(ext_coord, ext_atype, nlist, mapping, fparam=fparam,
                                               charge_spin=charge_spin)
        energy = out["energy"].detach().reshape(R).to(self.dtype)
        f_ext = out["extended_force"].detach().reshape(R, -1, 3).to(self.dtype)
        forces = torch.zeros(R, N, 3, dtype=self.dtype, device=self.device).scatter_add_(
            1, mapping[..., None].expand(-1, -1, 3), f_ext)
        virial = out["virial"].detach().reshape(R, 3, 3).to(self.dtype)
        volume = torch.abs(torch.linalg.det(cell))
        # -virial / V, symmetrised as deepmd.calculator.DP does; no cell (non-periodic): no stress.
        stress = -0.5 * (virial + virial.transpose(1, 2)) / torch.where(volume > 1e-3, volume, 1.0)[:, None, None]
        stress = torch.where((volume > 1e-3)[:, None, None], stress, torch.zeros_like(stress))
        return energy, forces, stress


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def pretrained_names() -> list[str]:
    """Names of DeePMD's own pretrained-model registry (``deepmd.pretrained``), or [] if it has none."""
    try:
        from deepmd.pretrained.registry import MODEL_REGISTRY
    except ImportError:
        return []
    return sorted(MODEL_REGISTRY)


def _bridge_supports_pretrained(name: str) -> bool:
    """DPA-4 (SeZM) models of DeePMD's registry use an edge-list lower interface the bridge does not call."""
    return not name.lower().startswith("dpa4")


def _register_pretrained() -> None:
    """Add DeePMD's pretrained names to :data:`bridges.registry.KNOWN_MODELS` (family "deepmd")."""
    from bridges import registry

    for name in pretrained_names():
        if _bridge_supports_pretrained(name) and name.lower() not in registry.KNOWN_MODELS:
            registry.register(name.lower(), "deepmd", f"DeePMD pretrained {name} (downloaded by deepmd-kit; "
                              "multi-task models need head=...)", key=name)


def _pretrained_path(name: str, cache_dir=None) -> str:
    """Local file of a pretrained DeePMD model: DeePMD's cache, else DeePMD's download (fails fast offline)."""
    from deepmd.pretrained import download
    from deepmd.pretrained.registry import MODEL_REGISTRY

    key = next(k for k in MODEL_REGISTRY if k.lower() == name.lower())
    info = MODEL_REGISTRY[key]
    cache = Path(cache_dir) if cache_dir is not None else download.DEFAULT_CACHE_DIR
    cached = cache / str(info["filename"])
    if not cached.is_file():
        from bridges._download import require_download

        require_download(download._model_download_urls(info), f"DeePMD pretrained model {key!r}", timeout=3.0,
                         local_hint=f"on a machine with network run `dp pretrained download {key}` and copy "
                                    f"{info['filename']} into {cache}, or pass the file's path to load_model")
    try:
        return str(download.download_model(key, cache_dir=cache))
    except Exception as exc:
        raise RuntimeError(f"downloading DeePMD pretrained model {key!r} failed ({type(exc).__name__}: {exc}); "
                           f"`dp pretrained download {key}` fetches it into {cache}") from exc


def _load_pt(path: str, head):
    """A ``.pth``/``.pt`` file through DeePMD's own loader (``DeepPot``): ``(model, label)``."""
    from deepmd.infer.deep_pot import DeepPot

    try:
        dp = DeepPot(path, head=head, auto_batch_size=False)
    except AssertionError as exc:  # DeePMD asserts on a missing/unknown multi-task head
        raise ValueError(f"{path}: {exc}") from exc
    backend = _pt_backend(dp)
    if backend is None:
        raise ValueError(f"{path} did not load with DeePMD's PyTorch backend")
    if getattr(backend, "modifier", None) is not None:
        raise NotImplementedError(f"{path} carries a DeePMD data modifier, which the bridge does not apply")
    return backend.dp.model["Default"]


def _pt_backend(deep_pot):
    """DeePMD's PyTorch ``DeepEval`` behind a ``DeepPot`` (also behind its pretrained-name wrapper), or None."""
    backend = getattr(deep_pot, "deep_eval", None)
    inner = getattr(backend, "_backend", None)  # deepmd.pretrained's alias wrapper
    if inner is not None:
        backend = inner
    if backend is None or not type(backend).__module__.startswith("deepmd.pt."):
        return None
    return backend


def _load_dp(path: str):
    """A backend-independent ``.dp``/``.yaml`` model rebuilt as a DeePMD PyTorch model."""
    from deepmd.dpmodel.utils.serialization import load_dp_model
    from deepmd.pt.model.model.model import BaseModel

    data = load_dp_model(path)
    model_data = data["model"]
    if "spin" in str(model_data.get("type", "")):
        raise NotImplementedError(f"{path}: DeePMD spin models are not supported by the bridge")
    return BaseModel.deserialize(model_data)


def load(name_or_path, *, device=None, dtype=None, head=None, type_dict=None, fparam=None,
         charge_spin=None, cache_dir=None) -> DeePMDEFS:
    """A DeePMD model file (or a name of DeePMD's pretrained registry) as a :class:`DeePMDEFS`.

    Parameters
    ----------
    name_or_path:
        ``.pth`` (frozen), ``.pt`` (checkpoint), ``.dp``/``.yaml`` (DeePMD's backend-independent
        format), or a DeePMD pretrained name (``DPA-3.1-3M``, ... :func:`pretrained_names`, case
        insensitive), downloaded once into DeePMD's cache (``cache_dir`` overrides it).
    head:
        Branch of a multi-task model (DeePMD's ``head``; required when it has no ``Default`` alias).
    type_dict, fparam, charge_spin:
        See :class:`DeePMDEFS`.
    device:
        Torch device; default: JAX's platform (:func:`bridges.torch_bridge.resolve_device`).
    dtype:
        Float dtype of the coordinates and results (``float32``/``float64``; default the model's
        precision). The model itself computes in the precision it was saved in.
    """
    from bridges.torch_bridge import resolve_device, torch_float_dtype

    model, label = _model_for(name_or_path, head, cache_dir)
    return DeePMDEFS(model, name=label, type_dict=type_dict, fparam=fparam, charge_spin=charge_spin,
                     device=resolve_device(device), dtype=torch_float_dtype(dtype, "DeePMD"))


def _model_file(name_or_path, cache_dir) -> tuple[str, str]:
    """``(file, label)`` of a DeePMD PyTorch model file or a pretrained name (downloaded into DeePMD's cache)."""
    import_deepmd_pt()
    path = name_or_path = os.fspath(name_or_path)
    label = Path(name_or_path).name
    if not os.path.isfile(path):
        known = {n.lower(): n for n in pretrained_names()}
        if name_or_path.strip().lower() not in known:
            raise ValueError(f"{name_or_path!r} is neither a DeePMD model file nor a DeePMD pretrained name "
                             f"({', '.join(known.values()) or 'none'})")
        label = known[name_or_path.strip().lower()]
        if not _bridge_supports_pretrained(label):
            raise NotImplementedError(f"{label} is a SeZM (DPA-4) model, whose edge-list lower interface the "
                                      "bridge does not support yet")
        path = _pretrained_path(label, cache_dir)
    suffix = Path(path).suffix.lower()
    if suffix in _OTHER_BACKENDS:
        raise ValueError(f"{path} is {_OTHER_BACKENDS[suffix]}, which the torch bridge cannot call; "
                         + _CONVERT_HINT.format(src=Path(path).name, dst=Path(path).with_suffix('.pth').name))
    if suffix not in _PT_SUFFIXES + _DP_SUFFIXES:
        raise ValueError(f"{path}: unknown DeePMD file type {suffix!r}; expected .pth, .pt, .dp or .yaml")
    return path, label


def _model_for(name_or_path, head, cache_dir):
    """``(DeePMD PyTorch model, label)`` for a model file or a pretrained name."""
    path, label = _model_file(name_or_path, cache_dir)
    if Path(path).suffix.lower() in _PT_SUFFIXES:
        return _load_pt(path, head), label
    if head is not None:
        raise ValueError(f"{path}: head= applies to multi-task .pt checkpoints only")
    return _load_dp(path), label


def looks_like(path) -> bool:
    """Whether ``path`` is a DeePMD model file (cheap: reads archive indices/headers, never raises)."""
    try:
        path = os.fspath(path)
        suffix = Path(path).suffix.lower()
        if not os.path.isfile(path):
            return False
        if suffix in (".pth", ".pt"):
            import zipfile

            if not zipfile.is_zipfile(path):
                return False
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                # Frozen .pth: TorchScript code of DeePMD's classes.
                if any("__torch__/deepmd/" in n for n in names):
                    return True
                # .pt checkpoint: torch.save of {"model": {..., "_extra_state": {"model_params": ...}}}.
                pkl = next((n for n in names if n.endswith("/data.pkl")), None)
                if pkl is None or zf.getinfo(pkl).file_size > 64 * 2**20:
                    return False
                data = zf.read(pkl)
                return b"_extra_state" in data and b"model_params" in data and b"descriptor" in data
        if suffix == ".dp":
            import h5py

            with h5py.File(path, "r") as f:
                meta = f.attrs.get("json", "")
            meta = meta.decode() if isinstance(meta, bytes) else str(meta)
            return "deepmd" in meta.lower() and '"model"' in meta
        if suffix in (".yaml", ".yml"):
            with open(path, "rb") as f:
                head = f.read(1 << 16)
            return b"deepmd" in head.lower() and b"descriptor" in head
        if suffix == ".pb":  # DeePMD's TF graphs carry these nodes; load() then explains the conversion
            import mmap

            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return mm.find(b"descrpt_attr/rcut") >= 0 or mm.find(b"model_attr/tmap") >= 0
    except Exception:
        return False
    return False


def _own_model(calc):
    """The PyTorch model a ``deepmd.calculator.DP`` (exact class) runs, if the bridge reproduces it, else None."""
    if (type(calc).__module__ or "") != "deepmd.calculator" or type(calc).__name__ != "DP":
        return None
    backend = _pt_backend(getattr(calc, "dp", None))
    if backend is None or getattr(backend, "modifier", None) is not None or getattr(backend, "_has_spin", False):
        return None
    model = backend.dp.model["Default"]
    try:
        if int(model.get_dim_aparam()) > 0:
            return None
        if int(model.get_dim_fparam()) > 0 and not bool(model.has_default_fparam()):
            return None  # DP takes them from atoms.info["fparam"], per structure
        if hasattr(model, "get_dim_chg_spin") and int(model.get_dim_chg_spin()) > 0 \
                and not bool(model.has_default_chg_spin()):
            return None  # likewise atoms.info["charge_spin"]
    except AttributeError:
        return None
    return model


def _element_type_dict(calc) -> dict:
    """DP's ``type_dict`` without entries that are not elements ("OW" never matches a symbol)."""
    from ase.data import atomic_numbers

    return {k: int(v) for k, v in (getattr(calc, "type_dict", None) or {}).items() if k in atomic_numbers}


def efs_from_calculator(calc):
    """A :class:`DeePMDEFS` on the model already loaded by ``deepmd.calculator.DP`` (PyTorch backend), or None.

    Reuses ``calc.dp``'s model object and ``calc.type_dict``. ``None`` (the caller then falls back
    to calling the calculator) for other calculators, other DeePMD backends (TF, JAX, ...), models
    with a data modifier, per-atom or required frame parameters, and spin models.
    """
    model = _own_model(calc)
    if model is None:
        return None
    name = f"DP[{Path(str(getattr(_pt_backend(calc.dp), 'model_path', 'deepmd'))).name}]"
    return DeePMDEFS(model, name=name, type_dict=_element_type_dict(calc) or None)


def model_identity(calc):
    """What makes two DP calculators compute the same thing: the model object and the type map."""
    model = _own_model(calc)
    if model is None:
        return None
    from bridges.resolver import Same

    return Same(model), tuple(sorted(_element_type_dict(calc).items()))


def ase_calculator(name_or_path, *, device=None, head=None, cache_dir=None):
    """DeePMD's own ASE calculator ``deepmd.calculator.DP`` for a model file or a pretrained name.

    (DP runs where deepmd-kit puts it; ``device`` is accepted for the common signature.)
    """
    from deepmd.calculator import DP

    return DP(_model_file(name_or_path, cache_dir)[0], head=head)


install_import_guard()
_register_pretrained()
