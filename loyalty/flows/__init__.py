"""Flows: what an app declares with ``@flow``, and how journeys are started and reached.

Owns `spec` (``flow``, ``Entry``, ``FlowSpec``, the start-up checks and deterministic
journey ids: definitions over `loyalty.app` and `loyalty.triggers`, no SQL), `outbox`
(journeys recorded in the batch transaction and started after commit), `signals`
(events for journeys waiting in `wait_for_event`) and `retention` (pruning both).
`spec` imports only definitions and `loyalty.messages.templates`; the others may import
`loyalty.store` and `loyalty.temporal`. The toolkit journeys call is
`loyalty.journeys`, beside this package. Re-exports what an app and the engine use of
`spec`: ``from loyalty.flows import Entry, flow``.
"""

from loyalty.flows.spec import (
    Entry,
    FlowSpec,
    check_app,
    flow,
    flow_spec,
    flows_by_type,
    journey_id,
    workflow_name,
)

__all__ = [
    "Entry",
    "FlowSpec",
    "check_app",
    "flow",
    "flow_spec",
    "flows_by_type",
    "journey_id",
    "workflow_name",
]
