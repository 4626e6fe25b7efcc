"""Profile streams: member fields kept current in marketing lists (DESIGN.md section 10).

Owns the definitions (`spec`: ``ProfileStream``, ``HttpDestination`` and the source
paths), the change capture and run-time control in PostgreSQL (`capture`), the records
and their diff (`records`) and the batches' building, signing and answers (`delivery`).
`spec` is a definition and imports only definitions; the others are engine SQL and
import `spec`, `loyalty.store`, `loyalty.tiers` and `loyalty.messages`. The workflow
that drives delivery is `workflows.streams`, its activity `activities.streams`.

    from loyalty.streams import HttpDestination, ProfileStream

    ProfileStream("marketing", programs=["coffee"], key="profile.alt_id",
                  destination=HttpDestination(url="https://…", secret_env="LIST_SECRET"),
                  fields={"LOYALTY_TIER": "tier", "POINTS": "balances.points.available"})
"""

from loyalty.streams.spec import HttpDestination, ProfileStream

__all__ = ["HttpDestination", "ProfileStream"]
