"""What the engine tells an operator: Prometheus metrics and OpenTelemetry tracing.

Owns `counters` (the ``loyalty_*`` metrics a process counts as things happen, each
defined once), `database` (the gauges read from PostgreSQL at a scrape: backlog, lag,
liability, tiers, segments, streams, loop runs), `temporal` (the Temporal SDK's own
metrics, drained from its runtime into the same endpoint), `journeys` (the worker
interceptor that counts journeys), `tracing` (OpenTelemetry, on when the ``OTEL_*``
variables say so) and `endpoint` (the HTTP endpoint that serves them all). `counters`,
`temporal`, `journeys` and `tracing` may import the definitions only; `database` also
`loyalty.store`; `endpoint` imports the others. Re-exports nothing: import its modules.
"""
