"""Events in: the inbox, derived events, and applying a batch in one transaction.

Owns the ``events`` inbox (`inbox`: idempotent insert, claims, outcomes), the events the
engine derives in the transaction that causes them (`derived`), and the router's batch
(`processing`: one event at a time in savepoints; `bulk` and `caps`: the set-based fast
path; `earn`: the earn rules of one event). `inbox` and `derived` sit low: the ledger
and tiers record derived events through them. `processing`, `bulk` and `earn` sit
above the ledger, tiers and flows, whose SQL they call. Never imports activities,
workflows or the CLI. Re-exports nothing: import its modules.
"""
