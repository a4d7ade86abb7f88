"""Workflows built on the engine and the model registry (they sit above both; nothing in the core
imports them). Units are ASE's throughout (eV, Angstrom, ASE time; temperatures in K).

* the PTO-test (Li et al., J. Phys. Chem. C 2025): :mod:`.pto_test` (the command's driver and
  protocols), :mod:`.structures` (PbTiO3 cells), :mod:`.static` (relaxed a, c, c/a, the
  tetragonal-cubic gap), :mod:`.phonons` (phonopy finite displacements), :mod:`.dynamics` (NPT and
  NVT sweeps over temperatures as replicas), :mod:`.polarization`, :mod:`.phase`,
  :mod:`.checkpoint` (resumable parts), :mod:`.report` (JSON, markdown, figures);
* :mod:`.model_check` (``jaxpto check-model``: a model against its own ASE calculator);
* :mod:`.lammps_bundle`, :mod:`.lammps_deck`, :mod:`.lammps_export` (``jaxpto export-lammps``).
* :mod:`.distill` (``jaxpto distill``: a JAX-native student of any model), :mod:`.distill_data`
  (teacher MD, labels, extxyz files), :mod:`.distill_train` (optax training), :mod:`.distill_report`.
"""
