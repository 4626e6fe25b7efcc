"""loyalty-flows: an automation-flow engine for loyalty programs, on Temporal and PostgreSQL.

The modules at this level are what an app declares and imports (`app`, `events`,
`rules`, `triggers`, `policies`, the `journeys` toolkit) and what every part shares
(`models`, `errors`, `settings`, `temporal`); the definitions among them do no I/O. The
subpackages are the engine, one part each: `store`, `ingest`, `ledger`, `tiers`,
`flows`, `messages`, `router`, and `cli` on top. Imports run down those layers, never
in a circle (``tests/test_layout.py``; the README's "Repository layout").
"""

__version__ = "0.1.0"
