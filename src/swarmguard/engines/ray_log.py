"""The Ray engine's log of calls (``checkpoint_dir``): a call's arguments as JSON and arrays, and back."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..api.consensus import evidence_columns
from ..api.evidence_types import EvidenceType
from ..errors import InvalidTypeError
from ..values.agent_index import as_wire_id_array
from .checkpoint_files import (
    evidence_state_to_arrays,
    keys_from_arrays,
    keys_to_arrays,
    strings_from_arrays,
    strings_to_arrays,
)

__all__ = ["validate_ids", "round_record", "round_args", "evidence_record", "json_scalar"]


def json_scalar(value: Any) -> Any:
    """A NumPy scalar as a JSON number (``json.dumps(default=...)``)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to a checkpoint")


def validate_ids(agent_ids: Any, n: int | None = None) -> np.ndarray:
    """The replicas' id rule (:func:`~swarmguard.values.agent_index.as_wire_id_array`), one kind per round.

    An int64 array or a NumPy string array (object arrays of ``str``, a pandas
    column, become one); a batch mixing ints and strings is refused.
    """
    ids = as_wire_id_array(agent_ids, n, "agent_ids")
    if ids.dtype == object:
        raise InvalidTypeError("the Ray backend takes int or str agent ids, not both in one batch "
                               "(a NumPy array is fastest)")
    return ids


def round_record(agent_ids: Any, X: Any, regions: Any, cohorts: Any, timestamp: Any,
                  fdr: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A round's arguments as JSON and arrays for the log of calls (after the round accepted them)."""
    ids = validate_ids(agent_ids)
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    regions = np.full(n, regions) if isinstance(regions, str) else np.asarray(regions)
    arrays = {"X": X, **keys_to_arrays(ids if ids.dtype.kind in "iu" else ids.tolist(), "ids"),
              **strings_to_arrays(regions.tolist(), "regions")}
    meta: dict[str, Any] = {"timestamp": None if timestamp is None else float(timestamp),
                            "fdr": fdr if fdr is None or isinstance(fdr, str) else float(fdr)}
    if isinstance(cohorts, np.ndarray) and cohorts.dtype.kind == "U":
        arrays.update(strings_to_arrays(cohorts.tolist(), "cohorts"))
        meta["cohorts"] = "array"
    elif cohorts is None or isinstance(cohorts, str):
        meta["cohorts"] = {"one": cohorts}
    elif isinstance(cohorts, tuple):
        meta["cohorts"] = {"path": list(cohorts)}
    else:
        meta["cohorts"] = {"rows": [c if c is None or isinstance(c, str) else list(c) for c in cohorts]}
    return meta, arrays


def round_args(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`round_record`: keyword arguments of the detector's ``_run_round``."""
    ids = keys_from_arrays(arrays, "ids")
    c = meta["cohorts"]
    if c == "array":
        cohorts: Any = np.array(strings_from_arrays(arrays, "cohorts"))
    elif "one" in c:
        cohorts = c["one"]
    elif "path" in c:
        cohorts = tuple(c["path"])
    else:
        cohorts = [r if r is None or isinstance(r, str) else tuple(r) for r in c["rows"]]
    return {"agent_ids": ids if isinstance(ids, np.ndarray) else np.array(ids), "X": arrays["X"],
            "regions": np.array(strings_from_arrays(arrays, "regions")), "cohorts": cohorts,
            "timestamp": meta["timestamp"], "fdr": meta["fdr"]}


def evidence_record(*columns: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A batch of evidence (normalised as the partitions received it) for the log of calls."""
    ev, ag, src, codes, lo, conf, ts = evidence_columns(columns[0], columns[1], columns[6], columns[2],
                                                        columns[3], columns[4], columns[5])
    names = [t.value for t in EvidenceType]
    return {}, evidence_state_to_arrays({"evidence_ids": ev, "agent_ids": ag, "source_nodes": src,
                                         "evidence_types": [names[int(k)] for k in codes], "log_odds": lo,
                                         "confidences": conf, "timestamps": ts})
