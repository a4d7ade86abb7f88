"""The batched graph every torch family builds from the engine's edges (torch side, on the model's device).

The bridge hands a torch EFS the edges of ``R`` replicas as padded ``[R, E]`` arrays (see
:mod:`bridges.torch_bridge`: ``edge_src`` the centre ``i``, ``edge_dst`` the neighbour ``j``,
integer image offsets ``edge_shift`` ``S``, ``edge_mask`` True for real pairs, which
:func:`bridges.torch_bridge.edges_from_neighbors` has already cut at the model's cutoff).
Message-passing models want one graph of ``R * N`` nodes instead, replica ``r``'s atom ``i``
being node ``r * N + i``. This module owns that flattening and the node features that go with it:

* :func:`batched_edges`: the real edges as global node indices, with each edge's replica, its
  image offsets and its flat index into the engine's ``[R * E]`` slots;
* :func:`image_displacements` and :func:`edge_vectors`: ``S @ cell[r]`` and
  ``d = x[dst] - x[src] + S @ cell[r]`` (ASE's ``ijS`` convention, Angstrom);
* :func:`node_replica`: the replica of each node (``batch`` in PyG terms);
* :func:`edge_pairs`: ordered pairs of edges sharing a centre (three-body line graphs);
* :class:`ElementIndex`: atomic number -> the model's own type index, with the one error message
  for elements a model does not cover.

What is truly a family's own (CHGNet's undirected bonds and angle graph, ORB's wrapped
coordinates and neighbour cap, DeePMD's extended system of ghost atoms) stays in its module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

__all__ = ["BatchedEdges", "ElementIndex", "batched_edges", "edge_pairs", "edge_vectors", "image_displacements",
           "node_replica"]


@dataclass
class BatchedEdges:
    """The real edges of ``R`` replicas of ``N`` atoms as one graph (``D`` edges, engine order).

    ``src``/``dst`` [D] int64 global node indices ``r * N + i``; ``replica`` [D] int64; ``shift``
    [D,3] image offsets ``S`` (float, integer values); ``index`` [D] int64 the edge's flat index
    ``r * E + e`` into the engine's ``[R, E]`` slots.
    """

    src: torch.Tensor
    dst: torch.Tensor
    replica: torch.Tensor
    shift: torch.Tensor
    index: torch.Tensor

    def select(self, keep: torch.Tensor) -> "BatchedEdges":
        """The edges where ``keep`` [D] (bool or indices) holds, in that order."""
        return BatchedEdges(self.src[keep], self.dst[keep], self.replica[keep], self.shift[keep], self.index[keep])


@torch.no_grad()
def batched_edges(edge_src, edge_dst, edge_shift, edge_mask, n_atoms: int, *, device=None,
                  dtype: torch.dtype | None = None) -> BatchedEdges:
    """Flatten the engine's padded ``[R, E]`` edges into one graph of ``R * n_atoms`` nodes.

    Only slots with ``edge_mask`` are kept (no distance test: the bridge has already cut the
    list at the model's cutoff). ``device`` defaults to ``edge_src``'s, ``dtype`` (of ``shift``)
    to ``edge_shift``'s.
    """
    device = edge_src.device if device is None else device
    mask = edge_mask.to(device=device, dtype=torch.bool).reshape(-1)
    R, E = edge_src.shape[0], edge_src.shape[1]
    index = torch.nonzero(mask, as_tuple=True)[0]
    replica = index // E
    offset = replica * n_atoms
    src = edge_src.to(device=device, dtype=torch.int64).reshape(-1)[index] + offset
    dst = edge_dst.to(device=device, dtype=torch.int64).reshape(-1)[index] + offset
    shift = edge_shift.to(device=device, dtype=dtype or edge_shift.dtype).reshape(R * E, 3)[index]
    return BatchedEdges(src=src, dst=dst, replica=replica, shift=shift, index=index)


def image_displacements(cell: torch.Tensor, edges: BatchedEdges) -> torch.Tensor:
    """``S @ cell[r]`` [D,3] of every edge (``cell`` [R,3,3], rows the lattice vectors)."""
    return torch.einsum("ek,ekl->el", edges.shift.to(cell.dtype), cell[edges.replica])


def edge_vectors(positions: torch.Tensor, cell: torch.Tensor, edges: BatchedEdges) -> torch.Tensor:
    """``d = x[dst] - x[src] + S @ cell[r]`` [D,3]; ``positions`` [R*N,3] (node order) or [R,N,3]."""
    flat = positions.reshape(-1, 3)
    return flat[edges.dst] - flat[edges.src] + image_displacements(cell, edges)


def node_replica(n_replicas: int, n_atoms: int, device=None) -> torch.Tensor:
    """The replica of every node, ``[0]*N + [1]*N + ...`` [R*N] int64."""
    return torch.arange(n_replicas, device=device, dtype=torch.int64).repeat_interleave(n_atoms)


class ElementIndex:
    """Atomic number -> the model's own type index (one-hot column, type id), checked.

    Parameters
    ----------
    index_of:
        ``{atomic number: type index}`` of the elements the model covers.
    name:
        The model's name, for the error message.
    device:
        Where the lookup table lives (the model's device).

    Calling it with atomic numbers [N] returns their type indices [N] int64, or raises a
    ``ValueError`` naming the atomic numbers the model does not cover. On the CPU the check runs
    on every call; on a GPU it costs a synchronisation, so it runs on the first call per system
    size only (the engine refuses uncovered elements before any step anyway).
    """

    SIZE = 128  # atomic numbers 0 ... 127

    def __init__(self, index_of: Mapping[int, int], *, name: str, device=None):
        self.name = name
        self.elements = frozenset(int(z) for z in index_of)
        table = torch.full((self.SIZE,), -1, dtype=torch.int64)
        for z, i in index_of.items():
            table[int(z)] = int(i)
        self.table = table.to(device)
        self._checked: set = set()

    def to(self, device) -> "ElementIndex":
        self.table = self.table.to(device)
        return self

    def __call__(self, numbers: torch.Tensor) -> torch.Tensor:
        numbers = numbers.to(device=self.table.device, dtype=torch.int64)
        types = self.table[numbers.clamp(0, self.SIZE - 1)]
        key = (int(numbers.shape[0]), str(self.table.device))
        if self.table.device.type == "cpu" or key not in self._checked:
            if bool(((types < 0) | (numbers < 0) | (numbers >= self.SIZE)).any()):
                raise ValueError(self._message(numbers.tolist()))
            self._checked.add(key)
        return types

    def _message(self, numbers) -> str:
        from ase.data import chemical_symbols

        def symbol(z):
            return chemical_symbols[z] if 0 < z < len(chemical_symbols) else "?"

        bad = sorted({int(z) for z in numbers if int(z) not in self.elements})
        named = ", ".join(f"{symbol(z)} ({z})" for z in bad)
        covered = " ".join(symbol(z) for z in sorted(self.elements))
        return (f"{self.name} does not cover atomic numbers {bad} ({', '.join(symbol(z) for z in bad)}): it has "
                f"no parameters for {named}; its elements: {covered}")


@torch.no_grad()
def edge_pairs(centre: torch.Tensor, candidates: torch.Tensor, n_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ordered pair ``(a, b)``, ``a != b``, of the ``candidates`` edges that share a centre.

    The line graph of three-body terms (M3GNet's triples, CHGNet's angles): ``centre`` [D] the
    centre node of every edge, ``candidates`` [C] edge ids. Returns the edge ids ``first`` [T] and
    ``second`` [T], grouped by centre, in candidate order within a group. Pairs are enumerated by
    sorting the candidates by centre: no Python loop over atoms, everything on ``centre.device``.
    """
    dev = centre.device
    if candidates.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return empty, empty
    c = centre[candidates]
    order = torch.argsort(c, stable=True)
    cand, c = candidates[order], c[order]  # candidates grouped by centre
    counts = torch.bincount(c, minlength=n_nodes)
    start = torch.cumsum(counts, 0) - counts
    reps = counts[c]  # partners of each candidate, itself included
    total = int(reps.sum())
    first = torch.repeat_interleave(torch.arange(cand.numel(), device=dev), reps, output_size=total)
    k = torch.arange(total, device=dev) - (torch.cumsum(reps, 0) - reps)[first]
    second = start[c[first]] + k
    ok = first != second
    return cand[first[ok]], cand[second[ok]]
