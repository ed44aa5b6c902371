"""The population tree as a dict of arrays, and back.

The functions take the tree (or its class) as an argument and import nothing from
:mod:`swarmguard.api.tree`, so the two modules import in one direction only.

:meth:`~swarmguard.api.tree.HierarchicalStatisticalTree.to_dict` writes the
members (ids, vectors, cohort paths) and the flags that bring trimmed and
windowed moments back as they were; the nodes themselves are derived again on
:meth:`~swarmguard.api.tree.HierarchicalStatisticalTree.from_dict`, which checks
every field it reads (a malformed state is an ``InvalidInputError``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError, InvalidTypeError
from ..structures.trimming import TrimmedMoments

__all__ = ["tree_to_dict", "tree_from_dict"]


def tree_to_dict(tree: Any) -> dict[str, np.ndarray]:
    """The tree as a dict of arrays (agents, vectors, cohort paths); nodes are derived
    (called under the tree's lock)."""
    ids = tree.agent_ids()
    if not ids:
        kind = np.array([], dtype=np.int64)
    elif all(isinstance(i, int) for i in ids):
        kind = np.array(ids, dtype=np.int64)
    elif all(isinstance(i, str) for i in ids):
        kind = np.array(ids, dtype=str)
    else:
        raise InvalidTypeError("only trees whose ids are all ints or all strs can be serialised")
    slots = tree._index.lookup_many(kind) if ids else np.zeros(0, dtype=np.int64)
    paths = tree._cohorts.paths
    out = {
        "branching_factor": np.array(tree.branching_factor),
        "feature_dimensions": np.array(tree._dim if tree._dim is not None else 0),
        "agent_ids": kind,
        "features": tree._tree.X[slots].copy() if ids else np.zeros((0, tree._dim or 0)),
        "cohort_index": tree._cohorts.cohort_of_slots(slots) if ids else np.zeros(0, dtype=np.int64),
        "cohort_paths": np.array(["\x1f".join(p) for p in paths], dtype=str),
    }
    if tree._sketches_wanted:      # the sketches themselves are rebuilt from the vectors
        out["keeps_tail_sketches"] = np.array(True)
    if tree._trim is not None:     # the flags, so that the trimmed moments come back as they are
        out["trimmed_kept"] = tree._trim.kept(slots) if ids else np.zeros(0, dtype=bool)
    if tree.window_rounds is not None:   # the rounds, so that the windowed moments come back as they are
        out["window_rounds"] = np.array(tree.window_rounds, dtype=np.int64)
        out["window_round"] = np.array(tree.current_round, dtype=np.int64)
        out["window_last_round"] = (tree._win.last_rounds(slots) if ids
                                    else np.zeros(0, dtype=np.int64))
    return out


def tree_from_dict(cls: type, state: dict[str, Any]) -> Any:
    """Rebuild a tree of class ``cls`` from :func:`tree_to_dict` output."""
    try:
        dim = int(state["feature_dimensions"]) or None
        branching = int(state["branching_factor"])
        ids = np.asarray(state["agent_ids"])
        state["features"], state["cohort_index"], state["cohort_paths"]
    except KeyError as exc:
        raise InvalidInputError(f"tree state lacks field {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"tree state is malformed: {exc}") from exc
    window = None
    if "window_rounds" in state:
        try:
            window_field = np.asarray(state["window_rounds"])
            round_field = np.asarray(state["window_round"])
            last = np.asarray(state["window_last_round"])
        except KeyError as exc:
            raise InvalidInputError(f"tree state lacks field {exc}") from exc
        # whole numbers only: int() would truncate a 2.7 (or a True) into a window nobody asked for
        for name, field in (("window_rounds", window_field), ("window_round", round_field)):
            if field.shape != () or field.dtype.kind not in "iu":
                raise InvalidInputError(f"tree state's {name} must be one integer, got {field!r}")
        window, round_now = int(window_field), int(round_field)
        if round_now < 0:
            raise InvalidInputError(f"tree state's window_round must be >= 0, got {round_now}")
        if last.shape != ids.shape or (last.size and (last.dtype.kind not in "iu" or last.min() < 0
                                                      or last.max() > round_now)):
            raise InvalidInputError("tree state's window_last_round must hold one round in "
                                    f"[0, {round_now}] per agent")
        if "trimmed_kept" in state and window >= 1:
            # the trimmed moments are drawn from the window: a member kept there but outside the
            # window would never expire from them (no bucket holds it)
            kept_flags = np.asarray(state["trimmed_kept"], dtype=bool)
            if kept_flags.shape == ids.shape and (kept_flags & (last <= round_now - window)).any():
                raise InvalidInputError("tree state's trimmed_kept holds members outside the window")
    tree = cls(branching, dim, window_rounds=window)
    if ids.size:
        paths = [tuple(s.split("\x1f")) if s else () for s in np.asarray(state["cohort_paths"]).tolist()]
        cohorts = [paths[i] for i in np.asarray(state["cohort_index"]).tolist()]
        tree.update_many(ids, np.asarray(state["features"]), cohorts=cohorts)
    if state.get("keeps_tail_sketches") is not None and bool(np.asarray(state["keeps_tail_sketches"])):
        tree.keep_tail_sketches()
    if "trimmed_kept" in state:
        kept = np.asarray(state["trimmed_kept"], dtype=bool)
        if kept.shape != ids.shape:
            raise InvalidInputError(f"tree state's trimmed_kept has shape {kept.shape}, expected {ids.shape}")
        if tree._tree is None:
            tree._trim_wanted = True
        else:
            tree._trim = TrimmedMoments(tree._tree)
        if ids.size:
            slots = tree._index.lookup_many(tree._check_ids(ids))
            tree._trim.write(tree._tree, slots, tree._tree.X[slots], keep=kept)
    if window is not None and tree._win is not None:
        slots = tree._index.lookup_many(tree._check_ids(ids)) if ids.size else np.zeros(0, dtype=np.int64)
        tree._win.restore(tree._tree, slots, tree._tree.X[slots], round_now, last.astype(np.int64))
    return tree
