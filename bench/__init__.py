"""Benchmarks of the edge: every figure beside a baseline measured in the same run (issue #6)."""
