"""SevenNet (7net-0, 7net-l3i5, 7net-mf-0) as a torch EFS object (see :mod:`bridges.torch_bridge`).

SevenNet is called directly, without its ASE calculator: its input graph is built on the torch
side from the engine's edges (``edge_vec = pos[dst] - pos[src] + shift @ cell``, the gradient
variable of SevenNet's ``ForceStressOutputFromEdge``), all replicas as one batched graph
(``set_is_batch_data(True)``). SevenNet returns the stress as ``-(1/V) sum r (x) dE/dr`` in eV/A^3
in the order xx, yy, zz, xy, yz, zx; it is negated and unfolded here to ASE's 3x3 (positive in
tension), as SevenNet's calculator does (``-stress[[0, 1, 2, 4, 5, 3]]`` in Voigt order).

Weights come from the sevenn wheel (``sevenn/pretrained_potentials``), so no download is needed.
"""

from __future__ import annotations

import torch

from bridges.torch_bridge import resolve_device

SEVENNET_MODELS = ("7net-0", "7net-l3i5", "7net-mf-0")


class SevenNetEFS:
    """A SevenNet checkpoint as a torch EFS (``cutoff``, ``elements``, ``name``, ``__call__``).

    Parameters
    ----------
    model:
        A pretrained name ("7net-0", "7net-l3i5", "7net-mf-0", or any name SevenNet knows) or a
        checkpoint path.
    modal:
        Fidelity head of multi-fidelity models (7net-mf-0: "PBE" (default) or "R2SCAN", case
        insensitive); must be ``None`` for single-fidelity models.
    device:
        Torch device ("cpu", "cuda", "cuda:1"); default CUDA when available.
    dtype:
        Torch float dtype of the model: float32 only (SevenNet's embedding is float32-only);
        float64 JAX arrays are accepted and cast.
    """

    def __init__(self, model: str = "7net-0", *, modal: str | None = None, device=None, dtype=None,
                 enable_cueq: bool = False):
        import sevenn._keys as KEY
        import sevenn.util as util

        self._KEY = KEY
        self.dtype = torch.float32 if dtype is None else dtype
        if self.dtype != torch.float32:
            # SevenNet's one-hot node embedding hard-codes `.float()`, so a float64 model fails
            # inside e3nn ("both inputs should have same dtype"); refuse it here instead.
            raise ValueError(f"SevenNet runs in float32 only, got dtype={self.dtype}; the engine may still "
                             "integrate in float64 (the bridge casts the inputs and results)")
        cp = util.load_checkpoint(str(model))
        net = cp.build_model(enable_cueq=enable_cueq) if enable_cueq else cp.build_model()
        net.set_is_batch_data(True)
        self.device = resolve_device(device)
        net = net.to(self.device)
        net.eval()
        self.model = net
        self.cutoff = float(cp.config[KEY.CUTOFF])
        type_map = cp.config[KEY.TYPE_MAP]
        self.elements = frozenset(int(z) for z in type_map)
        self._z_known = torch.zeros(128, dtype=torch.bool, device=self.device)
        self._z_known[torch.tensor(sorted(self.elements), device=self.device)] = True

        modal_map = getattr(net, "modal_map", None) or {}
        self.modal = None
        if modal_map:
            heads = list(modal_map)
            if modal is None:
                modal = "PBE" if "PBE" in heads else heads[0]
            match = [h for h in heads if h.lower() == str(modal).lower()]
            if not match:
                raise ValueError(f"unknown modal {modal!r} for {model}; available: {heads}")
            self.modal = match[0]
        elif modal is not None:
            raise ValueError(f"{model} is a single-fidelity model; modal={modal!r} is not accepted")
        self.name = str(model) + (f"[{self.modal}]" if self.modal else "")

    def to(self, device):
        self.device = torch.device(device)
        self.model = self.model.to(self.device)
        self._z_known = self._z_known.to(self.device)
        return self

    def __call__(self, positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask):
        from sevenn.atom_graph_data import AtomGraphData

        KEY = self._KEY
        dev, fdt = self.device, self.dtype
        R, N = positions.shape[0], positions.shape[1]
        pos = positions.to(device=dev, dtype=fdt).reshape(R * N, 3)
        cell = cell.to(device=dev, dtype=fdt)
        numbers = numbers.to(device=dev, dtype=torch.int64)
        if bool((numbers >= 128).any()) or not bool(self._z_known[numbers.clamp(0, 127)].all()):
            bad = sorted({int(z) for z in numbers.tolist() if z >= 128 or z not in self.elements})
            raise ValueError(f"{self.name} does not cover atomic numbers {bad}")

        # One batched graph: replica r's atoms are nodes r*N ... r*N + N-1.
        offset = (torch.arange(R, device=dev, dtype=torch.int64) * N)[:, None]
        rep = torch.arange(R, device=dev, dtype=torch.int64)[:, None].expand(edge_src.shape)
        mask = edge_mask.to(device=dev, dtype=torch.bool)
        src = (edge_src.to(device=dev, dtype=torch.int64) + offset)[mask]
        dst = (edge_dst.to(device=dev, dtype=torch.int64) + offset)[mask]
        rep = rep[mask]
        shift = edge_shift.to(device=dev, dtype=fdt)[mask]
        vec = pos[dst] - pos[src] + torch.einsum("ek,ekl->el", shift, cell[rep])
        keep = (vec * vec).sum(-1) < self.cutoff**2  # the caller may give pairs up to cutoff + skin
        src, dst, vec = src[keep], dst[keep], vec[keep]
        vec = vec.detach().requires_grad_(True)

        volume = torch.abs(torch.linalg.det(cell))
        z = numbers.repeat(R)
        data = AtomGraphData(x=z.clone(), edge_index=torch.stack([src, dst]))
        data[KEY.ATOMIC_NUMBERS] = z
        data[KEY.EDGE_VEC] = vec
        data[KEY.CELL_VOLUME] = volume.clone()
        data[KEY.NUM_ATOMS] = torch.full((R,), N, dtype=torch.int64, device=dev)
        data[KEY.BATCH] = torch.arange(R, device=dev, dtype=torch.int64).repeat_interleave(N)
        if self.modal is not None:
            data[KEY.DATA_MODALITY] = [self.modal] * R

        with torch.enable_grad():
            out = self.model(data)
        energy = out[KEY.PRED_TOTAL_ENERGY].detach().reshape(R)
        forces = out[KEY.PRED_FORCE].detach().reshape(R, N, 3)
        s = -out[KEY.PRED_STRESS].detach().reshape(R, 6)  # xx yy zz xy yz zx, SevenNet sign -> ASE sign
        stress = torch.stack([
            torch.stack([s[:, 0], s[:, 3], s[:, 5]], -1),
            torch.stack([s[:, 3], s[:, 1], s[:, 4]], -1),
            torch.stack([s[:, 5], s[:, 4], s[:, 2]], -1),
        ], 1)
        # No cell (non-periodic): no stress, as the engine's own models report.
        stress = torch.where((volume > 1e-3)[:, None, None], stress, torch.zeros_like(stress))
        return energy, forces, stress


def load(name: str = "7net-0", *, device=None, dtype=None, modal: str | None = None, **kw) -> SevenNetEFS:
    """A SevenNet torch EFS by pretrained name or checkpoint path."""
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    return SevenNetEFS(name, modal=modal, device=device, dtype=dtype, **kw)
