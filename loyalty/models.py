"""Models that cross a boundary: workflow and activity inputs and outputs, client results.

Every model is frozen and forbids unknown fields, so a field added later is an explicit
change and a typo is an error instead of a silently ignored value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from loyalty.events import AnyEvent, Origin


class Model(BaseModel):
    """Base of the boundary models."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class RouterProgress(Model):
    """Counts of what a router partition committed (`loyalty.router.totals`), or one
    session's part of them (its heartbeat details, a batch)."""

    batches: int = 0
    events: int = 0
    applied: int = 0
    no_effect: int = 0
    rejected: int = 0
    failed_attempts: int = 0
    dead: int = 0
    # Claimed events applied on the fast path, and one at a time (`loyalty.router.bulk`).
    fast_path: int = 0
    one_by_one: int = 0

    def __add__(self, other: RouterProgress) -> RouterProgress:
        return RouterProgress(
            **{name: getattr(self, name) + getattr(other, name) for name in type(self).model_fields}
        )


class RouterInput(Model):
    """Input of the EventRouter workflow: one per program and partition."""

    program: str
    partition: int = Field(ge=0)
    partitions: int = Field(ge=1)
    # Activity sessions per workflow run before continue-as-new; the run also ends
    # early when Temporal suggests it.
    sessions_per_run: int = Field(100, ge=1)
    # The totals the previous run had read, shown until this run's first session ends.
    totals: RouterProgress = RouterProgress()


class RouteSession(Model):
    """Input of one router activity session: claim and apply batches until it ends."""

    program: str
    partition: int
    partitions: int


class LedgerReceipt(Model):
    """The result of one ledger transaction; a repeated key returns the first result."""

    transaction_id: int
    idempotency_key: str
    points: int
    duplicate: bool = False


class EmitResult(Model):
    """Whether an emitted event was accepted into the inbox or already there.

    ``origin`` is ``engine`` only for the derived events the engine inserts itself.
    """

    program: str
    event_id: str
    accepted: bool
    origin: Origin = "client"


class EmittedEvent(Model):
    """One event of an `EmitEvents` call or a `POST /v1/events`: ``accepted`` into the
    inbox, or a ``duplicate`` of an event already there with the same content."""

    event_id: str
    program: str
    status: Literal["accepted", "duplicate"]


class EmitEventsResult(Model):
    """The result of the `EmitEvents` workflow and the body of `POST /v1/events`'s 202:
    one entry per event, in the call's order."""

    results: list[EmittedEvent]

    @classmethod
    def of(cls, emitted: list[EmitResult]) -> EmitEventsResult:
        """The result of the inbox's answer to an insert."""
        return cls(
            results=[
                EmittedEvent(
                    event_id=r.event_id,
                    program=r.program,
                    status="accepted" if r.accepted else "duplicate",
                )
                for r in emitted
            ]
        )


Status = Literal["pending", "processed", "rejected", "dead"]


class EventOutcome(Model):
    """What the router did with an event."""

    program: str
    event_id: str
    status: Status | Literal["duplicate"]
    outcome: str | None = None
    detail: str | None = None

    def describe(self) -> str:
        """One word or phrase for the CLI: applied, no_effect, duplicate, rejected: …"""
        if self.status == "duplicate":
            return "duplicate"
        if self.status == "processed":
            return self.outcome or "applied"
        if self.status == "rejected":
            return f"rejected: {self.outcome}: {self.detail}"
        if self.status == "dead":
            return f"failed: {self.detail}"
        return "pending"


class FailedEvent(Model):
    """An event moved to the dead-letter state after its last attempt."""

    program: str
    event_id: str
    type: str
    member_id: str
    attempts: int
    error: str
    received_at: datetime
    failed_at: datetime


class PendingEvent(Model):
    """An event of the backlog: accepted, not yet processed (``not_before``: waiting for
    a retry after ``attempts`` failed attempts, the last one's error in ``error``)."""

    program: str
    event_id: str
    type: str
    member_id: str
    occurred_at: datetime
    received_at: datetime
    age_seconds: float
    attempts: int
    error: str | None = None
    not_before: datetime | None = None


class Balance(Model):
    """Balances of one currency for one member.

    ``debt`` is what the member owes (points clawed back after they were spent), as a
    positive number; ``lifetime_earned`` is every point ever awarded in the currency.
    """

    available: int = 0
    earned: int = 0
    debt: int = 0
    lifetime_earned: int = 0


class Expiry(Model):
    """Points that expire together."""

    currency: str
    points: int
    expires_at: datetime


class Entry(Model):
    """One ledger leg on a member account, with its transaction's reason and source.

    ``id`` is the leg's: entries come newest first, and ``loyalty member --before ID``
    (`member_view`'s ``before``) pages back from one. ``action`` names the journey step
    that wrote a journey's entry (its ``action=``, or ``step-<n>``); None otherwise.
    """

    at: datetime
    currency: str
    kind: str
    points: int
    reason: str
    source: str
    id: int | None = None
    action: str | None = None


class TierStatus(Model):
    """A member's place in one tier scheme (`loyalty.tiers`).

    ``qualifying`` is the measure now (qualifying points in the scheme's window);
    ``next_tier`` and ``points_to_next`` are None in the top tier; ``since`` is None in the
    starting tier; ``reviewed_at`` is when maintenance next reviews the member;
    ``grace_until`` is set while the member is below the tier's retain threshold.
    """

    scheme: str
    tier: str
    since: datetime | None
    qualifying: int
    currency: str
    next_tier: str | None
    points_to_next: int | None
    reviewed_at: datetime | None = None
    grace_until: datetime | None = None


class MaintenanceProgress(Model):
    """A tier maintenance run as far as it got (a row of ``maintenance_runs``)."""

    id: int
    program: str
    scheme: str
    as_of: datetime
    previous_as_of: datetime | None = None
    started_at: datetime
    finished_at: datetime | None = None
    cursor: str = ""
    chunks: int = 0
    scanned: int = 0
    promoted: int = 0
    demoted: int = 0
    in_grace: int = 0


class MaintenanceSlice(Model):
    """Work for one maintenance activity: chunks of the run at ``as_of``, for a while.

    The chunk size and the pause between chunks are the worker's settings
    (``LOYALTY_MAINTENANCE_CHUNK``, ``LOYALTY_MAINTENANCE_PAUSE_SECONDS``)."""

    program: str
    scheme: str
    as_of: datetime
    seconds: float = Field(30.0, gt=0)


class NextRunInput(Model):
    """Asks for a scheme's next maintenance time after ``after``."""

    program: str
    scheme: str
    after: datetime


class MaintenanceLoopInput(Model):
    """The state a tier maintenance loop carries across continue-as-new."""

    program: str
    scheme: str
    # None: the first run is at the schedule's first time after the loop starts.
    next_run_at: datetime | None = None
    paused: bool = False
    runs: int = 0
    last: MaintenanceProgress | None = None


class MaintenanceStatus(Model):
    """What the loop's ``status`` query answers."""

    program: str
    scheme: str
    paused: bool
    next_run_at: datetime | None
    running: MaintenanceProgress | None
    last: MaintenanceProgress | None
    runs: int


class MemberView(Model):
    """What `loyalty member ID --json` prints and `LoyaltyClient.member()` returns.

    ``entries`` are the latest ledger entries, newest first (20 by default);
    ``more_entries`` says that older ones exist (page back with ``before``).
    ``enrolled_at`` is when the program first processed an event of the member;
    ``erased_at`` when a ``member_deleted`` event last erased the profile.
    """

    member_id: str
    program: str
    tier: str | None
    tiers: list[TierStatus] = []
    profile: dict[str, object] = {}
    enrolled_at: datetime | None = None
    erased_at: datetime | None = None
    balances: dict[str, Balance]
    upcoming_expiries: list[Expiry]
    entries: list[Entry]
    more_entries: bool = False


class PointsStep(Model):
    """A journey step that moves a member's points (`activities.journeys`)."""

    program: str
    member_id: str = Field(min_length=1, max_length=128)
    points: int = Field(gt=0)
    kind: Literal["available", "earned"] = "available"
    currency: str = "points"
    reason: str = Field(min_length=1)
    # ``journey:<workflow_id>:<action or step>``: a retried or replayed step reuses it.
    idempotency_key: str = Field(min_length=1)
    workflow_id: str


class AwardPointsInput(PointsStep):
    """A journey step that gives a member points."""


class RemovePointsInput(PointsStep):
    """A journey step that takes points from a member."""


class GetMemberInput(Model):
    """A journey reads a member; the profile only when ``profile`` is set.

    What the activity returns is recorded in the journey's history, readable in the
    Temporal CLI and Web UI for as long as the history is kept, and a later
    ``member_deleted`` cannot erase it there.
    """

    program: str
    member_id: str
    profile: bool = False


class SendMessageInput(Model):
    """A journey step that sends a message through its channel's provider.

    ``event`` is the trigger event, in the template context and the webhook body.
    """

    program: str
    member_id: str = Field(min_length=1, max_length=128)
    template: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
    channel: str = "email"
    data: dict[str, object] = {}
    idempotency_key: str = Field(min_length=1)
    workflow_id: str
    event: AnyEvent | None = None


class MessageReceipt(Model):
    """A recorded message; a repeated key returns the first record.

    ``status``: ``sent``, or ``skipped`` when the member withdrew consent for the channel
    (``detail``: ``no consent``).
    """

    message_id: int
    idempotency_key: str
    duplicate: bool = False
    status: Literal["sent", "skipped"] = "sent"
    provider: Literal["log", "webhook"] = "log"
    detail: str | None = None


class MessageAttempt(Model):
    """One delivery attempt of a message (`loyalty messages`)."""

    attempt: int
    at: datetime
    http_status: int | None
    error: str | None


class MessageRecord(Model):
    """A message of the message log with its attempts (`loyalty messages --json`)."""

    id: int
    program: str
    member_id: str
    template: str
    channel: str
    provider: str
    status: str
    detail: str | None
    body: str | None
    data: dict[str, object]
    idempotency_key: str
    workflow_id: str | None
    created_at: datetime
    # When the member's erasure emptied body, data and event (``member_deleted``).
    erased_at: datetime | None = None
    attempts: list[MessageAttempt] = []


class RegisterWaitInput(Model):
    """A journey starts waiting for one of a member's events (`wait_for_event`)."""

    program: str
    member_id: str = Field(min_length=1, max_length=128)
    event_type: str = Field(min_length=1)
    workflow_id: str
    wait_key: str = Field(min_length=1)


class EndWaitInput(Model):
    """A journey's wait ended (event received or timed out): forget it."""

    workflow_id: str
    wait_key: str


class WaitReceipt(Model):
    """What the register and end activities did: ``registered_at`` of the wait, if any."""

    workflow_id: str
    wait_key: str
    registered_at: datetime | None = None


class LoyaltyEventSignal(Model):
    """The ``loyalty_event`` signal: the event a journey's wait matched."""

    wait_key: str
    event: AnyEvent


class HousekeepingProgress(Model):
    """A housekeeping run as far as it got (a row of ``housekeeping_runs``).

    ``step`` is the next step to do: mature, expire, remind (``bonus_expiring``, in
    chunks after the cursor), segments (refresh those that read the clock), snapshot (the
    day's liability, ``liability_snapshots``), prune, then done."""

    id: int
    program: str
    as_of: datetime
    started_at: datetime
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    step: Literal["mature", "expire", "remind", "segments", "snapshot", "prune", "done"] = "mature"
    matured_lots: int = 0
    matured_points: int = 0
    expired_lots: int = 0
    expired_points: int = 0
    cursor_member: str = ""
    cursor_currency: str = ""
    chunks: int = 0
    reminders: int = 0
    segments_entered: int = 0
    segments_left: int = 0
    snapshots: int = 0
    pruned_starts: int = 0
    pruned_signals: int = 0


class HousekeepingWork(Model):
    """Work for one housekeeping activity: a step of the program's run at ``as_of``.

    The reminder step writes chunks for about ``seconds``, then returns its progress."""

    program: str
    as_of: datetime
    seconds: float = Field(30.0, gt=0)


class NextHousekeepingInput(Model):
    """Asks for a program's next housekeeping time after ``after``."""

    program: str
    after: datetime


class HousekeepingLoopInput(Model):
    """The state a housekeeping loop carries across continue-as-new."""

    program: str
    # None: the first run is at the schedule's first time after the loop starts.
    next_run_at: datetime | None = None
    paused: bool = False
    runs: int = 0
    last: HousekeepingProgress | None = None


class HousekeepingStatus(Model):
    """What the housekeeping loop's ``status`` query answers."""

    program: str
    paused: bool
    next_run_at: datetime | None
    running: HousekeepingProgress | None
    last: HousekeepingProgress | None
    runs: int


class StreamTotals(Model):
    """What a stream's workflow delivered so far (one execution chain)."""

    batches: int = 0
    upserts: int = 0
    deletes: int = 0
    rejected: int = 0
    unchanged: int = 0


class StreamLoopInput(Model):
    """Input of a profile stream's workflow (`workflows.streams`): the stream, and the
    totals carried over continue-as-new."""

    stream: str
    totals: StreamTotals | None = None


class StreamRunInput(Model):
    """One activity run of a stream: deliver for up to ``seconds``, then report."""

    stream: str
    seconds: float = Field(gt=0)


class StreamRunResult(Model):
    """What one activity run of a stream did, and where the stream stands after it."""

    delivered: StreamTotals
    enabled: bool
    pending: int
    lag_seconds: float
