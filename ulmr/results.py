"""Results files: atomic JSON writes and the provenance every stored result carries.

One JSON file per (model, benchmark, selection, method, seed), schema "ulmr-bench/result/v1":

    schema        "ulmr-bench/result/v1"
    benchmark     "tofu" | "rwku"
    selection     TOFU split ("forget01") or RWKU targets ("1", "1-3")
    model         the base model spec (alias, folder or hub id)
    method        "before" (the prepared target model), "retain" (TOFU's retain model, the forget
                  quality reference) or an unlearning method's name ("ulmr", "ga", ...)
    seed          int
    status        "ok" | "failed"
    error         one-line error message when status is "failed"
    metrics       flat {metric: value} in the benchmark's column order (ulmr.benchmarks)
    per_question  {"forget_truth_ratio": [R per forget question]} (TOFU; forget quality needs it)
    eval          evaluation settings (tasks, limit, template, backend, dtype, docs per task)
    unlearning    the method's record (config, steps, losses, time) for unlearning methods
    preparation   how the evaluated model was prepared (recipe, cache key, injected: bool for RWKU)
    samples_file  per-sample lm-eval records beside this file (JSON Lines)
    timings       seconds per stage
    provenance    versions, git revision, machine, creation time
    key           the content hash the orchestrator uses to skip work already stored
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator

RESULT_SCHEMA = "ulmr-bench/result/v1"


def content_key(content: Any) -> str:
    """The hash that keys stored work (results, grid points, prepared models) by what made it."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def read_stored(path: str | Path, key: str) -> dict[str, Any] | None:
    """The JSON object stored at `path` if it is whole and was made with `key`, else None."""
    try:
        stored = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return stored if isinstance(stored, dict) and stored.get("key") == key else None


def stored_or_compute(path: str | Path, key: str, compute: Callable[[], dict[str, Any]],
                      reuse: Callable[[dict[str, Any]], bool] = lambda stored: stored.get("status") == "ok",
                      wait: bool = True) -> tuple[dict[str, Any], bool] | None:
    """(the object stored at `path` with `key`, True) when `reuse` accepts it (default: a successful
    result), else (compute() stored there with `key`, False). The one load-or-compute of every
    kind of stored work: results, reference rows, tuning grid points.

    The item is claimed while it is computed (ulmr.storage), so two runs on one results directory
    never do the same work: with wait=True this waits for another process's claim and then reuses
    what it stored; with wait=False it returns None at once when another process holds the item,
    so the caller can do other work first."""
    from ulmr.storage import claim

    stored = read_stored(path, key)
    if stored is not None and reuse(stored):
        return stored, True
    with claim(path, wait=wait) as held:
        if not held.held:
            return None
        stored = read_stored(path, key)  # finished by another process while this one waited
        if stored is not None and reuse(stored):
            return stored, True
        computed = {**compute(), "key": key}
        write_json_atomic(path, computed)
        return computed, False


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write to a uniquely named temporary file beside `path`, then rename: readers never see half a
    file, and concurrent writers never share a temporary file."""
    with atomic_writer(path) as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    return Path(path)


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w", encoding: str = "utf-8",
                  newline: str | None = None) -> Iterator[IO]:
    """`with atomic_writer(path) as f: f.write(...)`: `f` is a uniquely named temporary file beside
    `path` (".<name>.<random>.tmp", so concurrent writers of one path never collide) that replaces
    `path` when the block ends without an exception; on an exception it is removed and `path` is
    left as it was. mode "w" (text) or "wb"; the file gets the umask's permissions, not mkstemp's
    owner-only ones."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding, "newline": newline})) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())  # results are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask to read it sets it
    for a moment, which races other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def git_revision() -> str | None:
    """The checkout's commit (+ "-dirty" with uncommitted changes to tracked files), or None outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# Read once, when the process imports this module: the code a long run executes is the code it
# imported at its start, and a commit or an edit made while it runs must not relabel its later results.
LOADED_REVISION = git_revision()


COMMAND_ENV = "ULMR_COMMAND"  # set by `run --jobs` for its worker processes: the command to record


def provenance() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("ulmr-bench", "torch", "transformers", "lm_eval", "datasets", "peft", "rouge-score"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    import torch

    return {
        # the user's command, also in the processes `run --jobs` starts for it
        "command": os.environ.get(COMMAND_ENV) or portable_command(sys.argv),
        "versions": versions,
        "git_revision": LOADED_REVISION,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {_cpu_name()}, {os.cpu_count()} cores"
                   + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
        "torch_threads": torch.get_num_threads(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def portable_command(argv: list[str]) -> str:
    """The command line with every absolute path made relative to the working directory (the
    repository, for the README's commands), so results name no folder of the machine they ran on."""
    def portable(arg: str) -> str:
        option, sep, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if os.path.isabs(value):
            value = os.path.relpath(value)
        return f"{option}{sep}{value}"

    program = Path(argv[0])
    # `python -m ulmr` (a checkout's code, e.g. leaderboard/run_quick.sh) runs ulmr/__main__.py
    name = f"python -m {program.parent.name}" if program.name == "__main__.py" else program.name
    return " ".join([name, *map(portable, argv[1:])])


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "cpu")
    except OSError:
        return platform.processor() or "cpu"
