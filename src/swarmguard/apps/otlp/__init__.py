"""OpenTelemetry ingest: OTLP trace decoding, GenAI span features per agent and window, a fleet emulator.

Modules: :mod:`.decode` (OTLP/HTTP bodies and answers), :mod:`.spans` (spans to columns),
:mod:`.features` (the behaviour vector of ``docs/otlp-features.md``), :mod:`.window`
(a window aggregator), :mod:`.fleet` (emulated agents on the OpenTelemetry SDK). They
need the ``serve`` extra (``opentelemetry-proto``); the fleet the ``fleet`` extra.
"""
