"""CHGNet as a torch EFS object for jaxpto, with CHGNet's graph built in torch on the model's device.

``load("chgnet-0.3.0" | "chgnet-0.2.0" | "chgnet-r2scan", device=None, dtype=None)`` returns a
:class:`CHGNetEFS`, the torch-side object that ``bridges.torch_bridge.as_jax_model`` wraps.

Contract (torch side, all tensors on ``efs.device``): the torch EFS of :mod:`bridges.torch_bridge`,
a full list (both directions) of the pairs within CHGNet's atom-graph cutoff, padded (``edge_mask``),
flattened into one graph by :func:`bridges.graph.batched_edges`.

What CHGNet's own pipeline (pymatgen neighbour list + ``CrystalGraphConverter`` in compiled CPU
code + ``BatchedGraph.from_graphs``, one Python loop per structure) does is done here in one batch:

* atom graph: the directed edges (``0 < |d| < atom_graph_cutoff``, 6 A, cut by the bridge), their
  image offsets, and the undirected <-> directed maps (an edge ``(i, j, S)`` and its reverse ``(j, i, -S)`` share
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

This module owns CHGNet's graph (:func:`build_graph`), :class:`CHGNetEFS` (on a loaded CHGNet),
:func:`load`, :func:`efs_from_calculator`, :func:`model_identity` and :func:`ase_calculator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bridges.graph import batched_edges, edge_pairs, edge_vectors, node_replica
from bridges.registry import family_names
from bridges.torch_bridge import resolve_device, torch_float_dtype

__all__ = ["MODEL_NAMES", "EXTRAS", "CHGNetEFS", "ChgnetGraph", "build_graph", "load", "efs_from_calculator",
           "model_identity", "ase_calculator"]

MODEL_NAMES = family_names("chgnet")  # jaxpto name -> CHGNet.load(model_name=...)

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


def _undirected_bonds(src, dst, image, n_nodes: int):
    """``(directed2undirected [D], undirected2directed [U])``: ``(i, j, S)`` and ``(j, i, -S)`` share a bond.

    The bond's key is its orientation with ``i < j`` (or, for ``i == j``, with ``S > 0``
    lexicographically), as ``chgnet.graph.graph.Graph.add_edge``. Raises ``ValueError`` unless
    every bond has exactly its two directed edges (a full list without duplicates).
    """
    device = src.device
    D = int(src.shape[0])
    forward = (src < dst) | ((src == dst) & _lex_positive(image))
    a = torch.where(forward, src, dst)
    b = torch.where(forward, dst, src)
    s = torch.where(forward[:, None], image, -image)
    smax = int(s.abs().max()) if D else 0
    width = 2 * smax + 1
    if D == 0:
        d2u, n_und = torch.zeros(0, dtype=torch.int64, device=device), 0
    elif float(n_nodes) ** 2 * float(width) ** 3 < 2.0**62:
        so = s + smax
        key = ((a * n_nodes + b) * width + so[:, 0]) * width * width + so[:, 1] * width + so[:, 2]
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
    return d2u, u2d


@torch.no_grad()
def build_graph(positions, cell, edge_src, edge_dst, edge_shift, edge_mask, *, bond_graph_cutoff: float) -> ChgnetGraph:
    """Build CHGNet's atom graph and bond (angle) graph from the engine's padded full edge list.

    The list is the bridge's (cut at the atom-graph cutoff). Everything stays on
    ``positions.device``; distances for the bond-graph cutoff are taken in the dtype of
    ``positions``. Raises ``ValueError`` if some edge has no reverse edge in the list (the
    engine's list is full, so this only happens with a broken list).
    """
    N = positions.shape[1]
    edges = batched_edges(edge_src, edge_dst, edge_shift, edge_mask, N, device=positions.device,
                          dtype=positions.dtype)
    dist = torch.linalg.vector_norm(edge_vectors(positions, cell.to(positions.dtype), edges), dim=-1)
    # pymatgen's neighbour list (CHGNet's source) drops pairs closer than 1e-8 A (the atom itself).
    real = dist > 1e-8
    edges, dist = edges.select(real), dist[real]
    image = torch.round(edges.shift).to(torch.int64)
    n_nodes = positions.shape[0] * N
    d2u, u2d = _undirected_bonds(edges.src, edges.dst, image, n_nodes)
    # Bond graph: angle triplets [centre, undirected(d), d, undirected(e), e] among short bonds
    # sharing a centre atom, |d| <= cutoff and |e| < cutoff (Graph.line_graph_adjacency_list).
    primary = torch.nonzero(dist <= bond_graph_cutoff, as_tuple=True)[0]
    d_edge, e_edge = edge_pairs(edges.src, primary, n_nodes)
    ok = dist[e_edge] < bond_graph_cutoff
    d_edge, e_edge = d_edge[ok], e_edge[ok]
    bond_graph = torch.stack([edges.src[d_edge], d2u[d_edge], d_edge, d2u[e_edge], e_edge], dim=1)
    return ChgnetGraph(src=edges.src, dst=edges.dst, image=image, edge_index=edges.index,
                       directed2undirected=d2u, undirected2directed=u2d, bond_graph=bond_graph)


#: CHGNet's results beyond energy/forces/stress, as ``CHGNetCalculator`` names them in ``results``,
#: with their layout for the bridge (``bridges.torch_bridge``): per atom or per structure, shape.
EXTRAS = {
    "magmoms": "atom",  # |site_wise(atom features)| after the second-last convolution, Bohr magnetons
    "energies": "atom",  # site energies incl. the AtomRef shift (CHGNetCalculator(return_site_energies=True))
    "crystal_fea": "structure",  # the pooled crystal feature vector
}


class CHGNetEFS:
    """Energy, forces and stress of a pretrained CHGNet for batched replicas (torch EFS object).

    ``extras``: names among :data:`EXTRAS` computed in the same forward call (their heads are one
    linear layer or a pooling on features the energy needs anyway); ``()`` by default.
    """

    def __init__(self, model, *, name: str, device, dtype: torch.dtype = torch.float32, extras=()):
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
        unknown = sorted(set(extras) - set(EXTRAS))
        if unknown:
            raise ValueError(f"CHGNet has no extra result {unknown}; it can give {sorted(EXTRAS)}")
        if "energies" in extras and not self.model.mlp_first:
            raise ValueError("this CHGNet pools before its readout (mlp_first=False): it has no site energies; "
                             "drop 'energies' from extras")
        feature = int(self.model.atom_embedding.embedding.embedding_dim)
        self.extras = {k: (EXTRAS[k], () if EXTRAS[k] == "atom" else (feature,)) for k in EXTRAS if k in extras}
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
        positions = torch.as_tensor(positions, device=self.device)
        return build_graph(positions, torch.as_tensor(cell, device=self.device).to(positions.dtype),
                           torch.as_tensor(edge_src, device=self.device), torch.as_tensor(edge_dst, device=self.device),
                           torch.as_tensor(edge_shift, device=self.device), torch.as_tensor(edge_mask, device=self.device),
                           bond_graph_cutoff=self.bond_graph_cutoff)

    def _batched_graph(self, g: ChgnetGraph, numbers, pos_s, lat_s, strain, edge_shift, volumes):
        """CHGNet's ``BatchedGraph`` on the strained positions ``pos_s`` [R*N,3] and cells ``lat_s`` [R,3,3]."""
        from chgnet.model.model import BatchedGraph

        model, dev, dt = self.model, self.device, self.dtype
        R = lat_s.shape[0]
        shift_vec = torch.bmm(edge_shift.to(dt), lat_s).reshape(-1, 3)[g.edge_index]  # S @ h'
        # CHGNet: bond_vec = centre - (neighbour + image @ lattice); passing image = S @ h'
        # with an identity lattice keeps its arithmetic.
        bond_ag, bond_bg, bond_vectors = model.bond_basis_expansion(
            center=pos_s[g.src], neighbor=pos_s[g.dst], undirected2directed=g.undirected2directed,
            image=shift_vec, lattice=torch.eye(3, device=dev, dtype=dt))
        bg = g.bond_graph
        if bg.shape[0]:
            angle_bases = model.angle_basis_expansion(bond_vectors[bg[:, 2]], bond_vectors[bg[:, 4]])
            batched_bond_graph = bg[:, [0, 1, 3]]
        else:
            angle_bases = torch.tensor([], device=dev, dtype=dt)
            batched_bond_graph = torch.tensor([], device=dev)
        return BatchedGraph(
            atomic_numbers=numbers.repeat(R), bond_bases_ag=bond_ag, bond_bases_bg=bond_bg,
            angle_bases=angle_bases, batched_atom_graph=torch.stack([g.src, g.dst], dim=1),
            batched_bond_graph=batched_bond_graph, atom_owners=node_replica(R, numbers.shape[0], dev),
            directed2undirected=g.directed2undirected, atom_positions=[pos_s], strains=[strain], volumes=volumes)

    def __call__(self, positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask):
        dev, dt = self.device, self.dtype
        positions = torch.as_tensor(positions, device=dev)
        cell = torch.as_tensor(cell, device=dev)
        numbers = torch.as_tensor(numbers, device=dev).to(torch.int64)
        edge_shift = torch.as_tensor(edge_shift, device=dev)
        R, N = positions.shape[0], positions.shape[1]
        g = self.graph(positions, cell, edge_src, edge_dst, edge_shift, edge_mask)
        volumes = torch.abs(torch.linalg.det(cell.detach().to(torch.float64))).to(dt)
        with torch.inference_mode(False), torch.enable_grad():
            # Positions r (I + eps) and cell h (I + eps): forces and strain derivative in one grad call.
            pos = positions.detach().to(dt).clone().requires_grad_(True)  # [R,N,3]
            strain = torch.zeros((R, 3, 3), device=dev, dtype=dt, requires_grad=True)
            deform = torch.eye(3, device=dev, dtype=dt) + strain
            pos_s = torch.bmm(pos, deform).reshape(R * N, 3)
            lat_s = torch.bmm(cell.detach().to(dt), deform)
            batched = self._batched_graph(g, numbers, pos_s, lat_s, strain, edge_shift, volumes)
            prediction = self.model._compute(batched, compute_force=False, compute_stress=False,
                                             compute_magmom="magmoms" in self.extras,
                                             return_site_energies="energies" in self.extras,
                                             return_crystal_feas="crystal_fea" in self.extras)
            energy = prediction["e"]
            if self.model.is_intensive:  # [R], per atom
                energy = energy * N
            dE_dr, dE_deps = torch.autograd.grad(energy.sum(), [pos, strain])
        energy = energy.detach()
        atom_ref = None if self._atom_ref is None else self._atom_ref[numbers - 1]
        if atom_ref is not None:
            energy = energy + atom_ref.sum()
        stress = 0.5 * (dE_deps + dE_deps.transpose(1, 2)) / volumes[:, None, None]
        if not self.extras:
            return energy, -dE_dr, stress
        extras = {}
        if "magmoms" in self.extras:
            extras["magmoms"] = torch.cat(prediction["m"]).detach().reshape(R, N)
        if "energies" in self.extras:  # CHGNet.forward adds the AtomRef shift per site
            site = torch.cat(prediction["site_energies"]).detach().reshape(R, N)
            extras["energies"] = site if atom_ref is None else site + atom_ref
        if "crystal_fea" in self.extras:
            extras["crystal_fea"] = prediction["crystal_fea"].detach().reshape(R, -1)
        return energy, -dE_dr, stress, extras


def load(name, device=None, dtype=None, extras=()) -> CHGNetEFS:
    """Load a pretrained CHGNet as a torch EFS object.

    ``name``: ``"chgnet-0.3.0"``, ``"chgnet-0.2.0"`` or ``"chgnet-r2scan"`` (case insensitive;
    the bare CHGNet names ``"0.3.0"`` etc. are accepted too), or the path of a CHGNet checkpoint
    file (``CHGNet.from_file``). ``device``: a torch device (default: the model follows JAX's
    platform, :func:`bridges.torch_bridge.resolve_device`). ``dtype``: ``float32`` (default,
    CHGNet's training precision) or ``float64`` (torch dtype, numpy/JAX dtype or name).
    ``extras``: names among :data:`EXTRAS` (``"magmoms"``, ``"energies"``, ``"crystal_fea"``) to
    compute in the same call (``Model.extras``); none by default.
    """
    torch_dtype = torch_float_dtype(dtype, "CHGNet", default=torch.float32)
    model, label = _load_network(name)
    return CHGNetEFS(model, name=label, device=resolve_device(device), dtype=torch_dtype, extras=extras)


def _load_network(name):
    """``(CHGNet, label)`` for a jaxpto name, a bare CHGNet name or a checkpoint file."""
    import os

    from chgnet.model import CHGNet

    name = os.fspath(name)
    key = name.strip().lower()
    key = key if key in MODEL_NAMES else f"chgnet-{key}"
    with _quiet():
        if key in MODEL_NAMES:
            return CHGNet.load(model_name=MODEL_NAMES[key], use_device="cpu", verbose=False), key
        if os.path.isfile(name):
            return CHGNet.from_file(name), f"chgnet:{os.path.basename(name)}"
    raise ValueError(f"unknown CHGNet model {name!r} (and no such file); known: {', '.join(MODEL_NAMES)}")


def _quiet():
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO())  # CHGNet prints its parameter count


def _is_own_calculator(calc) -> bool:
    from chgnet.model.dynamics import CHGNetCalculator

    return type(calc) is CHGNetCalculator


def efs_from_calculator(calc) -> CHGNetEFS | None:
    """:class:`CHGNetEFS` on a ``chgnet.model.dynamics.CHGNetCalculator``'s own loaded CHGNet, or None.

    The same model object (no second load), on ``calc.device`` in the model's own parameter dtype.
    (``CHGNetEFS`` puts the model in ``eval()`` mode and freezes its parameters; the calculator's
    own results are unaffected.) Only that exact class. The EFS returns the stress in eV/A^3
    whatever the calculator's ``stress_weight``: a calculator with a non-default weight reports
    other numbers, which the caller's first-configuration check catches.

    Extras as the calculator reports them (``CHGNetCalculator.calculate`` always runs task "efsm"
    with crystal features): ``magmoms`` and ``crystal_fea``, plus ``energies`` when the calculator
    has ``return_site_energies``.
    """
    if not _is_own_calculator(calc):
        return None
    model = calc.model
    version = getattr(model, "version", None)
    name = f"CHGNetCalculator.model[{version}]" if version else "CHGNetCalculator.model"
    extras = ("magmoms", "crystal_fea") + (("energies",) if getattr(calc, "return_site_energies", False) else ())
    return CHGNetEFS(model, name=name, device=calc.device, dtype=next(model.parameters()).dtype, extras=extras)


def model_identity(calc):
    """What makes two CHGNet calculators compute the same thing: the model object and ``stress_weight``."""
    if not _is_own_calculator(calc):
        return None
    from bridges.resolver import Same

    return Same(calc.model), float(calc.stress_weight)


def ase_calculator(name: str, *, device=None):
    """CHGNet's own ``CHGNetCalculator`` for a named model or a checkpoint file."""
    from chgnet.model.dynamics import CHGNetCalculator

    model, _ = _load_network(name)
    with _quiet():
        return CHGNetCalculator(model, use_device=str(resolve_device(device)))
