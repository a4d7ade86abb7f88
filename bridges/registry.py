"""``load_model``: a named force field (or a checkpoint file) as a :class:`jaxpto.model.Model`.

Also available as ``jaxpto.load_model``. Torch models go through the DLPack bridge
(:func:`bridges.torch_bridge.as_jax_model`); the JAX-native potentials are returned as they are.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no runtime import: jaxpto/__init__ imports this module (circular otherwise)
    from jaxpto.model import Model

# name -> (family, description)
KNOWN_MODELS: dict[str, tuple[str, str]] = {
    "7net-0": ("sevenn", "SevenNet-0 (11Jul2024), 89 elements, cutoff 5 A"),
    "7net-l3i5": ("sevenn", "SevenNet-l3i5, 89 elements, cutoff 5 A (slower, lmax 3)"),
    "7net-mf-0": ("sevenn", "SevenNet-MF-0, multi-fidelity: modal='PBE' (default) or 'R2SCAN'"),
    "chgnet-0.3.0": ("chgnet", "CHGNet 0.3.0 (MPtrj)"),
    "chgnet-0.2.0": ("chgnet", "CHGNet 0.2.0 (MPtrj)"),
    "chgnet-r2scan": ("chgnet", "CHGNet r2SCAN fine-tune"),
    "mace-mp-0b-medium": ("mace", "MACE-MP-0b medium (mace_agnesi_medium.model; downloaded by mace-torch)"),
    "mace-mp-0b-small": ("mace", "MACE-MP-0B-SMALL (downloaded by mace-torch)"),
    "mace-mp-0-small": ("mace", "MACE-MP-0-SMALL (downloaded by mace-torch)"),
    "mace-mp-0-medium": ("mace", "MACE-MP-0-MEDIUM (downloaded by mace-torch)"),
    "mace-mp-0-large": ("mace", "MACE-MP-0-LARGE (downloaded by mace-torch)"),
    "mace-mp-0b2-small": ("mace", "MACE-MP-0B2-SMALL (downloaded by mace-torch)"),
    "mace-mp-0b2-medium": ("mace", "MACE-MP-0B2-MEDIUM (downloaded by mace-torch)"),
    "mace-mp-0b2-large": ("mace", "MACE-MP-0B2-LARGE (downloaded by mace-torch)"),
    "mace-mp-0b3-medium": ("mace", "MACE-MP-0B3-MEDIUM (downloaded by mace-torch)"),
    "mace-mpa-0-medium": ("mace", "MACE-MPA-0-MEDIUM (downloaded by mace-torch)"),
    "mace-omat-0-small": ("mace", "MACE-OMAT-0-SMALL (downloaded by mace-torch)"),
    "mace-omat-0-medium": ("mace", "MACE-OMAT-0-MEDIUM (downloaded by mace-torch)"),
    "mace-matpes-pbe-0": ("mace", "MACE-MATPES-PBE-0 (downloaded by mace-torch)"),
    "mace-matpes-r2scan-0": ("mace", "MACE-MATPES-R2SCAN-0 (downloaded by mace-torch)"),
    "mace-off23-small": ("mace", "MACE-OFF23-SMALL (downloaded by mace-torch)"),
    "mace-off23-medium": ("mace", "MACE-OFF23-MEDIUM (downloaded by mace-torch)"),
    "mace-off23-large": ("mace", "MACE-OFF23-LARGE (downloaded by mace-torch)"),
    "orb-v2": ("orb", "ORB v2, direct forces (downloaded by orb-models)"),
    "orb-d3-v2": ("orb", "ORB v2 trained on D3-corrected data, direct, 20 neighbours"),
    "orb-d3-sm-v2": ("orb", "ORB v2 small (10 layers), D3-corrected data, direct"),
    "orb-d3-xs-v2": ("orb", "ORB v2 extra small (5 layers), D3-corrected data, direct"),
    "orb-mptraj-only-v2": ("orb", "ORB v2 trained on MPtrj only, direct"),
    "orb-v3-conservative-inf-omat": ("orb", "ORB v3 conservative (autograd forces/stress), 120 neighbours, OMat24"),
    "orb-v3-conservative-20-omat": ("orb", "ORB v3 conservative, 20 neighbours, OMat24"),
    "orb-v3-direct-inf-omat": ("orb", "ORB v3 direct, 120 neighbours, OMat24"),
    "orb-v3-direct-20-omat": ("orb", "ORB v3 direct, 20 neighbours, OMat24"),
    "orb-v3-conservative-inf-mpa": ("orb", "ORB v3 conservative, 120 neighbours, MPtrj+Alexandria"),
    "orb-v3-conservative-20-mpa": ("orb", "ORB v3 conservative, 20 neighbours, MPtrj+Alexandria"),
    "orb-v3-direct-inf-mpa": ("orb", "ORB v3 direct, 120 neighbours, MPtrj+Alexandria"),
    "orb-v3-direct-20-mpa": ("orb", "ORB v3 direct, 20 neighbours, MPtrj+Alexandria"),
    "orb-v3-conservative-omol": ("orb", "ORB v3 conservative, OMol25 molecules (needs charge=, spin=; no stress)"),
    "orb-v3-direct-omol": ("orb", "ORB v3 direct, OMol25 molecules (needs charge=, spin=; no stress)"),
    "m3gnet-mp-2021.2.8-pes": ("matgl", "M3GNet-MP-2021.2.8-PES (downloaded by matgl)"),
    "m3gnet-pes-matpes-pbe-2025.2": ("matgl", "M3GNet MatPES PBE 2025.2 (downloaded by matgl)"),
    "m3gnet-pes-matpes-r2scan-2025.2": ("matgl", "M3GNet MatPES r2SCAN 2025.2 (downloaded by matgl)"),
    "tensornet-pes-matpes-pbe-2025.2": ("matgl", "TensorNet MatPES PBE 2025.2 (downloaded by matgl)"),
    "tensornet-pes-matpes-r2scan-2025.2": ("matgl", "TensorNet MatPES r2SCAN 2025.2 (downloaded by matgl)"),
    "dpa-3.1-3m": ("deepmd", "DeePMD pretrained DPA-3.1-3M (downloaded by deepmd-kit; multi-task: give head=)"),
    "dpa-3.2-5m": ("deepmd", "DeePMD pretrained DPA-3.2-5M (downloaded by deepmd-kit; multi-task: give head=)"),
    "dpa-3.3-1m": ("deepmd", "DeePMD pretrained DPA-3.3-1M (downloaded by deepmd-kit; multi-task: give head=)"),
    "dpa-2.4-7m": ("deepmd", "DeePMD pretrained DPA-2.4-7M (downloaded by deepmd-kit; multi-task: give head=)"),
    "dpa3-omol-large": ("deepmd", "DeePMD pretrained DPA3-OMOL-LARGE (downloaded by deepmd-kit; multi-task: give head=)"),
    "emt": ("jax", "JAX-native EMT (ASE's EMT parameters)"),
    "lj": ("jax", "JAX-native Lennard-Jones (ASE's LennardJones; kwargs sigma, epsilon, rc, ...)"),
}
# Torch families: each has a module ``bridges.<family>`` with
#   load(name_or_path, *, device, dtype, **kw) -> torch EFS object (see bridges.torch_bridge)
#   looks_like(path) -> bool          (optional: is this file a checkpoint of this family?)
#   efs_from_calculator(calc) -> EFS | None   (optional: reuse an ASE calculator's loaded model)
TORCH_FAMILIES = ("sevenn", "chgnet", "mace", "orb", "matgl", "deepmd")
FAMILIES = TORCH_FAMILIES + ("jax", "student")


def _is_student_file(path) -> bool:
    """A JAX-native student written by ``jaxpto distill`` (:mod:`jaxpto.potentials.student`)."""
    from jaxpto.potentials.student import looks_like_student

    return looks_like_student(str(path))


def register(name: str, family: str, description: str) -> None:
    """Add a named model (bridge modules call this for their extra names)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known families: {', '.join(FAMILIES)}")
    KNOWN_MODELS[name.lower()] = (family, description)


def family_module(family: str):
    """The ``bridges.<family>`` module (imported lazily: each imports its model package)."""
    import importlib

    if family not in TORCH_FAMILIES:
        raise ValueError(f"{family!r} is not a torch model family; torch families: {', '.join(TORCH_FAMILIES)}")
    return importlib.import_module(f"bridges.{family}")


def detect_family(path: str) -> str | None:
    """The family of a checkpoint file, from each bridge module's ``looks_like(path)``, or None."""
    for fam in TORCH_FAMILIES:
        try:
            mod = family_module(fam)
        except ImportError:  # package of that family not installed
            continue
        looks_like = getattr(mod, "looks_like", None)
        if looks_like is not None:
            try:
                if looks_like(path):
                    return fam
            except Exception:
                continue
    return None


def is_jax_native(name_or_path) -> bool:
    """True for the JAX-native potentials' names ("emt", "lj") and student files; False for torch models."""
    if KNOWN_MODELS.get(str(name_or_path).strip().lower(), ("",))[0] == "jax":
        return True
    return os.path.isfile(str(name_or_path)) and _is_student_file(name_or_path)


def known_models() -> list[str]:
    """The names :func:`load_model` accepts."""
    return list(KNOWN_MODELS)


def _default_torch_device(device):
    """Explicit device, else CUDA when JAX runs on a GPU and torch has CUDA, else CPU."""
    if device is not None:
        return str(device)
    import jax
    import torch

    if jax.default_backend() in ("gpu", "cuda", "rocm") and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _load_torch(family: str, name: str, device, dtype, kw) -> "Model":
    from bridges.torch_bridge import _torch_dtype, as_jax_model
    from jaxpto import host_allocator

    if device is None or str(device).startswith("cpu"):
        host_allocator.tune()  # before JAX starts its threads (below); see jaxpto/host_allocator.py
    dev = _default_torch_device(device)
    tdt = _torch_dtype(dtype)
    efs = family_module(family).load(name, device=dev, dtype=tdt, **kw)
    return as_jax_model(efs, device=dev, dtype=tdt)


def load_model(name_or_path, *, family: str | None = None, device=None, dtype=None, **kw) -> "Model":
    """A force field as a :class:`jaxpto.model.Model`, ready for ``state_from_atoms``/``JaxptoCalculator``.

    Parameters
    ----------
    name_or_path:
        One of :func:`known_models` ("7net-0", "7net-l3i5", "7net-mf-0", "chgnet-0.3.0",
        "chgnet-0.2.0", "chgnet-r2scan", "mace-mp-0b-medium" and the other MACE foundation
        models, "orb-v2", ..., "m3gnet-mp-2021.2.8-pes", ..., "emt", "lj"), case insensitive, or a
        checkpoint file/directory (a MACE ``.model``, an ORB checkpoint, a matgl ``Potential.save``
        directory, a deepmd-kit ``.pth``/``.pt``, a SevenNet or CHGNet checkpoint, a student
        ``.npz`` written by ``jaxpto distill``) whose family is detected from its content, or
        given with ``family``. Models downloaded by their package
        (MACE, ORB, matgl) use the package's own cache; offline and not cached, loading fails
        within seconds with the URL and how to pass a local file.
    family:
        Model family: one of "sevenn", "chgnet", "mace", "orb", "matgl", "deepmd"; optional for
        known names (must then agree) and for files whose family can be detected.
    device:
        Torch device for torch models ("cpu", "cuda", ...). Default: CUDA when JAX runs on a
        GPU and torch has CUDA, else CPU. Ignored by the JAX-native potentials.
    dtype:
        Torch float dtype of torch models (default: the model's own, float32). The JAX-native
        potentials compute in the dtype of the arrays they are given.
    **kw:
        Passed to the loader: ``modal=`` for 7net-mf-0; ``head=`` for multi-head MACE models;
        ``download_timeout=`` (s) for MACE/matgl downloads; for ORB ``architecture=`` (a local
        checkpoint's architecture name), ``radius=``, ``max_num_neighbors=``, ``conservative=``,
        ``charge=``/``spin=`` (OMol models), ``compile=`` (torch.compile, off by default),
        ``probe_timeout=``; for DeePMD ``head=``, ``type_dict=``, ``fparam=``, ``charge_spin=``,
        ``cache_dir=``; the potential's parameters for "emt"
        (``elements``, ``asap_cutoff``) and "lj" (``sigma``, ``epsilon``, ``rc``, ``ro``, ``smooth``).

    Raises ``ValueError`` for an unknown name (listing the known ones) or family.
    """
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str):
        raise TypeError(f"load_model expects a model name or a checkpoint path, got {type(name_or_path).__name__}")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known families: {', '.join(FAMILIES)}")
    key = name_or_path.strip().lower()
    if key in KNOWN_MODELS:
        fam = KNOWN_MODELS[key][0]
        if family is not None and family != fam:
            raise ValueError(f"model {name_or_path!r} belongs to family {fam!r}, not {family!r}")
        if fam == "jax":
            from jaxpto import potentials
            if key == "emt":
                return potentials.emt(**kw)
            return potentials.lennard_jones(**kw)
        return _load_torch(fam, key, device, dtype, kw)
    if os.path.isfile(name_or_path) or os.path.isdir(name_or_path):  # matgl saves a directory
        if family == "jax":
            raise ValueError(f"{name_or_path!r} is a file or directory; the JAX-native potentials are loaded by name")
        if family == "student" or (family is None and _is_student_file(name_or_path)):
            from jaxpto.potentials.student import load_student

            return load_student(name_or_path)
        fam = family or detect_family(name_or_path)
        if fam is None:
            raise ValueError(f"cannot tell which model family {name_or_path!r} belongs to: give "
                             f"family= one of {', '.join(TORCH_FAMILIES)}")
        return _load_torch(fam, name_or_path, device, dtype, kw)
    listing = "\n".join(f"  {n:<34} {d}" for n, (_, d) in KNOWN_MODELS.items())
    raise ValueError(f"unknown model {name_or_path!r} (and no such file or directory). Known models:\n{listing}")
