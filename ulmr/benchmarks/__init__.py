"""Benchmark plug-ins: registry.py defines what a benchmark owns (the `Benchmark` base class) and
the registry; tofu.py and rwku.py are the built-in ones, one module each."""
