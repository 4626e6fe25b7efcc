"""loyalty-flows: an automation-flow engine for loyalty programs, on Temporal and PostgreSQL."""

__version__ = "0.1.0"
