"""The built-in baselines, one module each: a config dataclass and a loss.

Importing this package registers them; pyproject.toml declares it as the `baselines` entry point of
the `ulmr_bench.methods` group, the same way a third-party package adds its methods.
"""

from baselines import dpo, ga, graddiff, npo, rt  # noqa: F401
