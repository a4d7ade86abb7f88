"""PyTorch model bridges: any "torch EFS" object becomes a :class:`jaxpto.model.Model`.

* :func:`bridges.torch_bridge.as_jax_model` -- the DLPack bridge (``buffer_callback``);
* :func:`bridges.registry.load_model` -- named models (``"7net-0"``, ``"chgnet-0.3.0"``, ``"emt"``, ...),
  re-exported as ``jaxpto.load_model``;
* :mod:`bridges.sevenn` -- SevenNet (7net-0, 7net-l3i5, 7net-mf-0) as a torch EFS.

Imports are lazy so that ``import jaxpto`` does not import torch.
"""

from __future__ import annotations

__all__ = ["as_jax_model", "load_model", "known_models"]


def __getattr__(name):
    if name == "as_jax_model":
        from bridges.torch_bridge import as_jax_model
        return as_jax_model
    if name in ("load_model", "known_models"):
        from bridges import registry
        return getattr(registry, name)
    raise AttributeError(f"module 'bridges' has no attribute {name!r}")
