"""SevenNet (7net-0, 7net-l3i5, 7net-mf-0) as a torch EFS object (see :mod:`bridges.torch_bridge`).

SevenNet is called directly, without its ASE calculator: its input graph is built on the torch
side from the engine's edges (``edge_vec = pos[dst] - pos[src] + shift @ cell``, the gradient
variable of SevenNet's ``ForceStressOutputFromEdge``), all replicas as one batched graph
(:mod:`bridges.graph`; the network is switched to batched mode, ``set_is_batch_data(True)``, for
the duration of each call and back afterwards, so a ``SevenNetCalculator`` sharing the network
keeps working). SevenNet returns the stress as ``-(1/V) sum r (x) dE/dr`` in eV/A^3 in the order
xx, yy, zz, xy, yz, zx; it is negated and unfolded here to ASE's 3x3 (positive in tension), as
SevenNet's calculator does (``-stress[[0, 1, 2, 4, 5, 3]]`` in Voigt order).

This module owns: :class:`SevenNetEFS` (on a checkpoint's network or on a calculator's),
:func:`load`, :func:`efs_from_calculator`, :func:`model_identity` and :func:`ase_calculator`.
Weights come from the sevenn wheel (``sevenn/pretrained_potentials``), so no download is needed.
"""

from __future__ import annotations

import torch

from bridges.graph import ElementIndex, batched_edges, edge_vectors, node_replica
from bridges.torch_bridge import resolve_device, torch_float_dtype

__all__ = ["SevenNetEFS", "load", "efs_from_calculator", "model_identity", "ase_calculator"]


class SevenNetEFS:
    """A loaded SevenNet network as a torch EFS (``cutoff``, ``elements``, ``name``, ``__call__``).

    Parameters
    ----------
    network:
        A ``sevenn.nn.sequential.AtomGraphSequential`` (from a checkpoint, :func:`load`, or a
        ``SevenNetCalculator``'s ``model``), used as it is.
    cutoff:
        Its cutoff (Angstrom).
    type_map:
        Its element table (the atomic numbers it covers).
    modal:
        Fidelity head of multi-fidelity models (7net-mf-0: "PBE" (default) or "R2SCAN", case
        insensitive); must be ``None`` for single-fidelity models.
    device:
        Torch device the network is on.
    name:
        Label; the modal is appended.

    float32 only: SevenNet's one-hot node embedding hard-codes ``.float()``; float64 JAX arrays
    are accepted and cast.
    """

    dtype = torch.float32

    def __init__(self, network, *, cutoff: float, type_map, modal: str | None = None, device=None,
                 name: str = "sevenn"):
        self.model = network
        self.device = torch.device(device) if device is not None else next(network.parameters()).device
        self.cutoff = float(cutoff)
        self._types = ElementIndex({int(z): int(z) for z in type_map}, name=name, device=self.device)
        self.elements = self._types.elements
        self.modal = _pick_modal(getattr(network, "modal_map", None) or {}, modal, name)
        self.name = name + (f"[{self.modal}]" if self.modal else "")
        self._types.name = self.name

    def __getattr__(self, name):
        # Compatibility with jaxpto.md's SevenNetCalculatorEFS, a subclass that sets the old
        # attributes and skips __init__; remove once jaxpto.md asks bridges.from_calculator.
        if name == "_types":
            self._types = ElementIndex({z: z for z in self.elements}, name=self.name, device=self.device)
            return self._types
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to(self, device):
        self.device = torch.device(device)
        self.model = self.model.to(self.device)
        self._types.to(self.device)
        return self

    def _graph(self, positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask):
        """SevenNet's ``AtomGraphData`` for ``R`` replicas as one batched graph."""
        import sevenn._keys as KEY
        from sevenn.atom_graph_data import AtomGraphData

        dev, fdt = self.device, self.dtype
        R, N = positions.shape[0], positions.shape[1]
        z = self._types(numbers).repeat(R)
        cell = cell.to(device=dev, dtype=fdt)
        edges = batched_edges(edge_src, edge_dst, edge_shift, edge_mask, N, device=dev, dtype=fdt)
        vec = edge_vectors(positions.to(device=dev, dtype=fdt), cell, edges).detach().requires_grad_(True)
        volume = torch.abs(torch.linalg.det(cell))
        data = AtomGraphData(x=z.clone(), edge_index=torch.stack([edges.src, edges.dst]))
        data[KEY.ATOMIC_NUMBERS] = z
        data[KEY.EDGE_VEC] = vec
        data[KEY.CELL_VOLUME] = volume.clone()
        data[KEY.NUM_ATOMS] = torch.full((R,), N, dtype=torch.int64, device=dev)
        data[KEY.BATCH] = node_replica(R, N, dev)
        if self.modal is not None:
            data[KEY.DATA_MODALITY] = [self.modal] * R
        return data, volume

    def __call__(self, positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask):
        import sevenn._keys as KEY

        R, N = positions.shape[0], positions.shape[1]
        data, volume = self._graph(positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask)
        net = self.model
        batched_before = bool(getattr(net, "is_batch_data", False))
        net.set_is_batch_data(True)
        try:
            with torch.enable_grad():
                out = net(data)
        finally:
            net.set_is_batch_data(batched_before)
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


def _pick_modal(modal_map: dict, modal: str | None, label: str) -> str | None:
    """The fidelity head of a multi-fidelity network (default "PBE"), None for a single-fidelity one."""
    if not modal_map:
        if modal is not None:
            raise ValueError(f"{label} is a single-fidelity model; modal={modal!r} is not accepted")
        return None
    heads = list(modal_map)
    if modal is None:
        modal = "PBE" if "PBE" in heads else heads[0]
    match = [h for h in heads if h.lower() == str(modal).lower()]
    if not match:
        raise ValueError(f"unknown modal {modal!r} for {label}; available: {heads}")
    return match[0]


def load(name: str = "7net-0", *, device=None, dtype=None, modal: str | None = None,
         enable_cueq: bool = False) -> SevenNetEFS:
    """A SevenNet torch EFS by pretrained name ("7net-0", "7net-l3i5", "7net-mf-0", or any name
    SevenNet knows) or checkpoint path; ``device`` as :func:`bridges.torch_bridge.resolve_device`."""
    import sevenn._keys as KEY
    import sevenn.util as util

    if torch_float_dtype(dtype, "SevenNet", default=torch.float32) != torch.float32:
        # SevenNet's one-hot node embedding hard-codes `.float()`, so a float64 model fails
        # inside e3nn ("both inputs should have same dtype"); refuse it here instead.
        raise ValueError(f"SevenNet runs in float32 only, got dtype={dtype}; the engine may still "
                         "integrate in float64 (the bridge casts the inputs and results)")
    checkpoint = util.load_checkpoint(str(name))
    network = checkpoint.build_model(enable_cueq=enable_cueq) if enable_cueq else checkpoint.build_model()
    dev = resolve_device(device)
    network = network.to(dev).eval()
    return SevenNetEFS(network, cutoff=checkpoint.config[KEY.CUTOFF], type_map=checkpoint.config[KEY.TYPE_MAP],
                       modal=modal, device=dev, name=str(name))


def _is_own_calculator(calc) -> bool:
    from sevenn.calculator import SevenNetCalculator
    from sevenn.nn.sequential import AtomGraphSequential

    return type(calc) is SevenNetCalculator and isinstance(calc.model, AtomGraphSequential)


def efs_from_calculator(calc) -> SevenNetEFS | None:
    """:class:`SevenNetEFS` on a ``sevenn.calculator.SevenNetCalculator``'s own network, or None.

    Any checkpoint (7net-0, 7net-l3i5, 7net-mf-0 with the calculator's ``modal``, ...): the same
    ``AtomGraphSequential`` object (no second load), the calculator's ``cutoff``, ``type_map``,
    ``modal`` and ``device``; float32. Only that exact class (a subclass may compute something else).
    """
    if not _is_own_calculator(calc):
        return None
    return SevenNetEFS(calc.model, cutoff=calc.cutoff, type_map=calc.type_map, modal=calc.modal,
                       device=calc.device, name="SevenNetCalculator.model")


def model_identity(calc):
    """What makes two SevenNet calculators compute the same thing: the network object and the modal."""
    if not _is_own_calculator(calc):
        return None
    from bridges.resolver import Same

    return Same(calc.model), calc.modal


def ase_calculator(name: str, *, device=None, modal: str | None = None, **kw):
    """SevenNet's own ``SevenNetCalculator`` for ``name`` (7net-mf-0: ``modal`` "PBE" by default)."""
    from sevenn.calculator import SevenNetCalculator

    if modal is None and str(name).lower() == "7net-mf-0":
        modal = "PBE"
    return SevenNetCalculator(str(name), device=str(resolve_device(device)), modal=modal, **kw)
