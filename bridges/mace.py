"""MACE (mace-torch) as a torch EFS object (see :mod:`bridges.torch_bridge`).

``load("mace-mp-0b-medium" | <file.model>, device=None, dtype=None, head=None)`` returns a
:class:`MACEEFS`, the torch-side object that ``bridges.torch_bridge.as_jax_model`` wraps.

MACE is called directly, without its ASE calculator (whose ``AtomicData.from_config`` builds the
graph on the CPU with matscipy, one structure at a time). The input dictionary of MACE's
``forward`` is built here in torch, on the model's device, from the engine's edges, all ``R``
replicas as one batched graph (replica ``r``'s atoms are nodes ``r*N ... r*N + N-1``):

* ``edge_index = [sender, receiver] = [src, dst]``: MACE's edge vector is
  ``positions[receiver] - positions[sender] + shifts`` (``mace.modules.utils``), the engine's
  ``d = pos[dst] - pos[src] + S @ cell``; ``unit_shifts = S`` and ``shifts = S @ cell[r]``;
* only real pairs (``edge_mask``) are kept: the bridge has cut them strictly inside the model's
  ``r_max`` (matscipy's ``d < cutoff``, as MACE's own neighbour list);
* ``node_attrs``: one-hot over ``model.atomic_numbers`` in the model's order (MACE's
  ``AtomicNumberTable``); ``batch``, ``ptr``, ``cell`` as ``[R*3, 3]``, ``head`` per replica.

Forces and stress come from MACE's own ``forward(compute_force=True, compute_stress=True)``
(one ``autograd.grad`` over positions and a symmetric strain). MACE's stress is
``(1/V) dE/d(strain)`` in eV/A^3, already ASE's sign (positive in tension): its calculator passes
it to ASE unchanged, and so does this bridge. Energies are in eV (MACE's E0s included).

Precision: ``float32`` (default, as ``mace_mp``) or ``float64`` (the model is converted, as
``MACECalculator(default_dtype=...)`` does). Multi-head models: ``head=`` (see :func:`load`).

Named models are fetched by mace-torch's own download and cache (``~/.cache/mace``, or
``$XDG_CACHE_HOME/mace``); when the file is not cached and the server cannot be reached, loading
fails within seconds with a message naming the URL, the cache path and how to pass a local file
(:func:`bridges._download.require_download`).

e3nn versions: mace-torch pins ``e3nn==0.4.4`` while this project runs e3nn >= 0.5 (SevenNet
needs it). MACE's code runs unchanged under e3nn 0.6.0 (same energies), but MACE ``.model``
files are whole pickled modules, and those written under e3nn < 0.5.5 (every MACE-MP foundation
model) hold e3nn objects in an older layout: e3nn's compiled sub-modules as bare TorchScript
bytes, and attributes that newer e3nn classes expect are missing. :func:`load_mace_module` reads
such files (the bare TorchScript bytes are handed to e3nn as the ``"torchscript"`` entries its
current loader knows) and, when the loaded module does not run under the installed e3nn, rebuilds
it with mace-torch's own ``extract_model`` (a fresh ``ScaleShiftMACE`` from the stored
hyper-parameters, then ``load_state_dict``: weights and MACE's symmetric-contraction ``U``
matrices come from the file). e3nn 0.5 changed ``wigner_3j`` only for couplings with odd
``l1 + l2 + l3``, which a MACE with natural-parity irreps (``0e``, ``1o``, ``2e``...: all
MACE-MP models) never uses, so the rebuilt model computes the same energies.

``import mace`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the process environment (mace-torch
does this itself so that its pickled models load under torch >= 2.6). Model files are pickles:
load only files you trust, as with MACE itself.

This module owns MACE's input dictionary (:meth:`MACEEFS.graph`), :class:`MACEEFS`, reading MACE
files (:func:`load_mace_module`, :func:`e3nn_legacy_unpickling`, :func:`looks_like`), the named
models' cache (:func:`mace_cache_path`), :func:`load`, :func:`efs_from_calculator`,
:func:`model_identity` and :func:`ase_calculator`.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
import zipfile

import torch

from bridges._download import require_download
from bridges.graph import ElementIndex, batched_edges, image_displacements, node_replica
from bridges.registry import family_names
from bridges.torch_bridge import resolve_device, torch_float_dtype

__all__ = ["MODEL_NAMES", "MACEEFS", "load", "load_mace_module", "looks_like", "efs_from_calculator",
           "model_identity", "ase_calculator", "e3nn_legacy_unpickling", "mace_cache_path"]

# jaxpto name -> (mace-torch foundation family, key in mace's URL table). The URLs themselves are
# read from mace.calculators.foundations_models at load time (mace-torch owns them).
MODEL_NAMES: dict[str, tuple[str, str]] = family_names("mace")

# MACE classes whose forward is an energy model taking exactly the graph built here. Others
# (PolarMACE, MACELES with k-space terms, dipole models, models with extra per-graph inputs such
# as charge/spin embeddings) are refused with a clear error rather than evaluated wrongly.
_ENERGY_CLASSES = ("MACE", "ScaleShiftMACE")


# ----------------------------------------------------------------------------- the EFS object


class MACEEFS:
    """A loaded MACE energy model as a torch EFS (``cutoff``, ``elements``, ``name``, ``__call__``).

    Parameters
    ----------
    model:
        A ``mace.modules.MACE`` / ``ScaleShiftMACE`` module (used as it is: not copied, not
        converted; move/convert it before, as :func:`load` does).
    head:
        Head name of a multi-head model; ``None``: the only head, else the one named "default"
        (case insensitive), else an error listing the heads.
    name:
        Label for messages.
    """

    def __init__(self, model, *, head: str | None = None, name: str = "mace"):
        _check_energy_model(model)
        self.model = model
        p = next(model.parameters())
        self.device = p.device
        self.dtype = p.dtype
        self.cutoff = float(model.r_max)
        zs = [int(z) for z in model.atomic_numbers.tolist()]
        self.atomic_numbers = zs
        heads = list(getattr(model, "heads", None) or ["Default"])
        self.heads = heads
        self.head = _pick_head(heads, head, name)
        self.head_index = heads.index(self.head)
        self.name = name + (f"[{self.head}]" if len(heads) > 1 else "")
        # z -> one-hot column (MACE's AtomicNumberTable order: the model's own list)
        self._columns = ElementIndex({z: k for k, z in enumerate(zs)}, name=self.name, device=self.device)
        self.elements = self._columns.elements

    def __repr__(self) -> str:
        return f"MACEEFS(name={self.name!r}, device={self.device}, dtype={self.dtype}, cutoff={self.cutoff})"

    def to(self, device):
        self.device = torch.device(device)
        self.model = self.model.to(self.device)
        self._columns.to(self.device)
        return self

    def graph(self, positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask) -> dict:
        """MACE's input dictionary for ``R`` replicas as one batched graph (see the module docstring)."""
        dev, dt = self.device, self.dtype
        R, N = int(positions.shape[0]), int(positions.shape[1])
        col = self._columns(numbers)
        # Positions as a fresh leaf (MACE calls requires_grad_ on it); `detach` does not copy.
        pos = positions.reshape(R * N, 3).to(device=dev, dtype=dt).detach()
        cell = cell.to(device=dev, dtype=dt).detach()
        with torch.no_grad():
            edges = batched_edges(edge_src, edge_dst, edge_shift, edge_mask, N, device=dev, dtype=dt)
            node_attrs = torch.zeros((N, len(self.atomic_numbers)), device=dev, dtype=dt)
            node_attrs[torch.arange(N, device=dev), col] = 1.0
        return {
            "positions": pos,
            "cell": cell.reshape(R * 3, 3),
            "edge_index": torch.stack([edges.src, edges.dst]),
            "shifts": image_displacements(cell, edges),
            "unit_shifts": edges.shift,
            "node_attrs": node_attrs.repeat(R, 1),
            "batch": node_replica(R, N, dev),
            "ptr": torch.arange(R + 1, device=dev, dtype=torch.int64) * N,
            "head": torch.full((R,), self.head_index, device=dev, dtype=torch.int64),
        }

    def __call__(self, positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask):
        R, N = int(positions.shape[0]), int(positions.shape[1])
        data = self.graph(positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask)
        volume = torch.abs(torch.linalg.det(data["cell"].reshape(R, 3, 3)))
        with torch.inference_mode(False), torch.enable_grad():
            out = self.model(data, training=False, compute_force=True, compute_stress=True)
        energy = out["energy"].detach().reshape(R)
        forces = out["forces"].detach().reshape(R, N, 3)
        stress = out["stress"].detach().reshape(R, 3, 3)
        # No cell (non-periodic): no stress, as the engine's own models report (MACE would divide
        # by a zero volume).
        stress = torch.where((volume > 1e-3)[:, None, None], stress, torch.zeros_like(stress))
        return energy, forces, stress


def _check_energy_model(model) -> None:
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("TorchScript-compiled MACE models (e.g. *_compiled.model or LAMMPS exports) are not "
                        "supported by the bridge; load the original pickled .model file")
    cls = type(model).__name__
    if cls not in _ENERGY_CLASSES or not isinstance(model, torch.nn.Module):
        raise TypeError(f"the MACE bridge evaluates energy models ({', '.join(_ENERGY_CLASSES)}); got {cls}")
    if hasattr(model, "joint_embedding") or getattr(model, "embedding_specs", None):
        specs = sorted(getattr(model, "embedding_specs", None) or {})
        raise NotImplementedError(f"MACE models with extra per-structure inputs (embedding_specs {specs}, e.g. "
                                  "total charge/spin) are not supported by the bridge")


def _pick_head(heads: list[str], head: str | None, label: str) -> str:
    if head is None:
        if len(heads) == 1:
            return heads[0]
        default = [h for h in heads if h.lower() == "default"]
        if default:
            return default[0]
        raise ValueError(f"{label} is a multi-head MACE model: give head= one of {heads}")
    if head in heads:
        return head
    match = [h for h in heads if h.lower() == str(head).lower()]
    if len(match) == 1:
        return match[0]
    raise ValueError(f"unknown head {head!r} for {label}; available heads: {heads}")


# ----------------------------------------------------------------------------- files


@contextlib.contextmanager
def e3nn_legacy_unpickling():
    """Let the installed e3nn unpickle modules pickled by e3nn < 0.5.5.

    e3nn < 0.5.5 stored each compiled sub-module of a ``CodeGenMixin`` (``TensorProduct``,
    ``Linear``, MACE's ``SymmetricContraction``) as bare TorchScript bytes; e3nn >= 0.5.5 expects
    ``(kind, bytes)`` pairs and fails with "too many values to unpack". Inside this context such
    bytes are passed on as ``("torchscript", bytes)``, which the current loader reads with
    ``torch.jit.load`` exactly as the old one did. Yields a list that gets one entry per converted
    module (non-empty: the file came from an older e3nn). Also usable around
    ``mace.calculators.mace_mp(...)`` or ``MACECalculator(model_paths=...)``; note that such a
    module may still lack attributes the newer e3nn classes expect (see :func:`load_mace_module`).
    """
    from e3nn.util.codegen import CodeGenMixin

    converted: list[str] = []
    original = CodeGenMixin.__setstate__

    def setstate(self, d):
        state = d.get("__codegen__") if isinstance(d, dict) else None
        if isinstance(state, dict) and any(isinstance(v, (bytes, bytearray)) for v in state.values()):
            d = dict(d)
            d["__codegen__"] = {k: ("torchscript", bytes(v)) if isinstance(v, (bytes, bytearray)) else v
                                for k, v in state.items()}
            converted.append(type(self).__name__)
        return original(self, d)

    CodeGenMixin.__setstate__ = setstate
    try:
        yield converted
    finally:
        CodeGenMixin.__setstate__ = original


def _smoke_test(model) -> None:
    """One tiny forward pass (two atoms of the model's first element): raises if the module cannot run."""
    heads = list(getattr(model, "heads", None) or ["Default"])
    efs = MACEEFS(model, head=heads[0])
    dev, dt = efs.device, efs.dtype
    z = efs.atomic_numbers[0]
    pos = torch.tensor([[[0.0, 0.0, 0.0], [1.2, 0.3, 0.4]]], device=dev, dtype=dt)
    cell = (torch.eye(3, device=dev, dtype=dt) * 6.0)[None]
    src = torch.tensor([[0, 1]], device=dev)
    dst = torch.tensor([[1, 0]], device=dev)
    efs(pos, cell, torch.tensor([z, z], device=dev), src, dst, torch.zeros((1, 2, 3), device=dev, dtype=dt),
        torch.ones((1, 2), dtype=torch.bool, device=dev))


def load_mace_module(path, *, device="cpu"):
    """``torch.load`` a MACE ``.model`` file (a whole pickled module) so that it runs under the installed e3nn.

    Files pickled under e3nn < 0.5.5 are read with :func:`e3nn_legacy_unpickling`; a module that
    then does not run (older e3nn objects miss attributes of the newer classes) is rebuilt by
    mace-torch's ``mace.tools.scripts_utils.extract_model`` (fresh module from the stored
    hyper-parameters, then ``load_state_dict``). Returns the module on ``device``, parameters
    frozen, in ``eval()`` mode, in the dtype stored in the file.
    """
    import mace  # noqa: F401  (mace-torch sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD on import)

    path = os.fspath(path)
    with warnings.catch_warnings():
        # torch warns that the environment variable forces weights_only=False; we pass it explicitly.
        warnings.filterwarnings("ignore", message=".*weights_only.*")
        with e3nn_legacy_unpickling() as legacy:
            model = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(model, dict):
        raise TypeError(f"{path!r} holds a dict ({', '.join(map(str, list(model)[:5]))}...), not a MACE model: a "
                        "training checkpoint? Load the .model file that mace_run_train writes")
    _check_energy_model(model)
    try:
        if legacy:
            raise RuntimeError(f"pickled by e3nn < 0.5.5 ({len(legacy)} compiled e3nn modules)")
        _smoke_test(model)
    except Exception as exc:  # stale e3nn objects: rebuild with mace's own tool
        from mace.tools.scripts_utils import extract_model

        dtype = next(model.parameters()).dtype
        previous = torch.get_default_dtype()
        # Build in the file's precision: e3nn bakes constants (Clebsch-Gordan, normalisations)
        # into its modules in the default dtype; float32 constants in a float64 model cost ~1e-8.
        torch.set_default_dtype(dtype)
        try:
            rebuilt = extract_model(model, map_location="cpu")
        except Exception as exc2:
            raise RuntimeError(f"the MACE model {path!r} does not run under the installed e3nn "
                               f"({type(exc).__name__}: {exc}) and mace's extract_model could not rebuild it "
                               f"({type(exc2).__name__}: {exc2})") from exc2
        finally:
            torch.set_default_dtype(previous)
        model = rebuilt.to(dtype)
        _smoke_test(model)
        import e3nn

        warnings.warn(f"{os.path.basename(path)}: rebuilt the MACE model for e3nn {e3nn.__version__} "
                      f"({exc}); weights and buffers are the file's", stacklevel=2)
    model = model.to(torch.device(device)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def looks_like(path) -> bool:
    """Is ``path`` a MACE ``.model`` file? Reads the pickle bytes only (nothing is unpickled).

    ``torch.save`` of a whole MACE module writes a zip whose ``*/data.pkl`` names the classes
    ``mace.modules.models``; a TorchScript export has ``code/__torch__/mace/...`` entries
    (detected too, so that loading it says it is not supported).
    """
    try:
        path = os.fspath(path)
        if not os.path.isfile(path):
            return False
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if any("/code/__torch__/mace/" in n for n in names):
                    return True
                pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
                if not pkl:
                    return False
                with zf.open(pkl[0]) as f:
                    head = f.read(1 << 20)  # the class references come first
                return b"mace.modules.models" in head
        with open(path, "rb") as f:  # legacy (non-zip) torch.save format
            return b"mace.modules.models" in f.read(1 << 20)
    except Exception:
        return False


# ----------------------------------------------------------------------------- named models


def _url(family: str, key: str) -> str:
    from mace.calculators import foundations_models as fm

    table = fm.mace_mp_urls if family == "mp" else fm.mace_off_urls
    return table[key]


def mace_cache_path(name: str) -> str:
    """Where mace-torch caches the named model (``mace_mp``/``mace_off``'s own naming rule)."""
    from mace.tools.utils import get_cache_dir

    family, key = MODEL_NAMES[name]
    base = os.path.basename(_url(family, key))
    if family == "mp":  # download_mace_mp_checkpoint keeps only alphanumerics and "_"
        base = "".join(c for c in base if c.isalnum() or c in "_")
    else:  # mace_off drops a query string
        base = base.split("?")[0]
    return os.path.join(str(get_cache_dir()), base)


def _download(name: str, timeout: float) -> str:
    """The cached file of a named model, downloaded by mace-torch if needed (fails fast offline)."""
    from mace.calculators.foundations_models import _normalize_github_download_url

    family, key = MODEL_NAMES[name]
    url = _normalize_github_download_url(_url(family, key))
    cached = mace_cache_path(name)
    if family == "mp" and key == "medium-mpa-0":
        from mace.calculators.foundations_models import local_model_path

        if os.path.isfile(local_model_path):  # mace_mp's own shortcut: a copy inside the package
            return local_model_path
    if not os.path.isfile(cached):
        require_download(url, f"MACE model {name!r}", timeout=timeout, local_hint=(
            f"it is not in mace-torch's cache ({cached}). Offline: get the file elsewhere and pass its path, e.g. "
            f"load_model('/path/to/{os.path.basename(url)}') (family detected), or copy it to {cached}"))
    try:
        path = _fetch(family, key, cached)
    except Exception as exc:
        raise RuntimeError(f"downloading MACE model {name!r} from {url} failed ({type(exc).__name__}: {exc}); "
                           f"pass a local file instead, e.g. load_model('/path/to/{os.path.basename(url)}')") from exc
    if not os.path.isfile(path):
        raise RuntimeError(f"mace-torch reported {path} for MACE model {name!r}, but there is no such file")
    return str(path)


def _fetch(family: str, key: str, cached: str) -> str:
    """mace-torch's own download into its cache (the file at once when it is there)."""
    with contextlib.redirect_stdout(io.StringIO()):  # mace prints progress and license notes
        if family == "mp":
            from mace.calculators.foundations_models import download_mace_mp_checkpoint

            return download_mace_mp_checkpoint(key)  # the cached file at once when present (no network)
        if os.path.isfile(cached):
            return cached
        from mace.calculators.foundations_models import mace_off

        # mace_off has no download-only entry point: it downloads into its cache and loads the
        # file (thrown away here; the legacy context lets that load succeed).
        with e3nn_legacy_unpickling(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mace_off(key, device="cpu", return_raw_model=True)
        return cached


def _module_for(name_or_path, download_timeout: float):
    """``(MACE module on the CPU, label)`` for a named model or a ``.model`` file."""
    name = os.fspath(name_or_path)
    key = name.strip().lower()
    if key in MODEL_NAMES:
        return load_mace_module(_download(key, download_timeout), device="cpu"), key
    if os.path.isfile(name):
        return load_mace_module(name, device="cpu"), f"mace:{os.path.basename(name)}"
    raise ValueError(f"unknown MACE model {name!r} (and no such file); known: {', '.join(MODEL_NAMES)}")


def load(name_or_path, *, device=None, dtype=None, head: str | None = None, download_timeout: float = 10.0,
         **kw) -> MACEEFS:
    """Load a MACE model as a torch EFS object.

    Parameters
    ----------
    name_or_path:
        A name of :data:`MODEL_NAMES` ("mace-mp-0b-medium", "mace-mp-0-medium", "mace-mpa-0-medium",
        "mace-off23-medium", ...; case insensitive), fetched through mace-torch's own download and
        cache, or the path of a MACE ``.model`` file (see :func:`load_mace_module`).
    device:
        Torch device; default: JAX's platform (:func:`bridges.torch_bridge.resolve_device`).
    dtype:
        ``float32`` (default) or ``float64``; the model is converted.
    head:
        Head of a multi-head model (see :class:`MACEEFS`).
    download_timeout:
        Seconds to wait for the download server before failing (only when the file is not cached).
    """
    if kw:
        raise TypeError(f"unexpected arguments for a MACE model: {', '.join(kw)}")
    tdt = torch_float_dtype(dtype, "MACE", default=torch.float32)
    dev = resolve_device(device)
    model, label = _module_for(name_or_path, download_timeout)
    return MACEEFS(model.to(device=dev, dtype=tdt), head=head, name=label)


# ----------------------------------------------------------------------------- calculator swap


def _own_model_and_head(calc):
    """``(model, head)`` of a plain single-model ``MACECalculator`` (exact class), or None."""
    try:
        from mace.calculators import MACECalculator
    except ImportError:
        return None
    if type(calc) is not MACECalculator:
        return None
    models = getattr(calc, "models", None) or []
    if (len(models) != 1 or getattr(calc, "model_type", "MACE") != "MACE" or getattr(calc, "use_compile", False)
            or float(getattr(calc, "energy_units_to_eV", 1.0)) != 1.0
            or float(getattr(calc, "length_units_to_A", 1.0)) != 1.0):
        return None
    model = models[0]
    try:
        _check_energy_model(model)
    except (TypeError, NotImplementedError):
        return None
    heads = list(getattr(calc, "available_heads", None) or getattr(model, "heads", None) or ["Default"])
    return model, (calc.head if calc.head in heads else heads[-1])  # MACE's AtomicData: unknown head -> last


def efs_from_calculator(calc) -> MACEEFS | None:
    """:class:`MACEEFS` on a ``mace.calculators.MACECalculator``'s own loaded model, or None.

    Only a plain single-model energy calculator (``model_type="MACE"``, one model, eV and
    Angstrom units, no ``torch.compile``), in the model's own dtype and device and with the
    calculator's head. Anything else (committees, dipole models, compiled models, a
    ``SumCalculator`` with D3) returns None: jaxpto.md then calls the calculator itself.
    """
    own = _own_model_and_head(calc)
    return None if own is None else MACEEFS(own[0], head=own[1], name="MACECalculator.models[0]")


def model_identity(calc):
    """What makes two MACE calculators compute the same thing: the model object and the head."""
    own = _own_model_and_head(calc)
    if own is None:
        return None
    from bridges.resolver import Same

    return Same(own[0]), own[1]


def ase_calculator(name_or_path, *, device=None, dtype="float32", head: str | None = None,
                   download_timeout: float = 10.0):
    """mace-torch's own ``MACECalculator`` on the same module :func:`load` would run (a named
    model or a ``.model`` file; files pickled by older e3nn are rebuilt as in :func:`load_mace_module`)."""
    from mace.calculators import MACECalculator

    tdt = torch_float_dtype(dtype, "MACE", default=torch.float32)
    model, _ = _module_for(name_or_path, download_timeout)
    kw = {} if head is None else {"head": head}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MACECalculator(models=[model.to(tdt)], device=str(resolve_device(device)),
                              default_dtype=str(tdt).removeprefix("torch."), **kw)
