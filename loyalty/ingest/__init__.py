"""Events in: the inbox, and the events the engine derives, recorded where they happen.

Owns the ``events`` inbox (`inbox`: idempotent insert, claims, outcomes, what
``--wait`` reads), batches sent as one JSON document (`batch`: ``{"events": [...]}``
validated all or nothing, problems named ``events[3].points``) and derived events
(`derived`: ids, thresholds, recording them in the transaction that causes them, so they
commit or roll back with their cause). It sits low: the ledger, tiers and the router
record derived events through it. May import the definitions, `loyalty.store` and
`loyalty.flows.spec` (which flows listen to what). Never imports the ledger, tiers, the
router, activities, workflows or the CLI.
Re-exports nothing: import its modules.
"""
