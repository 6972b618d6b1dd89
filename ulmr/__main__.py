"""`python -m ulmr ...` is `ulmr-bench ...` (for machines where the console script is not on PATH)."""

from ulmr.cli import main

main()
