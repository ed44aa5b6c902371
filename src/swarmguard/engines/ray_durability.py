"""The Ray engine's durability: checkpoints (in the object store and, with ``checkpoint_dir``, on disk) and the log of calls."""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np

from ..errors import CheckpointError, CheckpointWriteWarning, SwarmGuardError
from ..locking import synchronized
from ..structures.score_null import ScoreNull
from .checkpoint_files import (
    append_record,
    evidence_state_from_arrays,
    evidence_state_to_arrays,
    generations,
    keep_only,
    region_state_from_arrays,
    region_state_to_arrays,
    write_generation,
)
from .ray_log import json_scalar, round_args

__all__ = ["RayDurability", "MAX_LOG"]

MAX_LOG = 20_000       # logged calls per actor before a checkpoint is due anyway (bounds replay)

class RayDurability:
    """Checkpoints and the log of calls of :class:`~swarmguard.engines.ray_engine.RayEngine` (a part of its class)."""

    # ------------------------------------------------------------------ state
    @synchronized
    def checkpoint(self) -> None:
        """Checkpoint every stateful shard now (also done every ``checkpoint_every`` rounds' worth of rows).

        With ``checkpoint_dir``, the checkpoint is also written there (see :meth:`resume`).
        """
        self._checkpoint(during_round=False)

    def _checkpoint(self, during_round: bool) -> None:
        states = {h.name: self.sys.checkpoint(h) for h in [*self.region_shards, *self.evidence_shards]}
        self._rows_since_checkpoint = 0
        if self.checkpoint_dir is None:
            return
        try:
            self._write_checkpoint(states)
        except (OSError, TypeError, ValueError, SwarmGuardError) as exc:
            err = CheckpointError(f"could not write the checkpoint to {self.checkpoint_dir}: {exc}")
            self.last_checkpoint_error = err
            if not during_round:
                raise err from exc
            # The round was applied (and the in-memory checkpoint taken): raising now would
            # make the caller send it again. Say so, and try again at the next checkpoint.
            warnings.warn(str(err), CheckpointWriteWarning, stacklevel=3)

    def _maybe_checkpoint(self, rows: int) -> bool:
        """Checkpoint when ``checkpoint_every`` rounds' worth of rows (or an actor's
        replay log of ``MAX_LOG`` calls) has built up since the last one."""
        self._rows_since_checkpoint += rows
        longest_log = max(len(h.log) for h in self.handles)
        if (self._rows_since_checkpoint >= self.checkpoint_every * max(1, len(self._routes))
                or longest_log >= MAX_LOG):
            if self._logging:           # after the call's record is in the log, not before
                self._checkpoint_due = True
                return False
            self._checkpoint(during_round=True)
            return True
        return False

    # ------------------------------------------------------------------ the log of calls (checkpoint_dir)
    def _logged(self, kind: str, record: Any, call: Any) -> Any:
        """Run a state-changing call; with ``checkpoint_dir``, append it to the log of calls since
        the last on-disk checkpoint (with the clock readings it made) before it returns, so that
        :meth:`resume` loses nothing that was acknowledged."""
        if self.checkpoint_dir is None or self._logging:
            return call()
        if self._wal_generation is None:        # the log needs a checkpoint to start from
            self._checkpoint(during_round=False)
        # what calls outside the log may have moved since: the clock's high-water mark
        # (views read the clock) and the evidence counter (create_evidence)
        det = self.det
        before = {"latest": self._time.latest, "evidence_number": det._evidence_number}
        real = det.clock
        readings: list[float] = []

        def recording() -> Any:
            t = real()
            try:
                readings.append(float(t))
            except (TypeError, ValueError):
                pass            # not a number: the caller's check refuses it (and nothing is logged)
            return t
        self._logging, self._checkpoint_due, det.clock = True, False, recording
        try:
            out = call()
        finally:
            self._logging, det.clock = False, real
        meta, arrays = record()
        meta.update(kind=kind, clock=readings, **before)
        try:
            append_record(self.checkpoint_dir / f"wal-{self._wal_generation}.bin", meta, arrays)
        except OSError as exc:
            # The call is applied; make it durable another way: a whole checkpoint now (and a new
            # log, so nothing is ever appended after a torn record). If that fails too, the next
            # call refuses until a checkpoint can be written.
            self._wal_generation = None
            self._checkpoint_due = True
            self._chain_broken = True      # older generations miss this call: no fallback to them
            err = CheckpointError(f"could not log a {kind} call in {self.checkpoint_dir}: {exc}")
            self.last_checkpoint_error = err
        if self._checkpoint_due:
            self._checkpoint_due = False
            self._checkpoint(during_round=True)
            if self._wal_generation is None:
                warnings.warn(f"a {kind} call is applied but not on disk: {self.last_checkpoint_error}",
                              CheckpointWriteWarning, stacklevel=3)
        return out

    def _replay(self, records: list[tuple[dict[str, Any], dict[str, np.ndarray]]]) -> None:
        """Apply logged calls again, each with the clock readings it made the first time."""
        det = self.det
        real = det.clock
        self._logging = True
        try:
            for meta, arrays in records:
                readings = iter(meta["clock"])
                det.clock = lambda readings=readings: next(readings)
                self._time.latest = max(self._time.latest, meta["latest"])
                det._evidence_number = max(det._evidence_number, meta["evidence_number"])
                kind = meta["kind"]
                if kind in ("round", "item"):
                    args = round_args(meta, arrays)
                    stay = np.array([args["cohorts"][0] is None]) if kind == "item" else None
                    det._run_round(**args, stay=stay)
                elif kind == "evidence":
                    self._ingest_evidence(**evidence_state_from_arrays(arrays))
                elif kind == "partition":
                    self._set_groups({str(k): int(v) for k, v in meta["groups"].items()})
                elif kind == "heal":
                    self._set_groups(None)
                elif kind == "sync":
                    self._sync()
                elif kind == "faults":
                    self.faults.dropped = {tuple(link) for link in meta["dropped"]}
                elif kind == "create_evidence":
                    det._next_evidence_number()
        finally:
            self._logging, det.clock = False, real

    # ------------------------------------------------------------------ on disk
    _FORMAT = 1

    def _write_checkpoint(self, states: dict[str, Any]) -> None:
        settings = self.settings.to_params()
        settings.pop("clock")
        settings["consistency_model"] = self.consistency_model.value
        settings["regions"] = None if settings["regions"] is None else list(settings["regions"])
        driver = {
            "format": self._FORMAT, "settings": settings, "ray_options": dict(self._ray_options),
            "region_shards": len(self.region_shards), "declared": self._topology.declared, "regions": self._topology.regions,
            "born": [self._topology.born[r] for r in self._topology.regions], "shard_of_region": self._shard_of_region,
            "group_of": self._topology.group_of, "dim": self._dim, "start": self._start, "latest": self._time.latest,
            "last_sync": self._last_sync, "evidence_total": self._evidence_total,
            "evidence_number": self.det._evidence_number, "rounds": self._rounds, "founders": self._founders,
            "seq": {h.name: h.ckpt_seq for h in [*self.region_shards, *self.evidence_shards]},
            "dropped_links": sorted(self.faults.dropped),
        }
        driver = json.loads(json.dumps(driver, default=json_scalar))     # NumPy scalars as numbers
        actors = {h.name: region_state_to_arrays(states[h.name]) for h in self.region_shards}
        actors.update({h.name: evidence_state_to_arrays(states[h.name]) for h in self.evidence_shards})
        # the next number after any on disk: another run's generations are never written into
        k = max(self._generation, *generations(self.checkpoint_dir), 0) + 1
        driver_arrays = {"known_ids": self._route_ids(), "known_shard": self._route_shard[: len(self._routes)]}
        if self._null is not None:     # calibrate=True: the score null lives on the driver
            driver_arrays["score_null"] = np.frombuffer(self._null.to_bytes(), dtype=np.uint8)
        write_generation(self.checkpoint_dir, k, actors, driver, driver_arrays)
        previous = self._wal_generation
        self._generation = self._wal_generation = k          # calls from now on go to the new log
        # The fallback is the generation this driver's log continued until now: its log and the
        # new one hold every call since. None (a call missing from the logs, or none yet): no fallback.
        fallback = None if self._chain_broken or previous is None else previous
        self._chain_broken = False
        keep_only(self.checkpoint_dir, {k} if fallback is None else {k, fallback})

    def _restore_from(self, d: dict[str, Any], arrays: dict[str, np.ndarray],
                      actors: dict[str, dict[str, np.ndarray]]) -> None:
        """Set the driver's tables from a checkpoint, start the actors, restore them."""
        self._dim = d["dim"]
        self._start, self._time.latest, self._last_sync = d["start"], d["latest"], d["last_sync"]
        for _ in range(d["region_shards"]):
            self._new_region_shard()          # before the regions are known: restored from the files below
        self._topology.declared = list(d["declared"])
        self._topology.regions = list(d["regions"])
        self._topology.born = dict(zip(d["regions"], d["born"], strict=True))
        self._shard_of_region = {k: int(v) for k, v in d["shard_of_region"].items()}
        self._topology.group_of = d["group_of"]
        self._evidence_total, self.det._evidence_number, self._rounds = (d["evidence_total"], d["evidence_number"],
                                                                         d["rounds"])
        self._set_routes(arrays["known_ids"], arrays["known_shard"])
        if self._null is not None and "score_null" in arrays:
            self._null = ScoreNull.from_bytes(np.asarray(arrays["score_null"], dtype=np.uint8).tobytes())
        founders = d.get("founders")          # absent from checkpoints written before it was kept
        if founders is not None and not isinstance(founders, list):
            raise CheckpointError(f"founders must be a list of source ids, got {type(founders).__name__}")
        self._founders = founders
        self.faults.dropped = {tuple(link) for link in d["dropped_links"]}
        for h in self.region_shards:
            self.sys.restore(h, d["seq"][h.name], region_state_from_arrays(actors[h.name]))
        for h in self.evidence_shards:
            self.sys.restore(h, d["seq"][h.name], evidence_state_from_arrays(actors[h.name]))
        if self.region_shards:     # the population's moments, as the last round left them
            summaries = self._gather([(h, "summary", (), False) for h in self.region_shards])
            self._summaries = dict(enumerate(summaries))
            self._last_merge = self.sys.call(self.root, "merge", *summaries)
            if self._trimmed:
                self._last_trimmed = self.sys.call(self.root, "merge_trimmed", *summaries)
            if self._window_rounds is not None:
                self._last_window = self.sys.call(self.root, "merge_window", *summaries)
