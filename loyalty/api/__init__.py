"""The HTTP API (`loyalty api`): events in, outcomes and members out, for any service.

Owns the ASGI application (`loyalty.api.app`), its API keys (`loyalty.api.keys`), the
per-key rate limit (`loyalty.api.limits`), its error bodies (`loyalty.api.problems`) and
the codec server for Temporal's tools (`loyalty.api.codec`).
It may import the domain packages (events, ingest, ledger, flows, store); nothing in the
engine imports it, except the command line that serves it.
"""
