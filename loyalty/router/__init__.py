"""The event router's batch: inbox events applied to the ledger in one transaction.

Owns `processing` (`process_batch`: claim, apply, record outcomes; one event per
savepoint where needed), `bulk` and `caps` (the set-based fast path, identical row for
row to one event at a time), `earn` (the earn rules of one event), `totals` (what each
partition committed, counted in each batch's transaction) and `erasure` (what a
``member_deleted`` event empties besides the profile). The router's
activity (`activities.router`) runs it; the workflow is `workflows.router`. The highest
part of the engine's SQL: it may import the definitions, `loyalty.store`,
`loyalty.ingest`, `loyalty.ledger`, `loyalty.tiers` and `loyalty.flows`; never
activities, workflows or the CLI. Re-exports nothing: import its modules.
"""
