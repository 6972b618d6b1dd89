"""The `ulmr-bench` command line. Each subcommand lives in its own module of this package."""

from __future__ import annotations

import importlib
import os
import sys

import click

from ulmr.errors import UlmrError

# bf16 matmuls on a CPU build a primitive per shape and keep it in two caches (ideep's and oneDNN's,
# 1,024 entries each); a run's rows bring ever new shapes, and the process grew by ~0.2 GiB a row.
# At 64 entries each the speed measured the same and the quick profile's peak fell from 7.0 to
# 5.6 GiB (perf/README.md, *Peak memory*). Set before torch loads; a user's own setting wins.
PRIMITIVE_CACHE_ENTRIES = {"LRU_CACHE_CAPACITY": "64", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}

# subcommand name -> module in ulmr.cli defining a click command called `command`
SUBCOMMANDS = {
    "eval": "eval",
    "unlearn": "unlearn",
    "run": "run",
    "tune": "tune",
    "leaderboard": "leaderboard",
    "methods": "info",
    "benchmarks": "info",
    "tasks-path": "info",
}


class LazyGroup(click.Group):
    """Imports a subcommand's module only when it runs, so `--help` and errors stay fast."""

    def list_commands(self, ctx):
        return [name for name in SUBCOMMANDS if self._find(name) is not None]

    def get_command(self, ctx, name):
        return self._find(name)

    @staticmethod
    def _find(name):
        module = SUBCOMMANDS.get(name)
        if module is None:
            return None
        try:
            mod = importlib.import_module(f"ulmr.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ulmr.cli.{module}":
                return None
            raise
        return getattr(mod, name.replace("-", "_") + "_command", None)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ulmr-bench")
def cli():
    """ULMR and baseline LLM unlearning, scored on TOFU and RWKU through lm-evaluation-harness."""


def main(argv=None):
    for name, entries in PRIMITIVE_CACHE_ENTRIES.items():
        os.environ.setdefault(name, entries)
    try:
        cli.main(args=argv, standalone_mode=False)
    except UlmrError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    finally:
        leave_process_group()


def leave_process_group() -> None:
    """Destroy a launched run's process group (gloo on CPUs) before the interpreter's teardown, as
    torch asks. Left to the teardown, one rank of a 2-process test evaluation once aborted after
    writing its results ("terminate called without an active exception"; not reproduced since)."""
    torch = sys.modules.get("torch")  # only where the command loaded it
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
