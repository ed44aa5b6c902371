"""On-disk checkpoints of the Ray backend: shard states as ``.npz`` files, one generation at a time.

A checkpoint is a folder ``gen-<k>`` holding one ``<actor>.npz`` per stateful
actor and ``driver.json`` + ``driver.npz`` (the driver's routing tables and
counters); the file ``LATEST`` names the newest complete generation. A
generation is written (and fsynced) in a ``.tmp`` folder renamed when
complete, and ``LATEST`` is replaced last, atomically, so a crash while
writing leaves the previous generation in force; the generation before the
latest is kept as a fallback. Between checkpoints, ``wal-<k>.bin`` logs
every state-changing call since generation k (:func:`append_record`,
:func:`read_records`). No pickle: every value is an array or JSON.

>>> import numpy as np
>>> keys = [3, "a", 7]
>>> keys_from_arrays(keys_to_arrays(keys, "k"), "k")
[3, 'a', 7]
>>> keys_from_arrays(keys_to_arrays(np.arange(3), "k"), "k").tolist()
[0, 1, 2]
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import CheckpointError, InvalidInputError, InvalidTypeError
from ..validation import is_wire_id
from ..values.npz import dict_from_bytes, dict_to_bytes

__all__ = ["keys_to_arrays", "keys_from_arrays", "strings_to_arrays", "strings_from_arrays", "generations",
           "append_record", "read_records", "keep_only", "region_state_to_arrays", "region_state_from_arrays",
           "evidence_state_to_arrays", "evidence_state_from_arrays", "write_generation", "read_latest"]

_KEY_COLUMNS = ("evidence_ids", "agent_ids", "source_nodes")
_INT64_MAX = (1 << 63) - 1

F = TypeVar("F", bound=Callable[..., Any])


def _loader(what: str) -> Callable[[F], F]:
    """A reader of loaded arrays: damaged or tampered content is a :class:`CheckpointError`.

    The readers check what they can name (dtypes, lengths, ranges) and raise
    ``CheckpointError`` themselves; a missing array or an inconsistent table
    anywhere else also comes out as a ``CheckpointError``, never as a bare
    ``KeyError``/``TypeError``/``ValueError``.
    """
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except CheckpointError:
                raise
            except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError) as exc:
                raise CheckpointError(f"damaged {what}: {exc!r}") from exc
        return inner  # type: ignore[return-value]
    return wrap


def _array(arrays: Mapping[str, np.ndarray], key: str, kinds: str, ndim: int = 1) -> np.ndarray:
    if not isinstance(arrays, Mapping):
        raise CheckpointError(f"a checkpoint part is a mapping of arrays, got {type(arrays).__name__}")
    if key not in arrays:
        raise CheckpointError(f"the checkpoint lacks the array {key!r}")
    arr = np.asarray(arrays[key])
    if arr.ndim != ndim or (arr.size and arr.dtype.kind not in kinds):
        raise CheckpointError(f"the checkpoint array {key!r} has dtype {arr.dtype} and shape {arr.shape}")
    return arr


def strings_to_arrays(items: list[str], name: str) -> dict[str, np.ndarray]:
    """Strings as UTF-8 bytes and lengths: exact (a NumPy ``str`` array drops trailing NULs)."""
    data = [k.encode("utf-8", "surrogatepass") for k in items]
    return {f"{name}.utf8": np.frombuffer(b"".join(data), dtype=np.uint8).copy(),
            f"{name}.len": np.array([len(b) for b in data], dtype=np.int64)}


@_loader("strings")
def strings_from_arrays(arrays: Mapping[str, np.ndarray], name: str) -> list[str]:
    """Inverse of :func:`strings_to_arrays` (damaged arrays: :class:`CheckpointError`)."""
    raw = _array(arrays, f"{name}.utf8", "u")
    lengths = _array(arrays, f"{name}.len", "iu")
    if raw.size and raw.dtype != np.uint8:
        raise CheckpointError(f"{name}.utf8 must be bytes (uint8), got {raw.dtype}")
    if lengths.size and (int(lengths.min()) < 0 or int(lengths.sum()) != raw.size):
        raise CheckpointError(f"{name}.len does not cut {name}.utf8 into strings")
    if not lengths.size and raw.size:
        raise CheckpointError(f"{name}.utf8 holds bytes that no string claims")
    blob = raw.tobytes()
    ends = np.cumsum(lengths.astype(np.int64)).tolist()
    starts = [0, *ends[:-1]] if ends else []
    return [blob[a:b].decode("utf-8", "surrogatepass") for a, b in zip(starts, ends, strict=True)]


def keys_to_arrays(keys: Any, name: str) -> dict[str, np.ndarray]:
    """Ids (an int array, or a list of ints and strings) as arrays under ``name.*``."""
    if isinstance(keys, np.ndarray) and keys.dtype.kind in "iu":
        return {f"{name}.int": keys.astype(np.int64)}
    items = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
    if not all(map(is_wire_id, items)):
        raise InvalidTypeError(f"{name}: on-disk checkpoints hold int64 and str ids only")
    is_str = np.array([isinstance(k, str) for k in items], dtype=bool)
    return {f"{name}.is_str": is_str,
            f"{name}.int": np.array([0 if s else k for k, s in zip(items, is_str.tolist(), strict=True)],
                                    dtype=np.int64),
            **strings_to_arrays([k if s else "" for k, s in zip(items, is_str.tolist(), strict=True)], name)}


@_loader("ids")
def keys_from_arrays(arrays: Mapping[str, np.ndarray], name: str):
    """Inverse of :func:`keys_to_arrays` (an int64 array, or a list; damaged: :class:`CheckpointError`)."""
    ints = _array(arrays, f"{name}.int", "iu")
    if ints.size and ints.dtype.kind == "u" and int(ints.max()) > _INT64_MAX:
        raise CheckpointError(f"{name}.int holds an id beyond int64")
    if f"{name}.is_str" not in arrays:
        return ints.astype(np.int64)
    is_str = _array(arrays, f"{name}.is_str", "b").tolist()
    strs = strings_from_arrays(arrays, name)
    if not (len(is_str) == len(strs) == ints.size):
        raise CheckpointError(f"{name}: the id tables have different lengths")
    return [s if flag else i for flag, i, s in zip(is_str, ints.tolist(), strs, strict=True)]


def region_state_to_arrays(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A :meth:`RegionShard.checkpoint` state as one flat dict of arrays."""
    out: dict[str, np.ndarray] = {}
    if state["tree"] is not None:
        out.update({f"tree.{k}": np.asarray(v) for k, v in state["tree"].items()})
    names = list(state["replicas"])
    out.update(strings_to_arrays(names, "replica_names"))
    for i, name in enumerate(names):
        out.update({f"replica{i}.{k}": np.asarray(v) for k, v in state["replicas"][name].items()})
    born = state["born"]
    out.update(strings_to_arrays(list(born), "born_names"))
    out["born_times"] = np.array(list(born.values()), dtype=np.float64)
    return out


def _prefixed(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


@_loader("region checkpoint")
def region_state_from_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`region_state_to_arrays` (damaged arrays: :class:`CheckpointError`).

    The parts (tree, replicas) are validated by their own loaders when restored.
    """
    tree = _prefixed(arrays, "tree.") or None
    names = strings_from_arrays(arrays, "replica_names")
    born_names = strings_from_arrays(arrays, "born_names")
    born_times = _array(arrays, "born_times", "f")
    if born_times.size != len(born_names) or not np.isfinite(born_times).all():
        raise CheckpointError("born_times must be one finite time per region")
    if len(set(names)) != len(names) or len(set(born_names)) != len(born_names):
        raise CheckpointError("the region tables repeat a name")
    replicas = {name: _prefixed(arrays, f"replica{i}.") for i, name in enumerate(names)}
    if any(not part for part in replicas.values()):
        raise CheckpointError("the checkpoint names a replica it does not hold")
    return {"tree": tree, "replicas": replicas,
            "born": dict(zip(born_names, born_times.astype(np.float64).tolist(), strict=True))}


def evidence_state_to_arrays(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """An :meth:`EvidenceShard.checkpoint` state (``export_evidence`` columns) as arrays."""
    out: dict[str, np.ndarray] = {}
    for name in _KEY_COLUMNS:
        out.update(keys_to_arrays(state[name], name))
    out.update(strings_to_arrays(list(state["evidence_types"]), "evidence_types"))
    for name in ("log_odds", "confidences", "timestamps"):
        out[name] = np.asarray(state[name], dtype=np.float64)
    return out


@_loader("evidence checkpoint")
def evidence_state_from_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`evidence_state_to_arrays` (columns for ``add_evidence_batch``;
    damaged arrays: :class:`CheckpointError`; the values are validated as they are added)."""
    out: dict[str, Any] = {name: keys_from_arrays(arrays, name) for name in _KEY_COLUMNS}
    out["evidence_types"] = strings_from_arrays(arrays, "evidence_types")
    for name in ("log_odds", "confidences", "timestamps"):
        out[name] = _array(arrays, name, "f")
    n = {len(out[name]) for name in (*_KEY_COLUMNS, "evidence_types", "log_odds", "confidences", "timestamps")}
    if len(n) != 1:
        raise CheckpointError("the evidence columns have different lengths")
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def generations(folder: str | os.PathLike) -> list[int]:
    """The generation numbers present in ``folder`` (complete ones: folders named ``gen-<k>``)."""
    out = []
    for p in Path(folder).glob("gen-*"):
        tail = p.name[4:]
        if p.is_dir() and tail.isdigit():
            out.append(int(tail))
    return sorted(out)


def write_generation(folder: str | os.PathLike, generation: int, actors: Mapping[str, dict[str, np.ndarray]],
                     driver_json: dict[str, Any], driver_arrays: dict[str, np.ndarray]) -> Path:
    """Write one complete checkpoint, then make it the latest.

    The files go into a fresh ``gen-<k>.tmp`` folder, which is renamed to
    ``gen-<k>`` once complete (a generation that exists is never written
    into), then ``LATEST`` is replaced (if that fails, the new folder is
    removed again). Removing old generations is the caller's (:func:`keep_only`).
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    gen = root / f"gen-{generation}"
    if gen.exists():
        raise CheckpointError(f"checkpoint generation {gen} exists already (another run writes to {root}?)")
    tmp = root / f"gen-{generation}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, arrays in actors.items():
        _write_atomic(tmp / f"{name}.npz", dict_to_bytes(arrays))
    _write_atomic(tmp / "driver.npz", dict_to_bytes(driver_arrays))
    _write_atomic(tmp / "driver.json", json.dumps(driver_json, sort_keys=True).encode())
    _fsync_dir(tmp)
    os.replace(tmp, gen)
    try:
        _fsync_dir(root)
        _write_atomic(root / "LATEST", gen.name.encode())
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(gen, ignore_errors=True)   # never left behind unnamed: it has no log after it
        raise
    return gen


def keep_only(folder: str | os.PathLike, keep: set[int]) -> None:
    """Remove the generations of ``folder`` older than the oldest in ``keep``, and the logs older
    than it (a kept generation needs every log from its own on)."""
    root = Path(folder)
    oldest = min(keep)
    for k in generations(root):
        if k < oldest:
            shutil.rmtree(root / f"gen-{k}", ignore_errors=True)
    for path in root.glob("wal-*.bin"):
        tail = path.stem[4:]
        if tail.isdigit() and int(tail) < oldest:
            path.unlink(missing_ok=True)


def _read(gen: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    driver = json.loads((gen / "driver.json").read_text())
    arrays = dict_from_bytes((gen / "driver.npz").read_bytes(), "driver checkpoint")
    names = list(driver.get("seq", {})) if isinstance(driver, dict) else []
    actors = {name: dict_from_bytes((gen / f"{name}.npz").read_bytes(), f"checkpoint of {name}")
              for name in names}              # every actor the driver names (a missing one: fall back)
    return driver, arrays, actors


def read_latest(folder: str | os.PathLike) -> tuple[int, dict[str, Any], dict[str, np.ndarray],
                                                     dict[str, dict[str, np.ndarray]]]:
    """(generation, driver JSON, driver arrays, each actor's arrays) of the newest readable checkpoint.

    The one ``LATEST`` names, else (it cannot be read) the newest older one that can.
    """
    root = Path(folder)
    try:
        latest = int((root / "LATEST").read_text().strip().split("-", 1)[1])
    except (OSError, ValueError, IndexError) as exc:
        raise CheckpointError(f"no readable checkpoint in {root}: {exc}") from exc
    errors = []
    older = [k for k in generations(root) if k < latest]
    for k in [latest, *reversed(older)]:       # the newest readable one (every older one kept has its logs)
        try:
            return (k, *_read(root / f"gen-{k}"))
        except (OSError, ValueError, TypeError, KeyError, InvalidInputError) as exc:
            errors.append(f"gen-{k}: {exc}")
    raise CheckpointError(f"no readable checkpoint in {root}: " + "; ".join(errors))


# ---------------------------------------------------------------------- the log of calls since a checkpoint
def append_record(path: str | os.PathLike, meta: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Append one call (JSON ``meta`` and arrays) to a log file, and fsync it.

    A record is an 8-byte length and an ``.npz`` archive; a record cut short by
    a crash is ignored when read (its call was never acknowledged).
    """
    payload = dict(arrays)
    payload["meta.json"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    data = dict_to_bytes(payload)
    with open(path, "ab") as f:
        f.write(len(data).to_bytes(8, "little"))
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_records(folder: str | os.PathLike, from_generation: int) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """The calls logged since checkpoint ``from_generation`` (its log and any later one), in order."""
    root = Path(folder)
    out = []
    logs = sorted((int(p.stem[4:]), p) for p in root.glob("wal-*.bin") if p.stem[4:].isdigit())
    for k, path in logs:
        if k < from_generation:
            continue
        blob = path.read_bytes()
        at = 0
        while at + 8 <= len(blob):
            size = int.from_bytes(blob[at:at + 8], "little")
            if at + 8 + size > len(blob):
                break                       # cut short by a crash: never acknowledged
            try:
                arrays = dict_from_bytes(blob[at + 8:at + 8 + size], f"log record in {path.name}")
                meta = json.loads(arrays.pop("meta.json").tobytes().decode())
            except (InvalidInputError, KeyError, ValueError) as exc:   # complete, but not what was written
                raise CheckpointError(f"damaged log record at byte {at} of {path}: {exc}") from exc
            if not isinstance(meta, dict):
                raise CheckpointError(f"damaged log record at byte {at} of {path}: its metadata is not an object")
            out.append((meta, arrays))
            at += 8 + size
    return out
