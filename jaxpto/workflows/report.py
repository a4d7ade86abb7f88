"""Figures and ``report.md`` of a PTO-test output directory (from its ``results.json``).

Figures follow the study's: relaxed lattice and c/a per model, phonon bands, NPT lattice constants
and c/a against temperature with standard deviations as error bars, NVT polarization P_z against
temperature. Several models are overlaid in one figure. Experimental reference points (PbTiO3:
c/a = 1.06 at room temperature, T_c ~ 760 K, first order) are drawn where they apply.
"""

from __future__ import annotations

import os

import numpy as np

EXPERIMENT_C_OVER_A = 1.06
EXPERIMENT_TC_K = 760.0
PBESOL_A, PBESOL_C = 3.87411, 4.19948


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _val(x):
    return np.nan if x is None else float(x)


def plot_npt(models: list[dict], path: str) -> str | None:
    """a, b, c (left) and c/a (right) against temperature, error bars = standard deviations."""
    models = [m for m in models if m.get("npt")]
    if not models:
        return None
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for k, m in enumerate(models):
        rows = m["npt"]
        T = np.array([r["temperature_k"] for r in rows])
        color = f"C{k}"
        for key, marker in (("a", "o"), ("b", "s"), ("c", "^")):
            y = np.array([_val(r.get(key)) for r in rows])
            e = np.array([_val(r.get(key + "_std")) for r in rows])
            ax.errorbar(T, y, yerr=e, marker=marker, color=color, capsize=3, lw=1,
                        label=f"{m['model']}: {key}" if len(models) > 1 or key else None)
        ca = np.array([_val(r.get("c_over_a")) for r in rows])
        bx.plot(T, ca, "o-", color=color, label=m["model"])
        for r, t, y in zip(rows, T, ca):
            if r.get("phase") in ("unstable", "molten"):
                bx.annotate(r["phase"], (t, np.nanmax(ca) if np.isfinite(np.nanmax(ca)) else 1.0), fontsize=7,
                            rotation=90, color=color)
    ax.set_xlabel("Temperature (K)")
    ax.set_ylabel("Pseudo-cubic lattice constant (Å)")
    ax.set_title("NPT lattice constants (box / n)")
    ax.legend(fontsize=7, ncol=2)
    bx.axhline(EXPERIMENT_C_OVER_A, color="gray", ls="--", lw=1, label="experiment, room T")
    bx.axhline(1.0, color="k", lw=0.5)
    bx.axvline(EXPERIMENT_TC_K, color="gray", ls=":", lw=1, label=f"experimental $T_c$ ~ {EXPERIMENT_TC_K:.0f} K")
    bx.set_xlabel("Temperature (K)")
    bx.set_ylabel("c / a")
    bx.set_title("Tetragonality")
    bx.legend(fontsize=7)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def plot_nvt(models: list[dict], path: str) -> str | None:
    """Supercell-average P_z (and |P|) against temperature; error bars = standard deviations."""
    models = [m for m in models if m.get("nvt")]
    if not models:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4), constrained_layout=True)
    for k, m in enumerate(models):
        rows = m["nvt"]
        T = np.array([r["temperature_k"] for r in rows])
        pz = np.abs(np.array([_val(r.get("pz")) for r in rows]))
        e = np.array([_val(r.get("pz_std")) for r in rows])
        ax.errorbar(T, pz, yerr=e, marker="o", capsize=3, color=f"C{k}", label=f"{m['model']}: |⟨P_z⟩|")
        pa = np.array([_val(r.get("p_abs")) for r in rows])
        ax.plot(T, pa, ls="--", marker="x", color=f"C{k}", alpha=0.6, label=f"{m['model']}: ⟨|P|⟩")
        tc = m.get("nvt_tc_k")
        if tc:
            ax.axvline(tc, color=f"C{k}", ls=":", lw=1)
    ax.axvline(EXPERIMENT_TC_K, color="gray", ls=":", lw=1, label=f"experimental $T_c$ ~ {EXPERIMENT_TC_K:.0f} K")
    ax.set_xlabel("Temperature (K)")
    ax.set_ylabel("Polarization (C/m²)")
    ax.set_title("NVT polarization (Born charges)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def _fmt(x, spec=".4f"):
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def verdict(m: dict) -> str:
    """One paragraph on a model, from its results only."""
    name = m["model"]
    parts = []
    s = m.get("static")
    if s:
        ca = s.get("c_over_a")
        judge = ""
        if ca is not None:
            if ca > 1.15:
                judge = " (strongly supertetragonal)"
            elif ca < 1.01:
                judge = " (the tetragonal phase collapses to cubic)"
            elif abs(ca - EXPERIMENT_C_OVER_A) < 0.02:
                judge = " (close to experiment)"
        parts.append(f"relaxes tetragonal PbTiO3 to a = {_fmt(s.get('a'))} Å, c = {_fmt(s.get('c'))} Å, "
                     f"c/a = {_fmt(ca)}{judge} against 1.06 in experiment and 1.084 in PBEsol, with the "
                     f"tetragonal phase {_fmt(s.get('delta_e_ev_per_fu'), '.4f')} eV/f.u. relative to cubic")
    ph = m.get("phonons")
    if ph:
        if ph.get("has_imaginary"):
            parts.append(f"its phonons of the relaxed tetragonal cell have imaginary modes "
                         f"(lowest {_fmt(ph.get('min_frequency_thz'), '.2f')} THz), i.e. the structure is not a minimum")
        else:
            low = f"lowest {_fmt(ph.get('min_frequency_thz'), '.2f')} THz"
            if ph.get("min_frequency_is_acoustic_noise"):
                low += (f", acoustic interpolation noise near Γ; lowest optical mode "
                        f"{_fmt(ph.get('lowest_optical_thz'), '.2f')} THz")
            parts.append(f"its tetragonal phonons are stable ({low})")
    npt = m.get("npt")
    if npt:
        calls = ", ".join(f"{r['temperature_k']:.0f} K {r.get('phase', '?')}" for r in npt)
        bad = [r for r in npt if r.get("status") in ("blew_up", "molten")]
        tc = m.get("npt_tc_k")
        txt = f"in NPT the phases are: {calls}"
        txt += f"; the tetragonal-cubic transition is near {tc:.0f} K (experiment ~760 K)" if tc else \
            f"; {m.get('npt_tc_note', '')}"
        if bad:
            txt += "; stopped replicas: " + "; ".join(f"{r['temperature_k']:.0f} K ({r['reason']})" for r in bad)
        parts.append(txt)
    nvt = m.get("nvt")
    if nvt:
        low = nvt[0]
        tc = m.get("nvt_tc_k")
        txt = (f"at the experimental cell P_z = {_fmt(abs(low.get('pz') or np.nan), '.3f')} C/m² at "
               f"{low['temperature_k']:.0f} K")
        txt += f", vanishing near {tc:.0f} K" if tc else f" ({m.get('nvt_tc_note', '')})"
        parts.append(txt)
    sp = (m.get("speed") or {}).get("ase_comparison")
    if sp and sp.get("ase_over_jaxpto"):
        parts.append(f"jaxpto ran {sp['ase_over_jaxpto']:.1f}x faster than ASE with {sp['ase_calculator']} "
                     f"({sp['n_atoms']} atoms, 1 replica)")
    if not parts:
        return f"**{name}**: no results yet."
    return f"**{name}** " + "; ".join(parts) + "."


def part_protocol(data: dict, m: dict, part: str) -> tuple[dict | None, bool]:
    """``(settings, recorded)``: the sweep settings ``part`` ("npt"/"nvt") of model entry ``m`` ran
    with (schema /2: kept with the part), or the file's top-level protocol (schema /1 files; then
    ``recorded`` is False: it is the last command's protocol, not necessarily this part's)."""
    own = ((m.get("parts") or {}).get(part) or {}).get("protocol")
    if own is not None:
        return own.get(part), True
    return (data.get("protocol") or {}).get(part), False


def _sweep_protocol_text(part: str, p: dict, window_ps) -> str:
    temps = ", ".join(f"{t:.0f}" for t in p.get("temperatures_k", []))
    if part == "npt":
        kind = (f"Melchionna NPT (ttime {p.get('ttime_fs')} fs, pfactor {_fmt(p.get('pfactor'), '.1f')} ASE units, "
                "mask eye(3), stress 0)")
    else:
        kind = f"Langevin NVT (friction {p.get('friction_per_fs')}/fs) at a = {p.get('a')}, c = {p.get('c')} Å"
    window = f", averaged over the last {_fmt(window_ps, 'g')} ps" if window_ps is not None else ""
    return (f"{kind}, {p.get('supercell')}^3 supercell, {p.get('steps')} steps of {p.get('timestep_fs')} fs, "
            f"T = {temps} K{window}")


def sweep_protocol_lines(data: dict, part: str) -> list[str]:
    """The protocol line(s) of a sweep section: one per distinct protocol among the models that ran
    the part (each part keeps its own protocol), and a warning per model whose window was cut."""
    groups: dict[str, list[str]] = {}
    notes = []
    for m in data.get("models", []):
        if not m.get(part):
            continue
        p, recorded = part_protocol(data, m, part)
        text = _sweep_protocol_text(part, p or {}, m.get(f"{part}_averaging_window_ps")) if p else "not recorded"
        if not recorded:
            text += " (recorded for the whole results file by an older jaxpto, not for this part)"
        groups.setdefault(text, []).append(m["model"])
        if m.get(f"{part}_averaging_note"):
            notes.append(f"> **Warning ({m['model']})**: {m[f'{part}_averaging_note']}.")
    lines = []
    for text, names in groups.items():
        who = f" ({', '.join(names)})" if len(groups) > 1 else ""
        lines.append(f"Protocol{who}: {text}.")
    if lines:
        lines.append("")
    if notes:
        lines += notes + [""]
    return lines


def write_report(out: str, data: dict) -> str:
    """Figures and ``OUT/report.md`` from the results ``data`` (the content of results.json)."""
    models = data.get("models", [])
    figs = {}
    try:
        from jaxpto.workflows import phonons as ph_mod
        from jaxpto.workflows import static as st_mod

        st = {m["model"]: m["static"] for m in models if m.get("static")}
        if st:
            figs["static"] = st_mod.plot_static(st, os.path.join(out, "static.png"))
        ph = {m["model"]: m["phonons"] for m in models if m.get("phonons")}
        if ph:
            figs["phonons"] = ph_mod.plot_phonon_bands(ph, os.path.join(out, "phonons.png"))
    except ImportError:
        pass
    figs["npt"] = plot_npt(models, os.path.join(out, "npt_lattice.png"))
    figs["nvt"] = plot_nvt(models, os.path.join(out, "nvt_polarization.png"))

    proto = data.get("protocol", {})
    lines = ["# PTO-test report", ""]
    quick = any(((m.get("parts") or {}).get(part) or {}).get("protocol", {}).get("quick")
                for m in models for part in (m.get("parts") or {}))
    if quick or proto.get("quick"):
        lines += ["> **Quick protocol**: small supercell, few temperatures, short runs. The numbers show that "
                  "the pipeline works; they are not converged physics. Run without `--quick` for the study's "
                  "protocol.", ""]
    dev = data.get("device", {})
    ver = data.get("versions", {})
    lines += [f"Device: {dev.get('gpu') or dev.get('processor') or dev.get('platform')} "
              f"(JAX backend {dev.get('jax_backend')}); jaxpto {ver.get('jaxpto')}, JAX {ver.get('jax')}, "
              f"torch {ver.get('torch', '-')}, ASE {ver.get('ase')}, phonopy {ver.get('phonopy')}.", ""]
    lines += ["All temperatures of a sweep run as replicas of one batched program.", ""]
    lines += ["## Verdicts", ""] + [verdict(m) + "\n" for m in models]
    lines += ["## Static properties", "", "| model | a (Å) | c (Å) | c/a | V (Å³) | ΔE_T-C (eV/f.u.) | lowest phonon (THz) | imaginary |",
              "|---|---|---|---|---|---|---|---|"]
    for m in models:
        s, ph = m.get("static") or {}, m.get("phonons") or {}
        lines.append(f"| {m['model']} | {_fmt(s.get('a'))} | {_fmt(s.get('c'))} | {_fmt(s.get('c_over_a'))} | "
                     f"{_fmt(s.get('volume'), '.3f')} | {_fmt(s.get('delta_e_ev_per_fu'))} | "
                     f"{_fmt(ph.get('min_frequency_thz'), '.3f')} | {ph.get('has_imaginary', '–')} |")
    lines.append("| PBEsol (study's start) | 3.8741 | 4.1995 | 1.0840 | | | | |")
    lines.append("| experiment (room T) | | | 1.06 | | | | |")
    lines.append("")
    for key, title in (("static", "Relaxed lattice"), ("phonons", "Phonon bands")):
        if figs.get(key):
            lines += [f"![{title}]({os.path.basename(figs[key])})", ""]
    lines += ["## NPT sweep", ""] + sweep_protocol_lines(data, "npt")
    lines += ["| model | T (K) | a (Å) | b (Å) | c (Å) | c/a | phase | evidence |", "|---|---|---|---|---|---|---|---|"]
    for m in models:
        for r in m.get("npt") or []:
            lat = " | ".join(f"{_fmt(r.get(k))} ± {_fmt(r.get(k + '_std'), '.4f')}" for k in "abc")
            lines.append(f"| {m['model']} | {r['temperature_k']:.0f} | {lat} | {_fmt(r.get('c_over_a'))} | "
                         f"{r.get('phase')} | {r.get('phase_evidence', '')} |")
    if figs.get("npt"):
        lines += ["", f"![NPT lattice]({os.path.basename(figs['npt'])})"]
    lines += ["", "## NVT polarization", ""] + sweep_protocol_lines(data, "nvt")
    lines += ["| model | T (K) | P_x | P_y | P_z (C/m²) | ⟨|P|⟩ | status |", "|---|---|---|---|---|---|---|"]
    for m in models:
        for r in m.get("nvt") or []:
            lines.append(f"| {m['model']} | {r['temperature_k']:.0f} | {_fmt(r.get('px'), '.3f')} | "
                         f"{_fmt(r.get('py'), '.3f')} | {_fmt(r.get('pz'), '.3f')} ± {_fmt(r.get('pz_std'), '.3f')} | "
                         f"{_fmt(r.get('p_abs'), '.3f')} | {r.get('status')} |")
        if m.get("nvt"):
            lines.append(f"| {m['model']} | T_c | | | {_fmt(m.get('nvt_tc_k'), '.0f')} K | | {m.get('nvt_tc_note', '')} |")
    if figs.get("nvt"):
        lines += ["", f"![NVT polarization]({os.path.basename(figs['nvt'])})"]
    lines += ["", "## Speed", "", "| model | part | atoms x replicas | ms/step | µs/atom/step | ns/day per replica |", "|---|---|---|---|---|---|"]
    for m in models:
        for part in ("npt", "nvt"):
            sp = (m.get("speed") or {}).get(part) or {}
            if "ms_per_step" in sp:
                lines.append(f"| {m['model']} | {part} | {sp['n_atoms']} x {sp['replicas']} | {sp['ms_per_step']:.1f} | "
                             f"{sp['us_per_atom_step']:.2f} | {sp['ns_per_day_per_replica']:.3f} |")
        sp = (m.get("speed") or {}).get("ase_comparison")
        if sp:
            lines.append(f"| {m['model']} | ASE NPT ({sp['ase_calculator']}) vs jaxpto, 1 replica | {sp['n_atoms']} x 1 | "
                         f"ASE {1e3 * sp['ase_s_per_step']:.1f} / jaxpto {1e3 * sp['jaxpto_s_per_step']:.1f} | "
                         f"{sp['ase_us_per_atom_step']:.1f} / {sp['jaxpto_us_per_atom_step']:.1f} | "
                         f"ASE/jaxpto = {_fmt(sp.get('ase_over_jaxpto'), '.2f')} |")
    from jaxpto.workflows.checkpoint import atomic_write

    text = "\n".join(lines) + "\n"
    return atomic_write(os.path.join(out, "report.md"), lambda fh: fh.write(text), mode="w")
