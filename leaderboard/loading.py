"""Reading a results directory: every *.json in the result schema, and why any other was skipped."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ulmr.benchmarks.registry import get_benchmark
from ulmr.errors import UlmrError
from ulmr.results import RESULT_SCHEMA

# what `ulmr-bench run` writes beside a result (a method's artifacts, e.g. ULMR's pairs): not results
SIDECAR_SUFFIXES = (".artifacts.json",)
# where `ulmr-bench tune` keeps its grid points inside a results directory: not results either
TUNE_FOLDER = "tune"
# field -> type every stored result must have; they place it in a table row
REQUIRED_FIELDS = {"benchmark": str, "selection": str, "model": str, "method": str, "seed": int, "status": str}
STATUSES = ("ok", "failed")


@dataclass(frozen=True)
class SkippedFile:
    path: str  # relative to the results directory, so that reports do not depend on where it lies
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def load_results(results_dir: str | Path) -> tuple[list[dict[str, Any]], list[SkippedFile]]:
    """The results stored under `results_dir` (recursively, in path order), and the *.json files
    skipped: unreadable, foreign, or a second result for a run already read (the run's own sidecar
    files and the tune/ folder are passed over silently)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise UlmrError(f"results directory {root} not found: pass the --results-dir that `ulmr-bench run` wrote")
    results, skipped, first_path_of_run = [], [], {}
    for path in sorted(root.rglob("*.json")):
        relative = path.relative_to(root).as_posix()
        if path.name.endswith(SIDECAR_SUFFIXES) or relative.split("/")[0] == TUNE_FOLDER:
            continue
        try:
            result = _read_result(path)
        except ValueError as exc:
            skipped.append(SkippedFile(relative, str(exc)))
            continue
        run = tuple(result[field] for field in REQUIRED_FIELDS if field != "status")
        if run in first_path_of_run:  # counting a seed twice would skew its row's mean
            skipped.append(SkippedFile(relative, f"same run as {first_path_of_run[run]}"))
            continue
        first_path_of_run[run] = relative
        results.append(result)
    return results, skipped


def _read_result(path: Path) -> dict[str, Any]:
    """The result in `path`; ValueError saying what is wrong with it otherwise."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"unreadable ({type(exc).__name__})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(result, dict) or result.get("schema") != RESULT_SCHEMA:
        raise ValueError(f"not a ulmr-bench result (no \"schema\": \"{RESULT_SCHEMA}\")")
    # bool passes for int in Python, but a seed of true is a mistake
    wrong = [field for field, kind in REQUIRED_FIELDS.items()
             if not isinstance(result.get(field), kind) or isinstance(result.get(field), bool)]
    if wrong:
        raise ValueError(f"missing or mistyped field(s): {', '.join(wrong)}")
    try:
        get_benchmark(result["benchmark"])
    except UlmrError as exc:
        raise ValueError(str(exc)) from exc
    if result["status"] not in STATUSES:
        raise ValueError(f"unknown status {result['status']!r}")
    if result["status"] == "ok" and not isinstance(result.get("metrics"), dict):
        raise ValueError("status ok but no metrics")
    return result
