"""Checkpoint tests: exact resume, resharding, faults, safe loading, conversion."""
