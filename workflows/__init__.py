"""Temporal workflow definitions: deterministic orchestration, no I/O."""
