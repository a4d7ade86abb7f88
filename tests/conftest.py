"""Shared test fixtures. Every test runs in float64 (JAX x64) unless it says otherwise."""

import os

import jax

jax.config.update("jax_enable_x64", True)
# Opt-in persistent compilation cache for repeated local runs (JAXPTO_TEST_JIT_CACHE=<dir>).
# Off by default: a cache directory shared by concurrent processes crashed a run here
# (segfault inside jax's cache writer), and CI runs cold anyway.
if os.environ.get("JAXPTO_TEST_JIT_CACHE"):
    jax.config.update("jax_compilation_cache_dir", os.environ["JAXPTO_TEST_JIT_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ase.build import bulk  # noqa: E402

from jaxpto.model import energy_model  # noqa: E402
from jaxpto.neighbors import pair_vectors  # noqa: E402


def smooth_lj_model(epsilon=0.4, sigma=2.3, cutoff=6.0, onset=4.5):
    """A smooth (C1) Lennard-Jones used to give ASE and jaxpto identical forces in integrator tests."""

    def energy(positions, cell, numbers, nbrs):
        d, mask = pair_vectors(nbrs, positions, cell)
        r2 = jnp.where(mask, jnp.sum(d * d, -1), 1.0)
        r = jnp.sqrt(r2)
        s6 = (sigma**2 / r2) ** 3
        u = 4 * epsilon * (s6 * s6 - s6)
        x = jnp.clip((r - onset) / (cutoff - onset), 0.0, 1.0)
        fc = 1 - x * x * (3 - 2 * x)
        return 0.5 * jnp.sum(jnp.where(mask & (r < cutoff), u * fc, 0.0))

    return energy_model(energy, cutoff=cutoff, name="smooth-lj")


@pytest.fixture(scope="session")
def lj_model():
    return smooth_lj_model()


@pytest.fixture
def cu_atoms():
    """A rattled, sheared 32-atom copper cell (upper-triangular cell, as NPT needs)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    cell = atoms.cell.array.copy()
    cell[0, 1] = 0.15
    cell[1, 2] = -0.1
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.05, seed=1)
    return atoms


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test file.

    Each XLA CPU executable keeps a few memory mappings; the whole suite compiles thousands
    of programs in one process, and a run crashed inside XLA's compiler (segfault) once the
    process had accumulated them. Clearing JAX's caches (and jaxpto's, which hold jitted
    functions) between files keeps the process far below the kernel's map limit.
    """
    yield
    import gc

    from jaxpto import simulate, state

    simulate._chunk_program.cache_clear()
    state.make_force_fn.cache_clear()
    jax.clear_caches()
    gc.collect()
