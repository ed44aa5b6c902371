"""``swarmguard.client``: a small typed client of a ``swarmguard serve`` node, on httpx.

>>> from swarmguard.client import SwarmGuardClient          # doctest: +SKIP
>>> with SwarmGuardClient("http://127.0.0.1:8470", token="s3cret") as node:   # doctest: +SKIP
...     node.post_behaviors([{"agent_id": "a-1", "features": [0.1, 2.0]}])
...     node.top_agents(5)

Every refusal raises :class:`NodeError` (status, the node's one-line ``error``,
``retry_after`` seconds when the node said so).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import quote

from .errors import NodeError

__all__ = ["SwarmGuardClient", "NodeError", "IngestAnswer", "AgentSummary", "IsolationEvent"]


@dataclass(frozen=True)
class IngestAnswer:
    """``POST /v1/behaviors`` / ``/v1/evidence``: counts and the refused lines."""

    accepted: int
    rejected: int
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class AgentSummary:
    """An item of ``GET /v1/agents``."""

    agent_id: str
    severity: int
    p_value: float
    score: float
    isolated: bool
    cohort: str | None
    population: str | None = None
    source: str | None = None               # "scored" (this node's window) or "replica" (a peer's register)
    writer_region: str | None = None        # a replica item: the register's writer region and timestamp
    timestamp: float | None = None


@dataclass(frozen=True)
class IsolationEvent:
    """One ``/v1/events`` event: its id and data."""

    id: int
    data: dict[str, Any]


def _lines(rows: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(json.dumps(dict(r), allow_nan=False).encode() + b"\n" for r in rows)


class SwarmGuardClient:
    """A node at ``base_url``; ``token`` is sent as ``Authorization: Bearer``; ``transport``
    lets tests talk to an app in process (``httpx.ASGITransport`` / a ``TestClient``)."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 30.0,
                 transport: Any = None, http: Any = None):
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = http if http is not None else httpx.Client(base_url=base_url, headers=headers,
                                                                timeout=timeout, transport=transport)
        if http is not None and token:
            self._http.headers.update(headers)

    def __enter__(self) -> SwarmGuardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _check(self, response: Any) -> Any:
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            retry = response.headers.get("retry-after")
            raise NodeError(response.status_code, str(message), float(retry) if retry else None)
        return response.json()

    # ---------------------------------------------------------------- ingest
    def post_behaviors(self, rows: Iterable[Mapping[str, Any]]) -> IngestAnswer:
        """Rows of ``{"agent_id", "features", "timestamp"?, "cohort"?}`` as JSON Lines."""
        r = self._http.post("/v1/behaviors", content=_lines(rows), headers={"Content-Type": "application/x-ndjson"})
        return IngestAnswer(**self._check(r))

    def post_evidence(self, rows: Iterable[Mapping[str, Any]]) -> IngestAnswer:
        """Rows of ``{"evidence_id", "agent_id", "evidence_type", "log_odds", "confidence", "timestamp"}``."""
        r = self._http.post("/v1/evidence", content=_lines(rows), headers={"Content-Type": "application/x-ndjson"})
        return IngestAnswer(**self._check(r))

    def close_window(self) -> list[dict[str, Any]]:
        """Close the open window now (an admin token)."""
        return self._check(self._http.post("/v1/admin/close-window"))["closed"]

    # ---------------------------------------------------------------- queries
    def top_agents(self, top: int = 10, cohort: str | None = None) -> list[AgentSummary]:
        params: dict[str, Any] = {"top": top}
        if cohort is not None:
            params["cohort"] = cohort
        # fields a newer node adds are left out rather than refused (the contract is extended, not changed)
        known = {f.name for f in fields(AgentSummary)}
        return [AgentSummary(**{k: v for k, v in a.items() if k in known})
                for a in self._check(self._http.get("/v1/agents", params=params))["agents"]]

    def agent(self, agent_id: str) -> dict[str, Any]:
        """``GET /v1/agents/{id}`` (a :class:`NodeError` 404 for an unknown agent)."""
        # quoted whole: "?", "#", "%" or "../" in an id would otherwise ask for another resource
        return self._check(self._http.get(f"/v1/agents/{quote(str(agent_id), safe='')}"))

    def populations(self) -> list[dict[str, Any]]:
        return self._check(self._http.get("/v1/populations"))["populations"]

    def ready(self) -> bool:
        return self._http.get("/readyz").status_code == 200

    def events(self, since: int | None = None, limit: int | None = None,
               timeout: float | None = None) -> Iterator[IsolationEvent]:
        """The isolation events of ``/v1/events`` (bounded by ``limit`` / ``timeout``)."""
        params = {k: v for k, v in {"since": since, "limit": limit, "timeout": timeout}.items() if v is not None}
        with self._http.stream("GET", "/v1/events", params=params) as r:
            if r.status_code >= 400:
                r.read()
                self._check(r)
            event_id, data = None, None
            for line in r.iter_lines():
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                elif not line and data is not None:
                    yield IsolationEvent(event_id or 0, data)
                    event_id, data = None, None
