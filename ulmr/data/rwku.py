"""RWKU (jinzhuoran/RWKU): 200 real people to forget, each with probes, utility sets and corpora.

A local data directory holds `rwku/targets.tsv` (idx, dir, target, intro) and one folder per target,
`rwku/Target/<n>_<Name>/<file>.json.gz` (plain `.json` too). The hub holds one config per file with
the rows of all targets together; a target's rows are those whose `subject` is its name.
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from ulmr.data import common
from ulmr.data.common import load_hub_rows, read_json_records, read_text, validate_rows
from ulmr.errors import UlmrError, first_line

HUB_REPO = "jinzhuoran/RWKU"


@dataclass(frozen=True)
class Target:
    index: int   # 1-based, RWKU's order ("targets 1-100" is its main setting)
    folder: str  # "1_Stephen_King"
    name: str    # "Stephen King": the `subject` of every row about this target
    intro: str   # "Please forget Stephen King. Stephen King is ..."


@dataclass(frozen=True)
class _FileSpec:
    hub_config: str
    hub_split: str
    fields: dict[str, type]
    check: Callable[[dict[str, Any]], str | None] | None = None  # beyond field types: what is wrong


def _check_mmlu(row: dict[str, Any]) -> str | None:
    for item, where in [(row, "")] + [(ex, f"example {i + 1}: ") for i, ex in enumerate(row["examples"])]:
        if not (isinstance(item, dict) and isinstance(item.get("question"), str)
                and isinstance(item.get("choices"), list) and isinstance(item.get("answer"), int)):
            return f"{where}needs a string 'question', a list 'choices' and an integer 'answer'"
        if not 0 <= item["answer"] < len(item["choices"]):
            return f"{where}answer {item['answer']} is not an index into its {len(item['choices'])} choices"
    return None


def _check_mc1(row: dict[str, Any]) -> str | None:
    mc1 = row["mc1_targets"]
    if not (isinstance(mc1.get("choices"), list) and isinstance(mc1.get("labels"), list)
            and len(mc1["choices"]) == len(mc1["labels"]) and mc1["labels"].count(1) == 1):
        return "mc1_targets needs equally long lists 'choices' and 'labels' with exactly one label 1"
    return None


_PROBE = {"query": str, "answer": str, "level": str, "type": str}
# Every per-target file we read: its hub config and split, and the fields we rely on.
FILES: dict[str, _FileSpec] = {
    "intro": _FileSpec("forget_target", "train", {"target": str, "intro": str}),
    "forget_level1": _FileSpec("forget_level1", "test", _PROBE),
    "forget_level2": _FileSpec("forget_level2", "test", _PROBE),
    "forget_level3": _FileSpec("forget_level3", "test", _PROBE),
    "neighbor_level1": _FileSpec("neighbor_level1", "test", _PROBE),
    "neighbor_level2": _FileSpec("neighbor_level2", "test", _PROBE),
    "forget_mia": _FileSpec("mia_forget", "test", {"text": str}),
    "retain_mia": _FileSpec("mia_retain", "test", {"text": str}),
    "retain_mmlu": _FileSpec("utility_general", "test", {"question": str, "choices": list, "answer": int,
                                                         "task": str, "examples": list}, _check_mmlu),
    "retain_bbh": _FileSpec("utility_reason", "test", {"question": str, "answer": str, "task": str, "cot": str}),
    "truthful": _FileSpec("utility_truthfulness", "test", {"question": str, "mc1_targets": dict}, _check_mc1),
    "triviaqa": _FileSpec("utility_factuality", "test", {"question": str, "answers": list}),
    "fluency": _FileSpec("utility_fluency", "test", {"instruction": str}),
    "passage": _FileSpec("train_original_passage", "train", {"text": str}),
    "positive": _FileSpec("train_positive_llama3", "train", {"text": str}),
    "reject": _FileSpec("train_refusal_llama3", "train", {"instruction": str, "input": str, "output": str}),
}


def all_targets(data_dir: str | os.PathLike | None = None) -> list[Target]:
    """The 200 targets in RWKU's order, from targets.tsv or the hub's forget_target config."""
    root = common.data_dir(data_dir)
    if root is None:
        rows = _hub_config(FILES["intro"].hub_config, FILES["intro"].hub_split)
        return [Target(i, f"{i}_{row['target'].replace(' ', '_')}", row["target"], row["intro"])
                for i, row in enumerate(rows, start=1)]
    path = root / "rwku" / "targets.tsv"
    if not path.is_file():
        raise UlmrError(f"missing data file {path}: check the data directory (expected the layout of "
                        "../shared/data) or leave it unset to load from the hub")
    try:
        rows = list(csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter="\t",
                                   quoting=csv.QUOTE_NONE))
    except csv.Error as exc:
        raise UlmrError(f"{path} is not a tab-separated table ({first_line(exc, 80)}): "
                        "fix or restore the file") from None
    targets = []
    for line, row in enumerate(rows, start=2):
        try:
            targets.append(Target(int(row["idx"]), row["dir"], row["target"], row["intro"]))
        except (KeyError, TypeError, ValueError):
            raise UlmrError(f"{path} line {line} is not 'idx<TAB>dir<TAB>target<TAB>intro': "
                            "fix or restore the file") from None
    return targets


def resolve_targets(spec: str, data_dir: str | os.PathLike | None = None) -> list[Target]:
    """Targets named by an index ("1"), a range ("1-10"), a comma list ("1,5,7") or a name.

    List items may themselves be ranges or names; duplicates are dropped, order is kept.
    """
    known = all_targets(data_dir)
    by_index = {t.index: t for t in known}
    by_name = {t.name.casefold(): t for t in known}
    whole = by_name.get(spec.strip().casefold())
    items = [whole.name] if whole else [item.strip() for item in spec.split(",")]
    chosen: dict[int, Target] = {}
    for item in items:
        for target in _resolve_item(item, by_index, by_name, spec):
            chosen.setdefault(target.index, target)
    return list(chosen.values())


def _resolve_item(item: str, by_index: dict[int, Target], by_name: dict[str, Target], spec: str) -> list[Target]:
    if item.casefold() in by_name:
        return [by_name[item.casefold()]]
    where = repr(item) if item == spec.strip() else f"{item!r} in {spec!r}"
    span = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", item)
    if span is None:
        close = difflib.get_close_matches(item, [t.name for t in by_index.values()], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UlmrError(f"unknown RWKU target {where}{hint}: pass an index 1-{len(by_index)}, "
                        "a range (1-10), a list (1,5,7) or a name; the names are in rwku/targets.tsv of the "
                        f"data directory (hub: the forget_target config of {HUB_REPO})")
    first, last = int(span[1]), int(span[2] or span[1])
    if not (first <= last and first in by_index and last in by_index):
        raise UlmrError(f"RWKU targets {where} are not a range of known targets: "
                        f"use indices from 1 to {len(by_index)}, low-high")
    return [by_index[i] for i in range(first, last + 1)]


def load_target_file(target: Target, name: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Rows of one per-target file (e.g. "forget_level1", "positive"), validated, same from disk or hub."""
    spec = FILES.get(name)
    if spec is None:
        raise UlmrError(f"unknown RWKU file {name!r}: choose from {', '.join(FILES)}")
    root = common.data_dir(data_dir)
    if root is not None:
        path = root / "rwku" / "Target" / target.folder / f"{name}.json"
        source, rows = str(path), read_json_records(path)
    else:
        key = "target" if name == "intro" else "subject"
        source = f"{HUB_REPO}:{spec.hub_config} rows of {target.name!r}"
        rows = [row for row in _hub_config(spec.hub_config, spec.hub_split) if row.get(key) == target.name]
    rows = validate_rows(rows, source, spec.fields)
    if spec.check is not None:
        for i, row in enumerate(rows):
            problem = spec.check(row)
            if problem:
                raise UlmrError(f"{source} row {i + 1}: {problem}: fix or restore the file")
    return rows


@functools.cache
def _hub_config(config: str, split: str) -> list[dict[str, Any]]:
    """A whole hub config, loaded once per process (every target filters the same rows)."""
    return load_hub_rows(HUB_REPO, config, split)
