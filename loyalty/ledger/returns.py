"""Orders and returns: a return claws back the points its order earned.

How much: the points an order earned in a currency (``E``, every lot with that order
id), times the share of the order returned so far, rounded down, minus what earlier
returns of the order already took back. Rounding down the cumulative share means a
return never takes more than was earned, and a full return, in any number of parts,
takes back exactly ``E``.

What an order earned is what the awards linked to it gave (their ``issued`` legs), also
the part that paid off a debt and so never became a lot.

From where, in this order: the order's lots still ``earned``; the order's lots already
``available``; the order's points that expired (gone already: nothing more is taken);
then, for what the member spent, other ``available`` points (soonest-expiring first);
what is still missing becomes ``debt`` (a negative ``debt`` account that later earnings
pay off first) or is ``forgive``-n (recorded in ``order_clawbacks``, no points move).

Worked example: order A (100 EUR) earned 120 points, not yet matured. The member spends
nothing; 50 EUR come back: 60 points leave the earned lot. The rest of the order comes
back: the other 60.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from loyalty.app import Program
from loyalty.errors import LedgerRefusal
from loyalty.ledger import postings
from loyalty.policies import clawback_target
from loyalty.store.db import Conn
from loyalty.tiers import promotion

_LIVE = postings.LIVE.format(l="l", cut="cut")
_EARNED = postings.EARNED.format(l="l", cut="cut")


@dataclass(frozen=True)
class Clawback:
    """What one return took back in one currency."""

    currency: str
    points: int
    from_earned: int
    from_available: int
    to_debt: int
    forgiven: int
    from_expired: int = 0


async def record_order(
    conn: Conn, program: str, order_id: str, member_id: str, amount: Decimal, money: str
) -> None:
    """Remember a purchase's order, so a later return can find what it earned.

    Raises:
        LedgerRefusal: ``order_of_another_member`` if the order id is another member's.
    """
    owner = await conn.fetchval(
        """INSERT INTO orders (program, order_id, member_id, amount, money_currency)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (program, order_id) DO UPDATE SET order_id = EXCLUDED.order_id
           RETURNING member_id""",
        program, order_id, member_id, amount, money,
    )  # fmt: skip
    if owner != member_id:
        raise LedgerRefusal(
            "order_of_another_member", f"order {order_id} belongs to another member"
        )


async def claw_back(
    conn: Conn,
    program: Program,
    *,
    member_id: str,
    order_id: str,
    amount: Decimal,
    key: str,
    source: str,
    occurred_at: datetime,
) -> list[Clawback]:
    """Apply a return of ``amount`` on an order; returns what each currency gave back.

    Raises:
        LedgerRefusal: ``unknown_order``, ``order_of_another_member`` or
            ``return_exceeds_order``; nothing is written.
    """
    await postings.hold(conn, program.name)
    order = await conn.fetchrow(
        """SELECT member_id, amount, returned_amount FROM orders
           WHERE program = $1 AND order_id = $2 FOR UPDATE""",
        program.name, order_id,
    )  # fmt: skip
    if order is None:
        raise LedgerRefusal(
            "unknown_order", f"order {order_id} is unknown in program {program.name}"
        )
    if order["member_id"] != member_id:
        raise LedgerRefusal(
            "order_of_another_member", f"order {order_id} belongs to another member"
        )
    if await conn.fetchval(
        "SELECT 1 FROM order_returns WHERE program = $1 AND idempotency_key = $2",
        program.name, key,
    ):  # fmt: skip
        done = await conn.fetch(
            """SELECT currency, points, from_earned, from_available, from_expired, to_debt,
                      forgiven
               FROM order_clawbacks WHERE program = $1 AND idempotency_key = $2
               ORDER BY currency""",
            program.name, key,
        )  # fmt: skip
        return [Clawback(**dict(row.items())) for row in done]
    returned = order["returned_amount"] + amount
    if returned > order["amount"]:
        raise LedgerRefusal(
            "return_exceeds_order",
            f"order {order_id} was {order['amount']}, {order['returned_amount']} already "
            f"returned, cannot return {amount} more",
        )
    # What the order's awards gave: their `issued` legs, which also count the part that
    # paid off debt and so never became a lot.
    earned = await conn.fetch(
        """SELECT a.currency, -sum(g.amount)::bigint AS earned,
                  coalesce((SELECT sum(c.points) FROM order_clawbacks AS c
                            WHERE c.program = $1 AND c.order_id = $2
                              AND c.currency = a.currency), 0)::bigint AS taken
           FROM ledger_transactions AS t
           JOIN ledger_legs AS g ON g.transaction_id = t.id
           JOIN accounts AS a ON a.id = g.account_id AND a.kind = 'issued'
           WHERE t.program = $1 AND t.order_id = $2 AND t.member_id = $3
           GROUP BY a.currency
           ORDER BY a.currency""",
        program.name, order_id, member_id,
    )  # fmt: skip
    results = []
    for row in earned:
        points = clawback_target(row["earned"], returned, order["amount"]) - row["taken"]
        result, transaction_id = await _take_back(
            conn, program, member_id, order_id, row["currency"], points,
            f"{key}:{row['currency']}", source, occurred_at,
        )  # fmt: skip
        await conn.execute(
            """INSERT INTO order_clawbacks (program, order_id, currency, idempotency_key,
                   returned_amount, points, from_earned, from_available, from_expired,
                   to_debt, forgiven, transaction_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
            program.name, order_id, result.currency, key, amount, result.points,
            result.from_earned, result.from_available, result.from_expired, result.to_debt,
            result.forgiven, transaction_id,
        )  # fmt: skip
        results.append(result)
        await promotion.take_back_for_return(
            conn, program, order_id=order_id, currency=row["currency"], returned=returned,
            amount=order["amount"], key=f"{key}:{row['currency']}",
        )  # fmt: skip
    await conn.execute(
        "UPDATE orders SET returned_amount = $3 WHERE program = $1 AND order_id = $2",
        program.name, order_id, returned,
    )  # fmt: skip
    await conn.execute(
        """INSERT INTO order_returns (program, idempotency_key, order_id, amount)
           VALUES ($1, $2, $3, $4)""",
        program.name, key, order_id, amount,
    )  # fmt: skip
    return results


async def _take_back(
    conn: Conn,
    program: Program,
    member_id: str,
    order_id: str,
    currency: str,
    points: int,
    key: str,
    source: str,
    occurred_at: datetime,
) -> tuple[Clawback, int | None]:
    if points <= 0:
        return Clawback(currency, 0, 0, 0, 0, 0), None
    ids = await postings.ensure_accounts(
        conn, program.name, currency,
        [(member_id, "earned"), (member_id, "available"), (None, "clawed_back")],
    )  # fmt: skip
    earned_account, available_account = ids[(member_id, "earned")], ids[(member_id, "available")]
    # Lock both member accounts in id order, the same order for every writer.
    await conn.execute(
        "SELECT 1 FROM accounts WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
        sorted([earned_account, available_account]),
    )
    # Where the order's points are now: in its lots, earned or available, or expired
    # (gone to the program already; earlier returns may have counted some).
    held = await conn.fetchrow(
        f"""SELECT coalesce(sum(l.remaining) FILTER (WHERE {_LIVE} AND {_EARNED}), 0)::bigint
                       AS earned,
                  coalesce(sum(l.remaining) FILTER (WHERE {_LIVE} AND NOT {_EARNED}), 0)::bigint
                       AS available,
                  coalesce(sum(l.expired + CASE WHEN {_LIVE} THEN 0 ELSE l.remaining END), 0)
                  - coalesce((
                      SELECT sum(c.from_expired) FROM order_clawbacks AS c
                      WHERE c.program = $3 AND c.order_id = $2 AND c.currency = $4), 0)::bigint
                      AS expired
           FROM lots AS l, {postings.CUTOFFS.format(account="$1::bigint")} AS cut
           WHERE l.account_id = $1 AND l.order_id = $2""",
        available_account, order_id, program.name, currency,
    )  # fmt: skip
    assert held is not None
    balance = await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", available_account)
    from_earned = min(points, held["earned"])
    rest = points - from_earned
    own_available = min(rest, held["available"])
    from_expired = min(rest - own_available, held["expired"])
    # What is left was spent: taken from the member's other available points if any.
    other_available = min(rest - own_available - from_expired, balance - own_available)
    from_available = own_available + other_available
    spent = rest - own_available - from_expired - other_available
    to_debt, forgiven = (spent, 0) if program.return_policy == "debt" else (0, spent)
    legs = []
    if from_earned:
        legs.append((earned_account, -from_earned))
    if from_available:
        legs.append((available_account, -from_available))
    if to_debt:
        debt = await postings.ensure_accounts(conn, program.name, currency, [(member_id, "debt")])
        legs.append((debt[(member_id, "debt")], -to_debt))
    taken = from_earned + from_available + to_debt
    transaction_id = None
    if taken:
        legs.append((ids[(None, "clawed_back")], taken))
        transaction_id = await postings.post(
            conn,
            postings.Movement(
                program=program.name, key=key, member_id=member_id, kind="claw_back",
                reason=f"return of order {order_id}", source=source,
                occurred_at=occurred_at, legs=legs, currency=currency,
                consume_account=available_account if from_earned else None,
                consume_points=from_earned, consume_earned=True, prefer_order=order_id,
            ),
        )  # fmt: skip
        if from_available:
            await postings.consume(conn, available_account, from_available, order_id)
    clawback = Clawback(
        currency, points, from_earned, from_available, to_debt, forgiven, from_expired
    )
    return clawback, transaction_id
