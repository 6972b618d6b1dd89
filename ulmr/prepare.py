"""Preparation: fine-tune a base model into the model that unlearning starts from, cached by content.

Benchmarks decide what to prepare (ulmr/benchmarks/: TOFU's target and retain models, RWKU's
knowledge injection); this module does the fine-tuning and the caching. Each prepared checkpoint
lives under <cache>/prepared/<label>-<key>/, the key a hash of the base model's weights, the
training rows, the recipe, the template and the seed: a rerun with the same inputs loads it
instead of training again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ulmr.benchmarks.registry import PreparedModel
from ulmr.prompts import PromptTemplate
from ulmr.storage import PREPARATION_RECORD, claim, weights_fingerprint
from ulmr.unlearning.interface import Example

PREPARE_VERSION = 2  # bump when the recipe code changes what a cached checkpoint contains


def fine_tuned(base: str, template: PromptTemplate, examples: list[Example], recipe: dict[str, Any],
               seed: int, label: str) -> PreparedModel:
    """SFT `base` on `examples` (answer tokens only) unless the same job is cached."""
    from ulmr.hardware import resolve_dtype
    from ulmr.models import cache_dir, load_model, resolve_model, save_checkpoint
    from ulmr.results import content_key, write_json_atomic
    from ulmr.unlearning.config import build_config, config_key, config_to_dict
    from ulmr.unlearning.losses import answer_nll
    from ulmr.unlearning.training import TrainingConfig, train

    config = build_config(TrainingConfig, {**recipe, "seed": seed}, where="profile prepare")
    base_path = resolve_model(base)
    key = content_key({
        "version": PREPARE_VERSION, "label": label, "base": weights_fingerprint(base_path),
        "template": template.as_options(), "recipe": config_key(config),
        # "auto" trains in bf16 on some CPUs and fp32 on others: different models, different entries
        "compute_dtype": str(resolve_dtype(config.dtype)),
        "examples": [(e.question, e.answer) for e in examples]})
    out = cache_dir() / "prepared" / f"{label}-{key[:16]}"
    record_path = out / PREPARATION_RECORD
    with claim(record_path):  # a concurrent run preparing the same model: wait for it, then load it
        if record_path.is_file():
            return PreparedModel(str(out), json.loads(record_path.read_text()))
        model, tokenizer = load_model(base_path, dtype="fp32")
        model, record = train(model, tokenizer, template, config,
                              lambda m, batch, _ref: answer_nll(m, batch["forget"]),
                              {"forget": examples}, desc=f"preparing {label}")
        save_checkpoint(model, tokenizer, out)
        summary = {"label": label, "key": key, "base": base, "n_examples": len(examples),
                   "recipe": config_to_dict(config), "training": record.as_dict()}
        write_json_atomic(record_path, summary)  # written last: its presence marks a complete cache entry
        return PreparedModel(str(out), summary)
