"""``bonus_expiring``: reminders written to the inbox N days before points expire.

For each N among the ``days_before`` of the app's ``BonusExpiring`` flows for a program,
housekeeping at time ``as_of`` writes one ``bonus_expiring`` event per member, currency
and expiry *day*: the calendar day of the lots' ``expires_at`` in the program's time
zone (`Program.timezone`). A day is due when the first of its live lots (``remaining >
0``, not expired under the currency's expiry cut-off, expiring after ``as_of``) expires
in (``as_of``, ``as_of`` + N days]; the reminder then carries the whole day:

* ``points``: the sum of what every live lot expiring that day still holds, also those
  later that day than ``as_of`` + N days (under ``Rolling``, a purchase and the bonuses
  its flows gave a minute later are one reminder, not one per lot);
* ``expires_at``: when the first of them expires; ``account``: the currency;
* ``days_left``: N, the reminder's own N, whatever the time left really is. The
  ``BonusExpiring(days_before=N)`` trigger matches ``days_left == N`` exactly, so a run
  that is late (the loop was paused, or a lot was created with less than N days left)
  still sends the N-day reminder rather than none;
* ``occurred_at``: ``expires_at`` − N days (in the past for a late run).

The id is ``bonus_expiring:<N>:<currency>:<expiry day YYYY-MM-DD>:<member_id>`` (SHA-256
of the part after the prefix when longer than 128 characters, as `derived.derived_id`),
and the inbox keeps (program, event_id) unique, so a day is announced once however many
runs see its lots; points added later to a day announced already are not announced
again.

Points under an ``Inactivity`` policy have no date on their lots: all the member holds in
the currency (available and not yet matured) expires the policy's duration after the
last earning or spending. That instant is the reminder's ``expires_at`` (its day, the
day of the reminder) and ``points`` is what the member holds. Any activity moves the
date, so a member reminded who then earns or spends is reminded again before the new
date, and never twice for one day.

The statement is set-based and goes through the program's member accounts in chunks,
keyset on (member_id, currency): one chunk per transaction, reading each account's
lots through the ``lots_open`` index (up to the largest N and one more day), so a large
program never holds a long transaction. It takes no ledger lock: a lot spent while it
runs may still be counted, which a reminder can afford.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from loyalty.app import LoyaltyApp, Program
from loyalty.flows.spec import flows_by_type
from loyalty.ingest.derived import MAX_EVENT_ID
from loyalty.policies import Inactivity
from loyalty.store.db import Conn
from loyalty.triggers import BonusExpiring as BonusExpiringTrigger

# Member accounts (one per member and currency) per chunk.
REMINDER_CHUNK = 2_000


def _iso(value: str) -> str:
    """SQL for the ISO 8601 text Python's ``datetime.isoformat()`` gives a UTC time."""
    return f"""(to_char({value} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN extract(microseconds FROM {value})::bigint % 1000000 <> 0
                THEN to_char({value} AT TIME ZONE 'UTC', '.US') ELSE '' END
        || '+00:00')"""


# One chunk: $1 program, $2 currencies, $3 as_of, $4 the Ns, ($5, $6) the last
# (member_id, currency) of the previous chunk, $7 the chunk size, $8 and $9 the
# currencies under an inactivity policy and their periods, $10 the program's time zone.
# Returns the chunk's last key, its size and the count of new events; no row when no
# account was left.
_REMIND_CHUNK = f"""
WITH chunk AS (
    SELECT a.id, a.member_id, a.currency
    FROM accounts AS a
    WHERE a.program = $1 AND (a.member_id, a.currency) > ($5::text, $6::text)
      AND a.kind = 'available' AND a.currency = ANY($2::text[])
    ORDER BY a.member_id, a.currency
    LIMIT $7
),
expiring AS (
    -- Live dated lots after as_of, up to the largest N and the day it ends in: a day
    -- whose first lot is due carries every lot of that day (a day lasts at most 25 h).
    SELECT c.member_id, c.currency, l.expires_at, l.remaining AS points
    FROM chunk AS c
    CROSS JOIN LATERAL (
        SELECT coalesce((SELECT expired_through FROM ledger_cutoffs
                         WHERE program = $1 AND currency = c.currency),
                        '-infinity') AS expired_through
    ) AS cut
    JOIN lots AS l ON l.account_id = c.id AND l.remaining > 0
                  AND l.expires_at > greatest($3::timestamptz, cut.expired_through)
                  AND l.expires_at <= $3::timestamptz
                      + make_interval(days => (SELECT max(n) FROM unnest($4::int[]) AS n))
                      + interval '25 hours'
    UNION ALL
    -- Under an inactivity policy ($8 currencies, $9 their periods) everything the member
    -- holds in the currency expires together, that long after the last activity.
    SELECT c.member_id, c.currency, x.expires_at, l.remaining
    FROM chunk AS c
    JOIN unnest($8::text[], $9::interval[]) AS p(currency, period) ON p.currency = c.currency
    JOIN member_currencies AS m ON m.program = $1 AND m.member_id = c.member_id
                               AND m.currency = c.currency
    CROSS JOIN LATERAL (SELECT m.last_activity_at + p.period AS expires_at) AS x
    JOIN lots AS l ON l.account_id = c.id AND l.remaining > 0
                  AND (l.expires_at IS NULL OR l.expires_at > x.expires_at)
    WHERE x.expires_at > $3::timestamptz
),
days AS (
    SELECT e.member_id, e.currency, (e.expires_at AT TIME ZONE $10::text)::date AS day,
           min(e.expires_at) AS expires_at, sum(e.points)::bigint AS points
    FROM expiring AS e
    GROUP BY 1, 2, 3
),
due AS (
    SELECT d.*, n.days
    FROM days AS d CROSS JOIN unnest($4::int[]) AS n(days)
    WHERE d.expires_at <= $3::timestamptz + make_interval(days => n.days)
),
texts AS (
    SELECT d.*, e.iso AS expires_iso,
           d.expires_at - make_interval(days => d.days) AS occurred_at,
           d.days || ':' || d.currency || ':' || to_char(d.day, 'YYYY-MM-DD') || ':'
               || d.member_id AS rest
    FROM due AS d, LATERAL (SELECT {_iso("d.expires_at")} AS iso) AS e
),
ids AS (
    SELECT t.*,
           CASE WHEN length('bonus_expiring:' || t.rest) <= {MAX_EVENT_ID}
                THEN 'bonus_expiring:' || t.rest
                ELSE 'bonus_expiring:' || encode(sha256(convert_to(t.rest, 'UTF8')), 'hex')
           END AS event_id
    FROM texts AS t
),
derived AS (
    INSERT INTO events (program, origin, event_id, type, member_id, payload, occurred_at)
    SELECT $1, 'engine', i.event_id, 'bonus_expiring', i.member_id,
           jsonb_build_object('event_id', i.event_id, 'member_id', i.member_id,
                              'program', $1::text, 'occurred_at', {_iso("i.occurred_at")},
                              'attributes', '{{}}'::jsonb, 'type', 'bonus_expiring',
                              'points', i.points, 'expires_at', i.expires_iso,
                              'days_left', i.days, 'account', i.currency),
           i.occurred_at
    FROM ids AS i
    ORDER BY i.member_id, i.currency, i.day, i.days
    ON CONFLICT (program, origin, event_id) DO NOTHING
    RETURNING 1
)
SELECT last.member_id, last.currency, (SELECT count(*) FROM chunk) AS accounts,
       (SELECT count(*) FROM derived) AS reminders
FROM (SELECT member_id, currency FROM chunk ORDER BY member_id DESC, currency DESC LIMIT 1)
     AS last
"""


@dataclass(frozen=True)
class Chunk:
    """One chunk of the reminder step: the last account's key, and the reminders written.

    ``last`` is None when there was no account after the cursor: the step is over.
    """

    last: tuple[str, str] | None
    accounts: int
    reminders: int


def reminder_days(app: LoyaltyApp, program: str) -> tuple[int, ...]:
    """The ``days_before`` of the ``BonusExpiring`` triggers of the program's flows."""
    return tuple(sorted({
        spec.trigger.days_before
        for spec in flows_by_type(app).get("bonus_expiring", ())
        if spec.applies_to(program) and isinstance(spec.trigger, BonusExpiringTrigger)
    }))  # fmt: skip


async def remind_chunk(
    conn: Conn,
    program: Program,
    as_of: datetime,
    days: tuple[int, ...],
    *,
    after: tuple[str, str] = ("", ""),
    chunk: int = REMINDER_CHUNK,
) -> Chunk:
    """Write the reminders of the ``chunk`` member accounts after ``after``.

    One statement; run it in the transaction that also records the cursor.

    Args:
        conn: a connection to the engine's database.
        program: the program.
        as_of: the run's time: days whose first lot expires in (as_of, as_of + N days]
            are announced, with every lot of the day.
        days: the Ns (`reminder_days`).
        after: the (member_id, currency) the previous chunk ended with.
        chunk: member accounts per chunk.

    Returns:
        The last account's key (None: nothing was left) and the count of new events.
    """
    if not days:
        return Chunk(last=None, accounts=0, reminders=0)
    # Every currency, whatever its policy now: lots keep the date they were given.
    inactive = {c: p.duration for c, p in program.expiry.items() if isinstance(p, Inactivity)}
    row = await conn.fetchrow(
        _REMIND_CHUNK, program.name, list(program.currencies), as_of, list(days), after[0],
        after[1], chunk, list(inactive), list(inactive.values()), program.timezone,
    )  # fmt: skip
    if row is None:
        return Chunk(last=None, accounts=0, reminders=0)
    return Chunk(
        last=(row["member_id"], row["currency"]), accounts=row["accounts"],
        reminders=row["reminders"],
    )  # fmt: skip


async def derive_reminders(
    conn: Conn, app: LoyaltyApp, program: Program, as_of: datetime, *, chunk: int = REMINDER_CHUNK
) -> int:
    """Write every reminder due at ``as_of``, one chunk per transaction (for the CLI and
    tests; the loop records its cursor, see `loyalty.ledger.housekeeping.remind_step`).

    Returns:
        How many ``bonus_expiring`` events were written.
    """
    days = reminder_days(app, program.name)
    after, written = ("", ""), 0
    while True:
        async with conn.transaction():
            done = await remind_chunk(conn, program, as_of, days, after=after, chunk=chunk)
        written += done.reminders
        if done.last is None or done.accounts < chunk:
            return written
        after = done.last
