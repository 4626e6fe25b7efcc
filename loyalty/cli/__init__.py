"""The command line, on top of everything: ``loyalty``, its commands, `loyalty dev`, the demo.

Owns `main` (the ``loyalty`` Typer app, its entry point and the core commands: dev,
demo, worker, migrate, emit, member, events), one module per command group (`ledger`,
`audit` with `history`, `adjust`, `flows`, `maintenance`, `messages`, `schema`, `status`,
`inbox` for ``events --failed`` and ``--pending``), their shared helpers
(`kit`), `dev` (everything on one machine) and `demo` (the runner that plays the story
of `examples`, with a live table). The top layer: it may import any part of the engine,
`worker`, `workflows`, `starter` and `examples`; nothing imports it. Heavy imports stay
inside the commands, so ``loyalty --help`` starts fast. Re-exports nothing.
"""
