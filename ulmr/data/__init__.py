"""Benchmark data access: a local data directory laid out as ../shared/data, else the hub."""
