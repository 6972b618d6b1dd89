"""Shared by the TOFU and RWKU loaders: where the data is, reading files, validating rows."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Any, Iterable

from ulmr.errors import UlmrError, first_line

DATA_DIR_ENV = "ULMR_DATA_DIR"


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The local data directory (flag, then $ULMR_DATA_DIR), or None for the hub."""
    value = explicit or os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UlmrError(f"data directory {path} does not exist: pass --data-dir (or set {DATA_DIR_ENV}) "
                        "to a folder laid out like ../shared/data, or leave both unset to use the hub")
    return path


def read_json_records(path: Path) -> list[dict[str, Any]]:
    """A JSON array or JSON Lines file, plain or gzip-compressed (`x.json` or `x.json.gz`)."""
    candidates = [path, path.with_name(path.name + ".gz")] if path.suffix != ".gz" else [path]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise UlmrError(f"missing data file {path}: check the data directory (expected the layout of "
                        "../shared/data) or leave it unset to load from the hub")
    text = read_text(found)
    if not text.strip():
        raise UlmrError(f"data file {found} is empty: restore it from the benchmark's release")
    if text.lstrip().startswith("["):
        return _parse_json(text, found, 0)
    # split on "\n" only: str.splitlines() also splits inside strings holding U+2028 and kin
    return [_parse_json(line, found, number) for number, line in enumerate(text.split("\n"), start=1)
            if line.strip()]


def _parse_json(text: str, path: Path, line: int) -> Any:
    """json.loads, its failure one line naming the file and line (`line`: JSON Lines row, or 0)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        where = "nesting too deep" if isinstance(exc, RecursionError) else f"line {line or exc.lineno}"
        raise UlmrError(f"data file {path} is not valid JSON ({where}): "
                        "restore it from the benchmark's release") from None


def read_text(path: Path) -> str:
    """A UTF-8 text file (gunzipped when its name ends in .gz; a leading BOM dropped). A file that
    cannot be read, is not gzip data, is a truncated or corrupt gzip stream, or is not UTF-8 raises
    a one-line UlmrError naming the file and the fix."""
    fix = "restore it from the benchmark's release"
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except gzip.BadGzipFile:
        raise UlmrError(f"data file {path} is not gzip data despite its .gz name: {fix} "
                        "(or drop .gz from the name of a plain file)") from None
    except EOFError:
        raise UlmrError(f"data file {path} is truncated (its gzip stream ends early): {fix}") from None
    except zlib.error as exc:
        raise UlmrError(f"data file {path} is corrupt ({first_line(exc, 80)}): {fix}") from None
    except OSError as exc:
        raise UlmrError(f"data file {path} could not be read ({exc.strerror or first_line(exc, 80)}): "
                        f"check its permissions or {fix}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        hint = f" (it looks gzip-compressed: rename it {path.name}.gz)" if raw[:2] == b"\x1f\x8b" else ""
        raise UlmrError(f"data file {path} is not UTF-8 text (bad byte at offset {exc.start}){hint}: "
                        f"{fix}") from None


def validate_rows(rows: list[Any], source: str, required: dict[str, type],
                  list_lengths: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Every row must be an object with the required fields of the right type (and list sizes)."""
    if not rows:
        raise UlmrError(f"{source} has no rows: restore it from the benchmark's release")
    for i, row in enumerate(rows):
        where = f"{source} row {i + 1}"
        if not isinstance(row, dict):
            raise UlmrError(f"{where} is not a JSON object: fix or restore the file")
        for name, kind in required.items():
            if name not in row:
                raise UlmrError(f"{where} lacks the field {name!r}: fix or restore the file")
            if not isinstance(row[name], kind):
                raise UlmrError(f"{where}: field {name!r} should be {_kind_name(kind)}, "
                                f"got {type(row[name]).__name__}: fix or restore the file")
        for name, expected in (list_lengths or {}).items():
            if len(row[name]) != expected:
                raise UlmrError(f"{where}: field {name!r} has {len(row[name])} items, expected "
                                f"{expected}: fix or restore the file")
    return rows


def load_hub_rows(repo: str, config: str, split: str = "train") -> list[dict[str, Any]]:
    """One config of a hub dataset as plain dicts (the only place that reads the hub)."""
    import datasets

    try:
        return [dict(row) for row in datasets.load_dataset(repo, config, split=split)]
    except Exception as exc:  # noqa: BLE001  (network/hub failures become one line)
        raise UlmrError(f"could not load {repo} config {config!r} from the hub "
                        f"({first_line(exc, limit=160)}); "
                        f"pass --data-dir (or set {DATA_DIR_ENV}) to a local copy") from exc


def _kind_name(kind) -> str:
    kinds: Iterable = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({str: "a string", list: "a list", int: "an integer", dict: "an object"}.get(k, k.__name__)
                       for k in kinds)
