"""jaxpto: JAX-native, jit-compiled, replica-batched molecular dynamics for ML force fields.

Units are ASE's everywhere: eV, Angstrom, amu, ASE time units, stress in eV/A^3 (ASE sign).
Float64 is used when ``jax_enable_x64`` is on (verification); float32 otherwise.
"""

__version__ = "0.1.0"

from jaxpto import host_allocator  # noqa: E402,F401  (tune() is called where torch models are loaded)
from jaxpto.calculator import JaxptoCalculator  # noqa: E402
from jaxpto.model import Model, ModelOutput, energy_model, site_energy_model  # noqa: E402
from jaxpto.simulate import run, state_from_atoms  # noqa: E402
from jaxpto.state import MDState  # noqa: E402

__all__ = ["JaxptoCalculator", "MDState", "Model", "ModelOutput", "energy_model", "site_energy_model", "run", "state_from_atoms",
           "load_model", "known_models", "__version__"]


def __getattr__(name):
    # Re-exports of bridges.registry, imported on first use: importing the core never imports bridges.
    if name in ("load_model", "known_models"):
        from bridges import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'jaxpto' has no attribute {name!r}")
