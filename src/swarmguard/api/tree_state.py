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
from ..validation import check_feature_matrix

__all__ = ["tree_to_dict", "tree_from_dict"]


def tree_to_dict(tree: Any, exact: bool = False) -> dict[str, np.ndarray]:
    """The tree as a dict of arrays (agents, vectors, cohort paths); nodes are derived
    (called under the tree's lock); ``exact``: see
    :meth:`~swarmguard.api.tree.HierarchicalStatisticalTree.to_dict`."""
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
    if exact and tree._tree is not None and tree.window_rounds is None:
        for key, value in tree._tree.anchor_state().items():
            out["slot_" + key] = value
        out["slot_of"] = slots.astype(np.int64)
        out["slot_page_owner"], out["slot_pool_sizes"], out["slot_pool_slots"] = tree._cohorts.layout()
    if tree.window_rounds is not None:   # the rounds, so that the windowed moments come back as they are
        out["window_rounds"] = np.array(tree.window_rounds, dtype=np.int64)
        out["window_round"] = np.array(tree.current_round, dtype=np.int64)
        out["window_last_round"] = (tree._win.last_rounds(slots) if ids
                                    else np.zeros(0, dtype=np.int64))
    return out


def _restore_exact(tree: Any, ids: np.ndarray, state: dict[str, Any], anchor: dict[str, Any]) -> None:
    """:meth:`from_dict` of a ``to_dict(exact=True)`` state into this new tree: every check
    first (the layout must be one a tree could hold), then the cohorts, their pages and
    free slots, the agents in their slots, the moments in the saved shift and units."""
    try:
        X = check_feature_matrix(np.asarray(state["features"]), tree._dim).X
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"tree state's features are malformed: {exc}") from None
    ids = tree._check_ids(ids)
    paths = [tuple(s.split("\x1f")) if s else () for s in np.asarray(state["cohort_paths"]).tolist()]
    cohort_index = np.asarray(state["cohort_index"])
    slots, owner = np.asarray(state["slot_of"]), np.asarray(state["slot_page_owner"])
    sizes, pooled = np.asarray(state["slot_pool_sizes"]), np.asarray(state["slot_pool_slots"])
    capacity, ps, n = anchor.pop("capacity"), tree._page_size, ids.size
    problem = None
    if any(a.dtype.kind not in "iu" for a in (cohort_index, slots, owner, sizes, pooled)):
        problem = "its cohort_index and slot_* layout fields must be integer arrays"
    elif (X.shape[0] != n or cohort_index.shape != (n,) or slots.shape != (n,) or owner.ndim != 1
          or sizes.shape != (len(paths),) or pooled.ndim != 1):
        problem = "its agents, cohort_index, slot_of and slot_pool_sizes do not have matching lengths"
    elif len(set(ids.tolist())) != n:
        problem = "its agent_ids repeat"
    elif not paths or paths[0] != () or len(set(paths)) != len(paths) or any(
            p[:-1] not in paths[:k] for k, p in enumerate(paths) if p):
        problem = "its cohort_paths must start with the root and list every parent before its children"
    elif (cohort_index.min() < 0 or cohort_index.max() >= len(paths)
          or (owner.size and (owner.min() < 0 or owner.max() >= len(paths)))):
        problem = "its cohort ids must be those of cohort_paths"
    elif owner.size * ps > capacity or (sizes < 0).any() or int(sizes.sum()) != pooled.size:
        problem = "its pages do not fit slot_capacity, or slot_pool_sizes do not count slot_pool_slots"
    else:
        used = np.concatenate([slots, pooled])
        pool_owner = np.repeat(np.arange(len(paths)), sizes)
        if (used.min(initial=0) < 0 or used.max(initial=0) >= owner.size * ps
                or np.unique(used).size != used.size or used.size != owner.size * ps):
            problem = "every slot of its pages must hold one agent or be free once"
        elif ((owner[slots // ps] != cohort_index).any()
              or (pooled.size and (owner[pooled // ps] != pool_owner).any())):
            problem = "its agents and free slots must lie in pages of their own cohorts"
    if problem is None:
        with np.errstate(over="ignore"):
            limit = np.ldexp(2.0**100, anchor["exponent"])     # the units' band (slot_tree)
        if (np.abs(X - anchor["shift"]) > limit).any():
            problem = "its slot_shift and slot_exponent do not fit its vectors"
    if problem is not None:
        raise InvalidInputError(f"tree state is not an exact layout: {problem}")
    # ---- checked: build
    tree._make_tree(X.shape[1])
    for path in paths:                       # parents first: the ids come back as they were
        tree._cohorts.ensure(path)
    tree._cohorts.restore_layout(owner, sizes, pooled)
    slots = slots.astype(np.int64)
    tree._grow_slots(capacity)
    if tree._tree.capacity != capacity:
        raise InvalidInputError(f"tree state's slot_capacity {capacity} is not a capacity of this tree")
    tree._index.set_many(ids, slots)
    tree._ids_at_slot[slots] = ids
    tree._tree.write(slots, X)
    tree._tree.restore_anchor(**anchor)
    tree.version += 1


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
    anchor = _checked_anchor(state, dim, ids.size)
    if anchor is not None and window is not None:
        raise InvalidInputError("tree state has slot_* fields and a window: to_dict(exact=True) leaves them out there")
    tree = cls(branching, dim, window_rounds=window)
    if ids.size and anchor is not None:       # to_dict(exact=True): the same layout, the moments bitwise
        _restore_exact(tree, ids, state, anchor)
    elif ids.size:
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


_ANCHOR_FIELDS = ("slot_shift", "slot_exponent", "slot_unit_known", "slot_var_at_unit", "slot_capacity",
                  "slot_of", "slot_page_owner", "slot_pool_sizes", "slot_pool_slots")


def _checked_anchor(state: dict[str, Any], dim: int | None, n: int) -> dict[str, Any] | None:
    """``to_dict(exact=True)``'s ``slot_*`` fields, checked (None: the state has none)."""
    present = [key for key in _ANCHOR_FIELDS if key in state]
    if not present:
        return None
    if len(present) != len(_ANCHOR_FIELDS):
        raise InvalidInputError(f"tree state has {present} but not all of {list(_ANCHOR_FIELDS)}")
    if dim is None or n == 0:
        raise InvalidInputError("tree state has slot_* fields but no agents")
    shift, exponent, known, var, capacity = (np.asarray(state[key]) for key in _ANCHOR_FIELDS[:5])
    for name, field, kinds in (("slot_shift", shift, "f"), ("slot_exponent", exponent, "iu"),
                               ("slot_unit_known", known, "b"), ("slot_var_at_unit", var, "f")):
        if field.shape != (dim,) or field.dtype.kind not in kinds:
            raise InvalidInputError(f"tree state's {name} must be {dim} values of kind {kinds!r}, "
                                    f"got {field.dtype} of shape {field.shape}")
    if not (np.isfinite(shift).all() and np.isfinite(var).all() and (var >= 0).all()):
        raise InvalidInputError("tree state's slot_shift and slot_var_at_unit must be finite (and the latter >= 0)")
    if (np.abs(exponent) > 1000).any():
        raise InvalidInputError("tree state's slot_exponent must lie in [-1000, 1000]")
    if capacity.shape != () or capacity.dtype.kind not in "iu" or not (n <= int(capacity) <= 1 << 40):
        raise InvalidInputError(f"tree state's slot_capacity must be one integer in [{n}, 2**40]")
    return {"shift": shift, "exponent": exponent, "unit_known": known, "var_at_unit": var,
            "capacity": int(capacity)}
