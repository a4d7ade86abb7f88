"""The Python half of ``benchmarks/gpu_wheels.sh``: slim the downloaded wheels, copy the Nequix
weights, check the size and write the listing.

``python benchmarks/gpu_wheels.py TMP DEST LISTING LIMIT_MIB NEQUIX_DIR PYVER``: ``TMP/dl`` holds the
wheels pip downloaded, ``TMP/built`` those built from sdists; the set goes to ``DEST``.

A slimmed wheel (:func:`rebuild`) is the original without the files matching its patterns: same
name and version, build tag ``1slim``, ``RECORD`` rewritten with the remaining files' hashes, so
pip installs it as it installs any wheel.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile

# distribution (as in the wheel's file name) -> (regular expressions of files to drop, why)
SLIM = {
    "sevenn": ([r"^sevenn/pretrained_potentials/(?!SevenNet_0__11Jul2024/)", r"^sevenn/pair_e3gnn/",
                r"^sevenn/pair_d3.*\.so$"], "kept only the 7net-0 weights (SevenNet_0__11Jul2024); dropped the "
               "other pretrained models and the LAMMPS/D3 sources and libraries"),
    "chgnet": ([r"^chgnet/pretrained/(?!0\.3\.0/)"], "kept only the CHGNet 0.3.0 weights"),
    "nvidia_ml_py3": ([r"^pynvml\.py$"], "built from the sdist; dropped its pynvml.py (the GPU machine's "
                      "nvidia-ml-py provides pynvml)"),
}
NEQUIX_FILES = ("nequix-mp-1.nqx", "nequix-mp-1.yml", "LICENSE", "README.md")
DEVICE_CALL_LIMIT_MIB = 64  # what one call of the device tool carries: tracked tree + carried paths


def _record_row(name: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


def rebuild(src: str, out_dir: str, drop, build_tag: str = "1slim") -> tuple[str, list[str]]:
    """Copy the wheel ``src`` into ``out_dir`` without the files matching any pattern of ``drop``.

    Returns ``(path of the new wheel, removed file names)``. The new wheel's name carries
    ``build_tag`` (``name-version-<tag>-py-abi-platform.whl``), its ``WHEEL`` file the same
    ``Build:`` line, and its ``RECORD`` lists exactly the files it holds.
    """
    base = os.path.basename(src)[:-4]
    parts = base.split("-")  # name-version(-build)?-python-abi-platform
    name, version, tags = parts[0], parts[1], parts[-3:]
    out = os.path.join(out_dir, "-".join([name, version, build_tag, *tags]) + ".whl")
    removed, rows = [], []
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        record = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        for info in zin.infolist():
            if info.filename == record:
                continue
            if any(re.search(p, info.filename) for p in drop):
                removed.append(info.filename)
                continue
            data = zin.read(info.filename)
            if info.filename.endswith(".dist-info/WHEEL"):
                text = re.sub(r"^Build: .*\n", "", data.decode(), flags=re.M)
                data = (text.rstrip("\n") + f"\nBuild: {build_tag}\n").encode()
            zout.writestr(info, data)
            rows.append(_record_row(info.filename, data))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows + [[record, "", ""]])
        zout.writestr(record, buf.getvalue())
    return out, removed


def _tracked_bytes() -> int:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum(os.path.getsize(p) for p in (n.decode() for n in names if n) if os.path.isfile(p))


def main(argv=None) -> int:
    tmp, dest, listing, limit_mib, nequix_dir, pyver = (sys.argv[1:] if argv is None else argv)[:6]
    limit_mib = float(limit_mib)
    rows = []
    srcs = [os.path.join(tmp, sub, f) for sub in ("dl", "built") if os.path.isdir(os.path.join(tmp, sub))
            for f in sorted(os.listdir(os.path.join(tmp, sub)))]
    for src in srcs:
        key = os.path.basename(src).split("-")[0].lower()
        if key in SLIM:
            drop, why = SLIM[key]
            out, removed = rebuild(src, dest, drop)
            if not removed:
                raise SystemExit(f"{os.path.basename(src)}: no file matched {drop}: check the patterns")
            origin = (f"rebuilt from {os.path.basename(src)} ({os.path.getsize(src) / 2**20:.1f} MiB): {why} "
                      f"({len(removed)} files)")
        else:
            out = os.path.join(dest, os.path.basename(src))
            shutil.copy2(src, out)
            origin = "PyPI, unchanged"
        rows.append((os.path.basename(out), os.path.getsize(out), origin))
    # Nequix weights: the ../shared folder beside the checkout does not travel to the GPU machine.
    nq = os.path.join(dest, "nequix")
    shutil.rmtree(nq, ignore_errors=True)
    if os.path.isfile(os.path.join(nequix_dir, NEQUIX_FILES[0])):
        os.makedirs(nq)
        for f in NEQUIX_FILES:
            if os.path.exists(os.path.join(nequix_dir, f)):
                shutil.copy2(os.path.join(nequix_dir, f), nq)
                rows.append((f"nequix/{f}", os.path.getsize(os.path.join(nq, f)), f"copied from {nequix_dir}"))
    else:
        print(f"note: no Nequix weights in {nequix_dir}: the kit's Nequix check will be skipped", file=sys.stderr)
    total, tree = sum(r[1] for r in rows), _tracked_bytes()
    lines = [f"# GPU check kit wheel set (benchmarks/gpu_wheels.sh): Python {pyver}, x86-64; installed on the GPU",
             "# machine by benchmarks/gpu_check.sh (pip install --no-index --no-deps --target). Sizes in bytes.",
             *(f"{n:<92} {s:>10}  {o}" for n, s, o in rows),
             f"{'total (wheels + weights)':<92} {total:>10}  {total / 2**20:.1f} MiB of the {limit_mib:g} MiB allowed",
             f"{'tracked working tree (travels too)':<92} {tree:>10}  {tree / 2**20:.1f} MiB; together "
             f"{(total + tree) / 2**20:.1f} MiB of the {DEVICE_CALL_LIMIT_MIB} MiB one device call carries"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if listing != "-":
        os.makedirs(os.path.dirname(listing) or ".", exist_ok=True)
        with open(listing, "w") as fh:
            fh.write(text)
    if total / 2**20 > limit_mib or (total + tree) / 2**20 > DEVICE_CALL_LIMIT_MIB:
        raise SystemExit(f"the wheel set is {total / 2**20:.1f} MiB (+ {tree / 2**20:.1f} MiB tree): over the limit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
