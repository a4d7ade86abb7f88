"""Device neighbour lists against ASE's ``neighbor_list`` and the overflow/re-allocation path."""

import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.neighborlist import neighbor_list

from jaxpto import neighbors as nl


def pair_set(nbrs, r=0):
    i, j, s, m = [np.asarray(x[r]) for x in nl.as_pairs(nbrs)]
    return {(a, b, tuple(np.rint(v).astype(int))) for a, b, v, k in zip(i, j, s, m) if k}


def ase_set(atoms, rmax):
    i, j, S = neighbor_list("ijS", atoms, rmax)
    return set(zip(i.tolist(), j.tolist(), map(tuple, S.tolist())))


def ase_set_at(atoms, positions, cell, rmax):
    """ASE's pair set for ``atoms`` moved to ``positions`` [1,N,3] in ``cell`` [1,3,3]."""
    moved = atoms.copy()
    moved.set_cell(np.asarray(cell[0]))
    moved.positions = np.asarray(positions[0])
    return ase_set(moved, rmax)


def random_triclinic(n_rep, seed, rattle=0.1, strain=0.08):
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.6) * n_rep
    cell = atoms.cell.array @ (np.eye(3) + strain * rng.normal(size=(3, 3)))
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


@pytest.mark.parametrize(
    "reps,cutoff,skin,seed",
    [
        ((1, 1, 1), 6.0, 0.0, 0),  # one atom, cell far smaller than the cutoff: many images
        ((2, 1, 3), 5.0, 0.5, 1),  # small triclinic cell, several images
        ((3, 3, 3), 4.0, 1.0, 2),
        ((6, 6, 6), 3.5, 0.5, 3),  # large enough for the cell-list path
    ],
)
def test_matches_ase_on_triclinic_cells(reps, cutoff, skin, seed):
    atoms = random_triclinic(reps, seed)
    # Unwrapped positions: atoms outside the cell must not matter.
    rng = np.random.default_rng(seed)
    atoms.positions += atoms.cell.array.T @ rng.integers(-2, 3, size=(3,)) * 1.0
    nbrs = nl.allocate(atoms.positions[None], atoms.cell.array[None], cutoff, skin=skin)
    assert nbrs.grid is None  # automatic choice at these sizes: all pairs over pruned images
    assert pair_set(nbrs) == ase_set(atoms, cutoff + skin)
    if reps == (6, 6, 6):
        cells = nl.allocate(atoms.positions[None], atoms.cell.array[None], cutoff, skin=skin, method="cell-list")
        assert cells.grid is not None  # the cell-list path is exercised too
        assert pair_set(cells) == ase_set(atoms, cutoff + skin)
        # Bins too small for their atoms: flagged and enlarged until every pair is found.
        tight = nl.allocate(atoms.positions[None], atoms.cell.array[None], cutoff, skin=skin, method="cell-list",
                            bin_capacity=2)
        assert tight.bin_capacity > 2 and pair_set(tight) == ase_set(atoms, cutoff + skin)
        with pytest.raises(ValueError, match="cell-list"):
            nl.allocate(atoms.positions[None] * 0.3, atoms.cell.array[None] * 0.3, cutoff, skin=skin,
                        method="cell-list")


def test_non_periodic_and_mixed_pbc():
    atoms = random_triclinic((3, 3, 2), 5)
    atoms.pbc = (True, False, True)
    nbrs = nl.allocate(atoms.positions[None], atoms.cell.array[None], 4.0, skin=0.3, pbc=atoms.pbc)
    assert pair_set(nbrs) == ase_set(atoms, 4.3)


def test_batched_replicas_each_match_ase():
    systems = [random_triclinic((2, 2, 2), s) for s in range(3)]
    pos = np.stack([a.positions for a in systems])
    cell = np.stack([a.cell.array for a in systems])
    nbrs = nl.allocate(pos, cell, 4.5, skin=0.5)
    for r, a in enumerate(systems):
        assert pair_set(nbrs, r) == ase_set(a, 5.0)


def test_rebuild_criterion_and_update_keep_list_complete():
    atoms = random_triclinic((3, 3, 3), 7, rattle=0.0)
    pos0 = jnp.asarray(atoms.positions[None])
    cell0 = jnp.asarray(atoms.cell.array[None])
    nbrs = nl.allocate(pos0, cell0, 4.0, skin=1.0)
    assert not bool(nl.needs_rebuild(nbrs, pos0, cell0)[0])
    rng = np.random.default_rng(0)
    # Small moves plus a 3% cell compression: every true pair must stay in the list.
    strained_cell = cell0 * 0.97
    moved = pos0 * 0.97 + 0.1 * rng.normal(size=pos0.shape)
    updated = nl.update(nbrs, moved, strained_cell)
    true_pairs = ase_set_at(atoms, moved, strained_cell, 4.0)
    assert true_pairs <= pair_set(updated)
    # A large move must trigger a rebuild.
    far = pos0.at[0, 0, 0].add(0.6)
    assert bool(nl.needs_rebuild(nbrs, far, cell0)[0])
    assert int(nl.update(nbrs, far, cell0).n_builds[0]) == int(nbrs.n_builds[0]) + 1


def test_overflow_is_detected_and_reallocation_recovers():
    atoms = random_triclinic((3, 3, 3), 9)
    pos = jnp.asarray(atoms.positions[None])
    cell = jnp.asarray(atoms.cell.array[None])
    nbrs = nl.allocate(pos, cell, 3.0, skin=0.2, capacity_factor=1.0)
    # Compress by 25%: many more neighbours than the capacity allows.
    squeezed_pos, squeezed_cell = pos * 0.75, cell * 0.75
    rebuilt = nl.build(nbrs, squeezed_pos, squeezed_cell)
    assert bool(rebuilt.did_overflow[0])
    assert int(rebuilt.max_count[0]) > nbrs.capacity
    bigger = nl.reallocate(rebuilt, squeezed_pos, squeezed_cell)
    assert bigger.capacity > nbrs.capacity and not bool(bigger.did_overflow[0])
    assert pair_set(bigger) == ase_set_at(atoms, squeezed_pos, squeezed_cell, 3.2)


def test_shrinking_small_cell_flags_missing_images():
    atoms = bulk("Cu", "fcc", a=3.6)
    pos = jnp.asarray(atoms.positions[None])
    cell = jnp.asarray(atoms.cell.array[None])
    nbrs = nl.allocate(pos, cell, 5.0, skin=0.0)
    rebuilt = nl.build(nbrs, pos * 0.8, cell * 0.8)
    assert bool(rebuilt.did_overflow[0]) and bool(rebuilt.layout_bad[0])


def test_bad_input():
    with pytest.raises(ValueError, match="cutoff"):
        nl.allocate(np.zeros((1, 2, 3)), np.eye(3)[None] * 5, -1.0)
    with pytest.raises(ValueError, match="singular"):
        nl.allocate(np.zeros((1, 2, 3)), np.zeros((1, 3, 3)), 2.0)


def test_pruned_images_match_ase_and_their_overflow_recovers():
    """All-pairs path with candidate images pruned to the cell padded by rmax (mid-size cells)."""
    atoms = random_triclinic((4, 4, 4), 11, strain=0.05)
    pos = jnp.asarray(atoms.positions[None])
    cell = jnp.asarray(atoms.cell.array[None])
    nbrs = nl.allocate(pos, cell, 4.0, skin=1.0)
    m = int(np.prod([2 * k + 1 for k in nbrs.images]))
    assert nbrs.grid is None and nbrs.ghost_capacity < 0.5 * m * len(atoms)  # pruning is active
    assert pair_set(nbrs) == ase_set(atoms, 5.0)
    # A 20% compression needs more candidate images than allocated: flagged, then recovered.
    squeezed_pos, squeezed_cell = pos * 0.8, cell * 0.8
    rebuilt = nl.build(nbrs, squeezed_pos, squeezed_cell)
    assert bool(rebuilt.layout_bad[0]) and bool(rebuilt.did_overflow[0])
    bigger = nl.reallocate(nbrs, squeezed_pos, squeezed_cell, overflowed=rebuilt, overflowed_cell=squeezed_cell)
    assert bigger.ghost_capacity > nbrs.ghost_capacity and not bool(bigger.did_overflow[0])
    assert pair_set(bigger) == ase_set_at(atoms, squeezed_pos, squeezed_cell, 5.0)


def test_neighbour_order_is_candidate_order():
    """Each row holds every neighbour once, real slots first, padding (j = N, zero offset) last."""
    atoms = random_triclinic((2, 2, 2), 4)
    nbrs = nl.allocate(atoms.positions[None], atoms.cell.array[None], 4.0, skin=0.5)
    idx, sh = np.asarray(nbrs.idx[0]), np.asarray(nbrs.shifts[0])
    n = len(atoms)
    for i in range(n):
        row = idx[i]
        real = row < n
        assert np.all(real[: real.sum()])  # padding only at the end
        assert np.all(sh[i][~real] == 0)
        assert len(set(zip(row[real].tolist(), map(tuple, np.rint(sh[i][real]).astype(int).tolist())))) == real.sum()


@pytest.mark.parametrize("make,rmax", [
    (lambda: bulk("Cu", "fcc", a=3.6).repeat((5, 5, 4)), 6.2),  # crystal shells: the density estimate missed
    (lambda: random_triclinic(3, seed=4), 5.5),
    (lambda: bulk("Cu", "fcc", a=3.6), 6.0),  # one atom: its own periodic images are its neighbours
])
def test_allocation_counts_on_the_host_and_builds_once(make, rmax, monkeypatch):
    """The capacity comes from a host count (ASE's neighbour list), which equals the compiled
    build's own count, so allocation compiles the build once (it compiled twice for a 100-atom Cu
    crystal: the density estimate was 160 for a needed 176)."""
    atoms = make()
    pos, cell = atoms.positions[None], atoms.cell.array[None]
    host = nl._host_max_count(pos, cell, (True, True, True), rmax)
    calls = []
    real = nl._jit_build
    monkeypatch.setattr(nl, "_jit_build", lambda *a: calls.append(1) or real(*a))
    nbrs = nl.allocate(pos, cell, rmax - 1.0, skin=1.0)
    assert host == int(np.max(np.asarray(nbrs.max_count)))
    assert len(calls) == 1
    assert pair_set(nbrs) == ase_set(atoms, rmax)
