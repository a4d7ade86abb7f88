r"""Training a student (:mod:`jaxpto.potentials.student`) on labelled frames with optax.

Loss per minibatch (frames of one size), every error divided by the accuracy target it is
judged against (so 1.0 means "at the target"):

.. math:: L = w_E \Big\langle \Big(\frac{E - E^{ref}}{N\,u_E}\Big)^2 \Big\rangle
          + w_F \Big\langle \Big(\frac{F_{ia} - F^{ref}_{ia}}{u_F}\Big)^2 \Big\rangle
          + w_S \Big\langle \Big(\frac{\sigma_{ab} - \sigma^{ref}_{ab}}{u_S}\Big)^2 \Big\rangle

with :math:`u_E = 3` meV/atom, :math:`u_F = 50` meV/A, :math:`u_S = 0.003` eV/A^3 (the
distillation targets; frames without a stress skip the last term). Adam with global-norm
clipping and an exponentially decaying learning rate; the parameters with the lowest
validation loss are kept. The split is by trajectory (the ``validation`` flag of each frame's
``info``), never frame by frame, so held-out errors are not flattered by correlated neighbours.

Everything is deterministic for a seed: batch order from a seeded numpy generator, parameters
from a seeded JAX key, and XLA's CPU programs give the same result for the same inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxpto import neighbors as nl
from jaxpto.potentials.student import StudentConfig, descriptors, init_params, make_efs, max_angular_neighbors
from jaxpto.workflows.distill_data import frame_arrays

ENERGY_UNIT = 0.003  # eV/atom
FORCE_UNIT = 0.05  # eV/A
STRESS_UNIT = 0.003  # eV/A^3


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Optimiser settings (learning rates per Adam step; ``batch_atoms`` atoms per minibatch)."""

    epochs: int = 200
    batch_atoms: int = 320
    learning_rate: float = 3e-3
    final_learning_rate: float = 3e-5
    warmup_steps: int = 50
    weight_energy: float = 1.0
    # forces 3x: at equal epochs the held-out force error fell 159 -> 135 meV/A (CHGNet PbTiO3)
    weight_forces: float = 3.0
    weight_stress: float = 1.0
    grad_clip: float = 10.0
    seed: int = 0
    eval_every: int = 5  # epochs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@struct.dataclass
class EdgeList:
    """The neighbour arrays the student reads (``idx`` [F,N,K], ``shifts`` [F,N,K,3]); frames of a
    training set share one padded shape."""

    idx: jax.Array
    shifts: jax.Array


@dataclasses.dataclass
class Packed:
    """Frames with the same atoms (species in order, pbc) as stacked arrays (ASE units)."""

    numbers: np.ndarray
    positions: np.ndarray  # [F,N,3]
    cells: np.ndarray  # [F,3,3]
    energy: np.ndarray  # [F]
    forces: np.ndarray  # [F,N,3]
    stress: np.ndarray  # [F,3,3] (zeros where missing)
    has_stress: np.ndarray  # [F] float 0/1
    edges: EdgeList
    frame_ids: np.ndarray  # [F] index into the frame list
    temperature: np.ndarray  # [F] K (nan if unknown)

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[1])

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])


def _edges_for(positions, cells, cutoff, pbc, chunk: int = 64):
    """Exact-cutoff neighbour arrays for many frames (skin 0), padded to one capacity."""
    parts, cap = [], 0
    for s in range(0, len(positions), chunk):
        nb = nl.allocate(jnp.asarray(positions[s:s + chunk]), jnp.asarray(cells[s:s + chunk]), cutoff, skin=0.0,
                         pbc=pbc, capacity_factor=1.0)
        count = int(jnp.max(nb.max_count))
        parts.append((np.asarray(nb.idx)[..., :max(count, 1)], np.asarray(nb.shifts)[..., :max(count, 1), :]))
        cap = max(cap, count, 1)
    n = positions.shape[1]
    idx = np.concatenate([np.pad(i, ((0, 0), (0, 0), (0, cap - i.shape[-1])), constant_values=n) for i, _ in parts])
    sh = np.concatenate([np.pad(x, ((0, 0), (0, 0), (0, cap - x.shape[-2]), (0, 0))) for _, x in parts])
    return idx, sh


def pack(frames, config: StudentConfig, ids=None, dtype=np.float32) -> list[Packed]:
    """Group labelled frames by their atoms and stack them (see :class:`Packed`)."""
    ids = list(range(len(frames))) if ids is None else list(ids)
    groups: dict = {}
    for k in ids:
        at = frames[k]
        groups.setdefault((tuple(int(z) for z in at.numbers), tuple(bool(p) for p in at.pbc)), []).append(k)
    out = []
    for (numbers, pbc), members in groups.items():
        pos = np.stack([frames[k].positions for k in members]).astype(dtype)
        cel = np.stack([np.asarray(frames[k].cell) for k in members]).astype(dtype)
        e, f, s, hs, temps = [], [], [], [], []
        for k in members:
            ek, fk, sk = frame_arrays(frames[k])
            e.append(ek)
            f.append(fk)
            s.append(np.zeros((3, 3)) if sk is None else sk)
            hs.append(0.0 if sk is None else 1.0)
            temps.append(float(frames[k].info.get("temperature_k", np.nan)))
        idx, sh = _edges_for(pos, cel, config.cutoff, pbc)
        out.append(Packed(numbers=np.asarray(numbers, np.int32), positions=pos, cells=cel,
                          energy=np.asarray(e), forces=np.stack(f).astype(dtype), stress=np.stack(s).astype(dtype),
                          has_stress=np.asarray(hs, dtype), edges=EdgeList(idx=idx.astype(np.int32), shifts=sh.astype(dtype)),
                          frame_ids=np.asarray(members), temperature=np.asarray(temps)))
    return out


def angular_capacity(packs, config: StudentConfig, margin: float = 1.25) -> int:
    """Slots for the packed angular set: the most angular neighbours any training atom has, with
    head-room for MD beyond the data, rounded up to a multiple of 8 (a run that exceeds it takes
    the uncompacted path; see :func:`jaxpto.potentials.student.make_compute`)."""
    most = 0
    for pk in packs:
        for s in range(0, pk.n_frames, 128):
            e = EdgeList(idx=jnp.asarray(pk.edges.idx[s:s + 128]), shifts=jnp.asarray(pk.edges.shifts[s:s + 128]))
            most = max(most, int(jnp.max(max_angular_neighbors(config, jnp.asarray(pk.positions[s:s + 128]),
                                                               jnp.asarray(pk.cells[s:s + 128]), e))))
    return int(8 * math.ceil(max(most, 1) * margin / 8))


# ---------------------------------------------------------------------------------------------
# Normalisation from data
# ---------------------------------------------------------------------------------------------


def fit_reference_energies(packs, config: StudentConfig) -> np.ndarray:
    """Per-species energies by least squares, ``E_frame ~ sum_t n_t e0_t`` (minimum norm)."""
    rows, rhs = [], []
    index = {z: k for k, z in enumerate(config.species)}
    for pk in packs:
        counts = np.zeros(config.n_species)
        for z in pk.numbers:
            counts[index[int(z)]] += 1
        rows.extend([counts] * pk.n_frames)
        rhs.extend(pk.energy.tolist())
    e0, *_ = np.linalg.lstsq(np.asarray(rows), np.asarray(rhs), rcond=None)
    return e0


def initialise(config: StudentConfig, packs, seed: int) -> dict:
    """Random parameters, then descriptor mean/spread, reference energies and the energy scale from data."""
    params = init_params(config, seed=seed, dtype=jnp.float32)
    sample = []
    rng = np.random.default_rng(seed)
    for pk in packs:
        take = rng.choice(pk.n_frames, size=min(pk.n_frames, max(1, 2000 // pk.n_atoms)), replace=False)
        for k in take:
            e1 = EdgeList(idx=jnp.asarray(pk.edges.idx[k]), shifts=jnp.asarray(pk.edges.shifts[k]))
            sample.append(np.asarray(_descriptors_jit(config)(params, jnp.asarray(pk.positions[k]),
                                                              jnp.asarray(pk.cells[k]), tuple(pk.numbers.tolist()), e1)))
    q = np.concatenate(sample)
    params["q_mean"] = jnp.asarray(q.mean(0), jnp.float32)
    params["q_scale"] = jnp.asarray(q.std(0) + 1e-3 * (np.abs(q).mean(0) + 1e-6), jnp.float32)
    params["e0"] = jnp.asarray(fit_reference_energies(packs, config), jnp.float32)
    # Energy scale: the random network's forces brought to a third of the data's RMS force.
    pk = max(packs, key=lambda p: p.n_frames)
    b = min(pk.n_frames, 8)
    batch = _batch(pk, np.arange(b))
    _, f, _ = _evaluate_jit(config)(params, *batch[:4])  # jitted: eager vmap of the student is slow
    rms_model = float(jnp.sqrt(jnp.mean(f**2))) + 1e-12
    rms_data = float(np.sqrt(np.mean(pk.forces[:b] ** 2))) + 1e-12
    params["energy_scale"] = jnp.asarray(0.3 * rms_data / rms_model, jnp.float32)
    return params


_CACHE: dict = {}


def _descriptors_jit(config):
    key = ("desc", config)
    if key not in _CACHE:
        _CACHE[key] = jax.jit(lambda p, pos, c, z, e: descriptors(p, config, pos, c, np.asarray(z), e),
                              static_argnums=(3,))
    return _CACHE[key]


def _batched_efs(config):
    key = ("efs", config)
    if key not in _CACHE:
        efs = make_efs(config)
        _CACHE[key] = jax.vmap(efs, in_axes=(None, 0, 0, None, 0))
    return _CACHE[key]


def _batch(pk: Packed, sel):
    e = EdgeList(idx=jnp.asarray(pk.edges.idx[sel]), shifts=jnp.asarray(pk.edges.shifts[sel]))
    # numbers as a tuple: static under jit, so each species' network runs on its own atoms only
    return (jnp.asarray(pk.positions[sel]), jnp.asarray(pk.cells[sel]), tuple(int(z) for z in pk.numbers), e,
            jnp.asarray(pk.energy[sel], jnp.float32), jnp.asarray(pk.forces[sel]), jnp.asarray(pk.stress[sel]),
            jnp.asarray(pk.has_stress[sel]))


# ---------------------------------------------------------------------------------------------
# Loss, errors
# ---------------------------------------------------------------------------------------------


def _loss_fn(config: StudentConfig, settings: TrainSettings):
    efs = _batched_efs(config)

    def loss(params, pos, cell, numbers, edges, e_ref, f_ref, s_ref, has_s, weight):
        e, f, s = efs(params, pos, cell, numbers, edges)
        n = pos.shape[1]
        de = ((e - e_ref) / n / ENERGY_UNIT) ** 2
        df = jnp.mean(((f - f_ref) / FORCE_UNIT) ** 2, axis=(1, 2))
        ds = jnp.mean(((s - s_ref) / STRESS_UNIT) ** 2, axis=(1, 2)) * has_s
        wsum = jnp.maximum(jnp.sum(weight), 1.0)
        ssum = jnp.maximum(jnp.sum(weight * has_s), 1.0)
        total = (settings.weight_energy * jnp.sum(weight * de) / wsum + settings.weight_forces * jnp.sum(weight * df) / wsum
                 + settings.weight_stress * jnp.sum(weight * ds) / ssum)
        return total

    return loss


def _evaluate_jit(config):
    # one jitted function per config: every evaluation during training reuses its compiled programs
    key = ("evaluate", config)
    if key not in _CACHE:
        _CACHE[key] = jax.jit(_batched_efs(config), static_argnums=(3,))
    return _CACHE[key]


def evaluate(params, config: StudentConfig, packs, batch_frames: int = 32) -> dict:
    """Errors against the labels: per frame (energy per atom, force RMSE, stress max) and totals.

    Returns ``{"energy_mae_mev_per_atom", "energy_rmse_mev_per_atom", "force_mae_mev_per_a",
    "force_rmse_mev_per_a", "stress_mae_ev_per_a3", "stress_rmse_ev_per_a3", "n_frames",
    "per_frame": {...arrays...}}``; the per-frame arrays line up with ``frame_ids``.
    """
    efs = _evaluate_jit(config)
    de, df2, nf, ds, hs, ids, temps, e_pred, e_ref, f_pred, f_ref, s_pred, s_ref = ([] for _ in range(13))
    for pk in packs:
        for s in range(0, pk.n_frames, batch_frames):
            sel = np.arange(s, min(s + batch_frames, pk.n_frames))
            b = _batch(pk, sel)
            e, f, st = (np.asarray(x, float) for x in efs(params, *b[:4]))
            n = pk.n_atoms
            de.extend(((e - pk.energy[sel]) / n).tolist())
            df2.extend(np.sum((f - pk.forces[sel]) ** 2, axis=(1, 2)).tolist())
            nf.extend([3 * n] * len(sel))
            ds.extend(list(st - pk.stress[sel]))
            hs.extend(pk.has_stress[sel].tolist())
            ids.extend(pk.frame_ids[sel].tolist())
            temps.extend(pk.temperature[sel].tolist())
            e_pred.extend((e / n).tolist())
            e_ref.extend((pk.energy[sel] / n).tolist())
            f_pred.append(f.reshape(-1))
            f_ref.append(pk.forces[sel].reshape(-1))
            s_pred.extend(list(st))
            s_ref.extend(list(pk.stress[sel]))
    de = np.asarray(de)
    df2, nf = np.asarray(df2), np.asarray(nf)
    ds = np.asarray(ds).reshape(-1, 9) if ds else np.zeros((0, 9))
    hs = np.asarray(hs, bool)
    fp, fr = (np.concatenate(f_pred), np.concatenate(f_ref)) if f_pred else (np.zeros(0), np.zeros(0))
    out = {"n_frames": int(len(de)),
           "energy_mae_mev_per_atom": float(1e3 * np.mean(np.abs(de))) if len(de) else None,
           "energy_rmse_mev_per_atom": float(1e3 * np.sqrt(np.mean(de**2))) if len(de) else None,
           "force_mae_mev_per_a": float(1e3 * np.mean(np.abs(fp - fr))) if len(fp) else None,
           "force_rmse_mev_per_a": float(1e3 * np.sqrt(np.sum(df2) / np.sum(nf))) if len(df2) else None,
           "stress_mae_ev_per_a3": float(np.mean(np.abs(ds[hs]))) if hs.any() else None,
           "stress_rmse_ev_per_a3": float(np.sqrt(np.mean(ds[hs] ** 2))) if hs.any() else None}
    out["per_frame"] = {"frame_ids": np.asarray(ids), "temperature_k": np.asarray(temps), "energy_error": de,
                        "force_sq_error_sum": df2, "force_components": nf, "stress_error": ds, "has_stress": hs,
                        "energy_pred": np.asarray(e_pred), "energy_ref": np.asarray(e_ref),
                        "force_pred": fp, "force_ref": fr,
                        "stress_pred": np.asarray(s_pred).reshape(-1, 9) if s_pred else np.zeros((0, 9)),
                        "stress_ref": np.asarray(s_ref).reshape(-1, 9) if s_ref else np.zeros((0, 9))}
    return out


def summary(errors: dict) -> dict:
    """The scalar part of :func:`evaluate`'s result."""
    return {k: v for k, v in errors.items() if k != "per_frame"}


def errors_by_temperature(errors: dict) -> list[dict]:
    """Held-out errors per temperature (frames grouped by their ``temperature_k``)."""
    pf = errors["per_frame"]
    out = []
    temps = pf["temperature_k"]
    for T in sorted(set(np.round(temps[np.isfinite(temps)], 3).tolist())):
        sel = np.isclose(temps, T)
        ds = pf["stress_error"][sel][pf["has_stress"][sel]]
        out.append({"temperature_k": float(T), "n_frames": int(sel.sum()),
                    "energy_mae_mev_per_atom": float(1e3 * np.mean(np.abs(pf["energy_error"][sel]))),
                    "force_rmse_mev_per_a": float(1e3 * np.sqrt(np.sum(pf["force_sq_error_sum"][sel])
                                                              / np.sum(pf["force_components"][sel]))),
                    "stress_mae_ev_per_a3": float(np.mean(np.abs(ds))) if ds.size else None})
    return out


# ---------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------


def _epoch_batches(packs, settings: TrainSettings, rng):
    """Minibatches of one epoch: (pack index, frame indices [B], weights [B]); a short last batch
    is padded with repeats of weight 0 so that every pack compiles one shape."""
    batches = []
    for g, pk in enumerate(packs):
        b = max(1, min(pk.n_frames, settings.batch_atoms // pk.n_atoms))
        order = rng.permutation(pk.n_frames)
        for s in range(0, pk.n_frames, b):
            sel = order[s:s + b]
            w = np.ones(b, np.float32)
            if len(sel) < b:
                w[len(sel):] = 0.0
                sel = np.concatenate([sel, order[:b - len(sel)]])
            batches.append((g, sel, w))
    perm = rng.permutation(len(batches))
    return [batches[k] for k in perm]


def learning_rates(settings: TrainSettings, total: int) -> np.ndarray:
    """The learning rate of every Adam step: linear warm-up from a tenth, then exponential decay
    to ``final_learning_rate`` at step ``total``."""
    decay = optax.exponential_decay(settings.learning_rate, transition_steps=total,
                                    decay_rate=settings.final_learning_rate / settings.learning_rate)
    schedule = optax.join_schedules([optax.linear_schedule(settings.learning_rate * 0.1, settings.learning_rate,
                                                           settings.warmup_steps), decay], [settings.warmup_steps])
    return np.asarray(jax.vmap(schedule)(jnp.arange(total)), np.float32)


def _optimizer(settings: TrainSettings):
    # Adam's direction only; the step's learning rate is an argument of the jitted step (below)
    return optax.chain(optax.clip_by_global_norm(settings.grad_clip), optax.scale_by_adam())


def _train_step(config: StudentConfig, settings: TrainSettings):
    """The jitted Adam step, cached per config and loss settings: runs that differ in seed,
    epochs or learning rate (fine-tuning, rounds) share its compiled programs."""
    key = ("step", config, settings.weight_energy, settings.weight_forces, settings.weight_stress, settings.grad_clip)
    if key in _CACHE:
        return _CACHE[key]
    opt = _optimizer(settings)
    loss = _loss_fn(config, settings)

    @functools.partial(jax.jit, static_argnums=(6,))
    def step(trainable, fixed, opt_state, lr, pos, cell, numbers, edges, e, f, s, hs, w):
        def objective(tr):
            return loss({**tr, **fixed}, pos, cell, numbers, edges, e, f, s, hs, w)

        value, grads = jax.value_and_grad(objective)(trainable)
        direction, opt_state = opt.update(grads, opt_state, trainable)
        updates = jax.tree_util.tree_map(lambda d: -lr * d, direction)
        return optax.apply_updates(trainable, updates), opt_state, value

    _CACHE[key] = step
    return step


def train(config: StudentConfig, train_packs, val_packs, settings: TrainSettings, *, params=None, log=print,
          time_limit_s: float | None = None):
    """Train (or fine-tune, when ``params`` is given) and return ``(best params, history)``.

    ``history``: per evaluation ``{"epoch", "train_loss", "val": {...errors...}, "seconds"}``;
    the returned parameters are those with the lowest validation loss (training loss when there
    is no validation set).
    """
    if not train_packs:
        raise ValueError("no training frames")
    rng = np.random.default_rng(settings.seed)
    if params is None:
        params = initialise(config, train_packs, settings.seed)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    # q_mean, q_scale and e0 are set from data and kept fixed; everything else is trained.
    trainable = {k: v for k, v in params.items() if k not in ("q_mean", "q_scale")}
    fixed = {k: v for k, v in params.items() if k in ("q_mean", "q_scale")}
    steps_per_epoch = len(_epoch_batches(train_packs, settings, np.random.default_rng(0)))
    total = max(1, settings.epochs * steps_per_epoch)
    opt_state = _optimizer(settings).init(trainable)
    step = _train_step(config, settings)
    rates = learning_rates(settings, total)
    n_step = 0

    history, best, best_loss = [], None, math.inf
    t0 = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        losses = []
        for g, sel, w in _epoch_batches(train_packs, settings, rng):
            pk = train_packs[g]
            b = _batch(pk, sel)
            lr = rates[min(n_step, total - 1)]
            n_step += 1
            trainable, opt_state, value = step(trainable, fixed, opt_state, lr, *b, jnp.asarray(w))
            losses.append(float(value))
        last = epoch == settings.epochs or (time_limit_s is not None and time.perf_counter() - t0 > time_limit_s)
        if epoch % settings.eval_every == 0 or last or epoch == 1:
            current = {**trainable, **fixed}
            val = summary(evaluate(current, config, val_packs)) if val_packs else None
            score = _score(val) if val else float(np.mean(losses))
            history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val": val,
                            "seconds": time.perf_counter() - t0, "score": score})
            if score < best_loss:
                best_loss, best = score, jax.tree_util.tree_map(np.asarray, current)
            if log:
                msg = f"  epoch {epoch}: train loss {np.mean(losses):.3g}"
                if val:
                    msg += (f", val E {val['energy_mae_mev_per_atom']:.2f} meV/atom, F {val['force_rmse_mev_per_a']:.1f}"
                            f" meV/A, S {val['stress_mae_ev_per_a3'] or 0:.2e} eV/A^3")
                log(msg + f" ({time.perf_counter() - t0:.0f} s)")
        if last:
            break
    return best, history


def _score(val: dict) -> float:
    """Validation loss on the target scale: the loss' three terms from the errors."""
    s = (val["energy_rmse_mev_per_atom"] * 1e-3 / ENERGY_UNIT) ** 2 + (val["force_rmse_mev_per_a"] * 1e-3 / FORCE_UNIT) ** 2
    if val.get("stress_rmse_ev_per_a3") is not None:
        s += (val["stress_rmse_ev_per_a3"] / STRESS_UNIT) ** 2
    return float(s)
