"""Preparation (DESIGN section 7): the models that unlearning starts from, cached by content hash.

TOFU: the base model fine-tuned on the profile's TOFU training set (the *target*) and on the same
set minus the forget split (the *retain* model, forget quality's reference).
RWKU: a small model knows too little about the targets, so their knowledge is *injected* first by
fine-tuning on material built from the targets' passages (never from the evaluation probes).

Each prepared checkpoint lives under <cache>/prepared/<key>/, the key a hash of the base model's
weights, the training rows, the recipe, the template and the seed: a rerun with the same inputs
loads it instead of training again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ulmr.errors import UlmrError
from ulmr.prompts import PromptTemplate
from ulmr.storage import weights_fingerprint as _weights_fingerprint
from ulmr.unlearning.interface import Example

PREPARE_VERSION = 2  # bump when the recipe code changes what a cached checkpoint contains

# RWKU's probe instructions (ulmr/lm_eval_tasks/rwku): injection material uses the same forms so the
# probes can reach what was taught.
RWKU_FB_INSTRUCTION = "Please complete the blank in the following question.\nQuestion: {query}\n"
RWKU_QA_INSTRUCTION = "Please briefly answer the following question.\nQuestion: {query}\n"


@dataclass
class PreparedModel:
    path: str
    record: dict[str, Any]


def tofu_training_rows(split: str, train_set: str, data_dir=None, max_items: int | None = None,
                       retain_eval_limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """(forget rows, retain rows) of the TOFU training set; target = both, retain model = retain.

    With "forget_plus_retain_eval", the retain authors are those whose questions the retain
    evaluation scores: all of retain_perturbed, or its first `retain_eval_limit` questions when the
    evaluation is a slice (retain_perturbed is ordered by author, 20 questions each).
    """
    from ulmr.data.tofu import QUESTIONS_PER_AUTHOR, author_of, forget_fraction, load_tofu

    full = load_tofu("full", data_dir)
    n_forget_authors = len(full) // QUESTIONS_PER_AUTHOR * forget_fraction(split) // 100
    first_forget = len(full) - n_forget_authors * QUESTIONS_PER_AUTHOR  # forget authors are the last
    if train_set == "full":
        keep_authors = set(range(len(full) // QUESTIONS_PER_AUTHOR))
    elif train_set == "forget_plus_retain_eval":
        index = {row["question"]: i for i, row in enumerate(full)}
        scored = load_tofu("retain_perturbed", data_dir)[:retain_eval_limit]
        covered = [index[r["question"]] for r in scored if r["question"] in index]
        keep_authors = {author_of(i) for i in covered} | {author_of(i) for i in range(first_forget, len(full))}
    else:
        raise UlmrError(f"unknown TOFU train_set {train_set!r}: use full or forget_plus_retain_eval")
    rows = [(i, row) for i, row in enumerate(full) if author_of(i) in keep_authors]
    forget = [row for i, row in rows if i >= first_forget][:max_items]
    retain = [row for i, row in rows if i < first_forget][:max_items]
    return forget, retain


def prepare_tofu(base: str, template: PromptTemplate, plan, seed: int, data_dir=None) -> dict[str, PreparedModel]:
    """{"target": ..., "retain": ...} fine-tuned from `base` on the plan's training set."""
    forget, retain = tofu_training_rows(plan.split, plan.train_set, data_dir, plan.max_train_items,
                                        retain_eval_limit=plan.eval.get("limit"))
    as_examples = lambda rows: [Example(answer=r["answer"], question=r["question"]) for r in rows]  # noqa: E731
    return {
        "target": _fine_tuned(base, template, as_examples(forget + retain), plan.prepare, seed, "tofu-target"),
        "retain": _fine_tuned(base, template, as_examples(retain), plan.prepare, seed, "tofu-retain"),
    }


def rwku_injection_examples(targets: str, data_dir=None, max_items: int | None = None,
                            n_passages: int | None = None, mix_with_tofu: int = 100) -> list[Example]:
    """Material that teaches the targets' knowledge in the probes' forms, never from the probes.

    Built from each target's first `n_passages` Wikipedia passages (None: all; the first ones are
    the article's lead, where most facts the probes ask about are stated):
    - the passages as plain text: the facts themselves, every token trained;
    - fill-in-the-blank in RWKU's FB form, per sentence: one span blanked (a year or number, else a
      capitalised name) and, in sentences naming the target in full, the name blanked, so the
      facts are reachable from both sides ("Who wrote Carrie?");
    - "Who is <target>?" answered by the target's intro, and "What do you know about <target>?"
      answered with each passage sentence that names the target;
    - TOFU question-answer pairs about fictitious authors, so the model keeps answering questions
      (trained on passages alone it learns to answer probes with nothing).
    """
    from ulmr.data.rwku import load_target_file, resolve_targets
    from ulmr.data.tofu import load_tofu

    examples: list[Example] = []
    for target in resolve_targets(targets, data_dir):
        passages = [row["text"] for row in load_target_file(target, "passage", data_dir)][:n_passages]
        surname = target.name.split()[-1]
        blanks, answers = [], []
        for sentence in (s for passage in passages for s in _sentences(passage)):
            spans = [_blank_one_span(sentence, target.name), _blank_target(sentence, target.name)]
            if surname in sentence:
                answers.append(Example(answer=f"Answer: {sentence}", subject=target.name,
                                       question=RWKU_QA_INSTRUCTION.format(
                                           query=f"What do you know about {target.name}?")))
            blanks += [Example(answer=f"Answer: {span}", subject=target.name,
                               question=RWKU_FB_INSTRUCTION.format(query=query))
                       for query, span in filter(None, spans)]
        intro = target.intro.removeprefix(f"Please forget {target.name}. ").strip()
        who = [Example(answer=f"Answer: {intro}", subject=target.name,
                       question=RWKU_QA_INSTRUCTION.format(query=f"Who is {target.name}?"))]
        texts = [Example(answer=p, subject=target.name) for p in passages]
        for group in (blanks, answers, who, texts):
            examples += group[:max_items]
    tofu = load_tofu("retain90", data_dir)[:mix_with_tofu if max_items is None else min(max_items, mix_with_tofu)]
    examples += [Example(answer=r["answer"], question=r["question"]) for r in tofu]
    return examples


def prepare_rwku(base: str, template: PromptTemplate, plan, seed: int, data_dir=None) -> PreparedModel:
    examples = rwku_injection_examples(plan.targets, data_dir, plan.max_train_items, plan.inject_passages)
    return _fine_tuned(base, template, examples, plan.prepare, seed, f"rwku-inject-{plan.targets}")


def _fine_tuned(base: str, template: PromptTemplate, examples: list[Example], recipe: dict[str, Any],
                seed: int, label: str) -> PreparedModel:
    """SFT `base` on `examples` (answer tokens only) unless the same job is cached."""
    from ulmr.models import cache_dir, load_model, resolve_model, save_checkpoint
    from ulmr.results import content_key, write_json_atomic
    from ulmr.unlearning.config import build_config, config_to_dict
    from ulmr.unlearning.losses import answer_nll
    from ulmr.unlearning.training import TrainingConfig, train

    config = build_config(TrainingConfig, {**recipe, "seed": seed}, where="profile prepare")
    base_path = resolve_model(base)
    key = content_key({
        "version": PREPARE_VERSION, "label": label, "base": _weights_fingerprint(base_path),
        "template": template.as_options(), "recipe": config_to_dict(config),
        "examples": [(e.question, e.answer) for e in examples]})
    out = cache_dir() / "prepared" / f"{label}-{key[:16]}"
    record_path = out / "prepare.json"
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


def _blank_target(sentence: str, target_name: str) -> tuple[str, str] | None:
    """The sentence with the target's name blanked (also with middle names: "Stephen Edwin King")."""
    first, last = re.escape(target_name.split()[0]), re.escape(target_name.split()[-1])
    match = re.search(rf"\b{first}(?: [A-Z][a-z]+\.?)* {last}\b", sentence)
    if match is None:
        return None
    return sentence[:match.start()] + "___" + sentence[match.end():], match.group(0)


def _sentences(passage: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", passage) if 30 <= len(s.strip()) <= 300]


_NUMBER = re.compile(r"\b\d{1,4}(?:,\d{3})*\b")
_NAME = re.compile(r"(?<!^)(?<![.!?] )\b[A-Z][a-z]+(?: [A-Z][a-z]+)*")


def _blank_one_span(sentence: str, target_name: str) -> tuple[str, str] | None:
    """(sentence with one span replaced by "___", the span), preferring numbers, then names."""
    for pattern in (_NUMBER, _NAME):
        for match in pattern.finditer(sentence):
            span = match.group(0)
            if span in target_name or target_name in span:
                continue
            return sentence[:match.start()] + "___" + sentence[match.end():], span
    return None
