"""Small randomly initialised MACE models of the real architectures, for the MACE bridge tests.

No MACE weights can be downloaded here, so the tests build MACE-MP-0b's architecture
(``ScaleShiftMACE`` with ``RealAgnosticResidualInteractionBlock``s, ZBL pair repulsion and the
Agnesi distance transform, as in ``mace_agnesi_medium.model``) at a tiny width, give it random
weights, and save it whole with ``torch.save`` as mace-torch's own ``.model`` files are saved.
"""

from __future__ import annotations

import numpy as np
import torch

# Free-atom reference energies (eV), arbitrary but distinct: they enter the total energy as MACE's
# E0s do, so a wrong one-hot order would show up in the energy.
E0 = {8: -4.93, 22: -7.81, 82: -3.70}


def build_mace(*, zs=(8, 22, 82), r_max=5.0, heads=None, seed=0, dtype=torch.float64,
               hidden="16x0e+16x1o", num_interactions=2, correlation=3, max_ell=2,
               pair_repulsion=True, distance_transform="Agnesi"):
    """A random ``ScaleShiftMACE`` (MACE-MP-0b's building blocks, small width) in ``dtype``.

    ``heads``: list of head names for a multi-head model (per-head E0s, scale and shift differ,
    so the heads give different energies). MACE's own random initialisation already gives forces
    and stresses of realistic size on PbTiO3 (~1 eV/A, ~5e-2 eV/A^3).
    """
    from e3nn import o3
    from mace import modules

    heads = list(heads) if heads else None
    n_heads = len(heads) if heads else 1
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # MACE builds its buffers in the default dtype
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        e0 = np.array([[E0[z] + 0.3 * h for z in zs] for h in range(n_heads)])
        scale = [1.3 + 0.4 * h for h in range(n_heads)]
        shift = [0.1 - 0.2 * h for h in range(n_heads)]
        kw = dict(
            r_max=r_max,
            num_bessel=8,
            num_polynomial_cutoff=5,
            max_ell=max_ell,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=num_interactions,
            num_elements=len(zs),
            hidden_irreps=o3.Irreps(hidden),
            MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=e0 if heads else e0[0],
            avg_num_neighbors=float(rng.uniform(8.0, 12.0)),
            atomic_numbers=list(zs),
            correlation=correlation,
            gate=torch.nn.functional.silu,
            pair_repulsion=pair_repulsion,
            distance_transform=distance_transform,
            radial_MLP=[16, 16, 16],
            radial_type="bessel",
            atomic_inter_scale=scale if heads else scale[0],
            atomic_inter_shift=shift if heads else shift[0],
        )
        if heads:
            kw["heads"] = heads
        model = modules.ScaleShiftMACE(**kw)
    finally:
        torch.set_default_dtype(prev)
    return model.eval()


def save_mace(model, path) -> str:
    """``torch.save`` the whole module, as mace-torch's ``.model`` files are written."""
    torch.save(model, str(path))
    return str(path)
