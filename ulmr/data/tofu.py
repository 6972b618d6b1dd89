"""TOFU (locuslab/TOFU): QA pairs about 200 fictitious authors, 20 questions each."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ulmr.data.common import data_dir, load_hub_rows, read_json_records, read_text, validate_rows
from ulmr.errors import UlmrError

HUB_REPO = "locuslab/TOFU"
FORGET_SPLITS = ("forget01", "forget05", "forget10")
QUESTIONS_PER_AUTHOR = 20

# Fields and perturbed-answer counts of every file we read (TOFU's own layout).
_QA = {"question": str, "answer": str}
_SCHEMAS: dict[str, tuple[dict[str, type], dict[str, int]]] = {
    "full": (_QA, {}),
    **{s: (_QA, {}) for s in FORGET_SPLITS},
    **{f"retain{100 - int(s[-2:]):02d}": (_QA, {}) for s in FORGET_SPLITS},
    **{f"holdout{s[-2:]}": (_QA, {}) for s in FORGET_SPLITS},
    **{f"{s}_perturbed": ({**_QA, "paraphrased_answer": str, "perturbed_answer": list}, {"perturbed_answer": 5})
       for s in FORGET_SPLITS},
    "retain_perturbed": ({**_QA, "paraphrased_answer": str, "perturbed_answer": list}, {"perturbed_answer": 5}),
    "real_authors_perturbed": ({**_QA, "perturbed_answer": list}, {"perturbed_answer": 3}),
    "world_facts_perturbed": ({**_QA, "perturbed_answer": list}, {"perturbed_answer": 3}),
}


def load_tofu(name: str, data_dir_path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Rows of one TOFU file/config (e.g. "forget01_perturbed"), validated, same from disk or hub."""
    if name not in _SCHEMAS:
        raise UlmrError(f"unknown TOFU subset {name!r}: choose from {', '.join(sorted(_SCHEMAS))}")
    root = data_dir(data_dir_path)
    if root is not None:
        source = root / "tofu" / f"{name}.json"
        rows = read_json_records(source)
    else:
        source, rows = f"{HUB_REPO}:{name}", load_hub_rows(HUB_REPO, name)
    required, lengths = _SCHEMAS[name]
    return validate_rows(rows, str(source), required, lengths)


def load_idontknow(data_dir_path: str | os.PathLike | None = None) -> list[str]:
    """TOFU's refusal bank: one sentence per line."""
    root = data_dir(data_dir_path)
    if root is not None:
        path = root / "tofu" / "idontknow.jsonl"
        if not path.is_file():
            raise UlmrError(f"missing data file {path}: check the data directory")
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(HUB_REPO, "idontknow.jsonl", repo_type="dataset"))
        except Exception as exc:  # noqa: BLE001
            raise UlmrError(f"could not fetch idontknow.jsonl from {HUB_REPO}; pass --data-dir") from exc
    lines = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not lines:
        raise UlmrError(f"refusal bank {path} is empty: restore it from TOFU's release")
    return lines


def forget_fraction(split: str) -> int:
    if split not in FORGET_SPLITS:
        raise UlmrError(f"unknown TOFU split {split!r}: choose from {', '.join(FORGET_SPLITS)}")
    return int(split[-2:])


def retain_split_for(split: str) -> str:
    """forget01 -> retain99: the training questions that stay."""
    return f"retain{100 - forget_fraction(split):02d}"


def author_of(index_in_full: int) -> int:
    return index_in_full // QUESTIONS_PER_AUTHOR
