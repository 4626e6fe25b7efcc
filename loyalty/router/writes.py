"""The fast path's writes: what a replay decided, in a few statements for the whole batch.

`write` takes the replayed batch (`loyalty.router.replay`) and writes, in order: the
accounts it created; its ledger transactions with their legs and new lots in one
statement (a key taken meanwhile by another writer raises `BatchRaced`, and the batch
is redone one event at a time); the lots' remaining points; ``member_currencies``; the
earn rules' awards and cap counters; orders, returns and clawbacks; qualifying points
(which keep ``qualifying_totals`` by trigger); tiers; ``members``; derived events. The
rows are those the one-by-one path writes (`tests/test_bulk.py` compares every table).
"""

from __future__ import annotations

from typing import Any

from loyalty.events import AnyEvent, occurred_at_sent, origin_of
from loyalty.router.caps import drop_untouched
from loyalty.router.memory import AccountKey, Ledger
from loyalty.router.replay import Outcome, Replay
from loyalty.router.state import MemberRow
from loyalty.store.db import Conn

# Finds the wanted accounts and creates the missing ones. An account that a concurrent
# transaction creates meanwhile is neither found nor returned: the caller runs it again.
_ACCOUNTS = """
WITH w AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[]) AS w(member_id, currency, kind)
),
created AS (
    INSERT INTO accounts (program, member_id, currency, kind)
    SELECT $1, w.member_id, w.currency, w.kind FROM w
    ORDER BY w.member_id NULLS FIRST, w.currency, w.kind
    ON CONFLICT DO NOTHING
    RETURNING member_id, currency, kind, id
)
SELECT * FROM created
UNION ALL
SELECT w.member_id, w.currency, w.kind, a.id
FROM w JOIN accounts AS a
  ON a.program = $1 AND a.member_id = w.member_id AND a.currency = w.currency
 AND a.kind = w.kind
UNION ALL
SELECT w.member_id, w.currency, w.kind, a.id
FROM w JOIN accounts AS a
  ON a.program = $1 AND a.member_id IS NULL AND a.currency = w.currency AND a.kind = w.kind
WHERE w.member_id IS NULL
"""

_POSTINGS = """
WITH t AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[], $8::text[])
             WITH ORDINALITY AS t(key, member_id, kind, reason, source, occurred_at, order_id, n)
),
tx AS (
    INSERT INTO ledger_transactions (program, idempotency_key, member_id, kind, reason,
                                     source, occurred_at, order_id)
    SELECT $1, key, member_id, kind, reason, source, occurred_at, order_id FROM t ORDER BY n
    ON CONFLICT (program, idempotency_key) DO NOTHING
    RETURNING id, idempotency_key
),
legs AS (
    INSERT INTO ledger_legs (transaction_id, account_id, amount)
    SELECT tx.id, g.account_id, g.amount
    FROM unnest($9::text[], $10::bigint[], $11::bigint[]) WITH ORDINALITY
         AS g(key, account_id, amount, n)
    JOIN tx ON tx.idempotency_key = g.key
    ORDER BY g.n
    RETURNING 1
),
lot AS (
    INSERT INTO lots (account_id, transaction_id, amount, remaining, available_at,
                      expires_at, order_id)
    SELECT l.account_id, tx.id, l.amount, l.remaining, l.available_at, l.expires_at,
           l.order_id
    FROM unnest($12::text[], $13::bigint[], $14::bigint[], $15::bigint[],
                $16::timestamptz[], $17::timestamptz[], $18::text[]) WITH ORDINALITY
         AS l(key, account_id, amount, remaining, available_at, expires_at, order_id, n)
    JOIN tx ON tx.idempotency_key = l.key
    ORDER BY l.n
    RETURNING 1
)
SELECT idempotency_key, id FROM tx
"""

_REMAINING = """
UPDATE lots AS l SET remaining = v.remaining
FROM unnest($1::bigint[], $2::bigint[]) AS v(id, remaining)
WHERE l.id = v.id
"""

_ACTIVITY = """
INSERT INTO member_currencies (program, member_id, currency, lifetime_earned,
                               last_activity_at)
SELECT $1, a.member_id, a.currency, a.points, a.at
FROM unnest($2::text[], $3::text[], $4::bigint[], $5::timestamptz[])
     AS a(member_id, currency, points, at)
ORDER BY a.member_id, a.currency
ON CONFLICT (program, member_id, currency) DO UPDATE
SET lifetime_earned = member_currencies.lifetime_earned + EXCLUDED.lifetime_earned,
    last_activity_at = greatest(member_currencies.last_activity_at, EXCLUDED.last_activity_at)
"""

# As `loyalty.router.earn._RECORD`: every award counts in the member's usage row if
# there is one (capped rules locked it), and in the rule's totals if it has a max_total.
_AWARDS = """
WITH recorded AS (
    INSERT INTO earn_rule_awards (program, rule, member_id, event_id, occurred_at, currency,
                                  points, qualifying, transaction_id)
    SELECT $1, w.rule, w.member_id, w.event_id, w.occurred_at, w.currency, w.points,
           w.qualifying, w.transaction_id
    FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[],
                $7::bigint[], $8::boolean[], $9::bigint[]) WITH ORDINALITY
         AS w(rule, member_id, event_id, occurred_at, currency, points, qualifying,
              transaction_id, n)
    ORDER BY w.n
    ON CONFLICT (program, rule, event_id) DO NOTHING
    RETURNING rule, member_id
),
usage AS (
    UPDATE earn_rule_usage AS u SET awards = u.awards + c.n
    FROM (SELECT rule, member_id, count(*) AS n FROM recorded GROUP BY rule, member_id) AS c
    WHERE u.program = $1 AND u.rule = c.rule AND u.member_id = c.member_id
    RETURNING 1
)
UPDATE earn_rule_totals AS t SET awards = t.awards + c.n
FROM (SELECT rule, count(*) AS n FROM recorded WHERE rule = ANY($10::text[])
      GROUP BY rule) AS c
WHERE t.program = $1 AND t.rule = c.rule
"""

_ORDERS = """
INSERT INTO orders (program, order_id, member_id, amount, money_currency, returned_amount)
SELECT $1, o.order_id, o.member_id, o.amount, o.money, o.returned
FROM unnest($2::text[], $3::text[], $4::numeric[], $5::text[], $6::numeric[])
     AS o(order_id, member_id, amount, money, returned)
ORDER BY o.order_id
ON CONFLICT (program, order_id) DO UPDATE SET order_id = EXCLUDED.order_id
RETURNING order_id, member_id
"""

_RETURNED = """
UPDATE orders AS o SET returned_amount = v.returned
FROM unnest($2::text[], $3::numeric[]) AS v(order_id, returned)
WHERE o.program = $1 AND o.order_id = v.order_id
"""

_ORDER_RETURNS = """
INSERT INTO order_returns (program, idempotency_key, order_id, amount)
SELECT $1, r.key, r.order_id, r.amount
FROM unnest($2::text[], $3::text[], $4::numeric[]) WITH ORDINALITY AS r(key, order_id, amount, n)
ORDER BY r.n
"""

_CLAWBACKS = """
INSERT INTO order_clawbacks (program, order_id, currency, idempotency_key, returned_amount,
                             points, from_earned, from_available, from_expired, to_debt,
                             forgiven, transaction_id)
SELECT $1, c.* FROM unnest($2::text[], $3::text[], $4::text[], $5::numeric[], $6::bigint[],
                           $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[],
                           $11::bigint[], $12::bigint[])
                    AS c(order_id, currency, key, returned_amount, points, from_earned,
                         from_available, from_expired, to_debt, forgiven, transaction_id)
"""

_QUALIFYING = """
INSERT INTO qualifying_points (program, member_id, currency, earned_at, points, order_id,
                               source)
SELECT $1, q.member_id, q.currency, q.earned_at, q.points, q.order_id, q.source
FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::bigint[], $6::text[], $7::text[])
     WITH ORDINALITY AS q(member_id, currency, earned_at, points, order_id, source, n)
ORDER BY q.n
ON CONFLICT (program, source, currency) DO NOTHING
"""

_TIERS = """
INSERT INTO member_tiers (program, scheme, member_id, tier, rank, since)
SELECT $1, t.scheme, t.member_id, t.tier, t.rank, t.since
FROM unnest($2::text[], $3::text[], $4::text[], $5::integer[], $6::timestamptz[])
     AS t(scheme, member_id, tier, rank, since)
ORDER BY t.scheme, t.member_id
ON CONFLICT (program, scheme, member_id) DO UPDATE
SET tier = EXCLUDED.tier, rank = EXCLUDED.rank, since = EXCLUDED.since, below_since = NULL
"""

_NEW_MEMBERS = """
INSERT INTO members (program, member_id, profile, tier, erased_at)
SELECT $1, m.member_id, m.profile, m.tier, CASE WHEN m.erased = 'now' THEN now() END
FROM unnest($2::text[], $3::jsonb[], $4::text[], $5::text[]) AS m(member_id, profile, tier, erased)
ORDER BY m.member_id
ON CONFLICT (program, member_id) DO NOTHING
RETURNING member_id
"""

_MEMBERS = """
UPDATE members AS m
SET profile = CASE WHEN v.profile_changed THEN v.profile ELSE m.profile END,
    tier = coalesce(v.tier, m.tier),
    erased_at = CASE v.erased WHEN 'now' THEN now() WHEN 'clear' THEN NULL
                    ELSE m.erased_at END,
    updated_at = now()
FROM unnest($2::text[], $3::jsonb[], $4::boolean[], $5::text[], $6::text[])
     AS v(member_id, profile, profile_changed, tier, erased)
WHERE m.program = $1 AND m.member_id = v.member_id
"""

# Inserted already processed, with their outcome: see `write`.
_DERIVED = """
INSERT INTO events (program, origin, event_id, type, member_id, payload, occurred_at,
                    occurred_at_sent, caused_by, status, outcome, attempts, processed_at)
SELECT d.program, d.origin, d.event_id, d.type, d.member_id, d.payload, d.occurred_at,
       d.sent, d.caused_by, d.status, d.outcome, 1, now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
            $7::timestamptz[], $8::boolean[], $9::bigint[], $10::text[], $11::text[])
     WITH ORDINALITY
     AS d(program, origin, event_id, type, member_id, payload, occurred_at, sent, caused_by,
          status, outcome, n)
ORDER BY d.n
ON CONFLICT (program, origin, event_id) DO NOTHING
RETURNING id, event_id
"""


class BatchRaced(Exception):
    """Another writer took a key or an order the replay counted on: redo the batch."""


async def _accounts(conn: Conn, ledger: Ledger) -> None:
    """Create the accounts the replay created, and learn their ids."""
    wanted = sorted(ledger.new_accounts(), key=lambda k: (k[0] or "", k[1], k[2]))
    if not wanted:
        return
    rows = await conn.fetch(
        _ACCOUNTS, ledger.program, [k[0] for k in wanted], [k[1] for k in wanted],
        [k[2] for k in wanted],
    )  # fmt: skip
    for r in rows:
        key: AccountKey = (r["member_id"], r["currency"], r["kind"])
        if key in ledger.accounts:
            ledger.accounts[key].id = r["id"]
    if any(ledger.accounts[k].id is None for k in wanted):
        raise BatchRaced("accounts created meanwhile by another writer")


def _id(ledger: Ledger, key: AccountKey) -> int:
    account_id = ledger.accounts[key].id
    assert account_id is not None
    return account_id


async def _postings(conn: Conn, ledger: Ledger) -> dict[str, int]:
    """Transactions, legs and new lots; returns the transaction id of each key."""
    postings = ledger.postings
    if not postings:
        return {}
    legs = [(p.key, _id(ledger, key), amount) for p in postings for key, amount in p.legs]
    new, _ = ledger.changed_lots()
    rows = await conn.fetch(
        _POSTINGS, ledger.program,
        [p.key for p in postings], [p.member_id for p in postings], [p.kind for p in postings],
        [p.reason for p in postings], [p.source for p in postings],
        [p.occurred_at for p in postings], [p.order_id for p in postings],
        [k for k, _, _ in legs], [a for _, a, _ in legs], [m for _, _, m in legs],
        [postings[lot.posting].key for lot in new if lot.posting is not None],
        [_id(ledger, lot.pocket) for lot in new], [lot.amount for lot in new],
        [lot.remaining for lot in new], [lot.available_at for lot in new],
        [lot.expires_at for lot in new], [lot.order_id for lot in new],
    )  # fmt: skip
    ids = {r["idempotency_key"]: r["id"] for r in rows}
    if len(ids) != len(postings):
        raise BatchRaced("a ledger key was used meanwhile by another writer")
    return ids


async def write(conn: Conn, replay: Replay) -> list[tuple[int, AnyEvent, Outcome]]:
    """Write everything the replay changed (see the module docstring).

    The derived events are applied here too, in the batch that derives them (they only
    trigger flows: `Replay.apply` gives each its outcome) and inserted as processed;
    returns (inbox row id, event, outcome) of those inserted, in order, for the caller's
    journeys and signals. One that exists already (the same promotion, derived again) is
    not inserted and not returned.
    """
    state, ledger = replay.state, replay.state.ledger
    name = state.program.name
    await _accounts(conn, ledger)
    ids = await _postings(conn, ledger)
    _, changed = ledger.changed_lots()
    if changed:
        await conn.execute(
            _REMAINING, [lot.id for lot in changed], [lot.remaining for lot in changed]
        )
    if ledger.activity:
        keys = sorted(ledger.activity)
        await conn.execute(
            _ACTIVITY, name, [m for m, _ in keys], [c for _, c in keys],
            [ledger.activity[k][0] for k in keys], [ledger.activity[k][1] for k in keys],
        )  # fmt: skip
    if replay.awards:
        a = replay.awards
        with_total = sorted(
            {r.name for r in state.program.earn_rules if r.max_total is not None}
            & {w.rule for w in a}
        )
        await conn.execute(
            _AWARDS, name, [w.rule for w in a], [w.member_id for w in a],
            [w.event_id for w in a], [w.occurred_at for w in a], [w.currency for w in a],
            [w.points for w in a], [w.qualifying for w in a],
            [ids[ledger.postings[w.posting].key] for w in a], with_total,
        )  # fmt: skip
    await drop_untouched(conn, name, state.caps)
    await _orders(conn, replay, ids)
    q = replay.qualifying
    if q:
        await conn.execute(
            _QUALIFYING, name, [r.member_id for r in q], [r.currency for r in q],
            [r.earned_at for r in q], [r.points for r in q], [r.order_id for r in q],
            [r.source for r in q],
        )  # fmt: skip
    if replay.promoted:
        keys = sorted(replay.promoted)
        await conn.execute(
            _TIERS, name, [s for s, _ in keys], [m for _, m in keys],
            [replay.promoted[k][0] for k in keys], [replay.promoted[k][1] for k in keys],
            [replay.promoted[k][2] for k in keys],
        )  # fmt: skip
    await _members(conn, replay)
    return await _derived(conn, replay)


async def _orders(conn: Conn, replay: Replay, ids: dict[str, int]) -> None:
    state, name = replay.state, replay.state.program.name
    new = sorted((o, order) for o, order in state.orders.items() if order.new)
    if new:
        rows = await conn.fetch(
            _ORDERS, name, [o for o, _ in new], [order.member_id for _, order in new],
            [order.amount for _, order in new], [order.money for _, order in new],
            [order.returned for _, order in new],
        )  # fmt: skip
        owners = {r["order_id"]: r["member_id"] for r in rows}
        if any(owners[o] != order.member_id for o, order in new):
            raise BatchRaced("an order id was taken meanwhile by another member")
    if not replay.order_returns:
        return
    returned = sorted({o for _, o, _ in replay.order_returns if not state.orders[o].new})
    if returned:
        await conn.execute(_RETURNED, name, returned, [state.orders[o].returned for o in returned])
    r = replay.order_returns
    await conn.execute(
        _ORDER_RETURNS, name, [k for k, _, _ in r], [o for _, o, _ in r], [m for _, _, m in r]
    )
    c = replay.clawbacks
    if c:
        await conn.execute(
            _CLAWBACKS, name, *(
                [row[column] for row in c]
                for column in ("order_id", "currency", "key", "returned_amount", "points",
                               "from_earned", "from_available", "from_expired", "to_debt",
                               "forgiven")
            ),
            [
                ids[state.ledger.postings[row["posting"]].key]
                if row["posting"] is not None else None
                for row in c
            ],
        )  # fmt: skip


async def _members(conn: Conn, replay: Replay) -> None:
    """Enrol the members the batch processed an event of, and write the rows it changed."""
    state, name = replay.state, replay.state.program.name
    changed = sorted(
        (m, row) for m, row in state.members.items() if row.changed or row.tier_changed
    )
    rows = {m: row for m, row in state.members.items() if not row.exists and (
        row.changed or row.tier_changed or m in replay.enrolled
    )}  # fmt: skip
    for m in replay.enrolled - state.members.keys():
        rows[m] = MemberRow(exists=False)
    new = sorted(rows.items())
    if new:
        inserted = await conn.fetch(
            _NEW_MEMBERS, name, [m for m, _ in new], [row.profile for _, row in new],
            [row.tier if row.tier_changed else None for _, row in new],
            [row.erased for _, row in new],
        )  # fmt: skip
        # Enrolled meanwhile by another writer (an adjustment): fine for a member the
        # batch only enrols, not for one whose row it meant to write.
        if {m for m, row in new if row.changed or row.tier_changed} - {
            r["member_id"] for r in inserted
        }:
            raise BatchRaced("a member was enrolled meanwhile by another writer")
    old = [(m, row) for m, row in changed if row.exists]
    if old:
        await conn.execute(
            _MEMBERS, name, [m for m, _ in old], [row.profile for _, row in old],
            [row.changed for _, row in old],
            [row.tier if row.tier_changed else None for _, row in old],
            [row.erased for _, row in old],
        )  # fmt: skip


async def _derived(conn: Conn, replay: Replay) -> list[tuple[int, AnyEvent, Outcome]]:
    """Derived events, each caused by its inbox row, in the order they were derived."""
    made = replay.derived
    if not made:
        return []
    columns: list[list[Any]] = [[] for _ in range(11)]
    outcomes: dict[str, tuple[AnyEvent, Outcome]] = {}
    for event, caused_by in made:
        outcome = replay.apply(caused_by, event)
        outcomes[event.event_id] = (event, outcome)
        values = (
            event.program, origin_of(event), event.event_id, event.type, event.member_id,
            event.model_dump(mode="json"), event.occurred_at, occurred_at_sent(event), caused_by,
            outcome.status, outcome.outcome,
        )  # fmt: skip
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    rows = await conn.fetch(_DERIVED, *columns)
    return [(r["id"], *outcomes[r["event_id"]]) for r in rows]
