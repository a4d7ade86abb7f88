"""The "student" family: JAX-native students written by ``jaxpto distill`` (one ``.npz`` file each).

The model itself lives in the core (:mod:`jaxpto.potentials.student`); this module only tells
the registry how to recognise and load a student file, the contract of a ``"jax"`` family
(:mod:`bridges.registry`). Students are loaded by file, never by name. Units are ASE's.
"""

from __future__ import annotations


def looks_like(path) -> bool:
    """True for an ``.npz`` whose JSON header says it is a jaxpto student (reads the header only)."""
    from jaxpto.potentials.student import looks_like_student

    return looks_like_student(str(path))


def load(path, *, dtype=None, **kw):
    """The student in ``path`` as a :class:`jaxpto.model.Model` (format and checksum verified).

    The student computes in the dtype of the arrays it is given (float32 by default, float64
    under ``jax_enable_x64``), like the JAX-native potentials, so ``dtype`` selects nothing.
    """
    if kw:
        raise TypeError(f"a student file takes no loader options, got {sorted(kw)}")
    from jaxpto.potentials.student import load_student

    return load_student(str(path))


def model_from_calculator(calc):
    """Students have no ASE calculator of their own (their calculator is jaxpto's): never one."""
    return None


def model_identity(calc):
    return None


def ase_calculator(path, **kw):
    """A student's ASE calculator is :class:`jaxpto.JaxptoCalculator` on the loaded student (it has
    no other); the PTO-test's ASE speed side then times ASE's integrator on it."""
    from jaxpto.calculator import JaxptoCalculator

    return JaxptoCalculator(load(path))
