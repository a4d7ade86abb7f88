"""Validation report of a distilled student: ``OUT/report.md`` with figures, from ``OUT/distill.json``.

What it shows (the student is judged against its teacher, not against experiment or DFT):

* held-out errors per temperature (frames of held-out trajectories) against the targets
  (3 meV/atom, 50 meV/A, 0.003 eV/A^3) and parity plots of energy, forces and stress;
* the student beside the teacher on the PTO-test's static part (relaxed a, c, c/a, E_tet - E_cub;
  targets |d c/a| <= 0.01, |d dE| <= 0.02 eV/f.u.) and phonons (the imaginary-mode verdict);
* short NPT and NVT sweeps (the study's integrators) of student and teacher side by side;
* MD stability: the student at 1.3x the sweep's highest temperature (1300 K), 20 ps, NPT and NVT,
  at the study's 625 atoms, with the PTO-test's blow-up and melting rules.

Each part is computed once and cached in ``OUT/report.json`` (delete an entry to recompute).
Units: A, eV, K, THz, C/m^2.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

TARGETS = {"energy_mev_per_atom": 3.0, "force_mev_per_a": 50.0, "stress_ev_per_a3": 0.003, "c_over_a": 0.01,
           "delta_e_ev_per_fu": 0.02}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _load_json(path):
    if os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    return {}


def _save_json(path, data):
    from jaxpto.workflows.pto_test import _jsonable

    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(_jsonable(data), fh, indent=1)
    os.replace(tmp, path)


def plot_parity(pred_path: str, out_png: str) -> str | None:
    """Energy per atom, force components and stress components: student against teacher (held out)."""
    if not os.path.exists(pred_path):
        return None
    z = np.load(pred_path)
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), constrained_layout=True)
    pairs = [(z["energy_ref"], z["energy_pred"], "energy (eV/atom)", 1e3, "meV/atom"),
             (z["force_ref"], z["force_pred"], "force components (eV/Å)", 1e3, "meV/Å"),
             (z["stress_ref"][z["has_stress"]].ravel(), z["stress_pred"][z["has_stress"]].ravel(),
              "stress components (eV/Å³)", 1.0, "eV/Å³")]
    for ax, (ref, pred, label, scale, unit) in zip(axes, pairs):
        if len(ref) == 0:
            ax.set_visible(False)
            continue
        ax.plot(ref, pred, ".", ms=2, alpha=0.4)
        lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.6)
        rmse = float(np.sqrt(np.mean((pred - ref) ** 2)) * scale)
        mae = float(np.mean(np.abs(pred - ref)) * scale)
        ax.set_title(f"{label}\nMAE {mae:.3g}, RMSE {rmse:.3g} {unit}", fontsize=9)
        ax.set_xlabel("teacher")
        ax.set_ylabel("student")
    fig.suptitle("Held-out frames (split by trajectory)")
    fig.savefig(out_png, dpi=130)
    plt.close(fig)
    return out_png


def _static_and_phonons(model, name, cache: dict, key: str, log):
    from jaxpto.workflows.phonons import pto_phonons
    from jaxpto.workflows.static import pto_static

    if key not in cache:
        t0 = time.perf_counter()
        st = pto_static(model)
        ph = pto_phonons(model, st["structures"]["tetragonal"], npoints=51)
        cache[key] = {"static": st, "phonons": ph, "seconds": time.perf_counter() - t0}
        log(f"report: static + phonons of {name} in {time.perf_counter() - t0:.0f} s")
    return cache[key]


def _sweeps(model, name, cache, key, protocol_kw, log):
    from jaxpto.workflows.dynamics import run_sweep, study_npt, study_nvt

    if key not in cache:
        t0 = time.perf_counter()
        res = {}
        for ens, maker in (("npt", study_npt), ("nvt", study_nvt)):
            r = run_sweep(model, maker(**protocol_kw), model_name=name, progress=False)
            res[ens] = {"replicas": r["replicas"], "tc_k": r["tc_k"], "speed": r["speed"]}
        cache[key] = {**res, "protocol": protocol_kw, "seconds": time.perf_counter() - t0}
        log(f"report: NPT/NVT series of {name} in {time.perf_counter() - t0:.0f} s")
    return cache[key]


def _stability(model, name, cache, log, temperature=1300.0, ps=20.0, supercell=5):
    from jaxpto.workflows.dynamics import run_sweep, study_npt, study_nvt

    if "stability" not in cache:
        t0 = time.perf_counter()
        steps = int(round(ps * 1000 / 2.0))
        kw = dict(temperatures_k=(temperature,), supercell=supercell, steps=steps, chunk_steps=500, record_every=10,
                  average_last_ps=ps / 2)
        res = {}
        for ens, maker in (("npt", study_npt), ("nvt", study_nvt)):
            r = run_sweep(model, maker(**kw), model_name=name, progress=False)
            rep = r["replicas"][0]
            series = r["series"]
            T = series["temperature"][:, 0]
            res[ens] = {"status": rep["status"], "reason": rep.get("reason"), "phase": rep.get("phase"),
                        "mean_temperature_k": rep.get("mean_temperature_k"), "max_temperature_k": float(np.nanmax(T)),
                        "site_rms_a": rep.get("site_rms_a"), "c_over_a": rep.get("c_over_a"),
                        "ms_per_step": r["speed"].get("ms_per_step")}
        cache["stability"] = {"temperature_k": temperature, "ps": ps, "n_atoms": 5 * supercell**3, **res,
                              "seconds": time.perf_counter() - t0}
        log(f"report: stability run in {time.perf_counter() - t0:.0f} s")
    return cache["stability"]


def _fmt(x, spec=".4f"):
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def _ok(flag):
    return "yes" if flag else "**no**"


def write_report(out: str, *, series_steps: int = 2000, series_supercell: int = 2, teacher_series: bool = True,
                 log=print) -> str:
    """Compute what is missing in ``OUT/report.json`` and write ``OUT/report.md`` and figures."""
    from bridges.registry import load_model
    from jaxpto.potentials.student import read_header
    from jaxpto.workflows.phonons import plot_phonon_bands
    from jaxpto.workflows.report import plot_npt, plot_nvt
    from jaxpto.workflows.static import plot_static

    summary = _load_json(os.path.join(out, "distill.json"))
    student_path = os.path.join(out, "student.npz")
    if not summary or not os.path.exists(student_path):
        raise FileNotFoundError(f"{out} has no distill.json/student.npz; run `jaxpto distill --out {out}` first")
    header = read_header(student_path)
    info = header["info"]
    teacher_name = info.get("teacher")
    cache_path = os.path.join(out, "report.json")
    cache = _load_json(cache_path)
    student = load_model(student_path)
    pto_like = not info.get("settings", {}).get("structure")
    teacher = load_model(teacher_name) if teacher_name else None
    if pto_like:
        _static_and_phonons(student, "student", cache, "student_static", log)
        _save_json(cache_path, cache)
        if teacher is not None:
            _static_and_phonons(teacher, teacher_name, cache, "teacher_static", log)
            _save_json(cache_path, cache)
        kw = dict(temperatures_k=(300.0, 600.0, 900.0), supercell=series_supercell, steps=series_steps,
                  chunk_steps=min(500, series_steps), record_every=10, average_last_ps=series_steps * 2e-3 / 2)
        _sweeps(student, "student", cache, "student_series", kw, log)
        _save_json(cache_path, cache)
        if teacher is not None and teacher_series:
            _sweeps(teacher, teacher_name, cache, "teacher_series", kw, log)
            _save_json(cache_path, cache)
        _stability(student, "student", cache, log)
        _save_json(cache_path, cache)

    figs = {}
    figs["parity"] = plot_parity(os.path.join(out, "validation_predictions.npz"), os.path.join(out, "parity.png"))
    lines = [f"# Student of {teacher_name or 'user data'}: validation report", ""]
    cfg = header["config"]
    lines += [f"Student file: `{os.path.basename(student_path)}` ({os.path.getsize(student_path) / 1e3:.0f} kB, "
              f"format {header['format']}, checksum `{header['checksum'][:12]}`), species "
              f"{cfg['species']}, cutoffs {cfg['rc_radial']} A (radial) / {cfg['rc_angular']} A (angular), "
              f"l_max {cfg['l_max']}, descriptor {len(cfg['species']) * cfg['basis_radial']} two-body + {cfg['n_angular'] * (cfg['n_angular'] + 1) // 2 * cfg['l_max']} three-body, "
              f"MLP {cfg['hidden']}. Load it with `jaxpto.load_model(path)`.", ""]
    lines += ["A student is validated against its teacher: every number below says how closely it reproduces "
              f"{teacher_name or 'the training data'}, not how right either is about PbTiO3.", ""]
    d = info.get("data", {})
    lines += ["## Data", "", f"{d.get('frames')} labelled frames ({d.get('train_frames')} training, "
              f"{d.get('validation_frames')} held out, split by trajectory): " +
              ", ".join(f"{k} {v}" for k, v in (d.get("by_source") or {}).items()) + ".", ""]
    tim = info.get("timings_s", {})
    if tim:
        lines += ["Wall time per stage (s): " + ", ".join(f"{k[:-2] if k.endswith('_s') else k} {v:.0f}"
                                                          for k, v in tim.items()), ""]
    ve = info.get("validation_errors") or {}
    if ve:
        ok_e = ve["energy_mae_mev_per_atom"] <= TARGETS["energy_mev_per_atom"]
        ok_f = ve["force_rmse_mev_per_a"] <= TARGETS["force_mev_per_a"]
        ok_s = ve.get("stress_mae_ev_per_a3") is None or ve["stress_mae_ev_per_a3"] <= TARGETS["stress_ev_per_a3"]
        lines += ["## Held-out errors against the teacher", "",
                  "| | energy MAE (meV/atom) | force RMSE (meV/A) | stress MAE (eV/A^3) |", "|---|---:|---:|---:|",
                  f"| all held-out frames | {ve['energy_mae_mev_per_atom']:.2f} | {ve['force_rmse_mev_per_a']:.1f} | "
                  f"{_fmt(ve.get('stress_mae_ev_per_a3'), '.2e')} |",
                  "| target | 3 | 50 | 0.003 |", f"| met | {_ok(ok_e)} | {_ok(ok_f)} | {_ok(ok_s)} |", ""]
        rows = info.get("validation_errors_by_temperature") or []
        if rows:
            lines += ["Per temperature (0 K = the 5-atom static cells):", "",
                      "| T (K) | frames | energy MAE | force RMSE | stress MAE |", "|---:|---:|---:|---:|---:|"]
            for r in rows:
                lines.append(f"| {r['temperature_k']:.0f} | {r['n_frames']} | {r['energy_mae_mev_per_atom']:.2f} | "
                             f"{r['force_rmse_mev_per_a']:.1f} | {_fmt(r.get('stress_mae_ev_per_a3'), '.2e')} |")
            lines.append("")
        if figs["parity"]:
            lines += ["![parity](parity.png)", ""]
    if pto_like and "student_static" in cache:
        s_st = cache["student_static"]["static"]
        t_st = cache.get("teacher_static", {}).get("static")
        models = {"student": s_st} if t_st is None else {teacher_name: t_st, "student": s_st}
        figs["static"] = plot_static(models, os.path.join(out, "static.png"))
        lines += ["## Static part and phonons beside the teacher", "",
                  "| | a (A) | c (A) | c/a | E_tet - E_cub (eV/f.u.) | lowest phonon (THz) | imaginary modes |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for name, key in ((teacher_name, "teacher_static"), ("student", "student_static")):
            if key not in cache:
                continue
            st, ph = cache[key]["static"], cache[key]["phonons"]
            lines.append(f"| {name} | {st['a']:.4f} | {st['c']:.4f} | {st['c_over_a']:.4f} | "
                         f"{st['delta_e_ev_per_fu']:.4f} | {ph['min_frequency_thz']:.3f} | "
                         f"{'yes' if ph['has_imaginary'] else 'no'} |")
        if t_st is not None:
            dca = s_st["c_over_a"] - t_st["c_over_a"]
            dde = s_st["delta_e_ev_per_fu"] - t_st["delta_e_ev_per_fu"]
            same_ph = cache["student_static"]["phonons"]["has_imaginary"] == cache["teacher_static"]["phonons"]["has_imaginary"]
            lines += [f"| student - teacher | {s_st['a'] - t_st['a']:+.4f} | {s_st['c'] - t_st['c']:+.4f} | {dca:+.4f} | "
                      f"{dde:+.4f} | | |", "",
                      f"Targets: |d c/a| <= 0.01: {_ok(abs(dca) <= TARGETS['c_over_a'])}; |d dE| <= 0.02 eV/f.u.: "
                      f"{_ok(abs(dde) <= TARGETS['delta_e_ev_per_fu'])}; same phonon verdict: {_ok(same_ph)}.", ""]
            cache["comparison"] = {"d_c_over_a": dca, "d_delta_e_ev_per_fu": dde, "same_phonon_verdict": bool(same_ph)}
            phon = {teacher_name: cache["teacher_static"]["phonons"], "student": cache["student_static"]["phonons"]}
        else:
            phon = {"student": cache["student_static"]["phonons"]}
        figs["phonons"] = plot_phonon_bands(phon, os.path.join(out, "phonons.png"))
        lines += ["![static](static.png) ![phonons](phonons.png)", ""]
    if pto_like and "student_series" in cache:
        models_npt = [{"model": "student", "npt": cache["student_series"]["npt"]["replicas"]}]
        models_nvt = [{"model": "student", "nvt": cache["student_series"]["nvt"]["replicas"]}]
        if "teacher_series" in cache:
            models_npt.insert(0, {"model": teacher_name, "npt": cache["teacher_series"]["npt"]["replicas"]})
            models_nvt.insert(0, {"model": teacher_name, "nvt": cache["teacher_series"]["nvt"]["replicas"]})
        figs["npt"] = plot_npt(models_npt, os.path.join(out, "npt_series.png"))
        figs["nvt"] = plot_nvt(models_nvt, os.path.join(out, "nvt_series.png"))
        p = cache["student_series"]["protocol"]
        lines += ["## Short NPT and NVT series beside the teacher", "",
                  f"The study's integrators (Melchionna NPT, Langevin NVT), {5 * p['supercell']**3} atoms, "
                  f"{p['steps']} steps of 2 fs, averages over the last {p['average_last_ps']:g} ps "
                  "(short runs: indicative, not converged).", "",
                  "| model | T (K) | NPT a (A) | NPT c (A) | NPT c/a | phase | NVT P_z (C/m^2) |", "|---|---:|---:|---:|---:|---|---:|"]
        for name, key in ((teacher_name, "teacher_series"), ("student", "student_series")):
            if key not in cache:
                continue
            for rn, rv in zip(cache[key]["npt"]["replicas"], cache[key]["nvt"]["replicas"]):
                lines.append(f"| {name} | {rn['temperature_k']:.0f} | {_fmt(rn.get('a'))} | {_fmt(rn.get('c'))} | "
                             f"{_fmt(rn.get('c_over_a'))} | {rn.get('phase')} | {_fmt(rv.get('pz'), '.3f')} |")
        lines += ["", "![npt](npt_series.png) ![nvt](nvt_series.png)", ""]
    if pto_like and "stability" in cache:
        sb = cache["stability"]
        lines += ["## MD stability", "",
                  f"The student at {sb['temperature_k']:.0f} K (1.3x the sweep's 1000 K), {sb['ps']:g} ps, "
                  f"{sb['n_atoms']} atoms, with the PTO-test's blow-up and melting rules:", "",
                  "| ensemble | status | mean T (K) | max T (K) | site RMS (A) | c/a | ms/step |", "|---|---|---:|---:|---:|---:|---:|"]
        for ens in ("npt", "nvt"):
            r = sb[ens]
            lines.append(f"| {ens.upper()} | {r['status']}{' (' + r['reason'] + ')' if r.get('reason') else ''} | "
                         f"{_fmt(r.get('mean_temperature_k'), '.0f')} | {_fmt(r.get('max_temperature_k'), '.0f')} | "
                         f"{_fmt(r.get('site_rms_a'), '.3f')} | {_fmt(r.get('c_over_a'))} | {_fmt(r.get('ms_per_step'), '.2f')} |")
        stable = all(sb[e]["status"] == "ok" for e in ("npt", "nvt"))
        lines += ["", f"No blow-up in {sb['ps']:g} ps at {sb['temperature_k']:.0f} K: {_ok(stable)}.", ""]
    cache["figures"] = {k: os.path.basename(v) for k, v in figs.items() if v}
    _save_json(cache_path, cache)
    path = os.path.join(out, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path
