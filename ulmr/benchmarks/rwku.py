"""RWKU in the evaluator (filled in by the RWKU issue)."""
