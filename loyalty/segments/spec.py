"""Segments in code: ``Segment(name, program, where=condition)``, compiled to SQL.

A condition is built from a member's state and composed with ``&``, ``|`` and ``~``::

    balance().between(901, 999)                      # available points, both ends included
    balance("points", kind="earned").at_least(100)   # earned (not yet matured) points
    tier_in("gold", "platinum") & consent("email")
    points_to_next_tier().at_most(100)               # close to the next tier
    last_activity().older_than(timedelta(days=90))   # last earned or spent 90 days ago
    enrolled().after(datetime(2026, 1, 1, tzinfo=UTC))
    profile("city").is_in(["Aarhus", "Odense"]) | profile("vip").exists()
    in_segment("almost-gold")

Every atom is true or false (never SQL's unknown), so ``~`` is plain negation: a member
in the top tier has no next tier, so ``points_to_next_tier().at_most(100)`` is false for
them and its negation true.

Parameters of the wrong type or impossible ranges (``between(1000, 900)``,
``at_most(-1)``) raise `ConfigurationError` when the condition is built; what depends on
the program (an unknown currency, scheme, tier or segment, a cycle of segments naming
each other) is refused by `check_segments` when the `loyalty.app.LoyaltyApp` is created,
one line per problem, each naming the segment.

`Segment.compile` compiles the condition into a boolean SQL expression over the ``members``
row ``m`` and the joins it needs, each one set-based: `loyalty.segments.membership`
evaluates it for the members a transaction touched, or for every member of the program.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from loyalty.errors import ConfigurationError
from loyalty.tiers.schemes import TierScheme

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
MAX_NAME = 64
BalanceKind = Literal["available", "earned", "debt"]


class ProgramShape(Protocol):
    """What compiling a segment (or checking a stream) needs of a `loyalty.app.Program`."""

    @property
    def name(self) -> str: ...

    @property
    def currencies(self) -> tuple[str, ...]: ...

    @property
    def tier_schemes(self) -> tuple[TierScheme, ...]: ...


def _fail(what: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"{what}: {message}")


def _whole(value: object, what: str, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(what, f"{name} must be a whole number, got {value!r}")
    return value


def _duration(value: object, what: str) -> timedelta:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise _fail(what, f"give a positive timedelta, got {value!r}")
    return value


def _text(value: object, what: str, name: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise _fail(what, f"{name} must be a non-empty string, got {value!r}")
    return value


def literal(text: str) -> str:
    """A SQL string literal (standard conforming strings: quotes doubled)."""
    return "'" + text.replace("'", "''") + "'"


def _interval(period: timedelta) -> str:
    return f"interval '{period.total_seconds():.6f} seconds'"


def _code(period: timedelta) -> str:
    """A duration as the code that makes it: ``timedelta(days=90)``."""
    seconds = period.total_seconds()
    for unit, size in (("days", 86_400), ("hours", 3_600), ("minutes", 60)):
        if seconds % size == 0:
            return f"timedelta({unit}={int(seconds // size)})"
    return f"timedelta(seconds={seconds:g})"


def _json(value: object, what: str) -> str:
    if isinstance(value, float) or not isinstance(value, str | int | bool):
        raise _fail(what, f"values must be strings, whole numbers or booleans, got {value!r}")
    return f"{literal(json.dumps(value))}::jsonb"


def _path(path: str, what: str) -> list[str]:
    parts = _text(path, what, "the field").split(".")
    if any(not p for p in parts):
        raise _fail(what, f"field {path!r}: empty part in the dotted path")
    return parts


# A range of member ids, from the first (included) to the second (excluded); None: open.
MemberRange = tuple[str | None, str | None]


def in_range(column: str, within: MemberRange) -> str:
    """`` AND column >= low AND column < high`` for the bounds ``within`` has ('' for
    none): ranges split at the same bounds cover every member id exactly once."""
    low, high = within
    return (f" AND {column} >= {literal(low)}" if low is not None else "") + (
        f" AND {column} < {literal(high)}" if high is not None else ""
    )


@dataclass
class Query:
    """What a segment's SQL reads: joins on the ``members`` row ``m``, made once each.

    ``only`` is SQL for the member ids to evaluate (``ids``, a ``text[]``), or None for
    every member of the program: then each source is joined whole (hash or merge
    joins), else looked up per member (`lookup`).

    ``inline``: the program's segments by name, when they are evaluated together in one
    statement (`compile_all`): ``in_segment(x)`` is then ``x``'s own condition, the
    membership this very evaluation gives, instead of a read of ``segment_members``.

    ``within``: a range of member ids (`MemberRange`) every source is limited to, so that
    a full recompute can be split into parts PostgreSQL reads in parallel.
    """

    program: ProgramShape
    only: str | None = None
    within: MemberRange = (None, None)
    joins: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Whether the SQL reads now(): the passing of time alone can change the result.
    timed: bool = False
    # The rolling windows (currency, span) whose kept totals a full recompute reads
    # (`loyalty.segments.windows`).
    windows: set[tuple[str, timedelta]] = field(default_factory=set)
    inline: dict[str, Condition] | None = None
    inlined: dict[str, str] = field(default_factory=dict)

    def join(self, key: str, make: Callable[[str], str]) -> str:
        """The alias of the join ``key``, added with ``make(alias)`` the first time."""
        if key not in self.joins:
            alias = f"j{len(self.joins) + 1}"
            self.joins[key] = (alias, make(alias))
        return self.joins[key][0]

    def lookup(self, alias: str, table: str, on: str) -> str:
        """A LEFT JOIN of ``table`` on ``on``; for given members, a LATERAL lookup that
        PostgreSQL can only run as a parameterized index scan per member, whatever its
        statistics say of the rows (a new program has none)."""
        if self.only is None:
            return f"LEFT JOIN {table} AS {alias} ON {on}" + in_range(
                f"{alias}.member_id", self.within
            )
        return (
            f"LEFT JOIN LATERAL (SELECT * FROM {table} AS {alias} WHERE {on} LIMIT 1) "
            f"AS {alias} ON true"
        )

    def from_clause(self) -> str:
        """``members AS m`` and the joins."""
        return "members AS m" + "".join(f"\n    {sql}" for _, sql in self.joins.values())

    def scheme(self, name: str | None) -> TierScheme:
        schemes = self.program.tier_schemes
        return schemes[0] if name is None else next(s for s in schemes if s.name == name)

    def currency(self, name: str | None) -> str:
        return name or self.program.currencies[0]


def _schemes_problem(program: ProgramShape, scheme: str | None) -> list[str]:
    names = [s.name for s in program.tier_schemes]
    if not names:
        return [f"program {program.name!r} has no tier scheme"]
    if scheme is not None and scheme not in names:
        return [f"unknown tier scheme {scheme!r}; schemes: {', '.join(names)}"]
    return []


def _currency_problem(program: ProgramShape, currency: str | None) -> list[str]:
    if currency is not None and currency not in program.currencies:
        return [f"unknown currency {currency!r}; currencies: {', '.join(program.currencies)}"]
    return []


class Condition:
    """A condition over a member's state; compose with ``&``, ``|`` and ``~``."""

    def __and__(self, other: Condition) -> Condition:
        return All((*_parts(self, All), *_parts(_condition(other, "&"), All)))

    def __or__(self, other: Condition) -> Condition:
        return AnyOf((*_parts(self, AnyOf), *_parts(_condition(other, "|"), AnyOf)))

    def __invert__(self) -> Condition:
        return self.inner if isinstance(self, Not) else Not(self)

    def problems(self, program: ProgramShape, segments: set[str]) -> list[str]:
        """What is wrong with the condition in ``program``, whose segments are named."""
        return []

    def sql(self, q: Query) -> str:
        """A boolean SQL expression, never NULL."""
        raise NotImplementedError

    def segments(self) -> set[str]:
        """The segments it names."""
        return set()


def _condition(value: object, operator: str) -> Condition:
    if not isinstance(value, Condition):
        raise ConfigurationError(f"segment condition: {operator} needs a condition, got {value!r}")
    return value


def _parts(condition: Condition, kind: type) -> tuple[Condition, ...]:
    return condition.items if isinstance(condition, kind) else (condition,)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class All(Condition):
    """Every condition holds (``a & b``)."""

    items: tuple[Condition, ...]

    def problems(self, program: ProgramShape, segments: set[str]) -> list[str]:
        return [p for c in self.items for p in c.problems(program, segments)]

    def sql(self, q: Query) -> str:
        return "(" + " AND ".join(c.sql(q) for c in self.items) + ")"

    def segments(self) -> set[str]:
        return set().union(*(c.segments() for c in self.items))

    def __str__(self) -> str:
        return " & ".join(_grouped(c) for c in self.items)


@dataclass(frozen=True)
class AnyOf(Condition):
    """One condition at least holds (``a | b``)."""

    items: tuple[Condition, ...]

    def problems(self, program: ProgramShape, segments: set[str]) -> list[str]:
        return [p for c in self.items for p in c.problems(program, segments)]

    def sql(self, q: Query) -> str:
        return "(" + " OR ".join(c.sql(q) for c in self.items) + ")"

    def segments(self) -> set[str]:
        return set().union(*(c.segments() for c in self.items))

    def __str__(self) -> str:
        return " | ".join(_grouped(c) for c in self.items)


@dataclass(frozen=True)
class Not(Condition):
    """The condition does not hold (``~a``)."""

    inner: Condition

    def problems(self, program: ProgramShape, segments: set[str]) -> list[str]:
        return self.inner.problems(program, segments)

    def sql(self, q: Query) -> str:
        return f"(NOT {self.inner.sql(q)})"

    def segments(self) -> set[str]:
        return self.inner.segments()

    def __str__(self) -> str:
        return f"~{_grouped(self.inner)}"


def _grouped(condition: Condition) -> str:
    return f"({condition})" if isinstance(condition, All | AnyOf) else str(condition)


# --- measures: numbers of a member's state --------------------------------------------


@dataclass(frozen=True)
class Measure:
    """A whole number of a member's state; ``between``, ``at_least`` … make conditions."""

    what: Literal["balance", "qualifying_points", "points_to_next_tier", "lifetime_earned"]
    currency: str | None = None
    kind: BalanceKind = "available"
    scheme: str | None = None

    def between(self, low: int, high: int) -> Condition:
        """From ``low`` to ``high``, both included."""
        return Range(self, self._bound(low, "low"), self._bound(high, "high"))

    def at_least(self, value: int) -> Condition:
        """``value`` or more."""
        return Range(self, self._bound(value, "value"), None)

    def at_most(self, value: int) -> Condition:
        """``value`` or less."""
        return Range(self, None, self._bound(value, "value"))

    def above(self, value: int) -> Condition:
        """More than ``value``."""
        return Range(self, self._bound(value, "value") + 1, None)

    def below(self, value: int) -> Condition:
        """Less than ``value``."""
        return Range(self, None, self._bound(value, "value") - 1)

    def _bound(self, value: object, name: str) -> int:
        return _whole(value, str(self), name)

    def problems(self, program: ProgramShape) -> list[str]:
        if self.what in ("qualifying_points", "points_to_next_tier"):
            return _schemes_problem(program, self.scheme)
        return _currency_problem(program, self.currency)

    def sql(self, q: Query) -> str:
        if self.what == "balance":
            currency, kind = q.currency(self.currency), self.kind
            alias = q.join(
                f"accounts:{currency}:{kind}",
                lambda a: q.lookup(
                    a,
                    "accounts",
                    f"{a}.program = m.program "
                    f"AND {a}.member_id = m.member_id AND {a}.currency = {literal(currency)} "
                    f"AND {a}.kind = {literal(kind)}",
                ),
            )
            return f"coalesce({alias}.balance, 0)"
        if self.what == "lifetime_earned":
            alias = _currencies_join(q, q.currency(self.currency))
            return f"coalesce({alias}.lifetime_earned, 0)"
        scheme = q.scheme(self.scheme)
        measured = _qualifying(q, scheme)
        if self.what == "qualifying_points":
            return measured
        tiers = _tiers_join(q, scheme)
        steps = " ".join(
            f"WHEN {rank} THEN greatest({upper.threshold} - {measured}, 0)"
            for rank, upper in enumerate(scheme.tiers[1:])
        )
        return f"(CASE coalesce({tiers}.rank, 0) {steps} END)" if steps else "NULL::bigint"

    def __str__(self) -> str:
        args = []
        if self.what == "balance":
            args = [repr(self.currency)] if self.currency else []
            args += [f"kind={self.kind!r}"] if self.kind != "available" else []
        elif self.what == "lifetime_earned" and self.currency:
            args = [repr(self.currency)]
        elif self.scheme:
            args = [repr(self.scheme)]
        return f"{self.what}({', '.join(args)})"


def _currencies_join(q: Query, currency: str) -> str:
    return q.join(
        f"member_currencies:{currency}",
        lambda a: q.lookup(
            a,
            "member_currencies",
            f"{a}.program = m.program "
            f"AND {a}.member_id = m.member_id AND {a}.currency = {literal(currency)}",
        ),
    )


def _tiers_join(q: Query, scheme: TierScheme) -> str:
    return q.join(
        f"member_tiers:{scheme.name}",
        lambda a: q.lookup(
            a,
            "member_tiers",
            f"{a}.program = m.program "
            f"AND {a}.scheme = {literal(scheme.name)} AND {a}.member_id = m.member_id",
        ),
    )


def _qualifying(q: Query, scheme: TierScheme) -> str:
    """The scheme's measure now: qualifying points of its currency within its window.

    A full recompute reads a rolling window's sums where they are kept
    (``qualifying_window_totals``, migration 0025, `loyalty.segments.windows`) and hold
    at its ``now()``, and sums a member's own rows where the kept sum does not hold (a
    parallel-safe function: a subquery would keep the read from running in parallel);
    given members sum their own rows (a few index entries each).
    """
    currency = q.currency(scheme.currency)
    program = literal(q.program.name)
    q.timed = q.timed or scheme.window != "lifetime"
    if isinstance(scheme.window, timedelta) and q.only is None:
        span = scheme.window
        q.windows.add((currency, span))
        alias = q.join(
            f"qualifying:{scheme.name}",
            lambda a: (
                f"LEFT JOIN qualifying_window_totals AS {a} ON {a}.program = m.program "
                f"AND {a}.currency = {literal(currency)} AND {a}.span = {_interval(span)} "
                f"AND {a}.member_id = m.member_id{in_range(f'{a}.member_id', q.within)}"
            ),
        )
        return (
            f"(CASE WHEN {alias}.member_id IS NULL THEN 0 "
            f"WHEN {alias}.valid_from <= now() AND now() < {alias}.valid_until "
            f"THEN {alias}.points ELSE qualifying_window_sum({alias}.program, "
            f"{alias}.member_id, {alias}.currency, {alias}.span) END)"
        )
    if isinstance(scheme.window, timedelta):
        source = (
            f"SELECT member_id, sum(points)::bigint AS v FROM qualifying_points "
            f"WHERE program = {program} AND currency = {literal(currency)} "
            f"AND earned_at > now() - {_interval(scheme.window)} AND earned_at <= now()"
            f"{in_range('member_id', q.within)}"
        )
    else:
        year = (
            " AND year = extract(year FROM now() AT TIME ZONE 'UTC')::integer"
            if scheme.window == "calendar_year"
            else ""
        )
        source = (
            f"SELECT member_id, sum(points)::bigint AS v FROM qualifying_totals "
            f"WHERE program = {program} AND currency = {literal(currency)}{year}"
            f"{in_range('member_id', q.within)}"
        )
    alias = q.join(
        f"qualifying:{scheme.name}",
        lambda a: (
            f"LEFT JOIN ({source} GROUP BY member_id) AS {a} ON {a}.member_id = m.member_id"
            if q.only is None
            else f"LEFT JOIN LATERAL ({source} AND member_id = m.member_id GROUP BY member_id) "
            f"AS {a} ON true"
        ),
    )
    return f"coalesce({alias}.v, 0)"


@dataclass(frozen=True)
class Range(Condition):
    """A measure within bounds (both included; None: unbounded)."""

    measure: Measure
    low: int | None
    high: int | None

    def __post_init__(self) -> None:
        what = str(self)
        if self.high is not None and self.high < 0:
            raise _fail(what, "impossible: the measure is never negative")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise _fail(what, f"impossible range: {self.low} is above {self.high}")

    def problems(self, program: ProgramShape, segments: set[str]) -> list[str]:
        return self.measure.problems(program)

    def sql(self, q: Query) -> str:
        value = self.measure.sql(q)
        tests = []
        if self.low is not None:
            tests.append(f"{value} >= {self.low}")
        if self.high is not None:
            tests.append(f"{value} <= {self.high}")
        return f"coalesce({' AND '.join(tests) or 'true'}, false)"

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{self.measure}.between({self.low}, {self.high})"
        if self.low is not None:
            return f"{self.measure}.at_least({self.low})"
        return f"{self.measure}.at_most({self.high})"


def balance(currency: str | None = None, kind: BalanceKind = "available") -> Measure:
    """The member's balance of ``currency`` (default: the program's first) and ``kind``:
    ``available`` (spendable), ``earned`` (waiting to mature) or ``debt``."""
    if currency is not None:
        _text(currency, "balance", "currency")
    if kind not in ("available", "earned", "debt"):
        raise _fail("balance", f"kind must be available, earned or debt, got {kind!r}")
    return Measure("balance", currency=currency, kind=kind)


def qualifying_points(scheme: str | None = None) -> Measure:
    """The qualifying points a tier scheme measures now, within its window (default: the
    program's first scheme)."""
    if scheme is not None:
        _text(scheme, "qualifying_points", "scheme")
    return Measure("qualifying_points", scheme=scheme)


def points_to_next_tier(scheme: str | None = None) -> Measure:
    """Qualifying points still missing for the tier above the member's (none in the top
    tier: every range is false there)."""
    if scheme is not None:
        _text(scheme, "points_to_next_tier", "scheme")
    return Measure("points_to_next_tier", scheme=scheme)


def lifetime_earned(currency: str | None = None) -> Measure:
    """Every point of ``currency`` the member ever earned."""
    if currency is not None:
        _text(currency, "lifetime_earned", "currency")
    return Measure("lifetime_earned", currency=currency)


# --- tiers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TierIn(Condition):
    """The member's tier in a scheme is one of ``tiers`` (``tier_in``)."""

    tiers: tuple[str, ...]
    scheme: str | None = None

    def problems(self, program: ProgramShape, segments: set[str]) -> list[str]:
        found = _schemes_problem(program, self.scheme)
        if found:
            return found
        scheme = Query(program).scheme(self.scheme)
        known = scheme.tier_names()
        return [
            f"unknown tier {t!r} in scheme {scheme.name!r}; tiers: {', '.join(known)}"
            for t in self.tiers
            if t not in known
        ]

    def sql(self, q: Query) -> str:
        scheme = q.scheme(self.scheme)
        alias = _tiers_join(q, scheme)
        names = ", ".join(literal(t) for t in self.tiers)
        return f"(coalesce({alias}.tier, {literal(scheme.tiers[0].name)}) IN ({names}))"

    def __str__(self) -> str:
        scheme = f", scheme={self.scheme!r}" if self.scheme else ""
        return f"tier_in({', '.join(repr(t) for t in self.tiers)}{scheme})"


def tier_in(*tiers: str, scheme: str | None = None) -> Condition:
    """The member is in one of these tiers (of ``scheme``; default the program's first)."""
    if not tiers:
        raise _fail("tier_in", "name one tier at least")
    for t in tiers:
        _text(t, "tier_in", "a tier")
    return TierIn(tuple(tiers), scheme)


def tier_not_in(*tiers: str, scheme: str | None = None) -> Condition:
    """The member is in none of these tiers."""
    return ~tier_in(*tiers, scheme=scheme)


# --- times --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Since(Condition):
    """A time of the member's compared with a moment or with now minus a duration."""

    what: Literal["last_activity", "enrolled"]
    op: Literal["older_than", "newer_than", "before", "after"]
    value: timedelta | datetime
    currency: str | None = None

    def problems(self, program: ProgramShape, segments: set[str]) -> list[str]:
        return _currency_problem(program, self.currency)

    def sql(self, q: Query) -> str:
        if self.what == "enrolled":
            column = "m.created_at"
        else:
            column = f"{_currencies_join(q, q.currency(self.currency))}.last_activity_at"
        if isinstance(self.value, timedelta):
            q.timed = True
            moment = f"(now() - {_interval(self.value)})"
        else:
            moment = f"{literal(self.value.isoformat())}::timestamptz"
        if self.op in ("older_than", "before"):
            # Never active counts as long ago.
            return f"coalesce({column} < {moment}, true)"
        return f"coalesce({column} >= {moment}, false)"

    def __str__(self) -> str:
        currency = repr(self.currency) if self.currency else ""
        value = _code(self.value) if isinstance(self.value, timedelta) else self.value.isoformat()
        return f"{self.what}({currency}).{self.op}({value})"


@dataclass(frozen=True)
class Moment:
    """A time of the member's: ``older_than``/``newer_than`` a duration ago,
    ``before``/``after`` a moment."""

    what: Literal["last_activity", "enrolled"]
    currency: str | None = None

    def older_than(self, period: timedelta) -> Condition:
        """More than ``period`` ago (or never, for ``last_activity``)."""
        return Since(
            self.what, "older_than", _duration(period, f"{self.what}.older_than"), self.currency
        )

    def newer_than(self, period: timedelta) -> Condition:
        """Within the last ``period``."""
        return Since(
            self.what, "newer_than", _duration(period, f"{self.what}.newer_than"), self.currency
        )

    def before(self, moment: datetime) -> Condition:
        """Before ``moment`` (an aware datetime)."""
        return Since(self.what, "before", self._moment(moment, "before"), self.currency)

    def after(self, moment: datetime) -> Condition:
        """At or after ``moment`` (an aware datetime)."""
        return Since(self.what, "after", self._moment(moment, "after"), self.currency)

    def _moment(self, moment: object, op: str) -> datetime:
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise _fail(f"{self.what}.{op}", f"give an aware datetime, got {moment!r}")
        return moment


def last_activity(currency: str | None = None) -> Moment:
    """When the member last earned or spent ``currency`` (default: the program's first)."""
    if currency is not None:
        _text(currency, "last_activity", "currency")
    return Moment("last_activity", currency)


def enrolled() -> Moment:
    """When the member was enrolled (their first event)."""
    return Moment("enrolled")


# --- profile ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileTest(Condition):
    """A profile field (a dotted path) equals, is one of, or exists."""

    path: tuple[str, ...]
    op: Literal["equals", "is_in", "exists"]
    values: tuple[str, ...] = ()

    def sql(self, q: Query) -> str:
        field_sql = "m.profile #> ARRAY[" + ", ".join(literal(p) for p in self.path) + "]"
        if self.op == "exists":
            return f"(m.erased_at IS NULL AND {field_sql} IS NOT NULL)"
        return f"coalesce({field_sql} IN ({', '.join(self.values)}), false)"

    def __str__(self) -> str:
        name = ".".join(self.path)
        if self.op == "exists":
            return f"profile({name!r}).exists()"
        shown = ", ".join(v.removesuffix("::jsonb").strip("'") for v in self.values)
        return f"profile({name!r}).{self.op}({shown})"


@dataclass(frozen=True)
class ProfileField:
    """A field of the member's profile: ``equals``, ``is_in``, ``exists``."""

    path: tuple[str, ...]

    def equals(self, value: str | int | bool) -> Condition:
        """The field holds ``value`` (JSON equality: ``"1"`` is not ``1``)."""
        return ProfileTest(self.path, "equals", (_json(value, self._what("equals")),))

    def is_in(self, values: Iterable[str | int | bool]) -> Condition:
        """The field holds one of ``values``."""
        what = self._what("is_in")
        if isinstance(values, str) or not isinstance(values, Iterable):
            raise _fail(what, f"give a list of values, got {values!r}")
        found = tuple(_json(v, what) for v in values)
        if not found:
            raise _fail(what, "give one value at least")
        return ProfileTest(self.path, "is_in", found)

    def exists(self) -> Condition:
        """The field is present (any value, null included)."""
        return ProfileTest(self.path, "exists")

    def _what(self, op: str) -> str:
        return f"profile({'.'.join(self.path)!r}).{op}"


def profile(path: str) -> ProfileField:
    """A profile field by dotted path: ``profile("city")``, ``profile("address.zip")``."""
    return ProfileField(tuple(_path(path, "profile")))


@dataclass(frozen=True)
class Consent(Condition):
    """The member may be sent messages on ``channel`` (the rule messages follow: not
    ``consent: {channel: false}`` in the profile), and was not erased."""

    channel: str

    def sql(self, q: Query) -> str:
        flag = f"m.profile #> ARRAY['consent', {literal(self.channel)}]"
        return f"(m.erased_at IS NULL AND coalesce({flag} <> 'false'::jsonb, true))"

    def __str__(self) -> str:
        return f"consent({self.channel!r})"


def consent(channel: str) -> Condition:
    """The member consents to ``channel`` (``email``, ``sms`` …)."""
    return Consent(_text(channel, "consent", "channel"))


# --- other segments -------------------------------------------------------------------------


@dataclass(frozen=True)
class InSegment(Condition):
    """The member is in another segment of the program."""

    name: str

    def problems(self, program: ProgramShape, segments: set[str]) -> list[str]:
        if self.name not in segments:
            known = ", ".join(sorted(segments)) or "none"
            return [f"in_segment({self.name!r}): unknown segment; segments: {known}"]
        return []

    def sql(self, q: Query) -> str:
        if q.inline is not None:
            if self.name not in q.inlined:
                q.inlined[self.name] = q.inline[self.name].sql(q)
            return q.inlined[self.name]
        alias = q.join(
            f"segment:{self.name}",
            lambda a: q.lookup(
                a,
                "segment_members",
                f"{a}.program = m.program "
                f"AND {a}.segment = {literal(self.name)} AND {a}.member_id = m.member_id",
            ),
        )
        return f"coalesce({alias}.in_segment, false)"

    def segments(self) -> set[str]:
        return {self.name}

    def __str__(self) -> str:
        return f"in_segment({self.name!r})"


def in_segment(name: str) -> Condition:
    """The member is in the segment ``name`` (of the same program)."""
    return InSegment(_text(name, "in_segment", "name"))


# --- segments -----------------------------------------------------------------------------


@dataclass(frozen=True, init=False)
class Segment:
    """A named condition over the members of one program.

    Attributes:
        name: lowercase letters, digits, ``-`` and ``_``; unique in its program. It is in
            the ``segment_entered``/``segment_left`` events, ``EnteredSegment(name)`` and
            ``Recurring(segment=name)``.
        program: the program whose members it holds (default ``default``).
        where: the condition (see the module's documentation).
    """

    name: str
    program: str
    where: Condition

    def __init__(self, name: str, program: str = "default", *, where: Condition) -> None:
        label = f"segment {name!r}"
        if not isinstance(name, str) or not re.match(NAME_PATTERN, name) or len(name) > MAX_NAME:
            raise ConfigurationError(
                f"{label}: the name must be 1-{MAX_NAME} lowercase letters, digits, - or _"
            )
        if not isinstance(program, str) or not program:
            raise ConfigurationError(f"{label}: program must be a program name")
        if not isinstance(where, Condition):
            raise ConfigurationError(
                f"{label}: where must be a condition such as balance().at_least(100), got {where!r}"
            )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "program", program)
        object.__setattr__(self, "where", where)

    def definition(self) -> str:
        """The condition as code, for listings."""
        return str(self.where)

    def compile(self, program: ProgramShape, within: MemberRange = (None, None)) -> Compiled:
        """The condition's SQL over every member of ``program`` (a full recompute; the
        evaluation of given members is `compile_all`'s), or over those whose ids are
        ``within`` a range (every source read limited to it)."""
        q = Query(program, within=within)
        condition = self.where.sql(q)
        return Compiled(q.from_clause(), condition, q.timed, frozenset(q.windows))


def compile_all(
    program: ProgramShape, segments: Sequence[Segment], only: str | None
) -> tuple[str, list[str]]:
    """The program's segments in one evaluation: (the FROM clause, each segment's
    condition in the order given), the joins shared between them and ``in_segment``
    inlined (see `Query`)."""
    q = Query(program, only, inline={s.name: s.where for s in segments})
    conditions = [s.where.sql(q) for s in segments]
    return q.from_clause(), conditions


@dataclass(frozen=True)
class Compiled:
    """A segment's SQL: ``SELECT … FROM {source} WHERE m.program = … AND {condition}``.

    Attributes:
        source: ``members AS m`` and the joins the condition reads.
        condition: a boolean expression, never NULL.
        timed: it reads ``now()``: time alone can change it (``older_than``, a rolling or
            calendar-year window), so housekeeping refreshes it on its schedule.
        windows: the rolling windows (currency, span) whose kept totals it reads
            (`loyalty.segments.windows`).
    """

    source: str
    condition: str
    timed: bool
    windows: frozenset[tuple[str, timedelta]] = frozenset()


def check_segments(segments: Sequence[Any], programs: dict[str, ProgramShape]) -> list[str]:
    """Problems of an app's segments, one line each naming the segment."""
    problems: list[str] = []
    by_program: dict[str, list[Segment]] = {}
    for item in segments:
        if not isinstance(item, Segment):
            problems.append(f"segments: {item!r} is not a Segment")
            continue
        by_program.setdefault(item.program, []).append(item)
    for program_name, listed in by_program.items():
        program = programs.get(program_name)
        if program is None:
            problems += [
                f"segment {s.name!r}: program {program_name!r} is not defined by the app; "
                f"programs: {', '.join(programs)}"
                for s in listed
            ]
            continue
        names = [s.name for s in listed]
        problems += [
            f"segment {n!r}: defined twice in program {program_name!r}"
            for n in sorted({n for n in names if names.count(n) > 1})
        ]
        for s in listed:
            problems += [f"segment {s.name!r}: {p}" for p in s.where.problems(program, set(names))]
        problems += [f"segment {n!r}: {p}" for n, p in _cycles(listed)]
    return problems


def _cycles(segments: list[Segment]) -> list[tuple[str, str]]:
    """A segment that names itself through others."""
    names = {s.name: s.where.segments() for s in segments}
    found = []
    for start in names:
        seen: set[str] = set()
        todo = list(names[start])
        while todo:
            current = todo.pop()
            if current == start:
                found.append((start, "it names itself through in_segment"))
                break
            if current in seen or current not in names:
                continue
            seen.add(current)
            todo += names[current]
    return found


def evaluation_order(segments: Sequence[Segment]) -> list[Segment]:
    """The segments with each one after those it names (its definition order otherwise)."""
    by_name = {s.name: s for s in segments}
    done: list[Segment] = []
    placed: set[str] = set()

    def place(segment: Segment) -> None:
        if segment.name in placed:
            return
        placed.add(segment.name)
        for name in sorted(segment.where.segments()):
            if name in by_name:
                place(by_name[name])
        done.append(segment)

    for segment in segments:
        place(segment)
    return done
