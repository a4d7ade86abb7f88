"""Model bridges: every model family's knowledge, and nothing else's.

Layers: the core (``jaxpto.model``, ``state``, ``neighbors``, ``integrators``, ``potentials``,
``simulate``) <- ``bridges`` <- the ASE layer (``jaxpto.md``), workflows, CLI, benchmarks. Nothing
here imports ``jaxpto.md`` or the workflows; the core never imports ``bridges``.

* :mod:`bridges.registry` -- names and files -> families: ``load_model`` (re-exported as
  ``jaxpto.load_model``), ``known_models``, ``ase_calculator`` (each family's own ASE calculator);
* :mod:`bridges.resolver` -- ``from_calculator(calc)``: an ASE calculator -> the engine's model
  (JAX twins of ASE's potentials, the calculator's own network on the bridge, ...);
* :mod:`bridges.torch_bridge` -- the DLPack bridge (``as_jax_model``, ``edges_from_neighbors``) and
  the one dtype/device rule of torch models;
* :mod:`bridges.graph` -- the batched graph every torch family builds from the engine's edges;
* :mod:`bridges._download` -- the one offline probe (fails within seconds, names URL and remedy);
* one module per family: :mod:`bridges.sevenn`, :mod:`bridges.chgnet`, :mod:`bridges.mace`,
  :mod:`bridges.orb`, :mod:`bridges.matgl`, :mod:`bridges.deepmd`.

Imports are lazy so that ``import bridges`` imports neither torch nor any model package.
"""

from __future__ import annotations

__all__ = ["as_jax_model", "load_model", "known_models", "ase_calculator", "from_calculator",
           "calculator_identity", "ResolvedModel"]

_HOMES = {"as_jax_model": "torch_bridge", "load_model": "registry", "known_models": "registry",
          "ase_calculator": "registry", "from_calculator": "resolver", "calculator_identity": "resolver",
          "ResolvedModel": "resolver"}


def __getattr__(name):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"bridges.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'bridges' has no attribute {name!r}")
