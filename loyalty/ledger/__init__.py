"""The points ledger: postings, lots, returns, maturing and expiry, and what reads them.

Owns the double-entry tables (accounts, transactions, legs, lots, cut-offs, orders) and
the operations on them: `postings` (award, spend, the ledger lock), `returns` (orders
and clawbacks), `maturing` (bulk maturing and expiry), `reminders` (``bonus_expiring``),
`housekeeping` (the housekeeping loop's recorded steps), `adjust` (adjustment files),
`watching` (``points_above`` around a change made outside the router),
`audit` (``loyalty verify`` and ``report``), `history` (the daily liability snapshots and
a program's point value) and `members` (the member view). May import
the definitions, `loyalty.store`, the inbox and derived events of `loyalty.ingest`,
`loyalty.tiers.promotion` and `loyalty.tiers.status` (a return takes back its share of
the qualifying measure; the member view shows tier status) and `loyalty.flows` (the
reminders' days, pruning); never activities, workflows or the CLI. Re-exports the
posting API the rest of the engine calls: ``from loyalty import ledger;
await ledger.award(...)``.
"""

from loyalty.ledger.postings import (
    LEDGER_LOCK,
    award,
    find_accounts,
    hold,
    lot_dates,
    spend,
)
from loyalty.ledger.watching import watching

__all__ = ["LEDGER_LOCK", "award", "find_accounts", "hold", "lot_dates", "spend", "watching"]
