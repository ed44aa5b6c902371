"""On-disk checkpoints of the Ray backend: shard states as ``.npz`` files, one generation at a time.

A checkpoint is a folder ``gen-<k>`` holding one ``<actor>.npz`` per stateful
actor and ``driver.json`` + ``driver.npz`` (the driver's routing tables and
counters); the file ``LATEST`` names the newest complete generation. Files are
written (and fsynced) first and ``LATEST`` is replaced last, atomically, so a
crash while writing leaves the previous generation in force. No pickle: every
value is an array or JSON.

>>> import numpy as np
>>> keys = [3, "a", 7]
>>> keys_from_arrays(keys_to_arrays(keys, "k"), "k")
[3, 'a', 7]
>>> keys_from_arrays(keys_to_arrays(np.arange(3), "k"), "k").tolist()
[0, 1, 2]
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, InvalidTypeError
from ..values.npz import dict_from_bytes, dict_to_bytes

__all__ = ["keys_to_arrays", "keys_from_arrays", "region_state_to_arrays", "region_state_from_arrays",
           "evidence_state_to_arrays", "evidence_state_from_arrays", "write_generation", "read_latest"]

_KEY_COLUMNS = ("evidence_ids", "agent_ids", "source_nodes")


def keys_to_arrays(keys: Any, name: str) -> dict[str, np.ndarray]:
    """Ids (an int array, or a list of ints and strings) as arrays under ``name.*``."""
    if isinstance(keys, np.ndarray) and keys.dtype.kind in "iu":
        return {f"{name}.int": keys.astype(np.int64)}
    items = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
    is_str = np.array([isinstance(k, str) for k in items], dtype=bool)
    if not all(isinstance(k, str) or (isinstance(k, int) and not isinstance(k, bool)) for k in items):
        raise InvalidTypeError(f"{name}: on-disk checkpoints hold int and str ids only")
    return {f"{name}.is_str": is_str,
            f"{name}.int": np.array([0 if s else k for k, s in zip(items, is_str.tolist(), strict=True)],
                                    dtype=np.int64),
            f"{name}.str": np.array([k if s else "" for k, s in zip(items, is_str.tolist(), strict=True)],
                                    dtype=str)}


def keys_from_arrays(arrays: Mapping[str, np.ndarray], name: str):
    """Inverse of :func:`keys_to_arrays` (an int64 array, or a list)."""
    if f"{name}.is_str" not in arrays:
        return np.asarray(arrays[f"{name}.int"], dtype=np.int64)
    is_str = arrays[f"{name}.is_str"].tolist()
    ints, strs = arrays[f"{name}.int"].tolist(), arrays[f"{name}.str"].tolist()
    return [s if flag else i for flag, i, s in zip(is_str, ints, strs, strict=True)]


def region_state_to_arrays(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A :meth:`RegionShard.checkpoint` state as one flat dict of arrays."""
    out: dict[str, np.ndarray] = {}
    if state["tree"] is not None:
        out.update({f"tree.{k}": np.asarray(v) for k, v in state["tree"].items()})
    names = list(state["replicas"])
    out["replica_names"] = np.array(names, dtype=str) if names else np.empty(0, "<U1")
    for i, name in enumerate(names):
        out.update({f"replica{i}.{k}": np.asarray(v) for k, v in state["replicas"][name].items()})
    born = state["born"]
    out["born_names"] = np.array(list(born), dtype=str) if born else np.empty(0, "<U1")
    out["born_times"] = np.array(list(born.values()), dtype=np.float64)
    return out


def _prefixed(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def region_state_from_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`region_state_to_arrays`."""
    tree = _prefixed(arrays, "tree.") or None
    names = arrays["replica_names"].tolist()
    return {"tree": tree,
            "replicas": {name: _prefixed(arrays, f"replica{i}.") for i, name in enumerate(names)},
            "born": dict(zip(arrays["born_names"].tolist(), arrays["born_times"].tolist(), strict=True))}


def evidence_state_to_arrays(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """An :meth:`EvidenceShard.checkpoint` state (``export_evidence`` columns) as arrays."""
    out: dict[str, np.ndarray] = {}
    for name in _KEY_COLUMNS:
        out.update(keys_to_arrays(state[name], name))
    types = list(state["evidence_types"])
    out["evidence_types"] = np.array(types, dtype=str) if types else np.empty(0, "<U1")
    for name in ("log_odds", "confidences", "timestamps"):
        out[name] = np.asarray(state[name], dtype=np.float64)
    return out


def evidence_state_from_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`evidence_state_to_arrays` (columns for ``add_evidence_batch``)."""
    out: dict[str, Any] = {name: keys_from_arrays(arrays, name) for name in _KEY_COLUMNS}
    out["evidence_types"] = arrays["evidence_types"].tolist()
    for name in ("log_odds", "confidences", "timestamps"):
        out[name] = arrays[name]
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_generation(folder: str | os.PathLike, generation: int, actors: Mapping[str, dict[str, np.ndarray]],
                     driver_json: dict[str, Any], driver_arrays: dict[str, np.ndarray]) -> Path:
    """Write one complete checkpoint, then make it the latest; older generations are removed."""
    root = Path(folder)
    gen = root / f"gen-{generation}"
    gen.mkdir(parents=True, exist_ok=True)
    for name, arrays in actors.items():
        _write_atomic(gen / f"{name}.npz", dict_to_bytes(arrays))
    _write_atomic(gen / "driver.npz", dict_to_bytes(driver_arrays))
    _write_atomic(gen / "driver.json", json.dumps(driver_json, sort_keys=True).encode())
    _write_atomic(root / "LATEST", gen.name.encode())
    for old in root.glob("gen-*"):
        if old != gen and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return gen


def read_latest(folder: str | os.PathLike) -> tuple[int, dict[str, Any], dict[str, np.ndarray],
                                                     dict[str, dict[str, np.ndarray]]]:
    """(generation, driver JSON, driver arrays, each actor's arrays) of the newest checkpoint."""
    root = Path(folder)
    try:
        gen = root / (root / "LATEST").read_text().strip()
        driver = json.loads((gen / "driver.json").read_text())
        arrays = dict_from_bytes((gen / "driver.npz").read_bytes(), "driver checkpoint")
        actors = {p.stem: dict_from_bytes(p.read_bytes(), f"checkpoint of {p.stem}")
                  for p in gen.glob("*.npz") if p.stem != "driver"}
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"no readable checkpoint in {root}: {exc}") from exc
    return int(gen.name.split("-", 1)[1]), driver, arrays, actors
