"""The consensus's export and merge: evidence and founding sources out, the union in.

:class:`ConsensusMerging` is a part of
:class:`~swarmguard.api.consensus.StableBayesianConsensus` (its methods run on the
consensus's state and under its lock); see that class for the rules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import (
    InvalidInputError,
    InvalidTypeError,
)
from ..locking import synchronized
from ..validation import check_key
from .evidence_batch import EVIDENCE_COLUMNS as _EVIDENCE_COLUMNS
from .evidence_batch import _export_keys
from .evidence_types import EvidenceType

__all__ = ["ConsensusMerging"]


class ConsensusMerging:
    """Export and merge of :class:`~swarmguard.api.consensus.StableBayesianConsensus` (see there)."""

    @synchronized
    def export_evidence(self) -> dict[str, Any]:
        """Every accepted evidence as columns, in arrival order (ids as int64 arrays
        when they are ints, else lists; evidence types as their string values).

        The union of two evidence sets is the same whatever the order, and adding
        the same evidence twice changes nothing (ids are idempotent). Adding these
        columns elsewhere with :meth:`add_evidence_batch` is one new call under the
        founding rule; :meth:`export_state` (with :meth:`merge`) also carries the
        founding sources, so sources on probation stay on probation.
        """
        ledger = self._ledger
        n = ledger.size
        cols = {k: v[:n].copy() for k, v in ledger.columns.items()}
        names = np.array([t.value for t in EvidenceType], dtype=object)
        return {
            "evidence_ids": ledger.evidence_ids(),
            "agent_ids": _export_keys(ledger.agents, cols["agent_row"]),
            "evidence_types": names[cols["type_code"]].tolist(),
            "log_odds": cols["log_odds"],
            "confidences": cols["confidence"],
            "timestamps": cols["timestamp"],
            "source_nodes": _export_keys(ledger.sources, cols["source_row"]),
        }

    @synchronized
    def export_state(self) -> dict[str, Any]:
        """The evidence (:meth:`export_evidence`) and the founding sources
        (:attr:`founding_sources`, None while the founding lasts), taken together: what
        :meth:`merge` needs to rebuild this consensus elsewhere, sources on probation
        still on probation (plain :meth:`add_evidence_batch` of the evidence would be one
        new call, whose sources the founding rule may make founding sources)."""
        return {"evidence": self.export_evidence(), "founding_sources": self.founding_sources}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **settings: Any) -> ConsensusMerging:
        """A new consensus (``settings`` as for the constructor) holding :meth:`export_state`'s
        ``state``: the same evidence, in the same order, and the same founding sources (the
        import that :meth:`export_state` is the export of; a malformed state is refused as
        :meth:`merge` refuses it).

        >>> from swarmguard.api import StableBayesianConsensus
        >>> a = StableBayesianConsensus()
        >>> a.add_evidence_batch(["e1", "e2"], ["x", "x"], ["peer_report"] * 2, [2.0, 1.0], [0.9, 0.8],
        ...                      [1.0, 2.0], ["s1", "s2"])
        2
        >>> b = StableBayesianConsensus.from_state(a.export_state())
        >>> b.state_fingerprint() == a.state_fingerprint(), b.consensus("x") == a.consensus("x")
        (True, True)
        """
        consensus = cls(**settings)
        consensus.merge(state)
        return consensus

    def merge(self, other: ConsensusMerging | Mapping[str, Any]) -> int:
        """Add every evidence of ``other`` (a consensus, or its :meth:`export_state`), the
        union, keeping each side's founding sources; returns how many evidence were new.

        Founding sources after the merge: those of either side whose founding ended (a
        source that founds on one side founds here; one on probation on both sides stays on
        probation and earns its vote by the same rule on the merged evidence; a side whose
        founding lasts brings its sources as newcomers). If neither side's founding ended,
        the merge is one call under the founding rule. The result does not depend on which
        side merges into which, and merging the same state twice changes nothing.
        """
        if isinstance(other, ConsensusMerging):
            state = other.export_state()            # under other's lock, never both at once
        elif isinstance(other, Mapping) and set(other) == {"evidence", "founding_sources"}:
            state = other
        else:
            raise InvalidTypeError("can only merge a StableBayesianConsensus or its export_state(), got "
                                   f"{type(other).__name__}")
        return self._merge_state(state["evidence"], state["founding_sources"])

    @synchronized
    def _merge_state(self, evidence: Mapping[str, Any], theirs: Any) -> int:
        if not isinstance(evidence, Mapping) or set(evidence) != set(_EVIDENCE_COLUMNS):
            raise InvalidInputError(f"export_state()['evidence'] must be a mapping of the columns "
                                    f"{list(_EVIDENCE_COLUMNS)}, as export_evidence() returns")
        if theirs is not None:
            if isinstance(theirs, (str, bytes)) or not isinstance(theirs, (Sequence, np.ndarray)):
                raise InvalidTypeError(f"founding_sources must be a sequence of source ids or None, got "
                                       f"{type(theirs).__name__}")
            theirs = list(dict.fromkeys(check_key(k, "founding_sources") for k in theirs))
            if not theirs:
                raise InvalidInputError("founding_sources is empty: None says the founding lasts")
        if theirs is None and not self._founded:
            return self._ingest(**evidence, persist=True)       # one call under the founding rule
        ours = self.founding_sources or []
        union = list(dict.fromkeys([*ours, *(theirs or [])]))
        if theirs:
            arriving = evidence.get("source_nodes", ())
            arriving = set(arriving.tolist() if isinstance(arriving, np.ndarray) else arriving)
            missing = next((k for k in theirs if k not in arriving and self._ledger.sources.row_of(k) < 0), None)
            if missing is not None:
                raise InvalidInputError(f"founding source {missing!r} sent none of the evidence")
        return self._ingest(**evidence, persist=True, founding=False, founders=union)

    def __iadd__(self, other: ConsensusMerging) -> ConsensusMerging:
        if not isinstance(other, ConsensusMerging):
            return NotImplemented
        self.merge(other)
        return self
