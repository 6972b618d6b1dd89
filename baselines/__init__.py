"""The built-in baselines, one module each: a config dataclass and a loss (icu: a prompt, no
training).

Importing this package registers them; pyproject.toml declares it as the `baselines` entry point of
the `ulmr_bench.methods` group, the same way a third-party package adds its methods.
"""

from baselines import averaged, dpo, ga, graddiff, icu, npo, rmu, rt, simnpo, undial  # noqa: F401
