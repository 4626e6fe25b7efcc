"""A batch's ledger in memory: accounts, lots and movements, as `loyalty.ledger` writes them.

The fast path (`loyalty.router.bulk`) loads the accounts and lots of a batch's members
(`loyalty.router.state`), replays the batch's events against them here, one after the
other (`loyalty.router.replay`), and then writes what changed in a few statements
(`loyalty.router.writes`). Every operation mirrors its database twin row for row:

* `Ledger.award` is `loyalty.ledger.postings.award`: the accounts it needs are created, a
  debt is paid off first, the rest goes to the member's account and to a new lot in the
  member's ``available`` account, dated behind the cut-offs as `postings.lot_dates`
  dates it; ``member_currencies`` counts the points and the activity;
* `Ledger.spend` is `postings.spend`: the same refusals, with the same messages, checked
  before anything changes; lots give up their points soonest-expiring first
  (`postings._CONSUME`);
* `Ledger.take_back` is `loyalty.ledger.returns._take_back`: the order's earned lots, its
  available ones, what expired, then the member's other available points, then debt or
  forgiveness.

A key already used (an event applied before) moves nothing, as in the database. The
lots' points and the accounts' balances stay in step; a lot that cannot give what its
account's balance promises raises `LedgerOutOfStep`, which sends the batch back to the
careful one-by-one path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from loyalty.errors import InsufficientPoints, LedgerOutOfStep, LedgerRefusal

# (member id, or None for the program's accounts; currency; kind)
AccountKey = tuple[str | None, str, str]
_TICK = timedelta(microseconds=1)


@dataclass
class Account:
    """A ledger account; ``id`` is None for one this batch creates."""

    key: AccountKey
    id: int | None
    balance: int


@dataclass
class Lot:
    """A lot of points in a member's ``available`` account.

    ``rank`` orders lots as their ids do: loaded lots by id, then the batch's new lots in
    the order they were created (they get their ids in that order).
    """

    rank: tuple[int, int]
    pocket: AccountKey
    amount: int
    remaining: int
    available_at: datetime | None
    expires_at: datetime | None
    order_id: str | None
    expired: int = 0
    id: int | None = None
    posting: int | None = None
    loaded: int | None = None


@dataclass
class Posting:
    """A ledger transaction the batch writes, with its legs."""

    key: str
    member_id: str | None
    kind: str
    reason: str
    source: str
    occurred_at: datetime
    order_id: str | None
    legs: list[tuple[AccountKey, int]]


@dataclass(frozen=True)
class Cutoffs:
    """A currency's cut-offs; None is ``-infinity`` (never moved)."""

    matured_through: datetime | None
    expired_through: datetime | None

    def live(self, lot: Lot) -> bool:
        """`postings.LIVE`: points left that have not expired."""
        return lot.remaining > 0 and (
            lot.expires_at is None
            or self.expired_through is None
            or lot.expires_at > self.expired_through
        )

    def earned(self, lot: Lot) -> bool:
        """`postings.EARNED`: waiting for maturing."""
        return lot.available_at is not None and (
            self.matured_through is None or lot.available_at > self.matured_through
        )

    def dates(
        self, available_at: datetime | None, expires_at: datetime | None
    ) -> tuple[datetime | None, datetime | None]:
        """`postings.lot_dates`: a new lot's dates, never behind a cut-off."""
        if available_at is not None and self.matured_through is not None:
            available_at = max(available_at, self.matured_through + _TICK)
        if expires_at is not None and self.expired_through is not None:
            expires_at = max(expires_at, self.expired_through + _TICK)
        return available_at, expires_at


@dataclass
class Ledger:
    """The accounts, lots and new movements of a batch's members in one program.

    Attributes:
        program: the program's name.
        cutoffs: per currency.
        accounts: the members' accounts and the program's, by key.
        lots: the loaded lots and the new ones, by pocket (member's ``available`` account).
        used: ledger keys used already, in the database or by this batch.
        postings: the batch's new transactions, in order.
        activity: ``member_currencies`` changes: (lifetime points added, latest activity).
    """

    program: str
    cutoffs: dict[str, Cutoffs]
    accounts: dict[AccountKey, Account] = field(default_factory=dict)
    lots: dict[AccountKey, list[Lot]] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    postings: list[Posting] = field(default_factory=list)
    activity: dict[tuple[str, str], tuple[int, datetime]] = field(default_factory=dict)
    _new_lots: int = 0

    def balance(self, key: AccountKey) -> int:
        """The account's balance now; 0 for an account that does not exist."""
        account = self.accounts.get(key)
        return account.balance if account is not None else 0

    def has(self, key: AccountKey) -> bool:
        """Whether the account exists (in the database, or created by this batch)."""
        return key in self.accounts

    def ensure(self, keys: Iterable[AccountKey]) -> None:
        """Create the accounts that do not exist yet (`postings.ensure_accounts`)."""
        for key in keys:
            if key not in self.accounts:
                self.accounts[key] = Account(key=key, id=None, balance=0)

    def new_accounts(self) -> list[AccountKey]:
        """The accounts this batch creates."""
        return [key for key, account in self.accounts.items() if account.id is None]

    def _post(self, posting: Posting) -> int:
        for key, amount in posting.legs:
            self.accounts[key].balance += amount
        self.postings.append(posting)
        self.used.add(posting.key)
        return len(self.postings) - 1

    def _activity(self, member_id: str, currency: str, points: int, at: datetime) -> None:
        earned, last = self.activity.get((member_id, currency), (0, at))
        self.activity[(member_id, currency)] = (earned + points, max(last, at))

    def award(
        self,
        *,
        member_id: str,
        points: int,
        kind: str,
        currency: str,
        reason: str,
        source: str,
        key: str,
        occurred_at: datetime,
        available_at: datetime | None,
        expires_at: datetime | None,
        order_id: str | None = None,
    ) -> Posting | None:
        """Give points (see the module docstring); None when the key was used before."""
        if key in self.used:
            return None
        if kind == "available":
            available_at = None
        pocket = (member_id, currency, "available")
        self.ensure([(member_id, currency, kind), pocket, (None, currency, "issued")])
        legs: list[tuple[AccountKey, int]] = [((None, currency, "issued"), -points)]
        pay_off = 0
        debt = self.balance((member_id, currency, "debt"))
        if debt < 0:
            pay_off = min(points, -debt)
            legs.append(((member_id, currency, "debt"), pay_off))
        if points > pay_off:
            legs.append(((member_id, currency, kind), points - pay_off))
        index = self._post(
            Posting(key=key, member_id=member_id, kind=f"award_{kind}", reason=reason,
                    source=source, occurred_at=occurred_at, order_id=order_id, legs=legs)
        )  # fmt: skip
        if points > pay_off:
            dated_available, dated_expires = self.cutoffs[currency].dates(available_at, expires_at)
            self._new_lots += 1
            self.lots.setdefault(pocket, []).append(
                Lot(rank=(1, self._new_lots), pocket=pocket, amount=points - pay_off,
                    remaining=points - pay_off, available_at=dated_available,
                    expires_at=dated_expires, order_id=order_id, posting=index)
            )  # fmt: skip
        self._activity(member_id, currency, points, occurred_at)
        return self.postings[index]

    def spend(
        self,
        *,
        member_id: str,
        points: int,
        kind: str,
        currency: str,
        reason: str,
        source: str,
        key: str,
        occurred_at: datetime,
        known: bool,
        counter: str = "redeemed",
    ) -> Posting | None:
        """Take points (see the module docstring); None when the key was used before.

        ``known``: whether the program has seen the member (``members``).

        Raises:
            LedgerRefusal: ``unknown_member``.
            InsufficientPoints: the account holds fewer points than asked.
        """
        account = (member_id, currency, kind)
        if account not in self.accounts:
            if not known:
                raise LedgerRefusal(
                    "unknown_member", f"member {member_id} is unknown in program {self.program}"
                )
            raise InsufficientPoints(
                f"member {member_id} has 0 {kind} {currency}, cannot remove {points}"
            )
        self.ensure([(None, currency, counter)])
        if key in self.used:
            return None
        balance = self.accounts[account].balance
        if balance < points:
            raise InsufficientPoints(
                f"member {member_id} has {balance} {kind} {currency}, cannot remove {points}"
            )
        self.consume((member_id, currency, "available"), points, None, earned=kind == "earned")
        index = self._post(
            Posting(key=key, member_id=member_id, kind=f"spend_{kind}", reason=reason,
                    source=source, occurred_at=occurred_at, order_id=None,
                    legs=[(account, -points), ((None, currency, counter), points)])
        )  # fmt: skip
        self._activity(member_id, currency, 0, occurred_at)
        return self.postings[index]

    def consume(
        self, pocket: AccountKey, points: int, prefer_order: str | None, *, earned: bool
    ) -> None:
        """`postings._CONSUME`: the preferred order's lots first, then soonest-expiring,
        never-expiring last, oldest first; live lots in the state asked for only.

        Raises:
            LedgerOutOfStep: the lots hold fewer points than asked.
        """
        cut = self.cutoffs[pocket[1]]
        lots = [
            lot for lot in self.lots.get(pocket, ())
            if cut.live(lot) and cut.earned(lot) == earned
        ]  # fmt: skip
        lots.sort(
            key=lambda lot: (
                not (prefer_order is not None and lot.order_id == prefer_order),
                lot.expires_at is None,
                lot.expires_at or datetime.min,
                lot.rank,
            )
        )
        owed = points
        for lot in lots:
            if owed <= 0:
                break
            taken = min(lot.remaining, owed)
            lot.remaining -= taken
            owed -= taken
        if owed > 0:
            raise LedgerOutOfStep(
                f"the lots of the {pocket} account gave {points - owed} of {points} points: "
                "lots and balance are out of step"
            )

    def order_lots(self, pocket: AccountKey, order_id: str) -> tuple[int, int, int]:
        """(earned, available, expired) points of the order's lots in the pocket, as
        `returns._take_back` sums them (before what earlier returns took from expiry)."""
        cut = self.cutoffs[pocket[1]]
        earned = available = expired = 0
        for lot in self.lots.get(pocket, ()):
            if lot.order_id != order_id:
                continue
            live = cut.live(lot)
            if live and cut.earned(lot):
                earned += lot.remaining
            elif live:
                available += lot.remaining
            expired += lot.expired + (0 if live else lot.remaining)
        return earned, available, expired

    def take_back(
        self,
        *,
        member_id: str,
        order_id: str,
        currency: str,
        points: int,
        expired_before: int,
        policy: str,
        key: str,
        source: str,
        occurred_at: datetime,
    ) -> tuple[dict[str, int], int | None]:
        """A return's clawback in one currency; returns its parts and posting index.

        ``expired_before``: what earlier returns of the order counted as expired.
        """
        parts = {"points": max(points, 0), "from_earned": 0, "from_available": 0,
                 "from_expired": 0, "to_debt": 0, "forgiven": 0}  # fmt: skip
        if points <= 0:
            return parts, None
        earned_key, pocket = (member_id, currency, "earned"), (member_id, currency, "available")
        self.ensure([earned_key, pocket, (None, currency, "clawed_back")])
        held_earned, held_available, held_expired = self.order_lots(pocket, order_id)
        held_expired -= expired_before
        balance = self.balance(pocket)
        from_earned = min(points, held_earned)
        rest = points - from_earned
        own_available = min(rest, held_available)
        from_expired = min(rest - own_available, held_expired)
        other_available = min(rest - own_available - from_expired, balance - own_available)
        from_available = own_available + other_available
        spent = rest - own_available - from_expired - other_available
        to_debt, forgiven = (spent, 0) if policy == "debt" else (0, spent)
        legs: list[tuple[AccountKey, int]] = []
        if from_earned:
            legs.append((earned_key, -from_earned))
        if from_available:
            legs.append((pocket, -from_available))
        if to_debt:
            self.ensure([(member_id, currency, "debt")])
            legs.append(((member_id, currency, "debt"), -to_debt))
        taken = from_earned + from_available + to_debt
        index = None
        if taken and key not in self.used:
            legs.append(((None, currency, "clawed_back"), taken))
            if from_earned:
                self.consume(pocket, from_earned, order_id, earned=True)
            index = self._post(
                Posting(key=key, member_id=member_id, kind="claw_back",
                        reason=f"return of order {order_id}", source=source,
                        occurred_at=occurred_at, order_id=None, legs=legs)
            )  # fmt: skip
            if from_available:
                self.consume(pocket, from_available, order_id, earned=False)
        parts.update(from_earned=from_earned, from_available=from_available,
                     from_expired=from_expired, to_debt=to_debt, forgiven=forgiven)  # fmt: skip
        return parts, index

    def changed_lots(self) -> tuple[list[Lot], list[Lot]]:
        """(new lots in creation order, loaded lots whose points changed)."""
        new = sorted(
            (lot for lots in self.lots.values() for lot in lots if lot.id is None),
            key=lambda lot: lot.rank,
        )
        changed = [
            lot for lots in self.lots.values() for lot in lots
            if lot.id is not None and lot.remaining != lot.loaded
        ]  # fmt: skip
        return new, changed
