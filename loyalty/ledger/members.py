"""The member view: tier, balances, upcoming expiries and the latest ledger entries.

Each part is one indexed query: balances come from the cached member account balances,
entries from the legs index on (account_id, id), paged back by leg id, expiries from the
open-lots index.
"""

from __future__ import annotations

from loyalty.errors import UnknownMember
from loyalty.models import Balance, Entry, Expiry, MemberView
from loyalty.policies import Inactivity
from loyalty.store.db import Conn, program_config
from loyalty.tiers.status import statuses as tier_statuses

ENTRY_LIMIT = 20


async def member_programs(conn: Conn, member_id: str) -> list[str]:
    """The programs that know the member (a profile or an account), by name."""
    rows = await conn.fetch(
        """SELECT program FROM members WHERE member_id = $1
           UNION
           SELECT program FROM accounts WHERE member_id = $1
           ORDER BY program""",
        member_id,
    )
    return [r["program"] for r in rows]


async def member_view(
    conn: Conn,
    program: str,
    member_id: str,
    *,
    limit: int = ENTRY_LIMIT,
    before: int | None = None,
) -> MemberView:
    """Read one member.

    Args:
        conn: a connection.
        program: the program.
        member_id: the member.
        limit: how many ledger entries, newest first.
        before: only entries older than the entry of this id (paging back).

    Raises:
        UnknownProgram: the database knows no such program.
        UnknownMember: the program has never seen this member.
    """
    config = await program_config(conn, program)
    member = await conn.fetchrow(
        """SELECT tier, profile, created_at, erased_at FROM members
           WHERE program = $1 AND member_id = $2""",
        program,
        member_id,
    )
    accounts = await conn.fetch(
        """SELECT id, currency, kind, balance FROM accounts
           WHERE program = $1 AND member_id = $2 ORDER BY currency, kind""",
        program,
        member_id,
    )
    if member is None and not accounts:
        raise UnknownMember(f"member {member_id!r} is unknown in program {program!r}")
    sums: dict[str, dict[str, int]] = {}
    for account in accounts:
        sums.setdefault(account["currency"], {})[account["kind"]] = account["balance"]
    totals = await conn.fetch(
        """SELECT m.currency, m.lifetime_earned, m.last_activity_at, p.config
           FROM member_currencies AS m JOIN programs AS p ON p.name = m.program
           WHERE m.program = $1 AND m.member_id = $2""",
        program, member_id,
    )  # fmt: skip
    lifetime = {row["currency"]: row["lifetime_earned"] for row in totals}
    balances = {
        currency: Balance(
            available=kinds.get("available", 0),
            earned=kinds.get("earned", 0),
            # The debt account holds what the member owes as a negative balance.
            debt=-kinds.get("debt", 0),
            lifetime_earned=lifetime.get(currency, 0),
        )
        for currency, kinds in sums.items()
    }
    account_ids = [a["id"] for a in accounts]
    expiries = await conn.fetch(
        """SELECT a.currency, l.expires_at, sum(l.remaining)::bigint AS points
           FROM accounts AS a
           LEFT JOIN ledger_cutoffs AS c ON c.program = a.program AND c.currency = a.currency
           JOIN lots AS l ON l.account_id = a.id AND l.remaining > 0
                         AND l.expires_at > coalesce(c.expired_through, '-infinity')
           WHERE a.id = ANY($1::bigint[])
           GROUP BY a.currency, l.expires_at
           ORDER BY l.expires_at, a.currency""",
        account_ids,
    )
    upcoming = [
        Expiry(currency=r["currency"], points=r["points"], expires_at=r["expires_at"])
        for r in expiries
    ]
    # Under an inactivity policy everything expires together, N days after the last
    # earning or spending; that date moves with every new one.
    for row in totals:
        stored = (row["config"].get("expiry") or {}).get(row["currency"]) or {}
        balance = balances.get(row["currency"])
        held = (balance.available + balance.earned) if balance else 0
        if stored.get("kind") == "inactivity" and row["last_activity_at"] and held > 0:
            policy = Inactivity.model_validate(stored)
            upcoming.append(
                Expiry(
                    currency=row["currency"], points=held,
                    expires_at=row["last_activity_at"] + policy.duration,
                )
            )  # fmt: skip
    upcoming.sort(key=lambda x: (x.expires_at, x.currency))
    # One more than asked: whether older entries exist, in the same indexed scan.
    entries = await conn.fetch(
        """SELECT g.id, t.occurred_at, a.currency, a.kind, g.amount, t.reason, t.source,
                  t.idempotency_key
           FROM ledger_legs AS g
           JOIN accounts AS a ON a.id = g.account_id
           JOIN ledger_transactions AS t ON t.id = g.transaction_id
           WHERE g.account_id = ANY($1::bigint[]) AND ($3::bigint IS NULL OR g.id < $3)
           ORDER BY g.id DESC
           LIMIT $2""",
        account_ids,
        limit + 1,
        before,
    )
    statuses = await tier_statuses(conn, program, config, member_id)
    # members.tier holds the first scheme's tier; the status knows it for a member whose
    # row was created before the program had schemes.
    tier = statuses[0].tier if statuses else (member["tier"] if member else None)
    return MemberView(
        member_id=member_id,
        program=program,
        tier=tier,
        tiers=statuses,
        profile=member["profile"] if member else {},
        enrolled_at=member["created_at"] if member else None,
        erased_at=member["erased_at"] if member else None,
        balances=balances,
        upcoming_expiries=upcoming,
        entries=[
            Entry(
                id=r["id"],
                at=r["occurred_at"],
                currency=r["currency"],
                kind=r["kind"],
                points=r["amount"],
                reason=r["reason"],
                source=r["source"],
                action=_action(r["source"], r["idempotency_key"]),
            )
            for r in entries[:limit]
        ],
        more_entries=len(entries) > limit,
    )


def _action(source: str, key: str) -> str | None:
    """The journey step of a journey's entry: its key is ``<source>:<action>``."""
    if source.startswith("journey:") and key.startswith(source + ":"):
        return key[len(source) + 1 :]
    return None
