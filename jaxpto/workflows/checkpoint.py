"""Sweep checkpoints as data only (no pickle), checked on load; atomic file writes.

A checkpoint is ONE ``.npz`` file (numpy's zip of ``.npy`` arrays, read with
``numpy.load(allow_pickle=False)``: loading it cannot run code) with these members:

* ``header``: UTF-8 JSON (as a ``uint8`` array): ``format`` (``"jaxpto.sweep-checkpoint"``),
  ``version`` (:data:`VERSION`), the caller's metadata (protocol fingerprint, progress, ...)
  and ``state``, a description of the :class:`~jaxpto.state.MDState` pytree: for every flax
  dataclass node its class name, its static (non-pytree) fields as JSON (e.g. the neighbour
  list's capacity and image range) and its children; a dict (the model's extras) by its keys;
  every array leaf by member name, shape and dtype;
* ``state.<path>``: the state's arrays (``state.positions``, ``state.variables.zeta``,
  ``state.neighbors.idx``, ...), bit for bit;
* the caller's other arrays under their own names (the sweeps: ``series.<observable>``);
* ``checksum``: SHA-256 over the header's JSON and every array's name, dtype, shape and bytes.

:func:`read_checkpoint` rebuilds the state on a *template* (the fresh state of the same
protocol, built by the caller first): same classes, and every leaf's dtype and shape equal to
the template's (a neighbour list re-allocated during the run has other static fields, and its
arrays may then differ in size after the replica axis). Every way a file can be wrong (empty,
truncated, random bytes, a pickle, another kind of file, a flipped bit, a state that does not fit)
is a :class:`CheckpointError` naming the file and what to do.

:func:`atomic_write` writes any file through a uniquely named temporary file in the same
directory, renamed over the target only when complete and flushed to disk: a kill or a full disk
leaves the previous file intact and no temporary file behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
from typing import Callable

import numpy as np

FORMAT = "jaxpto.sweep-checkpoint"
VERSION = 2  # 1 was a pickle (jaxpto before issue #17): never loaded
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the way out."""


def atomic_write(path: str, write: Callable, mode: str = "wb") -> str:
    """Write ``path`` by ``write(fh)`` into a temporary file of the same directory, then rename it.

    The temporary file is removed if anything fails (``OSError`` such as a full disk, an
    interrupt), so the previous ``path`` stays as it was and nothing is left behind. An
    ``OSError`` is re-raised naming ``path``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"could not write {path}: {exc.strerror or exc} (the previous version, "
                                     "if any, is kept)") from exc
        raise
    return path


# ---------------------------------------------------------------------------------------------
# The state pytree <-> named arrays + a JSON description
# ---------------------------------------------------------------------------------------------


def _is_static(field) -> bool:
    return not field.metadata.get("pytree_node", True)


def _json_value(value):
    """A static field as JSON (tuples become lists; numpy scalars plain numbers)."""
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a static field of type {type(value).__name__} in a checkpoint")


def _from_json_value(value):
    if isinstance(value, list):
        return tuple(_from_json_value(v) for v in value)
    return value


def describe_state(node, name: str, arrays: dict):
    """JSON description of a pytree of flax dataclasses and arrays; the arrays go into ``arrays``."""
    if node is None:
        return None
    if dataclasses.is_dataclass(node):
        children, static = {}, {}
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if _is_static(f):
                static[f.name] = _json_value(value)
            else:
                children[f.name] = describe_state(value, f"{name}.{f.name}", arrays)
        return {"class": type(node).__name__, "fields": children, "static": static}
    if isinstance(node, dict):  # e.g. the model's extras, {property name: array}
        return {"dict": {str(k): describe_state(v, f"{name}.{k}", arrays) for k, v in node.items()}}
    if not hasattr(node, "shape"):
        raise TypeError(f"cannot store {name} (a {type(node).__name__}) in a checkpoint: arrays and "
                        "dataclasses only")
    arr = np.asarray(node)
    arrays[name] = arr
    return {"array": name, "shape": list(arr.shape), "dtype": arr.dtype.str}


def _empty_default(field, value) -> bool:
    """True for a field added with an empty default (``{}``) that is still empty: a checkpoint
    written before the field existed describes the same state."""
    return field.default_factory is not dataclasses.MISSING and isinstance(value, dict) and not value


def rebuild_state(desc, template, name: str, arrays: dict, flexible: bool = False):
    """The pytree described by ``desc`` with ``template``'s classes; a :class:`ValueError` (the
    caller names the file) when it does not fit. ``flexible``: inside a node whose static fields
    differ from the template's, array sizes after the first axis may differ."""
    import jax.numpy as jnp

    if template is None or desc is None:
        if (template is None) != (desc is None):
            raise ValueError(f"{name} is {'missing' if desc is None else 'present'} in the checkpoint but "
                             f"{'present' if template is not None else 'absent'} in this sweep's state")
        return None
    if dataclasses.is_dataclass(template):
        if not isinstance(desc, dict) or desc.get("class") != type(template).__name__:
            got = desc.get("class") if isinstance(desc, dict) else type(desc).__name__
            raise ValueError(f"{name} is a {got} in the checkpoint, a {type(template).__name__} in this sweep")
        kw = {}
        static_differs = False
        for f in dataclasses.fields(template):
            if _is_static(f):
                if f.name not in desc["static"]:
                    raise ValueError(f"{name}.{f.name} is missing in the checkpoint")
                kw[f.name] = _from_json_value(desc["static"][f.name])
                static_differs |= kw[f.name] != getattr(template, f.name)
        for f in dataclasses.fields(template):
            if not _is_static(f):
                if f.name not in desc["fields"] and _empty_default(f, getattr(template, f.name)):
                    continue  # a field newer than the checkpoint, empty in this sweep too (MDState.extras)
                if f.name not in desc["fields"]:
                    raise ValueError(f"{name}.{f.name} is missing in the checkpoint")
                kw[f.name] = rebuild_state(desc["fields"][f.name], getattr(template, f.name), f"{name}.{f.name}",
                                           arrays, flexible or static_differs)
        return dataclasses.replace(template, **kw)
    if isinstance(template, dict):
        got = desc.get("dict") if isinstance(desc, dict) else None
        if got is None or sorted(got) != sorted(map(str, template)):
            raise ValueError(f"{name} holds {sorted(got) if got is not None else 'no mapping'} in the checkpoint, "
                             f"{sorted(map(str, template))} in this sweep")
        return {k: rebuild_state(got[str(k)], v, f"{name}.{k}", arrays, flexible) for k, v in template.items()}
    if not isinstance(desc, dict) or "array" not in desc or desc["array"] not in arrays:
        raise ValueError(f"{name} has no array in the checkpoint")
    arr = arrays[desc["array"]]
    want = np.dtype(template.dtype)
    shape = tuple(template.shape)
    if arr.dtype != want:
        raise ValueError(f"{name} is {arr.dtype} in the checkpoint, {want} in this sweep (another --dtype?)")
    fits = arr.shape == shape or (flexible and arr.ndim == len(shape) and arr.shape[:1] == shape[:1])
    if not fits:
        raise ValueError(f"{name} has shape {arr.shape} in the checkpoint, {shape} in this sweep")
    return jnp.asarray(arr)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _checksum(header_json: bytes, arrays: dict) -> str:
    h = hashlib.sha256(header_json)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_checkpoint(path: str, header: dict, arrays: dict, state) -> str:
    """Write ``state`` (an MDState), the JSON-able ``header`` and the numpy ``arrays`` to ``path`` atomically."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    state_arrays: dict = {}
    desc = describe_state(state, "state", state_arrays)
    clash = set(state_arrays) & set(arrays)
    if clash or "header" in arrays or "checksum" in arrays:
        raise ValueError(f"checkpoint array names clash: {sorted(clash) or ['header/checksum']}")
    full = {"format": FORMAT, "version": VERSION, **header, "state": desc}
    header_json = json.dumps(full, sort_keys=True).encode()
    members = {**arrays, **state_arrays}
    members["header"] = np.frombuffer(header_json, np.uint8)
    members["checksum"] = np.frombuffer(_checksum(header_json, {**arrays, **state_arrays}).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **members)
    return atomic_write(path, lambda fh: fh.write(buf.getbuffer()))


def _fail(path: str, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} {why}; delete it to restart the sweep from step 0, or use "
                           "another --out directory")


def _read_members(path: str) -> tuple[dict, dict]:
    """``(header, arrays)`` of a checkpoint file after its format and checksum checks."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from exc
    if not magic:
        raise _fail(path, "is empty (0 bytes)")
    if magic.startswith(_PICKLE_MAGIC):
        raise _fail(path, "is a pickle (the checkpoint format of older jaxpto versions, or not a jaxpto file); "
                          "it is not loaded, since unpickling a file can run code")
    if magic != _ZIP_MAGIC:
        raise _fail(path, f"is not a jaxpto checkpoint (it starts with {magic!r}, not a .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            members = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zipfile.BadZipFile (truncated, bad CRC), ValueError, EOFError, zlib.error, ...
        raise _fail(path, f"is truncated or corrupted ({type(exc).__name__}: {exc})") from exc
    if "header" not in members or "checksum" not in members:
        raise _fail(path, "is an .npz archive but not a jaxpto checkpoint (no header)")
    header_json = members.pop("header").tobytes()
    stored = members.pop("checksum").tobytes().decode("ascii", "replace")
    try:
        header = json.loads(header_json)
    except ValueError as exc:
        raise _fail(path, f"has a corrupted header ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _fail(path, "is not a jaxpto sweep checkpoint (other format)")
    if header.get("version") != VERSION:
        raise _fail(path, f"has format version {header.get('version')!r}; this jaxpto reads version {VERSION}")
    if _checksum(header_json, members) != stored:
        raise _fail(path, "fails its SHA-256 checksum: the file was modified or corrupted after it was written")
    return header, members


def read_header(path: str) -> dict:
    """The JSON header of a checkpoint (after the format and checksum checks), without the state."""
    return _read_members(path)[0]


def read_checkpoint(path: str, template) -> tuple[dict, dict, object]:
    """``(header, arrays, state)`` of the checkpoint at ``path``, the state rebuilt on ``template``.

    Raises :class:`CheckpointError` (naming the file, saying what to do) for any file that is
    not an intact checkpoint or whose state does not fit ``template``.
    """
    header, members = _read_members(path)
    state_arrays = {k: v for k, v in members.items() if k == "state" or k.startswith("state.")}
    arrays = {k: v for k, v in members.items() if k not in state_arrays}
    try:
        state = rebuild_state(header.get("state"), template, "state", state_arrays)
    except (ValueError, TypeError, KeyError) as exc:
        raise _fail(path, f"does not fit this sweep's state: {exc}") from exc
    return header, arrays, state
