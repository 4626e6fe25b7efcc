"""Tiers: the schemes a program declares, promotion on earning, status and maintenance.

Owns `schemes` (``Tier``, ``TierScheme``, ``Schedule``: definitions with no SQL, which
`loyalty.app` imports), `promotion` (the qualifying measure, promotion in the earning
transaction, a return's share of the measure), `status` (a member's tier status per
scheme) and `maintenance` (the set-based review in chunks that demotes). `schemes`
imports only `loyalty.events`; the others may import the definitions, `loyalty.store`,
the ledger's postings and `loyalty.ingest.derived`. Re-exports the definitions an app
writes: ``from loyalty.tiers import Tier, TierScheme, Schedule``.
"""

from loyalty.tiers.schemes import Schedule, Tier, TierScheme, Window

__all__ = ["Schedule", "Tier", "TierScheme", "Window"]
