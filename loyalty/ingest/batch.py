"""A batch of events sent as one JSON document, ``{"events": [...]}``, checked as a whole.

What the `EmitEvents` workflow (and any other entry point that takes a batch as JSON)
accepts: at most `MAX_BATCH_EVENTS` events, every one validated with
`loyalty.events.parse_event` before any is written, and every problem named by its
place in the document (``events[3].points: Input should be greater than 0``), also for
what the inbox refuses later: an unknown program, an ``event_id`` reused with other
content (`conflict_problems`).

The document is read with `loyalty.inputs.load_json`, so an amount sent as a JSON
number keeps the digits it was written with (``42.50``, ``169.99999999999999999``);
nothing in between may decode it to a float.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from loyalty.errors import EventConflict, InvalidEvent
from loyalty.events import (
    DEFAULT_MAX_CLOCK_SKEW,
    IncomingEvent,
    differing_fields,
    occurred_at_sent,
    parse_event,
)
from loyalty.inputs import MAX_JSON_DEPTH, load_json

# Events per call: a batch is validated and inserted in one statement, and its whole
# document must also fit in one Temporal payload (2 MB by default).
MAX_BATCH_EVENTS = 1_000


def read_batch(
    text: str | bytes,
    *,
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
    limit: int = MAX_BATCH_EVENTS,
) -> list[IncomingEvent]:
    """Validate a batch from its JSON text, all or nothing (see `parse_batch`).

    Raises:
        InvalidEvent: one line per problem, each naming its place (``events[3].points``).
    """
    try:
        data = load_json(text)
    except RecursionError:
        raise InvalidEvent(
            [f"events: nested too deeply (attributes and profile: at most {MAX_JSON_DEPTH} levels)"]
        ) from None
    except ValueError as exc:
        raise InvalidEvent([f"invalid JSON: {exc}"]) from None
    return parse_batch(data, max_clock_skew=max_clock_skew, limit=limit)


def parse_batch(
    data: Any,
    *,
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
    limit: int = MAX_BATCH_EVENTS,
) -> list[IncomingEvent]:
    """Validate ``{"events": [...]}`` as decoded by `loyalty.inputs.load_json`.

    Every event is checked before the call fails, so all problems come at once; a batch
    over ``limit`` events is refused before any event is looked at.

    Raises:
        InvalidEvent: one line per problem, each naming its place (``events[3].points``).
    """
    if not isinstance(data, dict):
        raise InvalidEvent(['input: must be a JSON object: {"events": [...]}'])
    problems = [f"{key}: unknown field" for key in data if key != "events"]
    if "events" not in data:
        problems.append("events: field required")
    elif not isinstance(data["events"], list):
        problems.append("events: must be a list of events")
    elif len(data["events"]) > limit:
        count = len(data["events"])
        problems.append(f"events: at most {limit} events per call, not {count}; split them")
    if problems:
        raise InvalidEvent(problems)
    events: list[IncomingEvent] = []
    for index, item in enumerate(data["events"]):
        if not isinstance(item, dict):
            problems.append(f"events[{index}]: must be an object")
            continue
        try:
            events.append(
                parse_event(item, prefix=f"events[{index}].", max_clock_skew=max_clock_skew)
            )
        except InvalidEvent as invalid:
            problems.extend(invalid.problems)
    if problems:
        raise InvalidEvent(problems)
    return events


def program_problems(events: Sequence[IncomingEvent], known: set[str]) -> list[str]:
    """One line per event that names a program the database does not know."""
    listed = ", ".join(sorted(known))
    return [
        f"events[{index}].program: unknown program {event.program!r}; known: {listed}"
        for index, event in enumerate(events)
        if event.program not in known
    ]


def conflict_problems(events: Sequence[IncomingEvent], conflict: EventConflict) -> list[str]:
    """The conflicts the inbox found, one line per event and field that differs.

    An event whose id comes again later in the batch with other content is the first
    version: the later ones are named. Otherwise the first version is the one already
    in the inbox, and every event of the batch with that id is named.
    """
    problems: list[str] = []
    for found in conflict.conflicts:
        places = [
            index
            for index, event in enumerate(events)
            if (event.program, event.event_id) == (found.program, found.event_id)
        ]
        first = events[places[0]]
        differing: dict[int, list[str]] = {}
        for index in places[1:]:
            sent = occurred_at_sent(first) and occurred_at_sent(events[index])
            fields = differing_fields(first, events[index], occurred_at=sent)
            if fields:
                differing[index] = fields
        earlier = f"comes earlier (events[{places[0]}])"
        if not differing:
            differing = dict.fromkeys(places, found.fields)
            earlier = "was already sent"
        where = "" if found.program == "default" else f" in program {found.program!r}"
        for index, fields in differing.items():
            problems += [
                f"events[{index}].{field}: conflict: event_id {found.event_id!r}{where} "
                f"{earlier} with another {field}"
                for field in fields
            ]
    return problems
