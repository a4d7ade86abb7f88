"""The one model resolver: an ASE calculator -> the engine's :class:`~jaxpto.model.Model` for it.

``from_calculator(calc)`` is how the ASE layer (``jaxpto.md``) and the workflows turn whatever
``atoms.calc`` holds into a compiled model, without knowing any model family:

* a :class:`~jaxpto.calculator.JaxptoCalculator`: its own model (kind ``"jaxpto"``);
* ASE's ``EMT``, ``LennardJones`` and ``MorsePotential``: their JAX twins from
  :mod:`jaxpto.potentials` with the same parameters (kind ``"twin"``);
* a model package's own calculator (SevenNet, CHGNet, MACE, ORB, matgl, DeePMD): the family's
  ``efs_from_calculator(calc)`` on the calculator's *already loaded* network, put on the DLPack
  bridge (kind ``"bridge"``);
* a JAX-native family's calculator: the family's ``model_from_calculator(calc)`` (kind ``"native"``);
* anything else: ``None`` (the caller runs the calculator itself, e.g. through a host callback).

Only exact calculator classes are recognised (a subclass may compute something else; a
``JaxptoCalculator`` subclass still holds a jaxpto model), and a family's module, with its
package, is imported only when the calculator's class belongs to that package, so
``from_calculator(EMT())`` never imports torch.

The identity (:func:`calculator_identity`) says whether two calculators compute the same thing
(same class, same loaded network or the same parameters, same settings such as a head or a
stress unit): replicas may share one model only when their calculators' identities are equal.
Equal identities imply equal results; different identities need not mean different results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

from jaxpto.model import Model

__all__ = ["ResolvedModel", "Same", "from_calculator", "calculator_identity", "calculator_family"]


class Same:
    """An identity part that is equal only to the very same object (a loaded network, a model)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other) -> bool:
        return isinstance(other, Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __repr__(self) -> str:
        return f"Same({type(self.obj).__name__} at {id(self.obj):#x})"


@dataclass(frozen=True)
class ResolvedModel:
    """What :func:`from_calculator` found: the model, how it was obtained, its identity and a label.

    ``kind``: ``"jaxpto"``, ``"twin"``, ``"bridge"`` or ``"native"`` (see the module docstring).
    """

    model: Model
    kind: str
    identity: Hashable
    description: str


# --------------------------------------------------------------------------- ASE's own potentials


def _twin_parameters(calc) -> tuple[str, dict] | None:
    """``(potential, parameters)`` of ASE's EMT / LennardJones / MorsePotential (exact classes), with
    ASE's defaults filled in; None for anything else."""
    from ase.calculators.emt import EMT
    from ase.calculators.lj import LennardJones
    from ase.calculators.morse import MorsePotential

    if type(calc) not in (EMT, LennardJones, MorsePotential):
        return None
    p = dict(calc.parameters)
    if type(calc) is EMT:
        return "emt", {"asap_cutoff": bool(p.get("asap_cutoff", False))}
    if type(calc) is LennardJones:
        sigma = float(p.get("sigma", 1.0))
        rc = 3.0 * sigma if p.get("rc") is None else float(p["rc"])  # ASE's defaults
        ro = 0.66 * rc if p.get("ro") is None else float(p["ro"])
        return "lennard_jones", {"sigma": sigma, "epsilon": float(p.get("epsilon", 1.0)), "rc": rc, "ro": ro,
                                 "smooth": bool(p.get("smooth", False))}
    return "morse", {"epsilon": float(p.get("epsilon", 1.0)), "r0": float(p.get("r0", 1.0)),
                     "rho0": float(p.get("rho0", 6.0)), "rcut1": float(p.get("rcut1", 1.9)),
                     "rcut2": float(p.get("rcut2", 2.7))}


#: The twin's options for the results its ASE calculator stores beyond energy/forces/stress
#: (ASE's EMT and MorsePotential: per-atom ``energies``; LennardJones also per-atom ``stresses``).
_TWIN_EXTRAS = {"emt": {"energies": True}, "lennard_jones": {"extras": ("energies", "stresses")},
                "morse": {"extras": ("energies",)}}


def _twin_identity(calc, params: dict) -> Hashable:
    return type(calc), tuple(sorted(params.items()))


def _twin(calc) -> ResolvedModel | None:
    found = _twin_parameters(calc)
    if found is None:
        return None
    from jaxpto import potentials

    potential, params = found
    # What else ASE's calculator reports every call, computed by the twin in the same pass.
    model = getattr(potentials, potential)(**params, **_TWIN_EXTRAS.get(potential, {}))
    return ResolvedModel(model, "twin", _twin_identity(calc, params),
                         f"JAX {potential}({params}) for ASE's {type(calc).__name__}")


# --------------------------------------------------------------------------- model families


def calculator_family(calc) -> str | None:
    """The family whose package the calculator's class belongs to (``bridges.registry.FAMILIES``), or None."""
    from bridges.registry import FAMILIES

    module = type(calc).__module__ or ""
    for family, info in FAMILIES.items():
        if info.package and (module == info.package or module.startswith(info.package + ".")):
            return family
    return None


def _family_module(family: str):
    """The family's bridges module, or None while it is not installed in this checkout."""
    from bridges.registry import family_module

    try:
        return family_module(family)
    except ModuleNotFoundError as exc:
        if exc.name == f"bridges.{family}":
            return None
        raise


def _from_family(calc, family: str) -> ResolvedModel | None:
    from bridges.registry import FAMILIES

    module = _family_module(family)
    if module is None:
        return None
    identity = module.model_identity(calc)
    if identity is None:
        return None
    if FAMILIES[family].kind == "jax":
        model = module.model_from_calculator(calc)
        if model is None:
            return None
        return ResolvedModel(model, "native", (type(calc), identity), f"{model.name} ({family}, JAX-native)")
    efs = module.efs_from_calculator(calc)
    if efs is None:
        return None
    from bridges.torch_bridge import as_jax_model

    model = as_jax_model(efs, device=str(efs.device), dtype=efs.dtype)
    return ResolvedModel(model, "bridge", (type(calc), identity),
                         f"{efs.name} ({family} on the torch bridge, {efs.device}, {str(efs.dtype).removeprefix('torch.')})")


# --------------------------------------------------------------------------- the resolver


def from_calculator(calc) -> ResolvedModel | None:
    """The engine's model for an ASE calculator, or None when no family knows the calculator.

    See the module docstring for what is recognised. Exceptions a family's package raises on an
    unusual calculator are not swallowed here (``jaxpto.md`` reports them and runs the calculator
    itself).
    """
    from jaxpto.calculator import JaxptoCalculator

    if isinstance(calc, JaxptoCalculator):
        return ResolvedModel(calc.model, "jaxpto", (JaxptoCalculator, Same(calc.model)),
                             f"{calc.model.name} (JaxptoCalculator)")
    twin = _twin(calc)
    if twin is not None:
        return twin
    family = calculator_family(calc)
    return None if family is None else _from_family(calc, family)


def calculator_identity(calc) -> Hashable | None:
    """What :func:`from_calculator` would give as ``identity``, without building the model; None
    for calculators it does not know. Equal identities: the calculators compute the same thing."""
    from jaxpto.calculator import JaxptoCalculator

    if isinstance(calc, JaxptoCalculator):
        return JaxptoCalculator, Same(calc.model)
    found = _twin_parameters(calc)
    if found is not None:
        return _twin_identity(calc, found[1])
    family = calculator_family(calc)
    module = None if family is None else _family_module(family)
    identity = None if module is None else module.model_identity(calc)
    return None if identity is None else (type(calc), identity)
