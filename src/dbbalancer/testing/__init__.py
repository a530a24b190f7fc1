"""Helpers that start real local database clusters for the demo, tests and benchmarks."""
