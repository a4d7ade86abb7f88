"""CHGNet as a torch EFS object for jaxpto, with CHGNet's graph built in torch on the model's device.

``load("chgnet-0.3.0" | "chgnet-0.2.0" | "chgnet-r2scan", device=None, dtype=None)`` returns a
:class:`CHGNetEFS`, the torch-side object that ``bridges.torch_bridge.as_jax_model`` wraps.

Contract (torch side, all tensors on ``efs.device``)::

    efs(positions [R,N,3], cell [R,3,3], numbers [N] int64,
        edge_src [R,E] int64, edge_dst [R,E] int64, edge_shift [R,E,3] (float, integer values),
        edge_mask [R,E] bool) -> (energy [R] eV, forces [R,N,3] eV/A, stress [R,3,3] eV/A^3)

with the pair vector ``d = pos[dst] - pos[src] + shift @ cell[r]`` (ASE's ``ijS``), a full list
(both directions) of all pairs within the engine's ``cutoff + skin``, padded (``edge_mask``).

What CHGNet's own pipeline (pymatgen neighbour list + ``CrystalGraphConverter`` in compiled CPU
code + ``BatchedGraph.from_graphs``, one Python loop per structure) does is done here in one batch:

* atom graph: directed edges with ``0 < |d| <= atom_graph_cutoff`` (6 A), their image offsets,
  and the undirected <-> directed maps (an edge ``(i, j, S)`` and its reverse ``(j, i, -S)`` share
  one undirected bond, as in ``chgnet.graph.graph.Graph.add_edge``);
* bond graph: for every directed edge ``d`` with ``|d| <= bond_graph_cutoff`` (3 A) and every
  other directed edge ``e`` with the same centre atom and ``|e| < bond_graph_cutoff``, the angle
  triplet ``[centre, undirected(d), d, undirected(e), e]`` (``Graph.line_graph_adjacency_list``);
* a ``chgnet.model.model.BatchedGraph`` for all ``R`` replicas at once, passed to
  ``CHGNet._compute``; forces and the strain derivative come from one ``autograd.grad`` call
  (no ``create_graph``, model parameters frozen).

Units, checked against ``chgnet.model.dynamics.CHGNetCalculator``: CHGNet predicts energy per atom
(x N here, plus its ``AtomRef`` composition energy), forces in eV/A, stress in GPa as
``(1/V) dE/d(strain)`` (ASE's sign); here the stress is returned directly in eV/A^3, symmetrised
(the engine's convention; CHGNet is rotation invariant so the antisymmetric part is round-off).

This module imports neither JAX nor ``bridges.torch_bridge`` at import time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["MODEL_NAMES", "CHGNetEFS", "ChgnetGraph", "build_graph", "load"]

# jaxpto name -> CHGNet.load(model_name=...)
MODEL_NAMES = {
    "chgnet-0.3.0": "0.3.0",
    "chgnet-0.2.0": "0.2.0",
    "chgnet-r2scan": "r2scan",
}

@dataclass
class ChgnetGraph:
    """CHGNet's crystal graph for ``R`` replicas of ``N`` atoms (global atom index ``r*N + i``).

    ``src``/``dst`` [D] directed edges (centre, neighbour), ``image`` [D,3] int64 offsets ``S``,
    ``shift_index`` [D] the edge's flat index into the engine's ``[R*E]`` list,
    ``directed2undirected`` [D], ``undirected2directed`` [U] (the edge ``i->j`` with ``i<j``),
    ``bond_graph`` [A,5] ``(centre, undirected(d), d, undirected(e), e)`` as CHGNet's CrystalGraph.
    """

    src: torch.Tensor
    dst: torch.Tensor
    image: torch.Tensor
    edge_index: torch.Tensor
    directed2undirected: torch.Tensor
    undirected2directed: torch.Tensor
    bond_graph: torch.Tensor

    @property
    def n_directed(self) -> int:
        return int(self.src.shape[0])

    @property
    def n_undirected(self) -> int:
        return int(self.undirected2directed.shape[0])


def _lex_positive(s: torch.Tensor) -> torch.Tensor:
    """``S > 0`` in lexicographic order, row-wise for ``[D,3]`` int64."""
    s0, s1, s2 = s.unbind(-1)
    return (s0 > 0) | ((s0 == 0) & ((s1 > 0) | ((s1 == 0) & (s2 > 0))))


@torch.no_grad()
def build_graph(
    positions: torch.Tensor,
    cell: torch.Tensor,
    edge_src: torch.Tensor,
    edge_dst: torch.Tensor,
    edge_shift: torch.Tensor,
    edge_mask: torch.Tensor,
    *,
    atom_graph_cutoff: float,
    bond_graph_cutoff: float,
) -> ChgnetGraph:
    """Build CHGNet's atom graph and bond (angle) graph from the engine's padded full edge list.

    Everything stays on ``positions.device``; distances for the cutoff tests are taken in the
    dtype of ``positions``. Raises ``ValueError`` if some kept edge has no reverse edge in the
    list (the engine's list is full, so this only happens with a broken list).
    """
    R, N = positions.shape[0], positions.shape[1]
    E = edge_src.shape[1]
    device = positions.device
    src = edge_src.to(device=device, dtype=torch.int64)
    dst = torch.where(edge_mask, edge_dst.to(device=device, dtype=torch.int64), 0)
    src = torch.where(edge_mask, src, 0)
    shift = edge_shift.to(device=device, dtype=positions.dtype)
    # d = pos[dst] - pos[src] + S @ cell, per replica
    pos_src = torch.gather(positions, 1, src[..., None].expand(R, E, 3))
    pos_dst = torch.gather(positions, 1, dst[..., None].expand(R, E, 3))
    vec = pos_dst - pos_src + torch.bmm(shift, cell.to(positions.dtype))
    length = torch.linalg.vector_norm(vec, dim=-1)
    # pymatgen's neighbour list (CHGNet's source) drops pairs closer than 1e-8 A (the atom itself).
    keep = edge_mask & (length > 1e-8) & (length <= atom_graph_cutoff)

    flat = torch.nonzero(keep.reshape(-1), as_tuple=True)[0]  # [D] index into R*E
    replica = flat // E
    g_src = src.reshape(-1)[flat] + replica * N
    g_dst = dst.reshape(-1)[flat] + replica * N
    image = torch.round(shift.reshape(-1, 3)[flat]).to(torch.int64)
    dist = length.reshape(-1)[flat]
    D = int(flat.shape[0])

    # Undirected bonds: (i, j, S) and (j, i, -S) share one key, the orientation with i<j
    # (or, for i == j, with S > 0 lexicographically).
    forward = (g_src < g_dst) | ((g_src == g_dst) & _lex_positive(image))
    a = torch.where(forward, g_src, g_dst)
    b = torch.where(forward, g_dst, g_src)
    s = torch.where(forward[:, None], image, -image)
    smax = int(s.abs().max()) if D else 0
    width = 2 * smax + 1
    n_tot = R * N
    if D == 0:
        d2u = torch.zeros(0, dtype=torch.int64, device=device)
        n_und = 0
    elif float(n_tot) ** 2 * float(width) ** 3 < 2.0**62:
        so = s + smax
        key = ((a * n_tot + b) * width + so[:, 0]) * width * width + so[:, 1] * width + so[:, 2]
        uniq, d2u = torch.unique(key, return_inverse=True)
        n_und = int(uniq.shape[0])
    else:  # keys would overflow int64: unique over rows
        uniq, d2u = torch.unique(torch.cat([a[:, None], b[:, None], s], dim=1), dim=0, return_inverse=True)
        n_und = int(uniq.shape[0])
    if D:
        per_bond = torch.bincount(d2u, minlength=n_und)
        if not bool(torch.all(per_bond == 2)):
            bad = int((per_bond != 2).sum())
            raise ValueError(
                f"{bad} undirected bond(s) do not have exactly two directed edges: the edge list "
                "passed to CHGNet must be a full list (both i->j and j->i) without duplicates")
    fwd_idx = torch.nonzero(forward, as_tuple=True)[0]
    u2d = torch.empty(n_und, dtype=torch.int64, device=device)
    u2d[d2u[fwd_idx]] = fwd_idx

    # Bond graph: angle triplets among short bonds sharing a centre atom.
    primary = torch.nonzero(dist <= bond_graph_cutoff, as_tuple=True)[0]
    if primary.numel():
        centre = g_src[primary]
        order = torch.argsort(centre, stable=True)
        cand = primary[order]  # candidate edges grouped by centre
        centre = centre[order]
        counts = torch.bincount(centre, minlength=n_tot)
        start = torch.cumsum(counts, 0) - counts
        reps = counts[centre]  # partners of each candidate (itself included)
        total = int(reps.sum())
        first = torch.repeat_interleave(torch.arange(cand.numel(), device=device), reps, output_size=total)
        offset = torch.cumsum(reps, 0) - reps
        k = torch.arange(total, device=device) - offset[first]
        second = start[centre[first]] + k
        d_edge = cand[first]
        e_edge = cand[second]
        ok = (first != second) & (dist[e_edge] < bond_graph_cutoff)
        d_edge, e_edge = d_edge[ok], e_edge[ok]
        bond_graph = torch.stack(
            [g_src[d_edge], d2u[d_edge], d_edge, d2u[e_edge], e_edge], dim=1)
    else:
        bond_graph = torch.zeros((0, 5), dtype=torch.int64, device=device)

    return ChgnetGraph(src=g_src, dst=g_dst, image=image, edge_index=flat,
                       directed2undirected=d2u, undirected2directed=u2d, bond_graph=bond_graph)


class CHGNetEFS:
    """Energy, forces and stress of a pretrained CHGNet for batched replicas (torch EFS object)."""

    def __init__(self, model, *, name: str, device, dtype: torch.dtype = torch.float32):
        from chgnet.model.composition_model import AtomRef

        self.model = model.to(device=device, dtype=dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)
        self.dtype = dtype
        self.name = name
        self.atom_graph_cutoff = float(model.graph_converter.atom_graph_cutoff)
        self.bond_graph_cutoff = float(model.graph_converter.bond_graph_cutoff)
        self.cutoff = self.atom_graph_cutoff
        n_elem = int(self.model.atom_embedding.embedding.num_embeddings)
        self.elements = frozenset(range(1, n_elem + 1))
        comp = self.model.composition_model
        if comp is None:
            self._atom_ref = None
        elif isinstance(comp, AtomRef):
            # Sum over atoms of the per-element reference energy (both intensive and extensive
            # AtomRef reduce to this once multiplied back by N).
            self._atom_ref = comp.fc.weight.detach().reshape(-1).to(device=self.device, dtype=dtype)
        else:
            raise TypeError(f"unsupported CHGNet composition model {type(comp).__name__}")

    def __repr__(self) -> str:
        return f"CHGNetEFS(name={self.name!r}, device={self.device}, dtype={self.dtype})"

    def graph(self, positions, cell, edge_src, edge_dst, edge_shift, edge_mask) -> ChgnetGraph:
        """CHGNet's graph for these inputs (see :func:`build_graph`)."""
        return build_graph(
            positions.to(self.device), cell.to(self.device), edge_src, edge_dst, edge_shift,
            edge_mask.to(self.device), atom_graph_cutoff=self.atom_graph_cutoff,
            bond_graph_cutoff=self.bond_graph_cutoff)

    def __call__(self, positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask):
        from chgnet.model.model import BatchedGraph

        dev, dt = self.device, self.dtype
        positions = torch.as_tensor(positions, device=dev)
        cell = torch.as_tensor(cell, device=dev)
        numbers = torch.as_tensor(numbers, device=dev).to(torch.int64)
        edge_mask = torch.as_tensor(edge_mask, device=dev).to(torch.bool)
        edge_shift = torch.as_tensor(edge_shift, device=dev)
        R, N = positions.shape[0], positions.shape[1]
        model = self.model
        with torch.inference_mode(False), torch.enable_grad():
            g = build_graph(positions, cell.to(positions.dtype), torch.as_tensor(edge_src, device=dev),
                            torch.as_tensor(edge_dst, device=dev), edge_shift, edge_mask,
                            atom_graph_cutoff=self.atom_graph_cutoff,
                            bond_graph_cutoff=self.bond_graph_cutoff)
            pos = positions.detach().to(dt).clone().requires_grad_(True)  # [R,N,3]
            lat = cell.detach().to(dt)
            strain = torch.zeros((R, 3, 3), device=dev, dtype=dt, requires_grad=True)
            deform = torch.eye(3, device=dev, dtype=dt) + strain
            pos_s = torch.bmm(pos, deform).reshape(R * N, 3)
            lat_s = torch.bmm(lat, deform)  # [R,3,3]
            shift_vec = torch.bmm(edge_shift.to(dt), lat_s).reshape(-1, 3)[g.edge_index]  # S @ h'
            eye = torch.eye(3, device=dev, dtype=dt)
            # CHGNet: bond_vec = centre - (neighbour + image @ lattice); passing image = S @ h'
            # with an identity lattice keeps its arithmetic.
            bond_ag, bond_bg, bond_vectors = model.bond_basis_expansion(
                center=pos_s[g.src], neighbor=pos_s[g.dst],
                undirected2directed=g.undirected2directed, image=shift_vec, lattice=eye)
            bg = g.bond_graph
            if bg.shape[0]:
                angle_bases = model.angle_basis_expansion(bond_vectors[bg[:, 2]], bond_vectors[bg[:, 4]])
                batched_bond_graph = bg[:, [0, 1, 3]]
            else:
                angle_bases = torch.tensor([], device=dev, dtype=dt)
                batched_bond_graph = torch.tensor([], device=dev)
            atom_owners = torch.repeat_interleave(
                torch.arange(R, device=dev, dtype=torch.int64), N)
            volumes = torch.abs(torch.linalg.det(cell.detach().to(torch.float64))).to(dt)
            batched = BatchedGraph(
                atomic_numbers=numbers.repeat(R),
                bond_bases_ag=bond_ag,
                bond_bases_bg=bond_bg,
                angle_bases=angle_bases,
                batched_atom_graph=torch.stack([g.src, g.dst], dim=1),
                batched_bond_graph=batched_bond_graph,
                atom_owners=atom_owners,
                directed2undirected=g.directed2undirected,
                atom_positions=[pos_s],
                strains=[strain],
                volumes=volumes,
            )
            out = model._compute(batched, compute_force=False, compute_stress=False)
            energy = out["e"]  # [R], per atom if the model is intensive
            if model.is_intensive:
                energy = energy * N
            dE_dr, dE_deps = torch.autograd.grad(energy.sum(), [pos, strain])
        energy = energy.detach()
        if self._atom_ref is not None:
            energy = energy + self._atom_ref[numbers - 1].sum()
        forces = -dE_dr
        stress = 0.5 * (dE_deps + dE_deps.transpose(1, 2)) / volumes[:, None, None]
        return energy, forces, stress


def load(name, device=None, dtype=None) -> CHGNetEFS:
    """Load a pretrained CHGNet as a torch EFS object.

    ``name``: ``"chgnet-0.3.0"``, ``"chgnet-0.2.0"`` or ``"chgnet-r2scan"`` (case insensitive;
    the bare CHGNet names ``"0.3.0"`` etc. are accepted too), or the path of a CHGNet checkpoint
    file (``CHGNet.from_file``). ``device``: a torch device (default: CUDA when available, else
    CPU). ``dtype``: ``float32`` (default, CHGNet's training precision) or ``float64`` (torch
    dtype, numpy/JAX dtype or name).
    """
    import contextlib
    import io
    import os

    from chgnet.model import CHGNet

    torch_dtype = _as_torch_dtype(dtype)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = os.fspath(name)
    key = name.strip().lower()
    key = key if key in MODEL_NAMES else f"chgnet-{key}"
    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
        if key in MODEL_NAMES:
            model = CHGNet.load(model_name=MODEL_NAMES[key], use_device="cpu", verbose=False)
            label = key
        elif os.path.isfile(name):
            model = CHGNet.from_file(name)
            label = f"chgnet:{os.path.basename(name)}"
        else:
            raise ValueError(f"unknown CHGNet model {name!r} (and no such file); known: "
                             f"{', '.join(MODEL_NAMES)}")
    return CHGNetEFS(model, name=label, device=device, dtype=torch_dtype)


def _as_torch_dtype(dtype) -> torch.dtype:
    from bridges.torch_bridge import model_float_dtype

    return model_float_dtype(dtype, "CHGNet")
