"""The DLPack torch bridge (bridges.torch_bridge) and the model registry (bridges.registry).

A small torch Lennard-Jones written against the torch-EFS contract checks the edge convention
(d = r_dst - r_src + S @ cell), the batching and the stress sign against ASE's LennardJones;
the zero-copy claim is checked on pointers; jit + lax.scan, vmap-free batching, the pure_callback
fallback and the registry's errors are covered. No SevenNet needed (see test_bridges_sevenn.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.lj import LennardJones

import torch  # noqa: E402  (a core dependency)

import jaxpto  # noqa: E402
from bridges.torch_bridge import TorchBridge, as_jax_model, edges_from_neighbors  # noqa: E402
from jaxpto import neighbors as nl  # noqa: E402
from jaxpto.model import Model  # noqa: E402

SIGMA, EPS, RC = 2.3, 0.4, 5.0


class TorchLJ:
    """ASE's LennardJones (shifted, smooth=False) as a torch EFS; forces/stress by autograd."""

    cutoff = RC
    elements = None
    name = "torch-lj"

    def __init__(self):
        self.calls = []

    def __call__(self, positions, cell, numbers, edge_src, edge_dst, edge_shift, edge_mask):
        assert edge_src.dtype == torch.int64 and edge_dst.dtype == torch.int64
        assert edge_mask.dtype == torch.bool and numbers.dtype == torch.int64
        assert edge_shift.dtype == positions.dtype
        self.calls.append(tuple(positions.shape))
        R, N = positions.shape[:2]
        eps = torch.zeros((R, 3, 3), dtype=positions.dtype, requires_grad=True)
        pos = positions.detach().clone().requires_grad_(True)
        deform = torch.eye(3, dtype=positions.dtype) + eps
        p = torch.bmm(pos, deform)
        h = torch.bmm(cell, deform)
        rep = torch.arange(R)[:, None].expand(edge_src.shape)
        m = edge_mask
        d = p[rep[m], edge_dst[m]] - p[rep[m], edge_src[m]] + torch.einsum(
            "ek,ekl->el", edge_shift[m], h[rep[m]])
        r2 = (d * d).sum(-1)
        s6 = (SIGMA**2 / r2) ** 3
        e0 = 4 * EPS * ((SIGMA / RC) ** 12 - (SIGMA / RC) ** 6)
        pair = torch.where(r2 < RC**2, 4 * EPS * (s6 * s6 - s6) - e0, torch.zeros_like(r2))
        energy = torch.zeros(R, dtype=positions.dtype).index_add(0, rep[m], 0.5 * pair)
        gpos, geps = torch.autograd.grad(energy.sum(), [pos, eps])
        volume = torch.abs(torch.linalg.det(cell))
        stress = 0.5 * (geps + geps.transpose(1, 2)) / volume[:, None, None]
        return energy.detach(), -gpos, stress


def _structures():
    rng = np.random.default_rng(3)
    a = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 1, 1))  # 8 atoms, cell smaller than 2*rc
    out = []
    for k in range(3):
        b = a.copy()
        strain = np.eye(3) + 0.03 * rng.standard_normal((3, 3))
        b.set_cell(b.cell[:] @ strain, scale_atoms=True)
        b.positions += rng.normal(0, 0.08, b.positions.shape)
        out.append(b)
    return out


def _ase(at):
    at = at.copy()
    at.calc = LennardJones(sigma=SIGMA, epsilon=EPS, rc=RC)
    return at.get_potential_energy(), at.get_forces(), at.get_stress(voigt=False)


def _inputs(atoms_list, dtype=jnp.float64, skin=1.0, cutoff=RC):
    pos = jnp.asarray(np.stack([a.positions for a in atoms_list]), dtype)
    cell = jnp.asarray(np.stack([np.asarray(a.cell) for a in atoms_list]), dtype)
    nbrs = nl.allocate(pos, cell, cutoff, skin=skin)
    return pos, cell, jnp.asarray(atoms_list[0].numbers), nbrs


def test_contract_matches_ase_lj_batched_in_jit():
    """R=3 strained, rattled cells in one torch call equal ASE's LennardJones (float64)."""
    efs = TorchLJ()
    model = as_jax_model(efs)
    assert isinstance(model, Model) and model.cutoff == RC and model.name == "torch-lj"
    structs = _structures()
    pos, cell, numbers, nbrs = _inputs(structs)
    out = jax.jit(model.compute)(pos, cell, numbers, nbrs)
    assert efs.calls == [(3, 8, 3)]  # one batched call for the three replicas
    for r, at in enumerate(structs):
        e, f, s = _ase(at)
        np.testing.assert_allclose(float(out.energy[r]), e, rtol=0, atol=1e-10)
        np.testing.assert_allclose(np.asarray(out.forces[r]), f, rtol=0, atol=1e-10)
        np.testing.assert_allclose(np.asarray(out.stress[r]), s, rtol=0, atol=1e-12)


def test_edges_filtered_to_cutoff_and_masked_slots_are_inert():
    pos, cell, numbers, nbrs = _inputs(_structures(), skin=1.5)
    src, dst, shift, mask = edges_from_neighbors(pos, cell, nbrs, RC)
    i, j, s_all, m_all = nl.as_pairs(nbrs)
    assert src.shape == dst.shape == mask.shape and shift.shape == src.shape + (3,)
    d = (jnp.take_along_axis(pos, dst[..., None], 1) - jnp.take_along_axis(pos, src[..., None], 1)
         + jnp.einsum("rek,rkl->rel", shift, cell))
    r = np.asarray(jnp.linalg.norm(d, axis=-1))
    mask = np.asarray(mask)
    assert np.all(r[mask] < RC)
    # the engine's list holds pairs up to RC + skin: some were dropped, none beyond them were lost
    jj = jnp.where(m_all, j, i)
    d_all = (jnp.take_along_axis(pos, jj[..., None], 1) - jnp.take_along_axis(pos, i[..., None], 1)
             + jnp.einsum("rek,rkl->rel", s_all, cell))
    r_all = np.asarray(jnp.linalg.norm(d_all, axis=-1))
    m_all = np.asarray(m_all)
    assert mask.sum() == np.sum(m_all & (r_all < RC)) and mask.sum() < m_all.sum()
    assert np.all(np.asarray(src)[~mask] == np.asarray(dst)[~mask])
    assert np.all(np.asarray(shift)[~mask] == 0)


def test_zero_copy_on_cpu():
    """Torch tensors alias XLA's buffers: same addresses in and out, inside jit."""
    if jax.default_backend() != "cpu":
        pytest.skip("pointer check written for the CPU backend")
    model = as_jax_model(TorchLJ())
    model.compute.trace = []
    structs = _structures()
    pos, cell, numbers, nbrs = _inputs(structs)
    out = jax.jit(model.compute)(pos, cell, numbers, nbrs)
    jax.block_until_ready(out)
    (rec,) = model.compute.trace
    assert len(rec["inputs"]) == 7 and len(rec["outputs"]) == 3
    for torch_ptr, buf_ptr in rec["inputs"] + rec["outputs"]:
        assert torch_ptr == buf_ptr  # torch.from_dlpack wrapped the XLA buffer, no copy
    # the positions XLA handed to the callback are the caller's own array (jit passes it through)
    assert rec["inputs"][0][0] == pos.unsafe_buffer_pointer()
    # the results torch wrote in place are the arrays JAX returns (outside jit: no copy either)
    model.compute.trace = []
    out = model.compute(pos, cell, numbers, nbrs)
    (rec,) = model.compute.trace
    assert rec["outputs"][1][0] == out.forces.unsafe_buffer_pointer()


def test_inside_lax_scan_and_pure_callback_fallback():
    structs = _structures()
    pos, cell, numbers, nbrs = _inputs(structs)
    efs = TorchLJ()
    model = as_jax_model(efs)

    @jax.jit
    def scanned(pos):
        def body(p, k):
            p = p + 0.01 * k
            return p, model.compute(p, cell, numbers, nbrs).energy
        return jax.lax.scan(body, pos, jnp.arange(4.0))

    _, energies = scanned(pos)
    assert model.compute.n_calls == 4 and model.compute.torch_seconds > 0
    p = pos
    for k in range(4):
        p = p + 0.01 * k
        ref = model.compute(p, cell, numbers, nbrs).energy
        np.testing.assert_allclose(np.asarray(energies[k]), np.asarray(ref), rtol=1e-13)

    fallback = Model(compute=TorchBridge(TorchLJ(), force_pure_callback=True), cutoff=RC)
    assert fallback.compute.mode == "pure_callback"
    a = jax.jit(model.compute)(pos, cell, numbers, nbrs)
    b = jax.jit(fallback.compute)(pos, cell, numbers, nbrs)
    for x, y in zip((a.energy, a.forces, a.stress), (b.energy, b.forces, b.stress)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_float32_and_dtype_option():
    structs = _structures()
    pos32, cell32, numbers, nbrs32 = _inputs(structs, dtype=jnp.float32)
    out32 = jax.jit(as_jax_model(TorchLJ()).compute)(pos32, cell32, numbers, nbrs32)
    assert out32.forces.dtype == jnp.float32
    # torch side in float64 from float32 JAX arrays; results come back as float32
    out = jax.jit(as_jax_model(TorchLJ(), dtype="float64").compute)(pos32, cell32, numbers, nbrs32)
    assert out.forces.dtype == jnp.float32
    e, f, _ = _ase(structs[0])
    np.testing.assert_allclose(np.asarray(out.forces[0]), f, atol=2e-4)
    np.testing.assert_allclose(np.asarray(out32.forces[0]), f, atol=2e-4)


def test_registry_names_and_errors():
    assert jaxpto.load_model is not None
    from bridges.registry import known_models, load_model

    names = known_models()
    for n in ("7net-0", "7net-l3i5", "7net-mf-0", "chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan", "emt", "lj"):
        assert n in names
    with pytest.raises(ValueError) as err:
        jaxpto.load_model("no-such-model")
    msg = str(err.value)
    assert "no-such-model" in msg and all(n in msg for n in names)
    with pytest.raises(ValueError, match="family"):
        load_model("7net-0", family="chgnet")
    with pytest.raises(ValueError, match="family"):
        load_model("emt", family="nope")
    emt = jaxpto.load_model("EMT")
    assert isinstance(emt, Model) and emt.elements is not None
    lj = jaxpto.load_model("lj", sigma=SIGMA, epsilon=EPS, rc=RC)
    structs = _structures()
    pos, cell, numbers, nbrs = _inputs(structs, cutoff=lj.cutoff)
    out = jax.jit(lj.compute)(pos, cell, numbers, nbrs)
    e, f, s = _ase(structs[0])
    np.testing.assert_allclose(float(out.energy[0]), e, atol=1e-10)


def test_registry_checkpoint_path_needs_family(tmp_path):
    p = tmp_path / "model.pth"
    p.write_bytes(b"")
    with pytest.raises(ValueError, match="family="):
        jaxpto.load_model(str(p))


def test_cpu_bridge_warns_once_when_jax_ran_before_the_model_was_loaded(monkeypatch):
    """If XLA's threads got their malloc arenas before a torch model's set-up tuned glibc
    (jaxpto/host_allocator.py), the first CPU torch call says so, with the fix; once."""
    import warnings

    import bridges.torch_bridge as torch_bridge
    from jaxpto import host_allocator

    pos, cell, numbers, nbrs = _inputs(_structures()[:1])
    for started, expected in ((False, 0), (True, 1)):
        monkeypatch.setattr(host_allocator, "status", {"applied": True, "reason": "tuned",
                                                       "jax_backend_already_started": started})
        monkeypatch.setattr(torch_bridge, "_allocator_warning_given", False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):  # two bridges, two first calls: still one warning
                jax.block_until_ready(as_jax_model(TorchLJ()).compute(pos, cell, numbers, nbrs))
        said = [w for w in caught if "malloc arenas" in str(w.message)]
        assert len(said) == expected, [str(w.message) for w in caught]
    assert "MALLOC_ARENA_MAX=1" in str(said[0].message) and "before using JAX" in str(said[0].message)
