"""The fast path's replay: a batch's events applied in memory, one after the other.

`Replay.apply` is `loyalty.router.processing.EventProcessor.apply` over the state `load`
read (`loyalty.router.state`), with the ledger in memory (`loyalty.router.memory`): the
same event types, in the batch's order, with the same effects and refusals:

* deposits and withdrawals (``unknown_currency``, ``unknown_member``,
  ``insufficient_points`` with the same detail), purchases (the order, then the points
  paid, then the earn rules), activities and referrals (earn rules and their caps),
  returns (`loyalty.ledger.returns.claw_back`: per currency, then the qualifying points'
  share), profile updates and erasure, and derived events (``no_effect``);
* qualifying points and promotion after each event's awards, measured at the event's
  time (`loyalty.tiers.promotion.promote`), ``new_stage`` for each promotion;
* ``points_above`` from the balance before and after each event, and
  ``referral_friend_approved`` (`loyalty.ingest.derived.derive`).

A refused event changes nothing: every check comes before the first change, as the
one-by-one path's savepoint would roll it back. What the replay decided is then written
set-based (`loyalty.router.writes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from loyalty.app import LoyaltyApp, Program
from loyalty.errors import LedgerRefusal
from loyalty.events import (
    DERIVED_TYPES,
    Activity,
    AnyEvent,
    MemberDeleted,
    MemberUpdated,
    NewStage,
    PointsDeposit,
    PointsWithdrawal,
    Purchase,
    Referral,
    ReferralApproved,
    Return,
)
from loyalty.ingest import derived
from loyalty.policies import clawback_target
from loyalty.router.caps import CapCheck
from loyalty.router.state import MemberRow, Order, State
from loyalty.tiers.promotion import Qualifying, measured_currencies

_MONEY = Decimal("0.0001")


@dataclass(frozen=True)
class Outcome:
    """What applying an event came to: ``applied``, ``no_effect`` or a refusal's code."""

    status: str  # processed or rejected
    outcome: str
    detail: str | None = None


@dataclass(frozen=True)
class RuleAward:
    """An ``earn_rule_awards`` row, with the index of its ledger posting."""

    rule: str
    member_id: str
    event_id: str
    occurred_at: datetime
    currency: str
    points: int
    qualifying: bool
    posting: int
    order_id: str | None


def check_account(program: Program, event: AnyEvent) -> None:
    """Refuse a deposit or withdrawal in a currency the program does not have.

    Raises:
        LedgerRefusal: ``unknown_currency``, naming the program's currencies.
    """
    if isinstance(event, PointsDeposit | PointsWithdrawal) and (
        event.account not in program.currencies
    ):
        raise LedgerRefusal(
            "unknown_currency",
            f"program {program.name!r} has no currency {event.account!r}; "
            f"it has {', '.join(program.currencies)}",
        )


@dataclass
class Replay:
    """The batch's events applied in memory; `loyalty.router.writes` writes the result.

    Attributes:
        awards: earn rule awards written now, in order.
        qualifying: qualifying points added, in order.
        promoted: (scheme, member): (tier, rank, since), the last promotion of each.
        clawbacks: ``order_clawbacks`` rows (their posting index or None).
        order_returns: (key, order_id, amount) of each return applied.
        derived: derived events and the inbox row of their cause, in order.
        enrolled: the members of the events processed (not refused): the program
            enrols them (``members``) if it has not yet.
    """

    app: LoyaltyApp
    state: State
    awards: list[RuleAward] = field(default_factory=list)
    qualifying: list[Qualifying] = field(default_factory=list)
    promoted: dict[tuple[str, str], tuple[str, int, datetime]] = field(default_factory=dict)
    clawbacks: list[dict[str, Any]] = field(default_factory=list)
    order_returns: list[tuple[str, str, Decimal]] = field(default_factory=list)
    derived: list[tuple[AnyEvent, int]] = field(default_factory=list)
    enrolled: set[str] = field(default_factory=set)
    # (order, currency): points the batch's awards issued; (points, from_expired) taken.
    _issued: dict[tuple[str, str], int] = field(default_factory=dict)
    _taken: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        program = self.state.program
        self._watch = derived.watch(self.app, program.name)
        self._measured = measured_currencies(program)
        # The new_stage events of the event being applied, derived before the others.
        self._stages: list[AnyEvent] = []

    def apply(self, row_id: int, event: AnyEvent) -> Outcome:
        """Apply one event (inbox row ``row_id``) after those before it."""
        if event.type in DERIVED_TYPES:
            self.enrolled.add(event.member_id)
            return Outcome("processed", "no_effect")
        watched = None if isinstance(event, MemberUpdated | MemberDeleted) else self._watch
        watched_balance = (
            (event.member_id, watched.currency, "available") if watched is not None else None
        )
        ledger = self.state.ledger
        before = ledger.balance(watched_balance) if watched_balance is not None else 0
        self._stages = []
        try:
            result = self._apply(row_id, event)
        except LedgerRefusal as refusal:
            return Outcome("rejected", refusal.code, str(refusal))
        self.enrolled.add(event.member_id)
        after = ledger.balance(watched_balance) if watched_balance is not None else 0
        thresholds = watched.thresholds if watched is not None else ()
        made = [
            *self._stages,
            *derived.derive(event, before=before, after=after, watched=thresholds),
        ]
        self.derived += [(event_made, row_id) for event_made in made]
        return Outcome("processed", result)

    def _apply(self, row_id: int, event: AnyEvent) -> str:
        program, ledger = self.state.program, self.state.ledger
        member, at, key = event.member_id, event.occurred_at, f"event:{event.event_id}"
        check_account(program, event)
        if isinstance(event, PointsDeposit):
            available_at = at + program.earned_waiting_period if event.kind == "earned" else at
            ledger.award(
                member_id=member, points=event.points, kind=event.kind, currency=event.account,
                reason=event.reason, source=key, key=key, occurred_at=at,
                available_at=available_at, expires_at=program.lot_expiry(event.account, at),
            )  # fmt: skip
            return "applied"
        if isinstance(event, PointsWithdrawal):
            ledger.spend(
                member_id=member, points=event.points, kind=event.kind, currency=event.account,
                reason=event.reason, source=key, key=key, occurred_at=at,
                known=member in self.state.members,
            )  # fmt: skip
            return "applied"
        if isinstance(event, Purchase):
            order = self.state.orders.get(event.order_id)
            if order is not None and order.member_id != member:
                raise LedgerRefusal(
                    "order_of_another_member", f"order {event.order_id} belongs to another member"
                )
            if event.points_redeemed:
                ledger.spend(
                    member_id=member, points=event.points_redeemed, kind="available",
                    currency=program.currencies[0], reason=f"paid on order {event.order_id}",
                    source=key, key=key, occurred_at=at, known=member in self.state.members,
                )  # fmt: skip
            if order is None:
                self.state.orders[event.order_id] = Order(
                    member_id=member, amount=event.amount.quantize(_MONEY),
                    returned=Decimal(0).quantize(_MONEY), money=event.currency, new=True,
                )  # fmt: skip
            self._rules(row_id, event)
            return "applied"
        if isinstance(event, Activity | Referral | ReferralApproved):
            return "applied" if self._rules(row_id, event) else "no_effect"
        if isinstance(event, Return):
            self._return(event)
            return "applied"
        if isinstance(event, MemberUpdated):
            row = self.state.members.setdefault(member, MemberRow(exists=False))
            row.profile = {**row.profile, **event.profile}
            row.erased, row.changed = "clear", True
            return "applied"
        if isinstance(event, MemberDeleted):
            found = self.state.members.get(member)
            if found is not None:
                found.profile, found.erased, found.changed = {}, "now", True
            return "applied"
        return "no_effect"

    def _rules(self, row_id: int, event: AnyEvent) -> int:
        """`loyalty.router.earn.apply_rules`: how many rules awarded (now or before)."""
        state, ledger = self.state, self.state.ledger
        member, at = event.member_id, event.occurred_at
        order_id = event.order_id if isinstance(event, Purchase) else None
        awarded, qualifying = 0, set()
        for p in state.plans[row_id]:
            rule, check = p.rule, CapCheck(p.rule, member, event.event_id, at)
            decision = state.caps.decide(check) if rule.capped else True
            if decision is False:
                continue
            if decision:
                key = f"event:{event.event_id}:rule:{rule.name}"
                posting = ledger.award(
                    member_id=member, points=p.points, kind=rule.kind, currency=p.currency,
                    reason=f"earn rule {rule.name}", source=f"event:{event.event_id}", key=key,
                    occurred_at=at, available_at=p.available_at, expires_at=p.expires_at,
                    order_id=order_id,
                )  # fmt: skip
                if posting is not None:
                    index = len(ledger.postings) - 1
                    self.awards.append(
                        RuleAward(rule=rule.name, member_id=member, event_id=event.event_id,
                                  occurred_at=at, currency=p.currency, points=p.points,
                                  qualifying=rule.qualifying, posting=index, order_id=order_id)
                    )  # fmt: skip
                    if rule.capped:
                        state.caps.record(check)
                    if order_id is not None:
                        issued = self._issued.get((order_id, p.currency), 0)
                        self._issued[(order_id, p.currency)] = issued + p.points
                    if rule.qualifying and p.currency in self._measured:
                        self._qualify(Qualifying(member, p.currency, at, p.points, key, order_id))
            awarded += 1
            if rule.qualifying and p.currency in self._measured:
                qualifying.add(p.currency)
        if qualifying:
            self._promote(event, qualifying)
        return awarded

    def _qualify(self, row: Qualifying) -> None:
        self.qualifying.append(row)
        measure = self.state.measures.get((row.member_id, row.currency))
        if measure is not None:
            measure.added.append((row.earned_at, row.points))

    def _promote(self, event: AnyEvent, currencies: set[str]) -> None:
        """`loyalty.tiers.promotion.promote` for one earner, then its ``new_stage``."""
        state, program = self.state, self.state.program
        member, at = event.member_id, event.occurred_at
        made: list[AnyEvent] = []
        for index, scheme in enumerate(program.tier_schemes):
            currency = scheme.currency_in(program)
            if currency not in currencies:
                continue
            measures = state.measures[(member, currency)]
            # At the event's time, and at the member's latest qualifying points when the
            # event came after them (applied out of its time order): the higher tier wins.
            latest = measures.latest()
            met, when = -1, at
            for instant in [at] + ([latest] if latest is not None and latest > at else []):
                measure = measures.at(scheme, instant)
                reached = max(
                    (r for r, t in enumerate(scheme.tiers) if t.threshold <= measure), default=-1
                )
                if reached > met:
                    met, when = reached, instant
            current = state.tiers.get((scheme.name, member))
            rank = current[1] if current is not None else 0
            if met <= rank:
                continue
            names = scheme.tier_names()
            to_tier = names[met]
            state.tiers[(scheme.name, member)] = (to_tier, met)
            self.promoted[(scheme.name, member)] = (to_tier, met, when)
            if index == 0:
                row = state.members.setdefault(member, MemberRow(exists=False))
                row.tier, row.tier_changed = to_tier, True
            made.append(
                NewStage(
                    event_id=derived.derived_id("new_stage", scheme.name, to_tier, event.event_id),
                    member_id=member, program=program.name, occurred_at=when,
                    from_tier=current[0] if current is not None else names[0], to_tier=to_tier,
                    direction="up", cause="earn", scheme=scheme.name,
                )
            )  # fmt: skip
        self._stages += made

    def _return(self, event: Return) -> None:
        """`loyalty.ledger.returns.claw_back`."""
        state, program = self.state, self.state.program
        member, key = event.member_id, f"event:{event.event_id}"
        order = state.orders.get(event.order_id)
        if order is None:
            raise LedgerRefusal(
                "unknown_order", f"order {event.order_id} is unknown in program {program.name}"
            )
        if order.member_id != member:
            raise LedgerRefusal(
                "order_of_another_member", f"order {event.order_id} belongs to another member"
            )
        if key in state.returned_keys:
            return
        returned = order.returned + event.amount
        if returned > order.amount:
            raise LedgerRefusal(
                "return_exceeds_order",
                f"order {event.order_id} was {order.amount}, {order.returned} already "
                f"returned, cannot return {event.amount} more",
            )
        currencies = sorted(
            {c for (o, c) in state.order_earned if o == event.order_id}
            | {c for (o, c) in self._issued if o == event.order_id}
        )
        for currency in currencies:
            pair = (event.order_id, currency)
            earned = state.order_earned.get(pair, 0) + self._issued.get(pair, 0)
            stored, batch = state.order_taken.get(pair, (0, 0)), self._taken.get(pair, (0, 0))
            points = clawback_target(earned, returned, order.amount) - stored[0] - batch[0]
            parts, posting = state.ledger.take_back(
                member_id=member, order_id=event.order_id, currency=currency, points=points,
                expired_before=stored[1] + batch[1], policy=program.return_policy,
                key=f"{key}:{currency}", source=key, occurred_at=event.occurred_at,
            )  # fmt: skip
            self.clawbacks.append(
                {"order_id": event.order_id, "currency": currency, "key": key,
                 "returned_amount": event.amount, "posting": posting, **parts}
            )  # fmt: skip
            self._taken[pair] = (batch[0] + parts["points"], batch[1] + parts["from_expired"])
            self._take_back_qualifying(event, currency, returned, order.amount)
        order.returned = returned
        state.returned_keys.add(key)
        self.order_returns.append((key, event.order_id, event.amount))

    def _take_back_qualifying(
        self, event: Return, currency: str, returned: Decimal, amount: Decimal
    ) -> None:
        """`loyalty.tiers.promotion.take_back_for_return`."""
        if currency not in self._measured:
            return
        rows = list(self.state.order_qualifying.get((event.order_id, currency), ()))
        rows += [
            (q.member_id, q.earned_at, q.points) for q in self.qualifying
            if q.order_id == event.order_id and q.currency == currency
        ]  # fmt: skip
        earned = sum(p for _, _, p in rows if p > 0)
        if not rows or not earned:
            return
        taken = -sum(p for _, _, p in rows if p < 0)
        points = clawback_target(earned, returned, amount) - taken
        if points <= 0:
            return
        self._qualify(
            Qualifying(min(m for m, _, _ in rows), currency, min(t for _, t, _ in rows), -points,
                       f"event:{event.event_id}:{currency}", event.order_id)
        )  # fmt: skip
