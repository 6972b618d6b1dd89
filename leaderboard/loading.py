"""Reading a results directory: every *.json in the result schema, and why any other was skipped.

Each result read also gets its per-doc values, under PER_DOC_FIELD (not a stored field): the
benchmark plug-in's `per_doc_values` of the lm-eval sample records stored beside it
(`samples_file`, JSON Lines, or the same name + ".gz": what the committed leaderboard keeps), for
the bootstrap over docs; None where no samples file is there or it cannot be read.
"""

from __future__ import annotations

import gzip
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
# where load_results puts each result's per-doc values ({key: [value per doc]}, or None)
PER_DOC_FIELD = "per_doc_values"


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
        result[PER_DOC_FIELD] = _per_doc_values(path, result) if result["status"] == "ok" else None
        results.append(result)
    return results, skipped


def _per_doc_values(path: Path, result: dict[str, Any]) -> dict[str, list[float]] | None:
    """The plug-in's per-doc values of the samples stored beside the result at `path`, or None when
    there are none (not stored, or unreadable: the leaderboard then falls back to stored errors)."""
    name = result.get("samples_file")
    if not isinstance(name, str) or not name or Path(name).name != name:
        return None
    samples_path = path.parent / name
    if not samples_path.exists() and samples_path.with_name(name + ".gz").exists():
        samples_path = samples_path.with_name(name + ".gz")
    opener = gzip.open if samples_path.suffix == ".gz" else open
    samples: dict[str, list] = {}
    try:
        with opener(samples_path, "rt", encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    record = json.loads(line)
                    samples.setdefault(record.pop("task"), []).append(record)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
    return get_benchmark(result["benchmark"]).per_doc_values(samples) or None


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
