"""The one place that maps model names and files to families: ``load_model`` and ``ase_calculator``.

``load_model(name_or_path)`` (also ``jaxpto.load_model``) returns a :class:`jaxpto.model.Model`;
``ase_calculator(name_or_path)`` returns the family's *own* ASE calculator for the same model
(the study's reference, e.g. for the PTO-test's speed comparison). Units are ASE's.

Families (:data:`FAMILIES`) and what each family's module ``bridges.<family>`` gives:

* ``"torch"`` families (sevenn, chgnet, mace, orb, matgl, deepmd): ``load(name_or_path, *, device,
  dtype, **kw)`` -> a torch EFS object (see :mod:`bridges.torch_bridge`), put on the DLPack bridge
  here; ``looks_like(path)``; ``efs_from_calculator(calc)`` and ``model_identity(calc)`` (used by
  :mod:`bridges.resolver`); ``ase_calculator(name_or_path, *, device, **kw)``;
* ``"jax"`` families (JAX-native models in a bridges module, no torch: nequix): ``load(name_or_path,
  *, dtype, **kw)`` -> a :class:`~jaxpto.model.Model` directly; ``looks_like``,
  ``model_from_calculator(calc)``, ``model_identity(calc)``, ``ase_calculator(name_or_path)``;
* ``"jax"`` the family name of :mod:`jaxpto.potentials` ("emt", "lj"), loaded by name only.

Named models: :data:`KNOWN_MODELS`, ``name -> ModelName(family, description, key)`` where ``key``
is the family's own name for the model (CHGNet's "0.3.0", matgl's Hugging Face name, ...); a
family module reads its names from here (:func:`family_names`), so every name is written once.
"""

from __future__ import annotations

import importlib
import os
import pickle
import zipfile
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # no runtime import: the core stays importable without bridges
    from jaxpto.model import Model


class Family(NamedTuple):
    """A model family: the package whose models (and ASE calculators) it wraps, and how it reaches the engine."""

    package: str | None  # top-level module of the family's calculators; None for jaxpto.potentials
    kind: str  # "torch" (DLPack bridge), "jax" (bridges module returning a Model), "potential"


FAMILIES: dict[str, Family] = {
    "sevenn": Family("sevenn", "torch"),
    "chgnet": Family("chgnet", "torch"),
    "mace": Family("mace", "torch"),
    "orb": Family("orb_models", "torch"),
    "matgl": Family("matgl", "torch"),
    "deepmd": Family("deepmd", "torch"),
    # JAX-native families with a bridges module (kind "jax"): a Model called inside the compiled step.
    "nequix": Family("nequix", "jax"),
    "student": Family(None, "jax"),  # students written by `jaxpto distill` (bridges.student), files only
    "jax": Family(None, "potential"),
}


def families(kind: str | None = None) -> tuple[str, ...]:
    """Family names, optionally of one kind ("torch", "jax", "potential")."""
    return tuple(f for f, info in FAMILIES.items() if kind is None or info.kind == kind)


TORCH_FAMILIES = families("torch")


class ModelName(NamedTuple):
    family: str
    description: str
    key: Any  # the family's own name for the model


KNOWN_MODELS: dict[str, ModelName] = {}


def register(name: str, family: str, description: str, key: Any = None) -> None:
    """Add a named model (``key``: the family's own name for it; default ``name``)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known families: {', '.join(FAMILIES)}")
    KNOWN_MODELS[name.lower()] = ModelName(family, description, name if key is None else key)


def _register_all(family: str, rows: dict) -> None:
    for name, (key, description) in rows.items():
        register(name, family, description, key)


_register_all("sevenn", {
    "7net-0": ("7net-0", "SevenNet-0 (11Jul2024), 89 elements, cutoff 5 A"),
    "7net-l3i5": ("7net-l3i5", "SevenNet-l3i5, 89 elements, cutoff 5 A (slower, lmax 3)"),
    "7net-mf-0": ("7net-mf-0", "SevenNet-MF-0, multi-fidelity: modal='PBE' (default) or 'R2SCAN'"),
})
_register_all("chgnet", {  # key: CHGNet.load(model_name=...)
    "chgnet-0.3.0": ("0.3.0", "CHGNet 0.3.0 (MPtrj)"),
    "chgnet-0.2.0": ("0.2.0", "CHGNet 0.2.0 (MPtrj)"),
    "chgnet-r2scan": ("r2scan", "CHGNet r2SCAN fine-tune"),
})
_register_all("mace", {  # key: (mace-torch foundation family, key of its URL table)
    "mace-mp-0b-medium": (("mp", "medium-0b"), "MACE-MP-0b medium (mace_agnesi_medium.model; downloaded by mace-torch)"),
    "mace-mp-0b-small": (("mp", "small-0b"), "MACE-MP-0B-SMALL (downloaded by mace-torch)"),
    "mace-mp-0-small": (("mp", "small"), "MACE-MP-0-SMALL (downloaded by mace-torch)"),
    "mace-mp-0-medium": (("mp", "medium"), "MACE-MP-0-MEDIUM (downloaded by mace-torch)"),
    "mace-mp-0-large": (("mp", "large"), "MACE-MP-0-LARGE (downloaded by mace-torch)"),
    "mace-mp-0b2-small": (("mp", "small-0b2"), "MACE-MP-0B2-SMALL (downloaded by mace-torch)"),
    "mace-mp-0b2-medium": (("mp", "medium-0b2"), "MACE-MP-0B2-MEDIUM (downloaded by mace-torch)"),
    "mace-mp-0b2-large": (("mp", "large-0b2"), "MACE-MP-0B2-LARGE (downloaded by mace-torch)"),
    "mace-mp-0b3-medium": (("mp", "medium-0b3"), "MACE-MP-0B3-MEDIUM (downloaded by mace-torch)"),
    "mace-mpa-0-medium": (("mp", "medium-mpa-0"), "MACE-MPA-0-MEDIUM (downloaded by mace-torch)"),
    "mace-omat-0-small": (("mp", "small-omat-0"), "MACE-OMAT-0-SMALL (downloaded by mace-torch)"),
    "mace-omat-0-medium": (("mp", "medium-omat-0"), "MACE-OMAT-0-MEDIUM (downloaded by mace-torch)"),
    "mace-matpes-pbe-0": (("mp", "mace-matpes-pbe-0"), "MACE-MATPES-PBE-0 (downloaded by mace-torch)"),
    "mace-matpes-r2scan-0": (("mp", "mace-matpes-r2scan-0"), "MACE-MATPES-R2SCAN-0 (downloaded by mace-torch)"),
    "mace-off23-small": (("off", "small"), "MACE-OFF23-SMALL (downloaded by mace-torch)"),
    "mace-off23-medium": (("off", "medium"), "MACE-OFF23-MEDIUM (downloaded by mace-torch)"),
    "mace-off23-large": (("off", "large"), "MACE-OFF23-LARGE (downloaded by mace-torch)"),
})
_register_all("orb", {  # key: ORB's own name (orb_models.forcefield.pretrained.ORB_PRETRAINED_MODELS)
    n: (n, d) for n, d in {
        "orb-v2": "ORB v2, direct forces/stress, 20 neighbours, MPtrj+Alexandria (downloaded by orb-models)",
        "orb-d3-v2": "ORB v2 trained on D3-corrected data, direct, 20 neighbours",
        "orb-d3-sm-v2": "ORB v2 small (10 layers), D3-corrected data, direct",
        "orb-d3-xs-v2": "ORB v2 extra small (5 layers), D3-corrected data, direct",
        "orb-mptraj-only-v2": "ORB v2 trained on MPtrj only, direct",
        "orb-v3-conservative-inf-omat": "ORB v3 conservative (autograd forces/stress), 120 neighbours, OMat24",
        "orb-v3-conservative-20-omat": "ORB v3 conservative, 20 neighbours, OMat24",
        "orb-v3-direct-inf-omat": "ORB v3 direct, 120 neighbours, OMat24",
        "orb-v3-direct-20-omat": "ORB v3 direct, 20 neighbours, OMat24",
        "orb-v3-conservative-inf-mpa": "ORB v3 conservative, 120 neighbours, MPtrj+Alexandria",
        "orb-v3-conservative-20-mpa": "ORB v3 conservative, 20 neighbours, MPtrj+Alexandria",
        "orb-v3-direct-inf-mpa": "ORB v3 direct, 120 neighbours, MPtrj+Alexandria",
        "orb-v3-direct-20-mpa": "ORB v3 direct, 20 neighbours, MPtrj+Alexandria",
        "orb-v3-conservative-omol": "ORB v3 conservative, OMol25 molecules (needs charge=, spin=; no stress)",
        "orb-v3-direct-omol": "ORB v3 direct, OMol25 molecules (needs charge=, spin=; no stress)",
    }.items()
})
_register_all("matgl", {  # key: matgl's / Hugging Face name (materialyze/<key>)
    "m3gnet-mp-2021.2.8-pes": ("M3GNet-MP-2021.2.8-PES", "M3GNet-MP-2021.2.8-PES (matgl, Hugging Face materialyze/; "
                                                          "downloaded by matgl)"),
    "m3gnet-pes-matpes-pbe-2025.2": ("M3GNet-PES-MatPES-PBE-2025.2", "M3GNet trained on MatPES-PBE 2025.2 (matgl; "
                                                                      "downloaded by matgl)"),
    "m3gnet-pes-matpes-r2scan-2025.2": ("M3GNet-PES-MatPES-r2SCAN-2025.2", "M3GNet trained on MatPES-r2SCAN 2025.2 "
                                                                            "(matgl; downloaded by matgl)"),
    "tensornet-pes-matpes-pbe-2025.2": ("TensorNet-PES-MatPES-PBE-2025.2", "TensorNet trained on MatPES-PBE 2025.2 "
                                                                            "(matgl; downloaded by matgl)"),
    "tensornet-pes-matpes-r2scan-2025.2": ("TensorNet-PES-MatPES-r2SCAN-2025.2", "TensorNet trained on MatPES-r2SCAN "
                                                                                  "2025.2 (matgl; downloaded by matgl)"),
})
# DeePMD: key = the name in deepmd-kit's pretrained registry; bridges.deepmd adds the names of the
# installed deepmd-kit's registry that are not listed here when it is imported.
_register_all("deepmd", {
    n.lower(): (n, f"DeePMD pretrained {n.upper()} (downloaded by deepmd-kit; multi-task: give head=)")
    for n in ("DPA-3.1-3M", "DPA-3.2-5M", "DPA-3.3-1M", "DPA-2.4-7M", "DPA3-Omol-Large")
})
_register_all("nequix", {  # key: nequix's own name (NequixCalculator.URLS, ~/.cache/nequix/models/<key>.nqx)
    "nequix-mp-1": ("nequix-mp-1", "Nequix MP-1 (MPtrj), 89 elements, cutoff 6 A; JAX-native (downloaded by nequix)"),
    "nequix-mp-1-pft": ("nequix-mp-1-pft", "Nequix MP-1 phonon fine-tuned (MPtrj + MDR phonons), cutoff 6 A; "
                                           "JAX-native (downloaded by nequix)"),
})
_register_all("jax", {
    "emt": ("emt", "JAX-native EMT (ASE's EMT parameters)"),
    "lj": ("lennard_jones", "JAX-native Lennard-Jones (ASE's LennardJones; kwargs sigma, epsilon, rc, ...)"),
    "morse": ("morse", "JAX-native Morse (ASE's MorsePotential; kwargs epsilon, r0, rho0, rcut1, rcut2)"),
})


def family_names(family: str) -> dict[str, Any]:
    """``{jaxpto name: the family's own key}`` of one family's named models."""
    return {name: entry.key for name, entry in KNOWN_MODELS.items() if entry.family == family}


def known_models() -> list[str]:
    """The names :func:`load_model` accepts."""
    return list(KNOWN_MODELS)


def family_module(family: str):
    """The ``bridges.<family>`` module (imported lazily: each imports its model package)."""
    if family not in FAMILIES or FAMILIES[family].kind == "potential":
        raise ValueError(f"{family!r} is not a model family with a bridges module; those are: "
                         f"{', '.join(families('torch') + families('jax'))}")
    return importlib.import_module(f"bridges.{family}")


def detect_family(path) -> str | None:
    """The family of a checkpoint file or directory, from each family's ``looks_like(path)``, or None."""
    for fam in families("jax") + families("torch"):  # JAX families first: their checks import no torch
        try:
            looks_like = getattr(family_module(fam), "looks_like", None)
        except ImportError:  # that family's package is not installed
            continue
        try:
            if looks_like is not None and looks_like(path):
                return fam
        except Exception:
            continue
    return None


def is_jax_native(name_or_path) -> bool:
    """True for models that need no torch: the potentials ("emt", "lj"), the JAX families' names
    and their files; False for torch models and other files."""
    entry = KNOWN_MODELS.get(str(name_or_path).strip().lower())
    if entry is not None:
        return FAMILIES[entry.family].kind in ("jax", "potential")
    if not families("jax") or not os.path.exists(str(name_or_path)):
        return False
    for fam in families("jax"):
        try:
            if family_module(fam).looks_like(name_or_path):
                return True
        except ImportError:
            continue
    return False


def _resolve(name_or_path, family: str | None) -> tuple[str, Any]:
    """``(family, what to load)``: a known name's family and key, or a file's family and its path."""
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str):
        raise TypeError(f"expected a model name or a checkpoint path, got {type(name_or_path).__name__}")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known families: {', '.join(FAMILIES)}")
    entry = KNOWN_MODELS.get(name_or_path.strip().lower())
    if entry is not None:
        if family is not None and family != entry.family:
            raise ValueError(f"model {name_or_path!r} belongs to family {entry.family!r}, not {family!r}")
        return entry.family, name_or_path.strip().lower()
    if os.path.isfile(name_or_path) or os.path.isdir(name_or_path):  # matgl saves a directory
        if family == "jax":
            raise ValueError(f"{name_or_path!r} is a file or directory; the JAX-native potentials are loaded by name")
        fam = family or detect_family(name_or_path)
        if fam is None:
            raise ValueError(f"cannot tell which model family {name_or_path!r} belongs to: give family= one of "
                             f"{', '.join(families('torch') + families('jax'))}")
        return fam, name_or_path
    raise unknown_model_error(name_or_path)


def _load_torch(family: str, name: str, device, dtype, kw) -> "Model":
    from bridges.torch_bridge import as_jax_model, resolve_device, torch_float_dtype

    if device is None or not str(device).startswith("cpu"):
        from bridges import gpu_memory

        gpu_memory.share_gpu_with_torch(device)  # before JAX creates its GPU client (resolve_device asks JAX)
    dev = resolve_device(device)  # tunes the host allocator first when the model runs on the CPU
    tdt = torch_float_dtype(dtype, family)
    efs = family_module(family).load(name, device=dev, dtype=tdt, **kw)
    return as_jax_model(efs, device=dev, dtype=tdt)


def load_model(name_or_path, *, family: str | None = None, device=None, dtype=None, **kw) -> "Model":
    """A force field as a :class:`jaxpto.model.Model`, ready for ``state_from_atoms``/``JaxptoCalculator``.

    Parameters
    ----------
    name_or_path:
        One of :func:`known_models` ("7net-0", "7net-l3i5", "7net-mf-0", "chgnet-0.3.0",
        "chgnet-0.2.0", "chgnet-r2scan", "mace-mp-0b-medium" and the other MACE foundation
        models, "orb-v2", ..., "m3gnet-mp-2021.2.8-pes", ..., "nequix-mp-1", "nequix-mp-1-pft",
        "emt", "lj"), case insensitive, or a checkpoint file/directory (a MACE ``.model``, an ORB
        checkpoint, a matgl ``Potential.save`` directory, a deepmd-kit ``.pth``/``.pt``, a SevenNet
        or CHGNet checkpoint, a Nequix ``.nqx``, a student ``.npz``
        written by ``jaxpto distill``) whose family is detected from its content, or
        given with ``family``. Models downloaded by their package (MACE, ORB, matgl, DeePMD,
        Nequix) use the package's own cache; offline and not cached, loading fails within seconds
        with the URL and how to pass a local file (:class:`bridges._download.ModelUnavailableError`).
    family:
        Model family (:data:`FAMILIES`); optional for known names (must then agree) and for files
        whose family can be detected.
    device:
        Torch device for torch models ("cpu", "cuda", ...). Default: the model follows JAX's
        platform, CUDA when JAX runs on a GPU and torch has CUDA, else the CPU
        (:func:`bridges.torch_bridge.resolve_device`). Ignored by JAX-native models.
    dtype:
        Float dtype of the model (float32 or float64; default: the model's own, float32 for most).
        The JAX-native potentials compute in the dtype of the arrays they are given.
    **kw:
        Passed to the loader: ``modal=`` for 7net-mf-0; ``head=`` for multi-head MACE models;
        ``download_timeout=`` (s) for MACE/matgl downloads; for ORB ``architecture=`` (a local
        checkpoint's architecture name), ``radius=``, ``max_num_neighbors=``, ``conservative=``,
        ``charge=``/``spin=`` (OMol models), ``compile=`` (torch.compile, off by default),
        ``probe_timeout=``; for DeePMD ``head=``, ``type_dict=``, ``fparam=``, ``charge_spin=``,
        ``cache_dir=``; for Nequix ``download_timeout=``, ``edge_fraction=``; the potential's
        parameters for "emt" (``elements``, ``asap_cutoff``), "lj" (``sigma``, ``epsilon``, ``rc``, ``ro``, ``smooth``) and "morse" (``epsilon``, ``r0``,
        ``rho0``, ``rcut1``, ``rcut2``).

    Raises ``ValueError`` for an unknown name (listing the known ones) or family.
    """
    fam, what = _resolve(name_or_path, family)
    kind = FAMILIES[fam].kind
    if kind == "potential":
        from jaxpto import potentials

        return getattr(potentials, KNOWN_MODELS[what].key)(**kw)
    if kind == "jax":
        return family_module(fam).load(what, dtype=dtype, **kw)
    if what in KNOWN_MODELS:
        return _load_torch(fam, what, device, dtype, kw)
    _check_torch_file(what, fam)
    try:
        return _load_torch(fam, what, device, dtype, kw)
    except _UNREADABLE_FILE_ERRORS as exc:  # raised deep in unpickling/unzipping, naming no file
        raise ValueError(f"could not load {what!r} as a {fam} model ({type(exc).__name__}: {exc}); "
                         "check the file and family=") from exc


def ase_calculator(name_or_path, *, family: str | None = None, device=None, **kw):
    """The family's own ASE calculator for a named model or a checkpoint (names as :func:`load_model`).

    SevenNet's ``SevenNetCalculator``, CHGNet's ``CHGNetCalculator``, MACE's ``MACECalculator``,
    ORB's ``ORBCalculator``, matgl's ``PESCalculator`` (stress in eV/A^3), DeePMD's ``DP``; for the
    JAX-native potentials ASE's own ``EMT`` / ``LennardJones`` with the same parameters. ``device``:
    as :func:`load_model` (the calculator runs where the bridged model would).
    """
    fam, what = _resolve(name_or_path, family)
    kind = FAMILIES[fam].kind
    if kind == "potential":
        if what == "emt":
            from ase.calculators.emt import EMT

            return EMT(asap_cutoff=bool(kw.get("asap_cutoff", False)))
        if what == "morse":
            from ase.calculators.morse import MorsePotential

            return MorsePotential(**kw)
        from ase.calculators.lj import LennardJones

        return LennardJones(**kw)
    if kind == "jax":
        return family_module(fam).ase_calculator(what, **kw)
    from bridges.torch_bridge import resolve_device

    return family_module(fam).ase_calculator(what, device=str(resolve_device(device)), **kw)


def close_model_names(name: str, n: int = 3) -> list[str]:
    """Known model names closest to ``name`` (difflib), best first."""
    import difflib

    return difflib.get_close_matches(str(name).strip().lower(), list(KNOWN_MODELS), n=n, cutoff=0.6)


def unknown_model_error(name: str) -> ValueError:
    """The error for a name that is neither a known model nor a file: the closest names, then the list."""
    close = close_model_names(name)
    hint = f"did you mean {', '.join(close[:-1]) + ' or ' if len(close) > 1 else ''}{close[-1]}? " if close else ""
    listing = "\n".join(f"  {n:<34} {entry.description}" for n, entry in KNOWN_MODELS.items())
    return ValueError(f"unknown model {name!r} (and no such file or directory); {hint}Known models:\n{listing}")


def check_model_name(name_or_path) -> None:
    """Raise :func:`unknown_model_error` unless ``name_or_path`` is a known name or an existing path
    (nothing is loaded: for checking a command's arguments before any work starts)."""
    path = os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else str(name_or_path)
    if path.strip().lower() in KNOWN_MODELS or os.path.exists(path):
        return
    raise unknown_model_error(path)


# What torch.load/unpickling raise for a file that is damaged or not a model; the families' own
# ValueError/TypeError (wrong kind of checkpoint, ...) already say what is wrong and pass through.
_UNREADABLE_FILE_ERRORS = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError, KeyError,
                           AttributeError, IndexError, OverflowError)

# torch.save writes a zip archive (torch >= 1.6) or, in its legacy format, a pickle stream.
_TORCH_FILE_MAGIC = (b"PK\x03\x04", b"\x80")
_TORCH_FILE_FAMILIES = ("sevenn", "chgnet", "mace", "orb")  # deepmd also reads .pb/.dp/.yaml, matgl directories


def _check_torch_file(path: str, family: str) -> None:
    """A quick look at the first bytes before the family's package is imported (seconds) and its
    loader fails deep inside unpickling: a file of a family that loads ``torch.save`` files must
    start like one."""
    if family not in _TORCH_FILE_FAMILIES or not os.path.isfile(path):
        return
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise ValueError(f"{path!r} is empty (0 bytes): not a {family} model file")
    if not head.startswith(_TORCH_FILE_MAGIC):
        raise ValueError(f"{path!r} is not a {family} model file: a {family} checkpoint is a torch.save file "
                         f"(a zip archive or a pickle), this one starts with {head!r}")
