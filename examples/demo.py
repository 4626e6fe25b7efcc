"""The demo app, loaded by `loyalty dev --demo` and `loyalty demo`: ``examples.demo:app``.

Two brands side by side (coffee and tea, `examples.programs`), a segment, a profile
stream to the demo's marketing list, their flows
(`examples.flows`), message templates (``templates/``) and the story that the demo plays
(`examples.story`).
"""

from __future__ import annotations

from examples.flows import FLOWS
from examples.messaging import TEMPLATES
from examples.programs import programs, segments, streams
from loyalty.app import LoyaltyApp

app = LoyaltyApp(
    programs=programs(), flows=FLOWS, templates=TEMPLATES, segments=segments(), streams=streams()
)
