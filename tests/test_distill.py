"""Students (jaxpto.potentials.student) and `jaxpto distill` (jaxpto.workflows.distill*).

References: autodiff of the student's own energy (forces, stress), the JAX EMT teacher (a
distilled student must recover it), the file on disk (round trip), and hand-made bad files.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from jaxpto import neighbors as nl
from jaxpto.potentials import student as S
from jaxpto.workflows import distill_data as D
from jaxpto.workflows import distill_train as T
from jaxpto.workflows.structures import polar_supercell

SMALL = dict(rc_radial=4.5, rc_angular=4.0, n_angular=3, basis_radial=5, basis_angular=5, l_max=2,
             hidden=(8,))


def _one(nb):
    return jax.tree_util.tree_map(lambda a: a[0], nb)


def _jit_model(model, numbers):
    """``model`` compiled with the species closed over (as the engine does): eager op-by-op calls
    of the student take far longer than compiling it."""
    z = np.asarray(numbers)
    return jax.jit(lambda pos, cell, nb: model(pos, cell, z, nb))


# ---------------------------------------------------------------------------------------------
# The potential
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pto_cell():
    at = polar_supercell(2)
    at.rattle(0.08, seed=3)
    cell = np.asarray(at.cell).copy()
    cell[0, 1] = 0.25  # triclinic: the stress needs every component
    at.set_cell(cell, scale_atoms=True)
    return at


@pytest.mark.parametrize("l_max,compact", [(4, True), (4, False), (2, True)])
def test_forces_and_stress_are_autodiff_of_the_energy(pto_cell, l_max, compact):
    cfg = S.StudentConfig(species=(8, 22, 82), rc_radial=5.0, rc_angular=4.0, n_angular=3,
                          basis_radial=5, basis_angular=5, l_max=l_max, hidden=(8,), core_r_out=(1.9,) * 6,
                          angular_neighbors=48 if compact else 0)
    params = S.init_params(cfg, seed=1, dtype=jnp.float64)
    params["readout"] = jax.tree_util.tree_map(lambda a: 3 * a, params["readout"])
    efs = S.make_efs(cfg)
    z = np.asarray(pto_cell.numbers)
    pos, cell = (jnp.asarray(x) for x in (pto_cell.positions, pto_cell.cell.array))
    nb = _one(nl.allocate(pos[None], cell[None], cfg.cutoff, skin=0.3))
    energy, forces, stress = jax.jit(lambda p, x, c, n: efs(p, x, c, z, n))(params, pos, cell, nb)

    def strained(p, x, eps, n):
        d = jnp.eye(3) + eps
        return efs(p, x @ d, cell @ d, z, n)[0]

    g_pos, g_eps = jax.jit(jax.grad(strained, argnums=(1, 2)))(params, pos, jnp.zeros((3, 3)), nb)
    volume = abs(np.linalg.det(np.asarray(cell)))
    assert float(jnp.abs(forces).max()) > 0.5  # a non-trivial check
    np.testing.assert_allclose(forces, -g_pos, atol=1e-10)
    np.testing.assert_allclose(stress, 0.5 * (g_eps + g_eps.T) / volume, atol=1e-12)
    # Some pairs closer than the core radius: the ZBL part is exercised too.
    d = pto_cell.get_all_distances(mic=True)
    assert (d[d > 0] < 1.9).any()


def test_rotation_translation_and_compact_path(pto_cell):
    cfg = S.StudentConfig(species=(8, 22, 82), **SMALL, angular_neighbors=40)
    params = S.init_params(cfg, seed=2, dtype=jnp.float64)
    model = _jit_model(S.student_model(params, cfg), pto_cell.numbers)
    full = _jit_model(S.student_model(params, dataclasses.replace(cfg, angular_neighbors=0)), pto_cell.numbers)
    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    pos = pto_cell.positions
    cells = np.stack([pto_cell.cell.array, pto_cell.cell.array @ rot.T, pto_cell.cell.array])
    positions = np.stack([pos, pos @ rot.T, pos + np.array([0.3, -1.2, 2.0])])
    nb = nl.allocate(jnp.asarray(positions), jnp.asarray(cells), cfg.cutoff, skin=0.5)
    out = model(jnp.asarray(positions), jnp.asarray(cells), nb)
    ref = full(jnp.asarray(positions), jnp.asarray(cells), nb)
    np.testing.assert_allclose(out.energy, ref.energy, rtol=1e-12)
    np.testing.assert_allclose(out.forces, ref.forces, atol=1e-12)
    np.testing.assert_allclose(out.energy[1], out.energy[0], rtol=1e-12)
    np.testing.assert_allclose(out.forces[1], out.forces[0] @ rot.T, atol=1e-10)
    np.testing.assert_allclose(out.energy[2], out.energy[0], rtol=1e-12)
    # More angular neighbours than slots: the step takes the uncompacted path, same numbers.
    tight = _jit_model(S.student_model(params, dataclasses.replace(cfg, angular_neighbors=8)), pto_cell.numbers)
    np.testing.assert_allclose(tight(jnp.asarray(positions), jnp.asarray(cells), nb).forces, ref.forces, atol=1e-12)


def test_spherical_harmonics_addition_theorem():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(3, 2))
    u /= np.linalg.norm(u, axis=0)
    ya = S.real_spherical_harmonics(*jnp.asarray(u[:, 0]), 4)
    yb = S.real_spherical_harmonics(*jnp.asarray(u[:, 1]), 4)
    from numpy.polynomial import legendre

    for l in range(1, 5):
        dot = float(sum(a * b for a, b in zip(ya[l - 1], yb[l - 1])))
        assert dot == pytest.approx(legendre.legval(u[:, 0] @ u[:, 1], [0] * l + [1]), abs=1e-12)


def test_save_load_round_trip_and_checksum(tmp_path, pto_cell):
    import jaxpto

    cfg = S.StudentConfig(species=(8, 22, 82), **SMALL, angular_neighbors=40)
    params = S.init_params(cfg, seed=4)
    path = S.save_student(str(tmp_path / "s.npz"), params, cfg, {"teacher": "test", "name": "s"})
    model = jaxpto.load_model(path)  # detected from the file's content
    direct = S.student_model(params, cfg)
    assert model.cutoff == direct.cutoff
    model, direct = _jit_model(model, pto_cell.numbers), _jit_model(direct, pto_cell.numbers)
    pos = jnp.asarray(pto_cell.positions[None], jnp.float32)
    cell = jnp.asarray(pto_cell.cell.array[None], jnp.float32)
    nb = nl.allocate(pos, cell, cfg.cutoff)
    a = model(pos, cell, nb)
    b = direct(pos, cell, nb)
    assert np.array_equal(np.asarray(a.energy), np.asarray(b.energy))
    assert np.array_equal(np.asarray(a.forces), np.asarray(b.forces))
    assert S.read_header(path)["info"]["teacher"] == "test"
    from bridges.registry import is_jax_native

    assert is_jax_native(path)
    # A flipped byte in the parameters is caught by the checksum, a foreign npz by the format.
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k].copy() for k in z.files}
    key = next(k for k in arrays if k.startswith("param/coef"))
    arrays[key].flat[0] += 1.0
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="checksum"):
        S.read_student(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    assert not S.looks_like_student(str(tmp_path / "other.npz"))
    with pytest.raises(ValueError, match="not a jaxpto student"):
        S.read_student(str(tmp_path / "other.npz"))


# ---------------------------------------------------------------------------------------------
# Data files
# ---------------------------------------------------------------------------------------------


def _labelled_cu(n=4, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        at = bulk("Cu", "fcc", a=3.61 * scale, cubic=True) * (2, 2, 2)
        at.positions += rng.normal(0, 0.1, at.positions.shape)
        at.calc = EMT()
        e, f, s = at.get_potential_energy(), at.get_forces(), at.get_stress(voigt=False)
        frames.append(D.make_frame(at.numbers, at.positions, at.cell, e, f, s))
    return frames


def test_frames_round_trip_through_ase(tmp_path):
    from ase.io import read

    frames = _labelled_cu(3)
    frames[0].info.update(temperature_k=300.0, validation=True, trajectory="t/0")
    path = D.write_frames(str(tmp_path / "d.extxyz"), frames)
    back = read(path, ":")
    np.testing.assert_allclose(back[1].get_forces(), frames[1].get_forces(), rtol=1e-6, atol=1e-7)  # extxyz keeps ~8 digits
    np.testing.assert_allclose(back[2].get_stress(), frames[2].get_stress(), rtol=1e-6, atol=1e-9)
    assert back[0].get_potential_energy() == pytest.approx(frames[0].get_potential_energy())
    assert back[0].info["validation"] is True or back[0].info["validation"] == np.True_
    assert len(D.read_frames(path)) == 3


@pytest.mark.parametrize("defect,message", [
    ("no_forces", "frame 1: no forces"),
    ("nan", "frame 1: forces contain NaN"),
    ("gpa", "frame 1: stress component .* looks like a stress in GPa"),
    ("hartree", "frame 1: energy .* mixed units"),
    ("species", "frame 0: element\\(s\\) Cu are not covered"),
    ("empty", "cannot read .* as labelled structures|holds no frames"),
])
def test_bad_data_files_are_clear_errors(tmp_path, defect, message):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.units import GPa, Hartree

    frames = _labelled_cu(3)
    path = str(tmp_path / "bad.extxyz")
    species = None
    if defect == "no_forces":
        at = frames[1]
        at.calc = SinglePointCalculator(at, energy=at.get_potential_energy())
    elif defect == "nan":
        f = frames[1].get_forces()
        f[3, 1] = np.nan
        frames[1].calc.results["forces"] = f
    elif defect == "gpa":
        frames[1].calc.results["stress"] = frames[1].get_stress() / GPa + np.array([3.0, 3, 3, 0, 0, 0])
    elif defect == "hartree":
        frames[1].calc.results["energy"] = frames[1].get_potential_energy() / Hartree - 300.0
    elif defect == "species":
        species = (8, 22, 82)
    if defect == "empty":
        open(path, "w").close()
    else:
        write(path, frames, format="extxyz")
    with pytest.raises(D.DataError, match=message) as err:
        D.read_frames(path, species=species)
    assert "bad.extxyz" in str(err.value)


def test_configurations_relabelled_by_the_teacher_and_resumed(tmp_path):
    """--configurations: structures from a file labelled by the teacher (here jaxpto's JAX EMT),
    against ASE's own EMT; a run killed after its first chunk resumes to the same frames."""
    from ase.io import read, write as ase_write

    from bridges.registry import load_model

    src = _labelled_cu(5, seed=9)  # labels in the file (ASE EMT x 3) must be ignored
    for k, at in enumerate(src):
        at.calc.results["energy"] *= 3.0
        at.info.update(trajectory=f"t/{k // 3}", validation=k >= 3, temperature_k=300.0)
    path = str(tmp_path / "conf.extxyz")
    ase_write(path, src, format="extxyz")
    todo = D.read_configurations(path, every=1)
    assert [at.info["validation"] for at in todo] == [False] * 3 + [True] * 2
    assert all(at.calc is None and at.info["source"] == "relabelled-file" for at in todo)
    teacher = load_model("emt")
    full = D.label_frames_resumable(teacher, todo, str(tmp_path / "a.extxyz"), chunk_frames=2, teacher_name="emt",
                                    dtype=np.float64)
    for at in full:
        ref = at.copy()
        ref.calc = EMT()
        assert at.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(at.get_forces(), ref.get_forces(), atol=1e-6)
        np.testing.assert_allclose(at.get_stress(), ref.get_stress(), atol=1e-7)
        assert at.info["teacher"] == "emt"
    # Interrupted after one chunk: the partial file holds it, the rerun labels only the rest.
    part = str(tmp_path / "b.extxyz")
    first = D.label_frames(teacher, todo[:2], teacher_name="emt", dtype=np.float64)
    ase_write(part + ".partial", first, format="extxyz")
    calls = []
    orig = D.label_frames

    def counting(t, frames, **kw):
        calls.append(len(frames))
        return orig(t, frames, **kw)

    D.label_frames = counting
    try:
        resumed = D.label_frames_resumable(teacher, todo, part, chunk_frames=2, teacher_name="emt", dtype=np.float64)
    finally:
        D.label_frames = orig
    assert calls == [2, 1] and not os.path.exists(part + ".partial")
    assert [at.get_potential_energy() for at in resumed] == pytest.approx([at.get_potential_energy() for at in full])
    assert len(read(part, ":")) == 5
    with pytest.raises(D.DataError, match="does not exist"):
        D.read_configurations(str(tmp_path / "missing.extxyz"))


# ---------------------------------------------------------------------------------------------
# Distilling the JAX EMT (Cu) end to end
# ---------------------------------------------------------------------------------------------


def _cu_configurations(path):
    """Thermal-like Cu configurations (32 atoms): per temperature three trajectories of rattled,
    strained cells, the third held out; labelled by ASE's own EMT (the teacher's reference)."""
    rng = np.random.default_rng(11)
    frames = []
    for temp, amp in ((300.0, 0.06), (700.0, 0.09)):
        for traj in range(3):
            for k in range(16):
                at = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
                strain = np.eye(3) + rng.uniform(-0.015, 0.015, (3, 3))
                at.set_cell(at.cell.array @ (0.5 * (strain + strain.T)), scale_atoms=True)
                at.positions += rng.normal(0, amp, at.positions.shape)
                at.calc = EMT()
                frames.append(D.make_frame(at.numbers, at.positions, at.cell, at.get_potential_energy(),
                                           at.get_forces(), at.get_stress(voigt=False), trajectory=f"cu-{temp:.0f}/{traj}",
                                           temperature_k=temp, validation=traj == 2))
    return D.write_frames(path, frames)


@pytest.fixture(scope="module")
def emt_student(tmp_path_factory):
    """`jaxpto distill` end to end on EMT-labelled fcc Cu (teacher MD and teacher labelling are
    tested on their own above and below, to keep this CI-sized)."""
    from jaxpto.cli import main

    out = tmp_path_factory.mktemp("distill-emt")
    data = _cu_configurations(str(out / "cu-emt.extxyz"))
    arch = ",".join(f"{k}={'x'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in SMALL.items())
    rc = main(["distill", "--data", data, "--out", str(out / "run"), "--rounds", "0", "--epochs", "150",
               "--architecture", arch, "--no-report"])
    assert rc == 0
    return out / "run"


def test_teacher_md_group_resumes_from_its_checkpoint(tmp_path):
    """Teacher MD (one batched NVT group with the JAX EMT): frames labelled with the teacher's
    own energy/forces/stress (checked against ASE's EMT), and a run stopped after its first chunk
    resumes from the data-only checkpoint to the full set of frames."""
    from bridges.registry import load_model

    base = bulk("Cu", "fcc", a=3.61, cubic=True)
    group = D.MDGroup(name="t", supercell=(2, 1, 1), ensemble="nvt", steps=40, record_every=10,
                      trajectories=(D.Trajectory("structure", 300.0), D.Trajectory("structure-strained", 600.0, True)))
    teacher = load_model("emt")
    ck = str(tmp_path / "md.npz")
    first = D.run_md_group(teacher, group, seed=3, base=base, checkpoint=ck, chunk_steps=20, stop_check=lambda: True)
    assert len(first) == 2 * 2 and os.path.exists(ck)
    resumed = D.run_md_group(teacher, group, seed=3, base=base, checkpoint=ck, chunk_steps=20)
    assert len(resumed) == 2 * 4
    assert sorted({at.info["step"] for at in resumed}) == [10, 20, 30, 40]
    for a, b in zip(first, resumed[:4]):  # the first chunk's frames come back from the checkpoint as they were
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.get_potential_energy() == b.get_potential_energy()
    late = [at for at in resumed if at.info["step"] == 40]
    assert {at.info["validation"] for at in late} == {False, True}
    for at in late:
        ref = at.copy()
        ref.calc = EMT()
        assert at.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(at.get_forces(), ref.get_forces(), atol=1e-6)
    # A checkpoint of another group is refused, naming the way out.
    other = dataclasses.replace(group, steps=60)
    from jaxpto.workflows.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="delete it"):
        D.run_md_group(teacher, other, seed=3, base=base, checkpoint=ck, chunk_steps=20)


@pytest.mark.slow
def test_distilled_emt_recovers_the_teacher(emt_student):
    summary = json.load(open(emt_student / "distill.json"))
    err = summary["validation_errors"]
    # Held-out trajectories (one of the three per temperature). Stated errors: EMT Cu at 300-700 K
    # has force components of ~0.5 eV/A RMS; the 8-neuron student must get within 3 meV/atom
    # and 0.1 eV/A of it, and far below an untrained student's errors.
    assert err["energy_mae_mev_per_atom"] < 3.0
    assert err["force_rmse_mev_per_a"] < 100.0
    assert err["stress_mae_ev_per_a3"] < 0.003
    first = summary["training_history"]["gen0"][0]["val"]
    assert first["force_rmse_mev_per_a"] > 3 * err["force_rmse_mev_per_a"]
    # The per-temperature table covers both temperatures; the labels came from the teacher.
    assert sorted(r["temperature_k"] for r in summary["validation_errors_by_temperature"]) == [300.0, 700.0]
    # The file records its provenance.
    header = S.read_header(str(emt_student / "student.npz"))
    data = header["info"]["data"]
    assert data["frames"] == 96 and data["validation_frames"] == 32 and data["user_files"][0].endswith("cu-emt.extxyz")
    assert header["info"]["settings"]["train"]["epochs"] == 150


@pytest.mark.slow
def test_finetuning_on_a_user_file_lowers_its_error(emt_student, tmp_path):
    """The study's remedy: a student fine-tuned on a user's labelled frames (here ASE's EMT on
    compressed, hot Cu, outside the teacher data) fits them better afterwards."""
    from jaxpto.cli import main

    user = _labelled_cu(20, seed=5, scale=0.97)
    for k, at in enumerate(user):
        at.info["validation"] = k % 4 == 3
    path = D.write_frames(str(tmp_path / "user.extxyz"), user)
    cfg_params = S.read_student(str(emt_student / "student.npz"))
    params, cfg = cfg_params[0], cfg_params[1]

    def user_error(p, c):
        packs = T.pack(D.read_frames(path), c)
        return T.summary(T.evaluate(p, c, packs))["force_rmse_mev_per_a"]

    before = user_error(params, cfg)
    rc = main(["distill", "--data", path, "--init", str(emt_student / "student.npz"), "--out",
               str(tmp_path / "ft"), "--epochs", "60", "--learning-rate", "1e-3", "--no-report"])
    assert rc == 0
    p2, c2, h2 = S.read_student(str(tmp_path / "ft" / "student.npz"))
    after = user_error(p2, c2)
    assert after < 0.7 * before
    assert h2["info"]["init"].endswith("student.npz")
    assert h2["info"]["settings"]["train"]["learning_rate"] == 1e-3  # given: used as is when fine-tuning


def test_training_is_deterministic_for_a_seed():
    frames = _labelled_cu(6, seed=1)
    for k, at in enumerate(frames):
        at.info["validation"] = k == 5
    cfg = S.StudentConfig(species=(29,), **SMALL, angular_neighbors=32)
    packs = T.pack(frames, cfg, range(5))
    settings = T.TrainSettings(epochs=3, eval_every=3, batch_atoms=64, seed=7)
    p1, _ = T.train(cfg, packs, [], settings, log=None)
    p2, _ = T.train(cfg, packs, [], settings, log=None)
    p3, _ = T.train(cfg, packs, [], dataclasses.replace(settings, seed=8), log=None)
    leaves = lambda p: [np.asarray(x) for x in jax.tree_util.tree_leaves(p)]  # noqa: E731
    assert all(np.array_equal(a, b) for a, b in zip(leaves(p1), leaves(p2)))
    assert not all(np.array_equal(a, b) for a, b in zip(leaves(p1), leaves(p3)))


def test_cli_needs_a_teacher_or_data(capsys):
    from jaxpto.cli import main

    with pytest.raises(SystemExit):
        main(["distill", "--out", "x"])
    assert "give --teacher" in capsys.readouterr().err


def test_split_is_by_trajectory():
    groups = D.default_md_groups()
    held = [(g.name, t.start, t.temperature_k) for g in groups for t in g.trajectories if t.validation]
    temps = sorted({t for _, _, t in held})
    assert temps == list(D.DEFAULT_TEMPERATURES)  # one held-out trajectory per temperature
    assert len(held) == len(D.DEFAULT_TEMPERATURES)
    assert len({s for _, s, _ in held}) >= 2 and len({g for g, _, _ in held}) >= 3
