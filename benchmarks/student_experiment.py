"""One architecture/training experiment on distillation data: train a student for a fixed time,
then its held-out errors (overall, per temperature, per species, against |F_teacher|) and its bare
625-atom call time (the choice of DEFAULT_ARCHITECTURE/TrainSettings; table in
benchmarks/results/students/chgnet-0.3.0/architecture-scan.md). Usage:

  python benchmarks/student_experiment.py NAME OUT_DIR TIME_LIMIT_S '{"hidden": [64]}' '{"weight_forces": 3}' 'OUT/data/*.extxyz'

Writes OUT_DIR/NAME.json. Timings on a shared machine are only indicative."""
import sys, json, glob, time, dataclasses
import numpy as np
import jax, jax.numpy as jnp
name, out, tlim, arch, trn = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4]), json.loads(sys.argv[5])
pattern = sys.argv[6]
from jaxpto.workflows import distill as D, distill_train as tr, distill_data as dd
from jaxpto.potentials.student import student_model
files = sorted(glob.glob(pattern))
frames = [f for p in files for f in dd.read_frames(p)]
A = {**D.DEFAULT_ARCHITECTURE, **arch}
if "hidden" in A: A["hidden"] = tuple(A["hidden"])
ts = dataclasses.replace(tr.TrainSettings(), **trn)
s = D.DistillSettings(architecture=tuple(sorted(A.items())), train=ts)
cfg = D.build_config(s, frames)
cfg = dataclasses.replace(cfg, angular_neighbors=D._angular_slots(cfg, frames))
t0 = time.time()
params, hist, trp, vap = D._train_stage(cfg, frames, s, print, time_limit_s=tlim)
train_s = time.time() - t0
err = tr.evaluate(params, cfg, vap)
summ = tr.summary(err); byT = tr.errors_by_temperature(err)
# per species and vs |F| (held-out)
ev = tr._evaluate_jit(cfg)
sq = {}; bins = np.array([0, 0.5, 1, 2, 4, 1e9]); binsq = np.zeros(len(bins)-1); binn = np.zeros(len(bins)-1)
for pk in vap:
    for st in range(0, pk.n_frames, 32):
        sel = np.arange(st, min(st+32, pk.n_frames)); b = tr._batch(pk, sel)
        _, f, _ = ev(params, *b[:4]); f = np.asarray(f, float); d2 = (f - pk.forces[sel])**2
        for z in set(pk.numbers.tolist()):
            m = pk.numbers == z; a = sq.setdefault(int(z), [0.0, 0]); a[0] += d2[:, m].sum(); a[1] += d2[:, m].size
        mag = np.linalg.norm(pk.forces[sel], axis=-1); k = np.digitize(mag, bins) - 1
        for i in range(len(binn)):
            binsq[i] += d2.sum(-1)[k == i].sum(); binn[i] += 3 * (k == i).sum()
per_species = {z: 1e3 * np.sqrt(a[0] / a[1]) for z, a in sq.items()}
vsF = [{"F_range": [float(bins[i]), float(bins[i+1])], "n_atoms": int(binn[i]/3), "rmse_mev_a": float(1e3*np.sqrt(binsq[i]/max(binn[i],1)))} for i in range(len(binn))]
# bare call time at 625 atoms (R=1), interleaving not needed for a scan row
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
import suite, student_speed as ss  # noqa: E402
model = student_model(params, cfg)
run, calls = ss._bare(model, suite._atoms(5), 1, 20)
ts_ = []
for _ in range(3):
    t1 = time.perf_counter(); run(); ts_.append((time.perf_counter() - t1) / calls)
row = {"name": name, "arch": {k: (list(v) if isinstance(v, tuple) else v) for k, v in A.items()}, "train": trn,
       "angular_neighbors": cfg.angular_neighbors, "n_descriptors": cfg.n_descriptors,
       "epochs_done": hist[-1]["epoch"], "train_s": train_s, "val": summ, "by_temperature": byT,
       "force_rmse_by_species": per_species, "force_rmse_vs_F": vsF, "ms_per_call_625": 1e3 * float(np.median(ts_)),
       "files": [p.split('/')[-1] for p in files], "history": [{k: h[k] for k in ("epoch", "train_loss", "seconds")} | {"F": h["val"]["force_rmse_mev_per_a"], "E": h["val"]["energy_mae_mev_per_atom"]} for h in hist]}
json.dump(row, open(f"{out}/{name}.json", "w"), indent=1, default=float)
print("RESULT", json.dumps({k: row[k] for k in ("name", "epochs_done", "train_s", "ms_per_call_625", "force_rmse_by_species")}, default=float))
print("VAL", json.dumps(summ)); print("BYT", json.dumps(byT)); print("VSF", json.dumps(vsF))
