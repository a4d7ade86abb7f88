r"""Student potentials: a NEP-class descriptor network in JAX (Flax), fast enough for long MD on a CPU.

A *student* is a small machine-learning potential trained to reproduce a large *teacher*
(any model :func:`jaxpto.load_model` loads) on configurations of one material
(:mod:`jaxpto.workflows.distill`). It is JAX-native: it runs inside the engine's compiled
step, on the engine's neighbour list, with no callback. Units are ASE's: eV, Angstrom,
eV/A, stress in eV/A^3 with ASE's sign.

Architecture (after the neuroevolution potential, NEP, of Fan et al. [1]_ [2]_)
-------------------------------------------------------------------------------

Every atom :math:`i` of species :math:`t_i` gets an invariant descriptor from its neighbours
:math:`j` within the cutoffs, :math:`\mathbf d_{ij} = \mathbf r_j + S h - \mathbf r_i`,
:math:`r = |\mathbf d_{ij}|`, :math:`\hat{\mathbf d} = \mathbf d_{ij}/r`:

* radial basis (Chebyshev polynomials :math:`T_k` with a cosine cutoff),

  .. math:: f_k(r) = \tfrac12\,[T_k(x) + 1]\, f_c(r), \qquad x = 2 (r/r_c - 1)^2 - 1,
            \qquad f_c(r) = \tfrac12 [1 + \cos(\pi r / r_c)]\ (r < r_c)

* two-body descriptors, one per basis function and neighbour species :math:`b`,
  :math:`S_{ibk} = \sum_{j:\,t_j = b} f_k(r_{ij})` (cutoff :math:`r_c^R`); the per-species network
  below mixes them (a learned radial contraction, as in NEP, would be a linear layer in front);
* three-body radial functions per *unordered* species pair, :math:`g_n(r) = \sum_k c^{t_i t_j}_{nk}
  f_k(r)` (cutoff :math:`r_c^A`; :math:`c^{ab} = c^{ba}`), and the full power spectrum of the
  neighbour density (real spherical harmonics :math:`Y_{lm}` normalised to
  :math:`\sum_m Y_{lm}(\hat{\mathbf u})^2 = 1`),

  .. math:: A_{in,lm} = \sum_j g_n(r_{ij})\, Y_{lm}(\hat{\mathbf d}_{ij}), \qquad
            q_{inn'l} = \sum_{m=-l}^{l} A_{in,lm} A_{in',lm}
            = \sum_{j,k} g_n(r_{ij}) g_{n'}(r_{ik}) P_l(\cos\theta_{jik}),
            \quad n \le n',\ l = 1..l_{max}

  i.e. bond angles through Legendre polynomials, at two-body cost (no loop over triplets); the
  cross terms :math:`n \ne n'` (SOAP's power spectrum [4]_; NEP keeps :math:`n = n'`) are products
  of per-atom sums, so they add descriptors at no per-edge cost.

The descriptor :math:`\mathbf q_i` is standardised with the training set's mean and spread
and fed to a per-species multilayer perceptron (tanh), which gives the site energy

.. math:: E = \sum_i \Big[e^0_{t_i} + s\, U_{t_i}\big((\mathbf q_i - \boldsymbol\mu)/\boldsymbol\sigma\big)\Big]
          + E_{core}

with per-species reference energies :math:`e^0` (least squares on the training energies),
an energy scale :math:`s`, and an optional screened nuclear repulsion :math:`E_{core}` (the
ZBL universal potential [3]_ switched off smoothly between :math:`r_{in}` and :math:`r_{out}` per
species pair, set below the shortest distance of the training data): it keeps MD out of the
unphysical region no training frame covers, and vanishes wherever there are data.

Forces and stress from per-edge gradients
-----------------------------------------

The energy depends on the positions only through the edge vectors :math:`\mathbf d_e`,
:math:`e = (i \to j)`, of the neighbour list, via per-atom sums of edge features
(:math:`S_{ibk}`, :math:`A_{in,lm}`). With :math:`\mathbf G_i = \partial E/\partial(\text{atom } i\text{'s
sums})` (reverse mode through the small per-atom part: descriptor and MLP), the per-edge
gradient is :math:`\mathbf p_e = \partial E/\partial \mathbf d_e = \mathbf G_i \cdot \partial\boldsymbol\phi
(\mathbf d_e)/\partial \mathbf d_e`, computed in closed form in the same pass as the features
(forward-mode slopes of the Chebyshev basis, one vector-Jacobian product of the harmonics), and

.. math:: \mathbf F_i = \sum_{e \in \mathrm{row}(i)} \mathbf p_e - \sum_{e:\, j(e) = i} \mathbf p_e,
          \qquad \sigma_{ab} = \frac{1}{V} \sum_e d_{e,a}\, p_{e,b} \quad (\text{symmetrised, ASE's sign}),

i.e. row sums plus one scatter-add for the reverse half (the only scatter of the step). This
equals autodiff of :math:`E` (tested) at a fraction of its cost: XLA's reverse mode through the
per-edge arrays would store and re-read every intermediate of every edge. Training
differentiates through these expressions (second derivatives for the force loss).

Why this architecture (measured, ``benchmarks/student_speed.py``)
----------------------------------------------------------------

The study's full protocol needs 8 x 625 atoms x 100,000 steps in under 2 hours on 2 CPU cores,
i.e. ~9 ms per 625-atom step including the integrator and the neighbour list, and the CHGNet
0.3.0 target is >= 100x its 1.45 s step. A descriptor network with O(N K) cost (K neighbours)
fits; a message-passing equivariant network does not: the smallest JAX equivariant foundation
model here (Nequix, NequIP-type) costs seconds per 625-atom step on this CPU. The power
spectrum carries the bond-angle information the ferroelectric double well of PbTiO3 needs.
The sizes chosen by measurement are :data:`jaxpto.workflows.distill.DEFAULT_ARCHITECTURE`
(numbers in the README and ``benchmarks/results/student-speed-cpu.json``).

File format
-----------

One ``.npz`` (:func:`save_student`): the parameters as plain arrays plus a JSON header
(architecture, species, cutoffs, normalisation, teacher, data provenance, training settings,
versions) and a SHA-256 checksum over header and arrays. Loading never unpickles
(``allow_pickle=False``): a model file is data and cannot run code.

References
----------
.. [1] Z. Fan et al., Phys. Rev. B 104, 104309 (2021) (NEP).
.. [2] Z. Fan et al., J. Chem. Phys. 157, 114801 (2022) (NEP with angular descriptors, GPUMD).
.. [3] J. F. Ziegler, J. P. Biersack, U. Littmark, The Stopping and Range of Ions in Solids (1985).
.. [4] A. P. Bartok, R. Kondor, G. Csanyi, Phys. Rev. B 87, 184115 (2013) (SOAP).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxpto.model import Model, ModelOutput
from jaxpto.neighbors import pair_components

FORMAT = "jaxpto.student/1"
FILE_SUFFIX = ".npz"
_NZ = 119


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """Architecture of a student (all lengths in Angstrom).

    ``species``: atomic numbers covered, in a fixed order. ``rc_radial``/``rc_angular``: cutoffs of
    the two- and three-body descriptors (the model's neighbour cutoff is the larger).
    ``basis_radial``: Chebyshev functions of the two-body part (one descriptor per function and
    neighbour species); ``n_angular``: radial functions of the three-body part, built from
    ``basis_angular`` Chebyshev functions; ``l_max`` (1-4): largest angular momentum;
    ``hidden``: widths of the per-species MLP's hidden layers. ``core_repulsion``: add the
    switched ZBL repulsion with per-pair ``core_r_out`` (``core_r_in = core_inner_fraction * r_out``).
    """

    species: tuple = ()
    rc_radial: float = 6.0
    rc_angular: float = 4.5
    n_angular: int = 6
    basis_radial: int = 8
    basis_angular: int = 8
    l_max: int = 4
    hidden: tuple = (32,)
    core_repulsion: bool = True
    core_r_out: tuple = ()  # per unordered pair, in pair_index order; () = 1.0 A for every pair
    core_inner_fraction: float = 0.7
    angular_neighbors: int = 0  # slots of the packed angular edge set; 0 = use the engine's list as is

    def __post_init__(self):
        object.__setattr__(self, "species", tuple(int(z) for z in self.species))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "core_r_out", tuple(float(r) for r in self.core_r_out))
        if len(set(self.species)) != len(self.species) or any(not 0 < z < _NZ for z in self.species):
            raise ValueError(f"species must be distinct atomic numbers, got {self.species}")
        if not (0 < self.rc_angular and 0 < self.rc_radial):
            raise ValueError(f"cutoffs must be positive, got rc_radial={self.rc_radial}, rc_angular={self.rc_angular}")
        if not 1 <= self.l_max <= 4:
            raise ValueError(f"l_max must be 1..4, got {self.l_max}")
        for name in ("n_angular", "basis_radial", "basis_angular"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.core_r_out and len(self.core_r_out) != self.n_pairs:
            raise ValueError(f"core_r_out needs {self.n_pairs} values (one per species pair), "
                             f"got {len(self.core_r_out)}")

    @property
    def n_species(self) -> int:
        return len(self.species)

    @property
    def n_pairs(self) -> int:
        t = self.n_species
        return t * (t + 1) // 2

    @property
    def cutoff(self) -> float:
        return float(max(self.rc_radial, self.rc_angular))

    @property
    def n_descriptors(self) -> int:
        return self.n_species * self.basis_radial + self.n_angular * (self.n_angular + 1) // 2 * self.l_max

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("species", "hidden", "core_r_out"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StudentConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown student settings {sorted(unknown)}; known: {sorted(fields)}")
        return cls(**d)


def pair_index_table(n_species: int) -> np.ndarray:
    """``[T+1, T+1]`` index of the unordered pair (a, b); the padding species ``T`` maps to ``T(T+1)/2``."""
    t = n_species
    table = np.full((t + 1, t + 1), t * (t + 1) // 2, np.int32)
    k = 0
    for a in range(t):
        for b in range(a, t):
            table[a, b] = table[b, a] = k
            k += 1
    return table


# ---------------------------------------------------------------------------------------------
# Edge features
# ---------------------------------------------------------------------------------------------


def _chebyshev_basis(r, rc, n_basis):
    """List of ``n_basis`` arrays :math:`f_k(r) = (T_k(x) + 1) f_c(r) / 2` (zero at and beyond ``rc``)."""
    inside = r < rc
    rs = jnp.where(inside, r, rc)
    fc = jnp.where(inside, 0.5 * (1.0 + jnp.cos(math.pi * rs / rc)), 0.0)
    x = 2.0 * (rs / rc - 1.0) ** 2 - 1.0
    out = [jnp.ones_like(x), x]
    for _ in range(2, n_basis):
        out.append(2.0 * x * out[-1] - out[-2])
    half_fc = 0.5 * fc
    return [(t + 1.0) * half_fc for t in out[:n_basis]]


def real_spherical_harmonics(x, y, z, l_max: int):
    """Real spherical harmonics of a unit vector, ``l = 1..l_max``, as a list of ``2l+1`` arrays per ``l``.

    Normalised so that :math:`\\sum_m Y_{lm}(\\hat u)^2 = 1` (i.e. :math:`\\sqrt{4\\pi/(2l+1)}` times
    the orthonormal ones); the addition theorem then gives
    :math:`\\sum_m Y_{lm}(\\hat a) Y_{lm}(\\hat b) = P_l(\\hat a\\cdot\\hat b)`.
    """
    s3, s5, s6, s10, s15, s35, s70 = (math.sqrt(v) for v in (3, 5, 6, 10, 15, 35, 70))
    out = [[x, y, z]]
    if l_max >= 2:
        x2, y2, z2 = x * x, y * y, z * z
        out.append([s3 * x * y, s3 * y * z, 0.5 * (3 * z2 - 1), s3 * x * z, 0.5 * s3 * (x2 - y2)])
    if l_max >= 3:
        out.append([s10 / 4 * y * (3 * x2 - y2), s15 * x * y * z, s6 / 4 * y * (5 * z2 - 1),
                    0.5 * z * (5 * z2 - 3), s6 / 4 * x * (5 * z2 - 1), s15 / 2 * z * (x2 - y2),
                    s10 / 4 * x * (x2 - 3 * y2)])
    if l_max >= 4:
        out.append([s35 / 2 * x * y * (x2 - y2), s70 / 4 * y * z * (3 * x2 - y2), s5 / 2 * x * y * (7 * z2 - 1),
                    s10 / 4 * y * z * (7 * z2 - 3), (35 * z2 * z2 - 30 * z2 + 3) / 8,
                    s10 / 4 * x * z * (7 * z2 - 3), s5 / 4 * (x2 - y2) * (7 * z2 - 1),
                    s70 / 4 * x * z * (x2 - 3 * y2), s35 / 8 * (x2 * x2 - 6 * x2 * y2 + y2 * y2)])
    return out[:l_max]


def _safe_r(dx, dy, dz, mask, far):
    r2 = jnp.where(mask, dx * dx + dy * dy + dz * dz, far * far)
    return jnp.sqrt(r2)


def _basis_and_slope(r, rc, n_basis):
    """``[K, N, S]`` basis :math:`f_k(r)` and its slope :math:`df_k/dr` (forward mode, element by element)."""
    return jax.jvp(lambda r_: jnp.stack(_chebyshev_basis(r_, rc, n_basis)), (r,), (jnp.ones_like(r),))


# Layout rules measured on XLA's CPU backend (625 atoms, ~30x apart): sums over the slot axis are
# einsums with the atom axis as a batch axis (small matrix products); everything that only
# broadcasts per-atom values along a row is written element by element (one fused loop).
# Row reductions written one by one, or einsums whose output keeps the slot axis, are slow.


def _row_combination(weights, arrays):
    """``sum_k weights[k][:, None] * arrays[k]`` element by element (``weights`` ``[K, N]``)."""
    return sum(weights[k][:, None] * arrays[k] for k in range(len(arrays)))


def _radial_forward(config: StudentConfig, edges):
    """:math:`S_{bki} = \\sum_j [t_j = b] f_k(r_{ij})`, ``[T, K_R, N]`` (no per-edge coefficients),
    and what the backward pass needs."""
    r = _safe_r(edges.dx, edges.dy, edges.dz, edges.mask, 2.0 * config.cutoff)
    f, df = _basis_and_slope(r, config.rc_radial, config.basis_radial)
    return jnp.einsum("kns,nsb->bkn", f, edges.onehot), (r, df)


def _radial_backward(edges, saved, g_sum):
    """Per-edge :math:`\\partial E/\\partial \\mathbf d` from :math:`\\partial E/\\partial S` (``[T,K,N]``)."""
    r, df = saved
    dfk = [df[k] for k in range(df.shape[0])]
    de_dr = sum(edges.onehot[..., b] * _row_combination(g_sum[b], dfk) for b in range(g_sum.shape[0]))
    w = de_dr / r
    return w * edges.dx, w * edges.dy, w * edges.dz


def _angular_forward(config: StudentConfig, coef_rows, edges):
    """:math:`A_{n,lm,i} = \\sum_j g_n(r_{ij}; t_i t_j) Y_{lm}(\\hat d_{ij})`, ``[nA, nY, N]``.

    ``coef_rows`` ``[T, nA, K_A, N]``: each atom's radial coefficients for each neighbour species.
    """
    r = _safe_r(edges.dx, edges.dy, edges.dz, edges.mask, 2.0 * config.cutoff)
    f, df = _basis_and_slope(r, config.rc_angular, config.basis_angular)
    fk = [f[k] for k in range(f.shape[0])]
    dfk = [df[k] for k in range(df.shape[0])]
    t = coef_rows.shape[0]
    g = jnp.stack([sum(edges.onehot[..., b] * _row_combination(coef_rows[b, a], fk) for b in range(t))
                   for a in range(config.n_angular)])
    dg = jnp.stack([sum(edges.onehot[..., b] * _row_combination(coef_rows[b, a], dfk) for b in range(t))
                    for a in range(config.n_angular)])

    def harmonics(dx, dy, dz):
        inv_r = 1.0 / _safe_r(dx, dy, dz, edges.mask, 2.0 * config.cutoff)
        return jnp.stack([c for comps in real_spherical_harmonics(dx * inv_r, dy * inv_r, dz * inv_r, config.l_max)
                          for c in comps])

    y, y_vjp = jax.vjp(harmonics, edges.dx, edges.dy, edges.dz)
    return jnp.einsum("ans,yns->ayn", g, y), (r, g, dg, y, y_vjp)


def _angular_backward(edges, saved, g_sum):
    """Per-edge :math:`\\partial E/\\partial \\mathbf d` from :math:`\\partial E/\\partial A` (``[nA,nY,N]``):
    :math:`\\sum_n (\\sum_{lm} G Y) g_n'(r) \\hat d + \\sum_{lm} (\\sum_n G g_n) \\nabla Y_{lm}`."""
    r, g, dg, y, y_vjp = saved
    n_a, n_y = g_sum.shape[:2]
    ys = [y[m] for m in range(n_y)]
    gs = [g[a] for a in range(n_a)]
    de_dr = sum(_row_combination(g_sum[a], ys) * dg[a] for a in range(n_a))
    v = jnp.stack([_row_combination(g_sum[:, m], gs) for m in range(n_y)])
    w = de_dr / r
    px, py, pz = y_vjp(v)
    return px + w * edges.dx, py + w * edges.dy, pz + w * edges.dz


def _compact(mask, capacity):
    """Slots of the first ``capacity`` True entries of each row (``-1`` = empty) and the row counts.

    A prefix sum and one scatter (cheaper on CPU than ``top_k``); rows with more entries than
    ``capacity`` are reported by the counts (the caller then takes the uncompacted path).
    """
    n, k = mask.shape
    count = jnp.sum(mask, axis=1)
    pos = jnp.cumsum(mask.astype(jnp.float32), axis=1).astype(jnp.int32) - 1
    flat = jnp.where(mask & (pos < capacity), jnp.arange(n, dtype=jnp.int32)[:, None] * capacity + pos,
                     n * capacity)
    slots = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32)[None], (n, k))
    out = jnp.full((n * capacity + 1,), -1, jnp.int32).at[flat.reshape(-1)].set(slots.reshape(-1))
    return out[:-1].reshape(n, capacity), count


# ---------------------------------------------------------------------------------------------
# Readout: one MLP per species (Flax)
# ---------------------------------------------------------------------------------------------


class SpeciesMLP(nn.Module):
    """Site energies ``[N]`` from standardised descriptors ``[N, D]``: one tanh MLP per species.

    ``species=s`` evaluates only species ``s``'s network on every row (the caller passes that
    species' atoms); else every network runs on every atom and ``species_onehot`` selects.
    """

    n_species: int
    hidden: Sequence[int]

    @nn.compact
    def __call__(self, q, species_onehot=None, species: int | None = None):
        out = jnp.zeros(q.shape[:1], q.dtype)
        for s in range(self.n_species):
            if species is not None and s != species:
                continue
            h = q
            for k, width in enumerate(self.hidden):
                h = jnp.tanh(nn.Dense(width, name=f"s{s}_dense{k}", param_dtype=q.dtype)(h))
            e = nn.Dense(1, name=f"s{s}_out", param_dtype=q.dtype)(h)[:, 0]
            out = e if species is not None else out + species_onehot[:, s] * e
        return out


# ---------------------------------------------------------------------------------------------
# Core repulsion (ZBL, switched)
# ---------------------------------------------------------------------------------------------

_ZBL_A = (0.18175, 0.50986, 0.28022, 0.02817)
_ZBL_B = (3.19980, 0.94229, 0.40290, 0.20162)
_COULOMB = 14.399645  # e^2 / (4 pi eps0) in eV A


def _zbl_pair(r, z1, z2, r_in, r_out):
    """Screened nuclear repulsion (eV) times a smooth switch from 1 (``r <= r_in``) to 0 (``r >= r_out``)."""
    a = 0.46850 / (z1 ** 0.23 + z2 ** 0.23)
    x = r / a
    phi = sum(c * jnp.exp(-b * x) for c, b in zip(_ZBL_A, _ZBL_B))
    e = _COULOMB * z1 * z2 / r * phi
    t = jnp.clip((r - r_in) / (r_out - r_in), 0.0, 1.0)
    switch = 1.0 - t * t * t * (10.0 - 15.0 * t + 6.0 * t * t)  # C2 smoothstep
    return jnp.where(r < r_out, e * switch, 0.0)


# ---------------------------------------------------------------------------------------------
# Energy, forces, stress
# ---------------------------------------------------------------------------------------------


def _species_index(config: StudentConfig) -> np.ndarray:
    table = np.full(_NZ, -1, np.int32)
    for k, z in enumerate(config.species):
        table[z] = k
    return table


def _l_blocks(config: StudentConfig):
    starts, k = [], 0
    for l in range(1, config.l_max + 1):
        starts.append((k, k + 2 * l + 1))
        k += 2 * l + 1
    return starts


class _Edges(NamedTuple):
    """One replica's edges (component arrays ``[N, K]``), their neighbour index and species masks."""

    dx: jax.Array
    dy: jax.Array
    dz: jax.Array
    mask: jax.Array
    j: jax.Array  # neighbour index, N for empty slots
    species: jax.Array  # neighbour species index, T for empty slots
    onehot: jax.Array  # [N, K, T] neighbour species, zero for empty slots


def _edge_sets(config: StudentConfig, positions, cell, numbers, nbrs, compact: bool):
    """Species of the atoms, the full edge set (radial part) and the angular edge set.

    ``compact``: the angular set holds only the pairs within ``rc_angular``, packed into
    ``config.angular_neighbors`` slots per atom (3-5x fewer than the engine's list, which
    also holds the radial cutoff's pairs and the skin); else it is the full set.
    """
    t = config.n_species
    species_of = jnp.asarray(_species_index(config))
    n = positions.shape[0]
    dx, dy, dz, mask = pair_components(nbrs, positions, cell)
    ti = species_of[numbers]
    ti_pad = jnp.concatenate([ti, jnp.full((1,), t, ti.dtype)])
    tj = ti_pad[nbrs.idx]
    full = _Edges(dx, dy, dz, mask, nbrs.idx, tj, jax.nn.one_hot(tj, t, dtype=dx.dtype))
    if not compact:
        return ti, full, full, jnp.zeros((), bool)
    within = mask & (dx * dx + dy * dy + dz * dz < config.rc_angular ** 2)
    slots, count = _compact(within, config.angular_neighbors)
    valid = slots >= 0
    s = jnp.where(valid, slots, 0)

    def take(x):
        return jnp.take_along_axis(x, s, axis=1)

    ja = jnp.where(valid, take(nbrs.idx), n)
    tja = jnp.where(valid, take(tj), t)
    ang = _Edges(jnp.where(valid, take(dx), 0.0), jnp.where(valid, take(dy), 0.0), jnp.where(valid, take(dz), 0.0),
                 valid, ja, tja, jax.nn.one_hot(tja, t, dtype=dx.dtype))
    return ti, full, ang, jnp.max(count) > config.angular_neighbors


def max_angular_neighbors(config: StudentConfig, positions, cell, nbrs):
    """``[R]`` largest number of neighbours within ``rc_angular`` of any atom (sizes the angular set)."""

    def one(p, c, nb):
        dx, dy, dz, mask = pair_components(nb, p, c)
        return jnp.max(jnp.sum(mask & (dx * dx + dy * dy + dz * dz < config.rc_angular ** 2), axis=1))

    return jax.vmap(one)(positions, cell, nbrs)


def _static_species(config: StudentConfig, numbers):
    """Per species, the indices of its atoms when ``numbers`` is concrete (numpy, or a constant
    under ``jit``: the engine's force function closes over it), else None."""
    if isinstance(numbers, jax.core.Tracer):
        return None
    z = np.asarray(numbers)
    return [np.flatnonzero(z == s) for s in config.species]


def _coef_rows(coef, pair_table, ti, t):
    """``[T, n, K, N]``: atom i's coefficients for each neighbour species b (a per-atom gather)."""
    return jnp.stack([jnp.moveaxis(coef[pair_table[ti, b]], 0, -1) for b in range(t)])


def _descriptor_from_sums(config, s_rad, a_nlm, blocks):
    """``[N, D]``: the two-body sums :math:`S_{bki}` as they are, and the full angular power spectrum
    :math:`q_{inn'l} = \\sum_m A_{n,lm,i} A_{n',lm,i}` (``n <= n'``).

    Both are per-atom products of the edge sums, so their number costs nothing per edge: the
    per-species network mixes the two-body sums (which a learned radial contraction would do
    no better), and the cross terms ``n != n'`` resolve bond angles at every pair of radial
    channels (SOAP's power spectrum; NEP keeps only ``n = n'``).
    """
    n = s_rad.shape[-1]
    iu, ju = np.triu_indices(config.n_angular)
    q_ang = []
    for lo, hi in blocks:
        a = a_nlm[:, lo:hi]  # [nA, 2l+1, N]
        q_ang.append(jnp.einsum("amn,bmn->abn", a, a)[iu, ju])  # [pairs, N]
    return jnp.concatenate([s_rad.reshape(-1, n), jnp.concatenate(q_ang)], axis=0).T


def _scatter_back(px, py, pz, j, n):
    """``sum over edges (i -> j) of p`` per atom ``j``: the reverse-edge half of the forces."""
    p = jnp.stack([px.reshape(-1), py.reshape(-1), pz.reshape(-1)], axis=-1)
    return jax.ops.segment_sum(p, j.reshape(-1), num_segments=n + 1)[:n]


def make_efs(config: StudentConfig, compact: bool | None = None, report_overflow: bool = False):
    """``efs(params, positions [N,3], cell [3,3], numbers [N], nbrs_one) -> (E, F [N,3], S [3,3])``.

    One replica (vmap it); differentiable in ``params`` (training) and exact in positions.
    Forces: with :math:`\\mathbf p_e = \\partial E/\\partial \\mathbf d_e` per directed edge
    ``e = (i -> j)`` (one vector-Jacobian product of the summed edge features with the site
    energies' gradient), :math:`\\mathbf F_i = \\sum_{e \\in row(i)} \\mathbf p_e - \\sum_{e: j(e)=i}
    \\mathbf p_e` and :math:`\\sigma = V^{-1} \\sum_e \\mathbf d_e \\otimes \\mathbf p_e` (ASE sign).
    """
    t = config.n_species
    pair_table = jnp.asarray(pair_index_table(t))
    blocks = _l_blocks(config)
    readout = SpeciesMLP(n_species=t, hidden=config.hidden)
    core_z = np.asarray(config.species, float)
    core_out = np.asarray(config.core_r_out or [1.0] * config.n_pairs, float)
    compact = bool(config.angular_neighbors) if compact is None else compact

    def efs(params, positions, cell, numbers, nbrs):
        if not isinstance(numbers, jax.core.Tracer):
            numbers = np.asarray(numbers)
        dtype = positions.dtype
        p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
        n = positions.shape[0]
        ti, full, ang, overflow = _edge_sets(config, positions, cell, numbers, nbrs, compact)
        static_species = _static_species(config, numbers)
        rows_a = _coef_rows(p["coef_angular"], pair_table, ti, t)

        s_rad, saved_rad = _radial_forward(config, full)
        a_nlm, saved_ang = _angular_forward(config, rows_a, ang)

        def site_energy(s_rad_, a_nlm_):
            q = _descriptor_from_sums(config, s_rad_, a_nlm_, blocks)
            qs = (q - p["q_mean"]) / p["q_scale"]
            if static_species is None:
                u = jnp.sum(readout.apply({"params": p["readout"]}, qs, jax.nn.one_hot(ti, t, dtype=dtype)))
            else:  # the atoms' species are known when tracing: each network runs on its own atoms only
                u = sum(jnp.sum(readout.apply({"params": p["readout"]}, qs[sel], species=k))
                        for k, sel in enumerate(static_species) if len(sel))
            return p["energy_scale"] * u + jnp.sum(p["e0"][ti])

        energy, (g_rad, g_ang) = jax.value_and_grad(site_energy, argnums=(0, 1))(s_rad, a_nlm)
        px, py, pz = _radial_backward(full, saved_rad, g_rad)
        pxa, pya, pza = _angular_backward(ang, saved_ang, g_ang)
        if config.core_repulsion:
            core_e, (cx, cy, cz) = _core_terms(ang, ti, t, pair_table, core_z, core_out, config.core_inner_fraction)
            energy = energy + core_e
            pxa, pya, pza = pxa + cx, pya + cy, pza + cz
        forces = (jnp.stack([px.sum(1) + pxa.sum(1), py.sum(1) + pya.sum(1), pz.sum(1) + pza.sum(1)], axis=-1)
                  - _scatter_back(px, py, pz, full.j, n) - _scatter_back(pxa, pya, pza, ang.j, n))

        def outer(ax, bx):
            return jnp.sum(ax * bx)

        d = ((full.dx, full.dy, full.dz), (ang.dx, ang.dy, ang.dz))
        g = ((px, py, pz), (pxa, pya, pza))
        virial = jnp.stack([jnp.stack([sum(outer(d[s][a], g[s][b]) for s in range(2)) for b in range(3)])
                            for a in range(3)])
        virial = 0.5 * (virial + virial.T)
        volume = jnp.abs(jnp.linalg.det(cell))
        stress = jnp.where(volume > 0, virial / jnp.where(volume > 0, volume, 1.0), 0.0)
        if report_overflow:
            return energy, forces, stress, overflow
        return energy, forces, stress

    return efs


def _core_terms(edges: _Edges, ti, t, pair_table, core_z, core_out, inner_fraction):
    """Switched ZBL over the angular edge set (every pair closer than ``rc_angular``; each pair
    twice, so half the sum) and its per-edge gradient ``dE/dd_e``."""
    dtype = edges.dx.dtype
    z_pad = jnp.asarray(np.concatenate([core_z, [1.0]]), dtype)
    out_pad = jnp.asarray(np.concatenate([core_out, [1.0]]), dtype)
    tj = edges.species
    pair = jnp.where(edges.mask, pair_table[ti[:, None], tj], len(core_out))
    z1 = z_pad[ti][:, None]
    z2 = z_pad[tj]
    r_out = out_pad[pair]
    r_in = inner_fraction * r_out

    def energy(dx_, dy_, dz_):
        r = _safe_r(dx_, dy_, dz_, edges.mask, 2.0)
        return 0.5 * jnp.sum(jnp.where(edges.mask, _zbl_pair(r, z1, z2, r_in, r_out), 0.0))

    return jax.value_and_grad(energy, argnums=(0, 1, 2))(edges.dx, edges.dy, edges.dz)


def _over_replicas(efs):
    """Batch a one-replica ``efs`` over replicas: ``vmap`` on accelerators; on a CPU one replica
    after the other (``lax.map``), which keeps each replica's edge arrays in cache (measured at
    625 atoms, 8 replicas: ~2x less time per replica than ``vmap``)."""
    vmapped = jax.vmap(efs, in_axes=(None, 0, 0, None, 0))

    def batched(params, positions, cell, numbers, nbrs):
        if jax.default_backend() != "cpu" or positions.shape[0] == 1:
            return vmapped(params, positions, cell, numbers, nbrs)
        return jax.lax.map(lambda x: efs(params, x[0], x[1], numbers, x[2]), (positions, cell, nbrs))

    return batched


def make_compute(config: StudentConfig):
    """Batched ``compute(params, positions [R,N,3], cell [R,3,3], numbers, nbrs) -> (E, F, S)``.

    With a compacted angular set (``config.angular_neighbors > 0``) the packed path runs and
    reports whether some atom had more angular neighbours than slots; only then is the step
    computed again on the uncompacted path (same result, slower), so no pair is ever dropped
    and the check costs nothing in the normal case.
    """
    fast = _over_replicas(make_efs(config, compact=True, report_overflow=True)) if config.angular_neighbors else None
    safe = _over_replicas(make_efs(config, compact=False))

    def compute(params, positions, cell, numbers, nbrs):
        if fast is None:
            return safe(params, positions, cell, numbers, nbrs)
        energy, forces, stress, overflow = fast(params, positions, cell, numbers, nbrs)
        return jax.lax.cond(jnp.any(overflow), lambda: safe(params, positions, cell, numbers, nbrs),
                            lambda: (energy, forces, stress))

    return compute


def student_model(params, config: StudentConfig, name: str = "student") -> Model:
    """A batched :class:`jaxpto.model.Model` from parameters and a :class:`StudentConfig`."""
    batched = make_compute(config)
    frozen = jax.tree_util.tree_map(jnp.asarray, params)

    def compute(positions, cell, numbers, neighbors):
        energy, forces, stress = batched(frozen, positions, cell, numbers, neighbors)
        return ModelOutput(energy=energy, forces=forces, stress=stress)

    return Model(compute=compute, cutoff=config.cutoff, elements=frozenset(config.species), name=name)


def descriptors(params, config: StudentConfig, positions, cell, numbers, nbrs):
    """Raw (unstandardised) descriptors ``[N, D]`` of one replica (for normalisation and analysis)."""
    t = config.n_species
    dtype = positions.dtype
    pair_table = jnp.asarray(pair_index_table(t))
    ti, full, ang, _ = _edge_sets(config, positions, cell, numbers, nbrs, compact=False)
    rows_a = _coef_rows(jnp.asarray(params["coef_angular"], dtype), pair_table, ti, t)
    s_rad = _radial_forward(config, full)[0]
    a_nlm = _angular_forward(config, rows_a, ang)[0]
    return _descriptor_from_sums(config, s_rad, a_nlm, _l_blocks(config))


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


def init_params(config: StudentConfig, seed: int = 0, dtype=jnp.float32) -> dict:
    """Random initial parameters (radial coefficients ~ N(0, 1/K), Flax's default MLP init).

    ``q_mean``/``q_scale``/``e0``/``energy_scale`` start neutral; training sets them from data.
    """
    key = jax.random.PRNGKey(seed)
    k1, k2, k3 = jax.random.split(key, 3)
    P = config.n_pairs
    ca = jax.random.normal(k2, (P, config.n_angular, config.basis_angular), dtype) / math.sqrt(config.basis_angular)
    readout = SpeciesMLP(n_species=config.n_species, hidden=config.hidden)
    d = config.n_descriptors
    variables = readout.init(k3, jnp.zeros((1, d), dtype), jnp.ones((1, config.n_species), dtype))
    return {"coef_angular": ca, "readout": variables["params"],
            "q_mean": jnp.zeros((d,), dtype), "q_scale": jnp.ones((d,), dtype),
            "e0": jnp.zeros((config.n_species,), dtype), "energy_scale": jnp.ones((), dtype)}


# ---------------------------------------------------------------------------------------------
# One file: parameters + JSON header + checksum (no pickle)
# ---------------------------------------------------------------------------------------------


def _flat(params) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(jax.tree_util.tree_map(np.asarray, params), sep="/")
    return {f"param/{k}": np.asarray(v) for k, v in flat.items()}


def _checksum(header_without_sum: dict, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(json.dumps(header_without_sum, sort_keys=True).encode())
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_student(path: str, params, config: StudentConfig, info: dict | None = None) -> str:
    """Write one ``.npz`` student file (see module docstring); returns the path written.

    ``info`` (JSON-serialisable) records provenance: teacher, data, training settings, errors.
    The file is written to a temporary name and renamed (a kill never leaves half a model).
    """
    import importlib.metadata as md

    arrays = _flat(params)
    vers = {}
    for pkg in ("jaxpto", "jax", "flax", "optax", "numpy", "ase"):
        try:
            vers[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    header = {"format": FORMAT, "config": config.to_dict(), "info": info or {}, "versions": vers}
    header["checksum"] = _checksum(header, arrays)
    buf = io.BytesIO()
    np.savez_compressed(buf, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_student(path: str):
    """``(params, config, header)`` from a student file, verified (format and checksum)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "header" not in z.files:
                raise ValueError(f"{path} is not a jaxpto student file (no header); "
                                 "student files are written by `jaxpto distill` / save_student")
            header = json.loads(bytes(z["header"]).decode())
            arrays = {k: z[k] for k in z.files if k.startswith("param/")}
    except (OSError, ValueError, json.JSONDecodeError, EOFError) as exc:
        if isinstance(exc, ValueError) and "jaxpto student file" in str(exc):
            raise
        raise ValueError(f"cannot read student file {path}: {exc}") from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown student format {header.get('format')!r} (this jaxpto reads {FORMAT})")
    stored = header.pop("checksum", None)
    if stored != _checksum(header, arrays):
        raise ValueError(f"{path}: checksum mismatch, the file is corrupted or was edited; re-run "
                         "`jaxpto distill` or restore the file")
    header["checksum"] = stored
    params = traverse_util.unflatten_dict({k[len("param/"):]: v for k, v in arrays.items()}, sep="/")
    config = StudentConfig.from_dict(header["config"])
    return params, config, header


def load_student(path: str, name: str | None = None) -> Model:
    """A student file as a :class:`jaxpto.model.Model` (what ``jaxpto.load_model(path)`` returns)."""
    params, config, header = read_student(path)
    model = student_model(params, config, name=name or header.get("info", {}).get("name")
                          or os.path.basename(path))
    return model


def looks_like_student(path: str) -> bool:
    """True when ``path`` is an ``.npz`` whose header says it is a jaxpto student (cheap check)."""
    if not (os.path.isfile(path) and str(path).endswith(FILE_SUFFIX)):
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            if "header" not in z.files:
                return False
            return json.loads(bytes(z["header"]).decode()).get("format") == FORMAT
    except Exception:
        return False


def read_header(path: str) -> dict:
    """The JSON header of a student file (provenance), without building the model."""
    return read_student(path)[2]


Params = Any
