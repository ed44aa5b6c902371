"""``ServeMetrics``: the node's Prometheus metrics, in a registry of its own (one per node)."""

from __future__ import annotations

__all__ = ["ServeMetrics"]


class ServeMetrics:
    """Counters, gauges and the request latency histogram served at ``/metrics``.

    ``swarmguard_accepted_total{kind}`` / ``swarmguard_refused_total{kind}``
    (kind: behaviors, evidence, spans), ``swarmguard_windows_closed_total``,
    ``swarmguard_isolations_total``, ``swarmguard_request_seconds{route}``,
    ``swarmguard_queue_depth{queue}`` (inflight requests, window rows),
    ``swarmguard_errors_total{code,status}`` (requests the app refused),
    ``swarmguard_header_timeouts_total{head}`` (connections the listener closed because no whole
    request head arrived within ``--header-timeout``: ``head="partial"`` answered 408,
    ``head="empty"`` had sent nothing: no request reached the app; ``head="body"`` was still
    sending the body of a request the app had answered without it), ``swarmguard_agents{population}``,
    ``swarmguard_log_commits_landed_after_error`` (commits of the durable log that SQLite
    reported failed but whose rows were in the file, so they counted as written, since the
    start) and ``swarmguard_log_needs_restart`` (1 while the log refuses writes because it
    cannot tell what a failed commit left).
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter("swarmguard_accepted", "Items accepted, by kind", ["kind"], registry=r)
        self.refused = Counter("swarmguard_refused", "Items refused, by kind", ["kind"], registry=r)
        self.windows_closed = Counter("swarmguard_windows_closed", "Windows closed (detector rounds)", registry=r)
        self.isolations = Counter("swarmguard_isolations", "Agents newly isolated", registry=r)
        self.request_seconds = Histogram("swarmguard_request_seconds", "Request latency", ["route"], registry=r,
                                         buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.queue_depth = Gauge("swarmguard_queue_depth", "Work waiting", ["queue"], registry=r)
        self.errors = Counter("swarmguard_errors", "Refused requests, by code", ["code", "status"], registry=r)
        self.header_timeouts = Counter("swarmguard_header_timeouts",
                                       "Connections closed with no whole request head within --header-timeout, "
                                       "by what had arrived (partial: answered 408; empty: nothing; body: an answered body's rest)",
                                       ["head"], registry=r)
        self.agents = Gauge("swarmguard_agents", "Agents known, by population", ["population"], registry=r)
        self.log_landed_after_error = Gauge(
            "swarmguard_log_commits_landed_after_error",
            "Durable log commits reported failed whose rows were in the file (counted as written)", registry=r)
        self.log_needs_restart = Gauge("swarmguard_log_needs_restart",
                                       "1 while the durable log refuses writes until a restart", registry=r)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
