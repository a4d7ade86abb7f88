r"""A jaxpto model as a ``pair_style jax/kk`` bundle for LAMMPS (lammps-jax's JSON format).

`lammps-jax <https://pypi.org/project/lammps-jax/>`_ (0.2.1) runs a JAX potential inside LAMMPS'
KOKKOS package: the model is a program serialised with :mod:`jax.export` (portable StableHLO,
VHLO bytecode) that the pair style compiles through the PJRT C API; LAMMPS keeps its own domain
decomposition over MPI ranks and GPUs. This module writes that bundle for any
:class:`jaxpto.model.Model` that gives per-atom energies (``Model.site_energies``), without
importing lammps-jax (its metadata excludes jaxlib 0.10.2; the bundle is plain JSON).

The program's inputs (fixed capacities, what the pair style packs on every step)
---------------------------------------------------------------------------------
``positions [A,3]`` (owned atoms first, then ghost atoms: periodic images and other ranks'
atoms, as explicit coordinates), ``species [A]`` (LAMMPS type - 1), ``nlocal``, ``nghost``,
``senders [E]``, ``receivers [E]``, ``edge_mask [E]`` (LAMMPS' neighbour list as directed edges,
padding indexes ``A``), ``box [3,3]`` (rows ``(xprd,0,0), (xy,yprd,0), (xz,yz,zprd)``, i.e. ASE's
cell rows). ``A`` = ``max_atoms``, ``E`` = ``max_edges`` per rank. Outputs: the rank's energy
(eV) and the forces on all ``A`` rows (eV/A); LAMMPS adds the ghost rows' forces to their owners
(reverse communication, ``newton on``) and takes the virial from ``sum_i f_i x_i`` over owned and
ghost rows, which is the strain derivative because ghosts are explicit coordinates.

Why site energies, and ``n_hops``
---------------------------------
A rank owns ``nlocal`` atoms and sees ghosts out to ``n_hops * cutoff + skin``; its energy is

.. math:: E_{rank} = \sum_{i < n_{local}} e_i, \qquad E = \sum_{ranks} E_{rank},

and :math:`F = -\partial E_{rank} / \partial x` on every row, so the total energy and forces are
exact under any decomposition if each site energy :math:`e_i` only depends on atoms the rank has.
A model's *total* energy cannot be split this way (a rank's ghosts belong to other ranks), which
is why only models with local site energies are exported. ``n_hops = max(2, receptive_hops)``:
lammps-jax gives full neighbour rows to owned and ghost atoms only in its ghost scheme
(``n_hops >= 2``; its one-hop scheme uses a newton-on half list, which leaves the per-atom
energies of many-body models incomplete); a graph network with L message-passing layers needs
``n_hops = L``.

Inside the program the edges become the engine's neighbour list (``[A, K]`` slots, the contract
of :mod:`jaxpto.neighbors` with all image offsets zero, since ghosts are explicit) and the model
is called through its own ``site_energies``; no model family is known here. More than ``K``
neighbours for one atom (``neighbors_per_atom``) cannot raise inside a compiled program: it
makes the energy and forces NaN, which LAMMPS reports (lost atoms / NaN thermo); re-export with
a larger ``neighbors_per_atom``. Too many atoms or edges per rank are caught by the pair style.

Units: LAMMPS ``units metal`` (eV, Angstrom, ps, bar), which are ASE's energy and length units;
the bundle never sees time or pressure.

Files written: ``<stem>.lammps-jax.json`` (what ``pair_coeff * * FILE`` reads) and the same three
programs as :func:`jax.export.Exported.serialize` artifacts (``<stem>.energy.jax_export``,
``.forces.jax_export``, ``.energy_and_forces.jax_export``) for Python
(:func:`load_exported`); their StableHLO bytes are the bundle's, byte for byte (checked).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpto.model import Model
from jaxpto.neighbors import NeighborList

# lammps-jax's tag for bundles with n_hops > 1 (ghost scheme): plugins that predate n_hops reject it
# instead of packing a half list.
BUNDLE_FORMAT = "lammps-jax-json-distributed"
PROGRAMS = ("force", "energy", "energy_and_forces")  # lammps-jax's program names
ARG_NAMES = ("positions", "species", "nlocal", "nghost", "senders", "receivers", "edge_mask", "box")


@dataclasses.dataclass(frozen=True)
class Capacities:
    """Per-rank capacities of a bundle (static shapes of the exported programs).

    ``max_atoms``: owned + ghost atoms of one rank; ``max_edges``: directed edges of one rank
    (every neighbour pair within cutoff + skin, both directions, owned and ghost rows);
    ``neighbors_per_atom``: the slots of the model's neighbour list (``K``).
    """

    max_atoms: int
    max_edges: int
    neighbors_per_atom: int

    def __post_init__(self):
        for name in ("max_atoms", "max_edges", "neighbors_per_atom"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def n_hops_for(model: Model) -> int:
    """lammps-jax's ``n_hops`` for a model: ``max(2, receptive_hops)`` (see module docstring)."""
    require_site_energies(model)
    return max(2, int(model.receptive_hops))


def require_site_energies(model: Model) -> None:
    """Raise a ``ValueError`` that names the fix when ``model`` has no local site energies."""
    if getattr(model, "site_energies", None) is None:
        raise ValueError(
            f"model {model.name!r} gives no per-atom site energies (Model.site_energies), so it cannot "
            "be split over LAMMPS ranks: a rank's energy is the sum over the atoms it owns. JAX-native "
            "EMT (without asap_cutoff), Lennard-Jones and Morse give them; for another JAX model build "
            "it with jaxpto.model.site_energy_model(...) or pass site_energies= and receptive_hops= to "
            "Model. Torch models: use the family's own LAMMPS pair style (jaxpto export-lammps writes "
            "its deck).")


def estimate_capacities(atoms, model: Model, *, skin: float = 1.0, ranks: int = 1,
                        margin: float = 1.3) -> Capacities:
    """Capacities for ``atoms`` split over ``ranks`` equal slabs along the longest axis (estimate).

    Ghosts: every image within ``n_hops * cutoff + skin`` of the rank's sub-box; neighbours: the
    mean density times the sphere of radius ``cutoff + skin``; all times ``margin``. Pass
    explicit :class:`Capacities` for other decompositions (the pair style stops the run with a
    clear error when a rank exceeds ``max_atoms`` or ``max_edges``).
    """
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    cell = np.asarray(atoms.cell, float)
    volume = abs(np.linalg.det(cell))
    if volume <= 0:
        raise ValueError("the structure needs a periodic cell with a nonzero volume")
    n = len(atoms)
    density = n / volume
    shell = n_hops_for(model) * model.cutoff + skin
    heights = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    sub = heights.copy()
    sub[int(np.argmax(heights))] /= ranks
    with_ghosts = density * float(np.prod(sub + 2.0 * shell))
    max_atoms = int(math.ceil(margin * with_ghosts))
    per_atom = density * 4.0 / 3.0 * math.pi * (model.cutoff + skin) ** 3
    k = 8 * int(math.ceil(margin * per_atom / 8))
    return Capacities(max_atoms=max_atoms, max_edges=max_atoms * k, neighbors_per_atom=k)


# ----------------------------------------------------------------------------------------------
# The exported function
# ----------------------------------------------------------------------------------------------


def edges_to_slots(senders, receivers, edge_mask, n_rows: int, capacity: int):
    """Directed edges -> ``idx [n_rows, capacity]`` (padding ``n_rows``) and an overflow flag.

    Edges are sorted by sender (stable, padding last) and each gets its rank within its sender's
    group as slot; a group longer than ``capacity`` sets the flag.
    """
    n_edges = senders.shape[0]
    rows = jnp.where(edge_mask, senders, n_rows).astype(jnp.int32)
    cols = jnp.where(edge_mask, receivers, n_rows).astype(jnp.int32)
    order = jnp.argsort(rows, stable=True)
    rows, cols = rows[order], cols[order]
    slot = jnp.arange(n_edges, dtype=jnp.int32) - jnp.searchsorted(rows, rows, side="left").astype(jnp.int32)
    real = rows < n_rows
    overflow = jnp.any(real & (slot >= capacity))
    keep = real & (slot < capacity)
    # Dropped and padding edges write into an extra row that is cut off.
    idx = jnp.full((n_rows + 1, capacity), n_rows, jnp.int32)
    idx = idx.at[jnp.where(keep, rows, n_rows), jnp.where(keep, slot, 0)].set(cols)
    return idx[:n_rows], overflow


def _neighbor_list(idx, dtype, cutoff: float) -> NeighborList:
    """A one-replica engine neighbour list over explicit (ghost) coordinates: all offsets zero."""
    n, k = idx.shape
    return NeighborList(
        idx=idx[None], shifts=jnp.zeros((1, n, k, 3), dtype),
        reference_positions=jnp.zeros((1, n, 3), dtype), reference_cell=jnp.zeros((1, 3, 3), dtype),
        did_overflow=jnp.zeros((1,), bool), max_count=jnp.zeros((1,), jnp.int32),
        n_builds=jnp.zeros((1,), jnp.int32), layout_bad=jnp.zeros((1,), bool),
        min_heights=jnp.zeros((1, 3), dtype), cutoff=float(cutoff), skin=0.0, capacity=k,
        images=(0, 0, 0), pbc=(False, False, False))


def rank_site_energies(model: Model, type_numbers: Sequence[int], capacities: Capacities, dtype):
    """``f(positions, species, nlocal, nghost, senders, receivers, edge_mask, box) -> e [A]``.

    The model's site energies on the rank's atoms, NaN everywhere if an atom has more than
    ``neighbors_per_atom`` neighbours. Rows past ``nlocal + nghost`` are padding.
    """
    require_site_energies(model)
    table = jnp.asarray(np.asarray(type_numbers, np.int32))
    n, k = capacities.max_atoms, capacities.neighbors_per_atom

    def sites(positions, species, nlocal, nghost, senders, receivers, edge_mask, box):
        numbers = table[jnp.clip(species, 0, table.shape[0] - 1)]
        idx, overflow = edges_to_slots(senders, receivers, edge_mask, n, k)
        nbrs = _neighbor_list(idx, dtype, model.cutoff)
        e = model.site_energies(positions[None], box[None], numbers, nbrs)[0].astype(dtype)
        return jnp.where(overflow, jnp.asarray(jnp.nan, dtype), e)

    return sites


def _anchor(args, dtype):
    """Zero that uses every input, so that jax.export keeps all eight (the pair style passes all)."""
    total = jnp.zeros((), dtype)
    for a in args:
        total = total + jax.lax.stop_gradient(jnp.ravel(a)[0].astype(dtype)) * 0
    return total


def rank_programs(model: Model, type_numbers: Sequence[int], capacities: Capacities, dtype):
    """The three jitted programs of the bundle: forces, energy, (energy, forces)."""
    sites = rank_site_energies(model, type_numbers, capacities, dtype)
    owned = jnp.arange(capacities.max_atoms)

    def energy(*args):
        e = sites(*args)
        return jnp.sum(jnp.where(owned < args[2], e, jnp.zeros((), dtype))) + _anchor(args, dtype)

    def energy_and_forces(*args):
        value, grad = jax.value_and_grad(lambda pos: energy(pos, *args[1:]))(args[0])
        return value, _anchor(args, dtype) - grad  # the anchor keeps every input in the force program too

    return (jax.jit(lambda *a: energy_and_forces(*a)[1]), jax.jit(energy), jax.jit(energy_and_forces))


def argument_specs(capacities: Capacities, dtype):
    """``jax.ShapeDtypeStruct`` of the eight inputs, in the pair style's order."""
    a, e = capacities.max_atoms, capacities.max_edges
    i32 = jnp.int32
    return (jax.ShapeDtypeStruct((a, 3), dtype), jax.ShapeDtypeStruct((a,), i32), jax.ShapeDtypeStruct((), i32),
            jax.ShapeDtypeStruct((), i32), jax.ShapeDtypeStruct((e,), i32), jax.ShapeDtypeStruct((e,), i32),
            jax.ShapeDtypeStruct((e,), jnp.bool_), jax.ShapeDtypeStruct((3, 3), dtype))


# ----------------------------------------------------------------------------------------------
# Compile options (what PJRT compiles the programs with)
# ----------------------------------------------------------------------------------------------


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _protobuf_fields(buf: bytes):
    """Yield ``(field_number, wire_type, raw_bytes, payload)`` of a serialized protobuf message."""
    i = 0
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        wire = key & 7
        payload = b""
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(buf, i)
            payload = buf[i:i + length]
            i += length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        yield key >> 3, wire, buf[start:i], payload


def portable_compile_options() -> bytes:
    """Serialized ``CompileOptionsProto``: one replica, one partition, portable executable.

    ``executable_build_options.debug_options`` (field 3 inside field 3) is removed: shipped
    debug options would override the XLA flags of the machine that runs LAMMPS.
    """
    from jaxlib import xla_client

    options = xla_client.CompileOptions()
    options.num_replicas = 1
    options.num_partitions = 1
    options.compile_portable_executable = True
    out = bytearray()
    for number, wire, raw, payload in _protobuf_fields(options.SerializeAsString()):
        if number == 3 and wire == 2:  # executable_build_options
            inner = b"".join(r for n_, _, r, _ in _protobuf_fields(payload) if n_ != 3)
            out += _encode_varint(3 << 3 | 2) + _encode_varint(len(inner)) + inner
        else:
            out += raw
    return bytes(out)


# ----------------------------------------------------------------------------------------------
# Writing and reading bundles
# ----------------------------------------------------------------------------------------------


def _precision_dtype(precision: str):
    if precision == "float32":
        return jnp.float32
    if precision == "float64":
        if not jax.config.jax_enable_x64:
            raise ValueError("precision='float64' needs JAX's 64-bit mode: set JAX_ENABLE_X64=1 (or "
                             "jax.config.update('jax_enable_x64', True)) before exporting")
        return jnp.float64
    raise ValueError(f"precision must be 'float32' or 'float64', got {precision!r}")


def export_bundle(model: Model, out_dir: str, type_elements: Sequence[int | str], capacities: Capacities,
                  *, precision: str = "float32", platform: str = "cuda", stem: str = "model") -> dict:
    """Write ``out_dir/<stem>.lammps-jax.json`` (+ the ``.jax_export`` artifacts); return the bundle dict.

    ``type_elements``: the element of LAMMPS atom type 1, 2, ... (symbols or atomic numbers), the
    order of the data file and of ``pair_coeff``. ``platform``: "cuda" (GPU builds of LAMMPS) or
    "cpu" (host Kokkos builds with XLA's CPU PJRT plugin); a program runs only on the platform it
    was exported for.
    """
    from ase.data import atomic_numbers, chemical_symbols

    require_site_energies(model)
    if platform not in ("cuda", "cpu"):
        raise ValueError(f"platform must be 'cuda' or 'cpu', got {platform!r}")
    dtype = _precision_dtype(precision)
    numbers = [atomic_numbers[t] if isinstance(t, str) else int(t) for t in type_elements]
    if not numbers:
        raise ValueError("type_elements is empty: give the element of each LAMMPS atom type")
    if hasattr(model, "check_elements"):
        model.check_elements(numbers)
    specs = argument_specs(capacities, dtype)
    os.makedirs(out_dir, exist_ok=True)
    programs, artifacts = {}, {}
    with jax.default_matmul_precision("highest"):  # no TF32 on GPUs: forces stay float32-exact
        for name, fn in zip(PROGRAMS, rank_programs(model, numbers, capacities, dtype)):
            exported = jax.export.export(fn, platforms=(platform,))(*specs)
            if tuple(exported.module_kept_var_idx) != tuple(range(len(specs))):
                raise AssertionError(f"jax.export dropped inputs of the {name} program: "
                                     f"kept {exported.module_kept_var_idx}")
            programs[f"{name}_mlir_b64"] = base64.b64encode(exported.mlir_module_serialized).decode("ascii")
            artifacts[name] = exported.serialize()
    contract = {
        "input_layout": "sparse-edge",
        "max_atoms": capacities.max_atoms,
        "max_edges": capacities.max_edges,
        "cutoff": float(model.cutoff),
        "unit_style": "metal",
        "precision": precision,
        "force_output": "atom-force",
        "newton": "on",
        "n_hops": n_hops_for(model),
        "edge_pairing": "full",
        "comm_widths": [],
        "comm_sites": [0, 0, 0],
        "custom_call_targets": [],
        "uses_box": True,
        "pair_sum": False,
        "n_species": len(numbers),
    }
    from jaxpto import __version__

    bundle = {
        "format": BUNDLE_FORMAT,
        "programs": programs,
        "export_info": {
            "jax_version": jax.__version__,
            "platform": platform,
            # jaxpto's own keys; none is a key the pair style looks up (it takes the first match).
            "exporter": f"jaxpto {__version__}",
            "model_name": model.name,
            "type_symbols": [chemical_symbols[z] for z in numbers],
            "receptive_hops": int(model.receptive_hops),
            "neighbors_per_atom": capacities.neighbors_per_atom,
        },
        "compile_options_b64": base64.b64encode(portable_compile_options()).decode("ascii"),
        "contract": contract,
    }
    with open(os.path.join(out_dir, f"{stem}.lammps-jax.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(bundle, indent=2, sort_keys=True) + "\n")
    for name, blob in artifacts.items():
        with open(os.path.join(out_dir, f"{stem}.{name}.jax_export"), "wb") as f:
            f.write(blob)
    return bundle


def load_bundle(path: str) -> dict:
    """Read a ``.lammps-jax.json`` bundle (a dict)."""
    with open(path, encoding="utf-8") as f:
        bundle = json.load(f)
    if bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path} is not a {BUNDLE_FORMAT!r} bundle (format {bundle.get('format')!r})")
    return bundle


def load_exported(out_dir: str, program: str = "energy_and_forces", stem: str = "model"):
    """The bundle's program deserialised with :func:`jax.export.deserialize` (call it with ``.call``)."""
    if program not in PROGRAMS:
        raise ValueError(f"program must be one of {PROGRAMS}, got {program!r}")
    with open(os.path.join(out_dir, f"{stem}.{program}.jax_export"), "rb") as f:
        return jax.export.deserialize(bytearray(f.read()))


# ----------------------------------------------------------------------------------------------
# What the pair style feeds the bundle, emulated on the host (checks and tests)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RankInputs:
    """One rank's inputs as numpy arrays (``args``, the eight program inputs) and bookkeeping:
    ``owner [nlocal + nghost]``: index of the atom (in the periodic structure) each row images."""

    args: tuple
    owner: np.ndarray
    nlocal: int
    nghost: int
    n_edges: int


def pack_rank(atoms, type_elements, shell: float, pair_cutoff: float, capacities: Capacities, *,
              lo=(0.0, 0.0, 0.0), hi=(1.0, 1.0, 1.0), dtype=np.float32) -> RankInputs:
    """Pack the sub-box ``[lo, hi)`` (fractional) of periodic ``atoms`` as LAMMPS would for one rank.

    Owned: atoms whose wrapped fractional coordinates lie in ``[lo, hi)``; ghosts: every other
    periodic image within ``shell`` (Angstrom, per axis, as LAMMPS' ghost slabs) of the sub-box;
    edges: every pair of present atoms closer than ``pair_cutoff``, both directions, on owned and
    ghost rows (LAMMPS' full list with ghost rows). Positions are absolute coordinates (the
    owned ones wrapped into the box), the box is the cell.
    """
    from ase.data import atomic_numbers
    from scipy.spatial import cKDTree

    cell = np.asarray(atoms.cell, float)
    inv = np.linalg.inv(cell)
    heights = 1.0 / np.linalg.norm(inv.T, axis=1)
    margin = shell / heights
    frac = np.asarray(atoms.get_scaled_positions(wrap=True))
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    reach = [range(-int(math.ceil(m)) - 1, int(math.ceil(m)) + 2) for m in margin]
    owned, ghost_pos, ghost_owner = [], [], []
    for s in np.array(np.meshgrid(*reach, indexing="ij")).reshape(3, -1).T:
        f = frac + s
        inside = np.all((f >= lo) & (f < hi), axis=1)
        near = np.all((f >= lo - margin) & (f < hi + margin), axis=1)
        if not s.any():
            owned = np.nonzero(inside)[0]
        sel = np.nonzero(near & ~inside)[0]
        ghost_pos.append(f[sel] @ cell)
        ghost_owner.append(sel)
    owner = np.concatenate([owned] + ghost_owner)
    positions = np.concatenate([frac[owned] @ cell] + ghost_pos)
    nlocal, total = len(owned), len(owner)
    if total > capacities.max_atoms:
        raise ValueError(f"rank holds {total} atoms (owned + ghosts) but max_atoms is {capacities.max_atoms}")
    pairs = cKDTree(positions).query_pairs(float(pair_cutoff), output_type="ndarray")
    i = np.concatenate([pairs[:, 0], pairs[:, 1]])
    j = np.concatenate([pairs[:, 1], pairs[:, 0]])
    if len(i) > capacities.max_edges:
        raise ValueError(f"rank has {len(i)} edges but max_edges is {capacities.max_edges}")
    types = {(atomic_numbers[t] if isinstance(t, str) else int(t)): k for k, t in enumerate(type_elements)}
    species = np.array([types[int(z)] for z in atoms.numbers[owner]], np.int32)
    a, e = capacities.max_atoms, capacities.max_edges
    pos = np.zeros((a, 3), dtype)
    pos[:total] = positions
    spec = np.zeros((a,), np.int32)
    spec[:total] = species
    senders = np.full((e,), a, np.int32)
    receivers = np.full((e,), a, np.int32)
    mask = np.zeros((e,), bool)
    senders[:len(i)], receivers[:len(i)], mask[:len(i)] = i, j, True
    args = (pos, spec, np.int32(nlocal), np.int32(total - nlocal), senders, receivers, mask, cell.astype(dtype))
    return RankInputs(args=args, owner=owner, nlocal=nlocal, nghost=total - nlocal, n_edges=len(i))


def evaluate_decomposed(call, atoms, type_elements, shell: float, pair_cutoff: float, capacities: Capacities,
                        *, ranks: int = 1, axis: int | None = None, dtype=np.float32):
    """Energy and forces of periodic ``atoms`` as LAMMPS would get them from a bundle over ``ranks``.

    ``call(*args) -> (energy, forces [A,3])`` is the bundle's energy-and-forces program (e.g.
    ``load_exported(...).call``). The cell is cut into ``ranks`` equal slabs along ``axis`` (default:
    the direction of the largest cell height, as :func:`estimate_capacities` assumes); rank
    energies are summed and every row's force is added to the atom it images (LAMMPS' reverse
    communication). Returns ``(energy, forces [N,3], per-rank RankInputs)``.
    """
    if axis is None:
        axis = int(np.argmax(1.0 / np.linalg.norm(np.linalg.inv(np.asarray(atoms.cell, float)).T, axis=1)))
    forces = np.zeros((len(atoms), 3))
    energy = 0.0
    packed = []
    for r in range(ranks):
        lo, hi = np.zeros(3), np.ones(3)
        lo[axis], hi[axis] = r / ranks, (r + 1) / ranks
        rank = pack_rank(atoms, type_elements, shell, pair_cutoff, capacities, lo=lo, hi=hi, dtype=dtype)
        e, f = call(*rank.args)
        energy += float(e)
        n = rank.nlocal + rank.nghost
        np.add.at(forces, rank.owner, np.asarray(f, float)[:n])
        packed.append(rank)
    return energy, forces, packed


def check_bundle(out_dir: str, model: Model, atoms, type_elements, capacities: Capacities, *,
                 skin: float = 1.0, ranks: int = 1, stem: str = "model") -> dict:
    """Run the written bundle on ``atoms`` as LAMMPS would feed it and compare with ``model.compute``.

    Returns ``{"ranks", "energy_bundle", "energy_model", "energy_error_per_atom", "max_force_error"}``
    (eV, eV/A). The reference is the model on the periodic cell with the engine's own neighbour
    list, in the bundle's precision.
    """
    from jaxpto.neighbors import allocate

    exported = load_exported(out_dir, "energy_and_forces", stem)
    dtype = np.dtype(exported.in_avals[0].dtype)
    shell = n_hops_for(model) * model.cutoff + skin
    energy, forces, _ = evaluate_decomposed(exported.call, atoms, type_elements, shell, model.cutoff + skin,
                                            capacities, ranks=ranks, dtype=dtype)
    pos = jnp.asarray(atoms.positions[None], dtype)
    cell = jnp.asarray(np.asarray(atoms.cell)[None], dtype)
    ref = model.compute(pos, cell, jnp.asarray(atoms.numbers), allocate(pos, cell, model.cutoff, skin=skin))
    e_ref, f_ref = float(ref.energy[0]), np.asarray(ref.forces[0], float)
    return {"ranks": ranks, "energy_bundle": energy, "energy_model": e_ref,
            "energy_error_per_atom": abs(energy - e_ref) / len(atoms),
            "max_force_error": float(np.max(np.abs(forces - f_ref)))}
