"""The ``loyalty_*`` metrics counted by the process where things happen, defined once.

Each is incremented after the outcome it counts committed (never per attempt), so that
after a load the sums over every process equal the database's counts. Hot paths count
per batch, with the batch's counts, not per event.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import Counter, Histogram

from loyalty.events import AnyEvent
from loyalty.models import EmitResult

EVENTS_ACCEPTED = Counter(
    "loyalty_events_accepted",
    "Events other services sent that the inbox accepted (duplicates and conflicts not "
    "counted), by the process that inserted them (API, EmitEvents, LoyaltyClient).",
    ["program", "type"],
)
EVENTS_OUTCOMES = Counter(
    "loyalty_events_outcomes",
    "Events the router finished, by outcome: applied, no_effect, rejected (a business "
    "refusal) or dead (dead-lettered after its last attempt); derived events included.",
    ["program", "type", "outcome"],
)
EVENT_FAILED_ATTEMPTS = Counter(
    "loyalty_events_failed_attempts",
    "Attempts at an event that failed unexpectedly and wait for a retry.",
    ["program"],
)
BATCH_EVENTS = Histogram(
    "loyalty_router_batch_events",
    "Events per committed router batch.",
    ["program"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
BATCH_SECONDS = Histogram(
    "loyalty_router_batch_duration_seconds",
    "Time to claim, apply and commit one router batch.",
    ["program"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
FAST_PATH_EVENTS = Counter(
    "loyalty_router_fast_path_events",
    "Events applied set-based on the router's fast path (the rest one by one).",
    ["program"],
)
FALLBACKS = Counter(
    "loyalty_router_fallbacks",
    "Batches whose first pass failed and that were redone one event at a time, each in "
    "its own savepoint.",
    ["program"],
)
JOURNEYS_STARTED = Counter(
    "loyalty_journeys_started",
    "Journeys (flow workflows) that began running on this worker.",
    ["flow"],
)
JOURNEYS_FAILED = Counter(
    "loyalty_journeys_failed",
    "Journeys that ended failed.",
    ["flow"],
)
MESSAGES = Counter(
    "loyalty_messages",
    "Messages by provider (log, webhook) and outcome: sent, skipped (no consent) or "
    "failed (for good).",
    ["program", "provider", "status"],
)


def count_outcomes(program: str, outcomes: Iterable[tuple[tuple[str, str], int]]) -> None:
    """Add a committed batch's outcomes, ``((type, outcome), count)``, to the counters."""
    for (kind, outcome), n in outcomes:
        EVENTS_OUTCOMES.labels(program, kind, outcome).inc(n)


def count_accepted(events: Sequence[AnyEvent], results: Sequence[EmitResult]) -> None:
    """Count the events of a committed insert that the inbox accepted (``results`` are
    `loyalty.ingest.inbox.insert_events`'s, in the events' order)."""
    tally: dict[tuple[str, str], int] = {}
    for event, result in zip(events, results, strict=True):
        if result.accepted:
            key = (event.program, event.type)
            tally[key] = tally.get(key, 0) + 1
    for (program, kind), n in tally.items():
        EVENTS_ACCEPTED.labels(program, kind).inc(n)
