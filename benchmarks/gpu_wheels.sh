#!/usr/bin/env bash
# Build, here, the wheel set that the GPU check kit (benchmarks/gpu_check.sh) installs on the GPU
# machine, which has no package index: cp312 x86-64 wheels of what jaxpto's checked models need and
# that machine lacks, into .whl/ (ignored by git), plus the Nequix weights (.whl/nequix/), which do
# not travel otherwise. Writes the listing with sizes to benchmarks/results/gpu-wheels.txt.
#
#   bash benchmarks/gpu_wheels.sh            # then, with a GPU: run(command="bash benchmarks/gpu_check.sh",
#                                            #                    carry=[".whl"], timeout_s=540)
#
# What the GPU machine has (its image: Python 3.12, CUDA torch 2.11, CUDA JAX 0.11, numpy 2.5,
# scipy, pandas, matplotlib, h5py, e3nn, torch-geometric, flax, optax, equinox, jaxtyping, ...;
# /work/.library/device/KINDS.md) is not carried: never jax, torch or numpy. What it lacks and the
# kit imports (found by importing every checked model, its ASE calculator and the kit in an
# environment that hides the packages the GPU machine lacks) is pinned below, at the versions this
# project's CI runs. Three wheels are rebuilt, each for the 64 MiB that may travel:
#   sevenn 0.13.0   only the 7net-0 weights (SevenNet_0__11Jul2024) kept: 43 MB -> ~10 MB
#                   (the other pretrained models and the LAMMPS/D3 sources and libraries dropped);
#   chgnet 0.4.2    only the 0.3.0 weights kept (0.2.0 and r2scan dropped);
#   nvidia-ml-py3   sdist only on PyPI: built here; its old pynvml.py dropped, the GPU machine's
#                   nvidia-ml-py provides pynvml (chgnet imports nvidia_smi, which imports it).
# A rebuilt wheel keeps its name and version and gets the build tag "1slim"; the listing says
# what was removed. e3nn 0.6.0 is carried although the machine has an e3nn: it is the version CI
# checks MACE and SevenNet with (sevenn needs >= 0.5; mace-torch's pin of 0.4.4 is not followed).
#
# Environment: PYTHON (a Python with pip; default python3), WHEEL_DIR (.whl), WHEEL_PYTHON (3.12),
# WHEEL_LIMIT_MIB (60: wheels + weights; the whole travelling tree must stay under 64 MiB),
# JAXPTO_NEQUIX_DIR (default ../shared/models/nequix), WHEEL_LISTING (the listing's path; "-" none).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
dest=${WHEEL_DIR:-.whl}
pyver=${WHEEL_PYTHON:-3.12}
limit=${WHEEL_LIMIT_MIB:-60}
listing=${WHEEL_LISTING:-benchmarks/results/gpu-wheels.txt}
nequix_dir=${JAXPTO_NEQUIX_DIR:-$(cd .. && pwd)/shared/models/nequix}

AS_IS=(
  ase==3.29.0                 # jaxpto's Atoms, ASE's MD for the suite's ASE path
  braceexpand==0.1.7          # sevenn
  pymatgen==2026.10.24        # chgnet (pymatgen.analysis.eos in chgnet.model.dynamics)
  pymatgen-core==2026.10.16   # chgnet (Structure, neighbour lists of its own calculator)
  monty==2026.10.21           # pymatgen-core
  ruamel.yaml==0.19.1         # monty
  palettable==3.3.3           # pymatgen-core
  orjson==3.13.0              # pymatgen-core, mace
  spglib==2.8.0               # pymatgen-core
  matscipy==1.3.1             # sevenn, mace, nequix
  mace-torch==0.3.16          # the random MACE-MP-0b-medium model (installed without its e3nn==0.4.4 pin)
  torch-ema==0.3              # mace
  lmdb==3.0.0                 # mace
  e3nn==0.6.0                 # see above
  e3nn-jax==0.21.0            # nequix
  jraph==0.0.6.dev0           # nequix
  nequix==0.4.5               # Nequix (JAX-native); its jax[cuda12] and wandb requirements are not followed
)
SLIM=(sevenn==0.13.0 chgnet==0.4.2)
BUILT=(nvidia-ml-py3==7.352.0)

plat=()
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64 manylinux1_x86_64; do
  plat+=(--platform "$p")
done
abi=cp${pyver/./}

mkdir -p "$dest"
# .whl/ never enters git (also listed in .gitignore; info/exclude covers clones made before that)
gitdir=$(git rev-parse --git-common-dir 2>/dev/null || true)
if [ -n "$gitdir" ]; then
  mkdir -p "$gitdir/info"
  grep -qx '/.whl/' "$gitdir/info/exclude" 2>/dev/null || echo '/.whl/' >> "$gitdir/info/exclude"
fi
rm -f "$dest"/*.whl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "+ pip download (cp$pyver, x86-64, no dependencies): ${AS_IS[*]%%#*} ${SLIM[*]}"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --abi "$abi" --abi abi3 --abi none "${plat[@]}" -d "$tmp/dl" "${AS_IS[@]}" "${SLIM[@]}"
echo "+ pip wheel (from the sdist): ${BUILT[*]}"
"$py" -m pip wheel -q --no-deps --no-binary :all: -w "$tmp/built" "${BUILT[@]}"

"$py" benchmarks/gpu_wheels.py "$tmp" "$dest" "$listing" "$limit" "$nequix_dir" "$pyver"
