"""The `EmitEvents` workflow's activity: validate a batch of events, insert it in the inbox.

It receives the workflow's input as the raw payload the caller sent (a
`temporalio.common.RawValue`) and reads its JSON text itself
(`loyalty.ingest.batch.read_batch`), so an amount sent as a JSON number keeps its digits:
Temporal's data converter would have decoded it to a float on the way.

Invalid input and conflicts fail the activity for good (``InvalidEvent``,
``EventConflict``; nothing is written); a database that cannot be reached fails the
attempt, and Temporal retries it (`workflows.emit.EMIT_RETRY_POLICY`).
"""

from __future__ import annotations

import asyncpg
from temporalio import activity
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.outage import DATABASE_DOWN, database_unavailable
from loyalty.errors import EventConflict, InvalidEvent
from loyalty.events import IncomingEvent
from loyalty.ingest import inbox
from loyalty.ingest.batch import conflict_problems, program_problems, read_batch
from loyalty.metrics.counters import count_accepted
from loyalty.models import EmitEventsResult
from loyalty.settings import Settings

# How callers encode JSON: the temporal CLI and every SDK's default converter.
JSON_ENCODING = b"json/plain"
# What an SDK sends for a missing or null argument.
NULL_ENCODING = b"binary/null"


def refusal(kind: str, problems: list[str]) -> ApplicationError:
    """The non-retryable error of a refused batch: one problem per line in the message,
    and the same lines as its one detail, a list of strings (which every SDK reads as
    one value: Go's ``Details(&problems)``, TypeScript's ``details[0]``).

    Benign: the caller's mistake, which the worker logs at debug level, not as a failure.
    """
    return ApplicationError(
        "\n".join(problems),
        problems,
        type=kind,
        non_retryable=True,
        category=ApplicationErrorCategory.BENIGN,
    )


class EmitActivities:
    """The activity of `EmitEvents`; dependencies come in through the constructor."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings

    def all(self) -> list[object]:
        """The bound activity methods, for the worker."""
        return [self.emit_events]

    @activity.defn(name="emit_events")
    async def emit_events(self, payload: RawValue) -> EmitEventsResult:
        """Validate every event of ``{"events": [...]}``, then insert them in one statement.

        An ``event_id`` already in the inbox (or earlier in the batch) with the same
        content is a ``duplicate``; everything else is ``accepted``.

        Raises:
            ApplicationError: ``InvalidEvent`` or ``EventConflict`` (non-retryable; nothing
                is written), one problem per line naming its place (``events[3].points``);
                ``DatabaseUnavailable`` (retryable) when PostgreSQL cannot be reached.
        """
        events = self._read(payload)
        try:
            async with self.pool.acquire() as conn:
                try:
                    results = await inbox.insert_events(conn, events) if events else []
                except EventConflict as conflict:
                    raise refusal("EventConflict", conflict_problems(events, conflict)) from None
                except InvalidEvent:
                    # The only refusal of the insert besides a conflict: an unknown program.
                    known = await inbox.known_programs(conn)
                    raise refusal("InvalidEvent", program_problems(events, known)) from None
        except DATABASE_DOWN as exc:
            info = activity.info()
            activity.logger.warning(
                "emit_events of workflow %s (attempt %d): PostgreSQL is unavailable (%s); "
                "retrying", info.workflow_id, info.attempt, exc,
            )  # fmt: skip
            raise database_unavailable(exc) from None
        count_accepted(events, results)
        return EmitEventsResult.of(results)

    def _read(self, payload: RawValue) -> list[IncomingEvent]:
        """The batch's events, read from the payload's JSON text.

        Raises:
            ApplicationError: ``InvalidEvent``: not JSON, or any event is invalid.
        """
        encoding = payload.payload.metadata.get("encoding", b"")
        if encoding == NULL_ENCODING:
            raise refusal("InvalidEvent", ['input: required: {"events": [...]}'])
        if encoding != JSON_ENCODING:
            given = encoding.decode(errors="replace") or "none"
            raise refusal(
                "InvalidEvent", [f"input: must be JSON (encoding json/plain), not {given}"]
            )
        try:
            return read_batch(payload.payload.data, max_clock_skew=self.settings.max_clock_skew)
        except InvalidEvent as invalid:
            raise refusal("InvalidEvent", invalid.problems) from None
