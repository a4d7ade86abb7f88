r"""Phase call of a PbTiO3 MD run: tetragonal, cubic, supertetragonal, or unstable/molten.

Evidence used (all from the trajectory, nothing from the model):

* **order** -- the site displacement :math:`u_\mathrm{rms}`: the root-mean-square distance of the
  atoms from their starting lattice sites, measured in fractional coordinates of the current box
  (so homogeneous strain does not count), with the mean drift removed and the minimum image
  taken in the supercell. A crystal stays bounded (thermal motion plus the polar-to-cubic shift
  of the oxygens, below ~0.6 A up to 1000 K); a liquid or a disordered structure is far beyond the
  Lindemann scale. ``u_rms > 1.0 A`` (``MOLTEN_SITE_RMS``) is called molten/disordered.
* **blow-up** -- non-finite coordinates, a box length changed by more than 50 %, or a
  temperature above 5x the target: the replica is unstable (the run stops it).
* **shape** -- the averaged, sorted pseudo-cubic constants ``a <= b <= c`` (box lengths / n):
  tetragonal when ``c/a' - 1`` (``a' = (a + b)/2``) exceeds both 0.5 % and the spread of the
  lattice constants, ``(a_std + c_std)/a'``; supertetragonal when additionally
  ``c/a' - 1 > 1.5 (c/a_ref - 1)`` and ``c/a' > 1.10``, where ``c/a_ref`` is the model's own relaxed
  value (from the static part) or, without one, the PBEsol value 1.084 -- "c/a far above the
  relaxed value"; cubic otherwise. ``b/a`` is reported so that orthorhombic distortions are visible.

The thresholds are module constants, documented here, and returned with every call.
"""

from __future__ import annotations

import numpy as np

MOLTEN_SITE_RMS = 1.0  # Angstrom
MIN_TETRAGONALITY = 0.005  # c/a - 1
SUPERTETRAGONAL_FACTOR = 1.5  # (c/a - 1) / (c/a_ref - 1)
SUPERTETRAGONAL_MIN = 1.10  # c/a
PBESOL_C_OVER_A = 4.19948 / 3.87411
BLOWUP_CELL_CHANGE = 0.5  # relative box-length change
BLOWUP_TEMPERATURE_FACTOR = 5.0


def site_rms_displacement(positions, cells, reference_scaled) -> np.ndarray:
    """``u_rms`` [T] (Angstrom) of frames ``positions`` [T,N,3] in boxes ``cells`` [T,3,3].

    ``reference_scaled`` [N,3]: the starting fractional coordinates (the lattice sites).
    """
    positions = np.asarray(positions, float)
    cells = np.asarray(cells, float)
    if positions.ndim == 2:
        positions, cells = positions[None], cells[None]
    inv = np.linalg.inv(cells)
    s = np.einsum("tni,tij->tnj", positions, inv)
    ds = s - np.asarray(reference_scaled, float)[None]
    ds -= np.round(ds)
    ds -= ds.mean(axis=1, keepdims=True)  # rigid drift of the whole crystal
    ds -= np.round(ds)
    dr = np.einsum("tni,tij->tnj", ds, cells)
    return np.sqrt(np.mean(np.sum(dr**2, axis=-1), axis=1))


def blow_up_reason(positions, cell, start_cell, temperature, target_temperature) -> str | None:
    """Why a replica is unphysical (non-finite, box exploded/collapsed, runaway heating), or None."""
    if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(cell))):
        return "non-finite coordinates"
    lengths = np.linalg.norm(cell, axis=-1)
    start = np.linalg.norm(start_cell, axis=-1)
    change = np.max(np.abs(lengths / start - 1.0))
    if change > BLOWUP_CELL_CHANGE:
        return f"box length changed by {100 * change:.0f}% (atoms flying apart or collapsing)"
    if np.isfinite(temperature) and temperature > BLOWUP_TEMPERATURE_FACTOR * max(target_temperature, 50.0):
        return f"temperature {temperature:.0f} K, more than {BLOWUP_TEMPERATURE_FACTOR:g}x the target"
    if not np.isfinite(temperature):
        return "non-finite temperature"
    return None


def classify_phase(a, b, c, a_std=0.0, b_std=0.0, c_std=0.0, site_rms=0.0, *,
                   relaxed_c_over_a: float | None = None, unstable: str | None = None) -> dict:
    """Phase call from averaged lattice constants (Angstrom) and the site displacement.

    Returns ``{"phase", "c_over_a", "b_over_a", "evidence", "thresholds"}`` with ``phase`` one
    of ``"tetragonal"``, ``"cubic"``, ``"supertetragonal"``, ``"molten"``, ``"unstable"``.
    """
    thresholds = {"molten_site_rms_a": MOLTEN_SITE_RMS, "min_tetragonality": MIN_TETRAGONALITY,
                  "supertetragonal_factor": SUPERTETRAGONAL_FACTOR, "supertetragonal_min_c_over_a": SUPERTETRAGONAL_MIN}
    if unstable:
        return {"phase": "unstable", "c_over_a": None, "b_over_a": None,
                "evidence": f"run stopped: {unstable}", "thresholds": thresholds}
    lat = np.array([a, b, c], float)
    std = np.array([a_std, b_std, c_std], float)
    if not np.all(np.isfinite(lat)):
        return {"phase": "unstable", "c_over_a": None, "b_over_a": None,
                "evidence": "non-finite lattice constants", "thresholds": thresholds}
    order = np.argsort(lat)
    lat, std = lat[order], std[order]
    a_mean = 0.5 * (lat[0] + lat[1])
    c_over_a = float(lat[2] / a_mean)
    b_over_a = float(lat[1] / lat[0])
    if site_rms > MOLTEN_SITE_RMS:
        return {"phase": "molten", "c_over_a": c_over_a, "b_over_a": b_over_a,
                "evidence": f"atoms left their lattice sites: u_rms = {site_rms:.2f} A > {MOLTEN_SITE_RMS} A",
                "thresholds": thresholds}
    spread = float((std[0] + std[2]) / a_mean)
    tol = max(MIN_TETRAGONALITY, spread)
    ref = PBESOL_C_OVER_A if relaxed_c_over_a is None else float(relaxed_c_over_a)
    ref_name = "PBEsol" if relaxed_c_over_a is None else "relaxed"
    super_cut = max(SUPERTETRAGONAL_MIN, 1.0 + SUPERTETRAGONAL_FACTOR * max(ref - 1.0, 0.0))
    thresholds.update(tetragonality_tolerance=tol, supertetragonal_cut=super_cut)
    base = f"c/a = {c_over_a:.4f}, b/a = {b_over_a:.4f}, u_rms = {site_rms:.2f} A"
    if c_over_a - 1.0 <= tol:
        phase, why = "cubic", f"{base}; c/a - 1 within {tol:.4f} of 1"
    elif c_over_a > super_cut:
        phase, why = "supertetragonal", f"{base}; c/a above {super_cut:.3f} (1.5x the {ref_name} tetragonality {ref:.3f})"
    else:
        phase, why = "tetragonal", f"{base}; c/a - 1 > {tol:.4f}"
    return {"phase": phase, "c_over_a": c_over_a, "b_over_a": b_over_a, "evidence": why, "thresholds": thresholds}


def transition_temperature(temperatures, values, fraction: float = 0.5):
    """Temperature where ``|values|`` first falls below ``fraction`` of its lowest-T value (K).

    Linear interpolation between the bracketing temperatures. Returns ``(T, note)``: ``T`` is None
    when no crossing is bracketed (the note then says "above/below the sweep").
    """
    T = np.asarray(temperatures, float)
    v = np.abs(np.asarray(values, float))
    ok = np.isfinite(v)
    T, v = T[ok], v[ok]
    if len(T) < 1:
        return None, "no finite values"
    order = np.argsort(T)
    T, v = T[order], v[order]
    ref = v[0]
    if ref == 0:
        return None, f"already non-polar at the lowest temperature ({T[0]:.0f} K): below the sweep"
    level = fraction * ref
    for k in range(1, len(T)):
        if v[k] < level:
            t = T[k - 1] + (T[k] - T[k - 1]) * (v[k - 1] - level) / (v[k - 1] - v[k])
            return float(t), f"|value| crosses {fraction:g} x its {T[0]:.0f} K value between {T[k-1]:.0f} and {T[k]:.0f} K"
    return None, f"still polar at the highest temperature ({T[-1]:.0f} K): above the sweep"
