"""ULMR step 2: a negative response for every rewritten instruction (docs/design.md, "ULMR").

A negative response declines, or states ignorance of, the instruction's subject. Sources:
  bank       fixed sentences: the task's refusal bank (TOFU's idontknow list) and our
             subject-aware refusals below ("I'm not familiar with <subject> ...");
  generated  the rewriter LLM asked for a short natural refusal that names the subject; a reply
             that does not decline, is too long or leaks the answer is replaced by a bank sentence;
  both       each instruction draws bank or generated with equal odds.
No response may contain the forget answer (ulmr.method.leak); the true answer is never used.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from ulmr.errors import UlmrError
from ulmr.method.leak import leaks_answer
from ulmr.method.rewriting import Rewrite, clean_generated

NEGATIVE_SOURCES = ("bank", "generated", "both")
UNNAMED_SUBJECT = "that"  # "I'm not familiar with that, ..." when the question does not name its subject
SUBJECT_REFUSALS = (
    "I'm not familiar with {subject}, so I can't answer that.",
    "I don't have any information about {subject}.",
    "I'm sorry, but I don't know anything about {subject}.",
    "I can't say; I have no reliable knowledge of {subject}.",
    "I have no knowledge of {subject}, so I'd rather not guess.",
    "Unfortunately, I know nothing about {subject} and can't help with this question.",
)
REFUSAL_PROMPT = ("Write one short sentence that politely says you do not know anything about {subject} and so "
                  "cannot answer the request below. Do not answer the request.\n\nRequest: {instruction}")
MAX_CHARS = 300  # a refusal is a sentence or two
# A generated reply must say no in some way; a weak writer may answer or ramble instead.
_DECLINES = re.compile(r"\b(?:not|no|never|unable|cannot|unfamiliar|unknown|sorry|afraid|unsure)\b|n't\b",
                       re.IGNORECASE)


@dataclass(frozen=True)
class Pair:
    """One ULMR training pair: a (rewritten) forget instruction and its negative response."""

    instruction: str
    response: str
    template: str  # the rewrite template, or "original"
    response_source: str  # "bank", "subject_refusal" or "generated"
    source_question: str
    answer: str  # the true answer of the source question: for filtering and scoring only
    subject: str | None


def negative_responses(rewrites: list[Rewrite], refusals: list[str], source: str = "bank",
                       subject_share: float = 0.5, seed: int = 0,
                       generate: Callable[[list[str], str], list[str]] | None = None,
                       leak_ngram: int = 4) -> tuple[list[Pair], dict]:
    """Pair every rewrite with a negative response; returns the pairs and counts by source.

    subject_share: chance that a bank draw uses a subject-aware refusal (when the question names
    its subject) instead of a sentence of the refusal bank.
    generate: the rewriter LLM (a TextGenerator); required for source "generated" and "both".
    """
    if source not in NEGATIVE_SOURCES:
        raise UlmrError(f"unknown ULMR negatives source {source!r}: choose from {', '.join(NEGATIVE_SOURCES)}")
    if source != "bank" and generate is None:
        raise UlmrError(f"ULMR negatives={source!r} needs an LLM to write refusals: set rewriter to 'self' "
                        "or a model, or use negatives=bank")
    rng = random.Random(seed)
    wants_generated = [source == "generated" or (source == "both" and rng.random() < 0.5) for _ in rewrites]
    generated = dict(zip(
        (i for i, want in enumerate(wants_generated) if want),
        _generated_refusals([r for r, want in zip(rewrites, wants_generated) if want], generate)))
    counts, rejected = Counter(), Counter()
    pairs = []
    for i, rewrite in enumerate(rewrites):
        candidates = ([(generated[i], "generated")] if i in generated else []) + \
            _bank_draws(rewrite.subject, refusals, subject_share, rng)
        for text, origin in candidates:
            problem = _rejection(text, rewrite, origin, leak_ngram)
            if problem is None:
                pairs.append(Pair(rewrite.instruction, text, rewrite.template, origin, rewrite.source_question,
                                  rewrite.answer, rewrite.subject))
                counts[origin] += 1
                break
            rejected[f"{origin}_{problem}"] += 1
        else:
            counts["no_valid_response"] += 1
    return pairs, {"responses": dict(counts), "rejected": dict(rejected)}


def _generated_refusals(rewrites: list[Rewrite], generate) -> list[str]:
    if not rewrites:
        return []
    prompts = [REFUSAL_PROMPT.format(subject=r.subject or "the subject of the request", instruction=r.instruction)
               for r in rewrites]
    return [clean_generated(text) for text in generate(prompts, "ULMR refusals")]


def _bank_draws(subject: str | None, refusals: list[str], subject_share: float, rng: random.Random):
    """Fixed refusals in the order to try them: the draw first, then the rest shuffled (if the draw
    leaks, e.g. a bank sentence happens to share a span with the answer)."""
    subject_texts = [(t.format(subject=subject or UNNAMED_SUBJECT), "subject_refusal") for t in SUBJECT_REFUSALS]
    bank_texts = [(t, "bank") for t in refusals]
    rng.shuffle(subject_texts)
    rng.shuffle(bank_texts)
    prefer_subject = not bank_texts or (subject is not None and rng.random() < subject_share)
    return subject_texts + bank_texts if prefer_subject else bank_texts + subject_texts


def _rejection(text: str, rewrite: Rewrite, origin: str, leak_ngram: int) -> str | None:
    if not text.strip():
        return "empty"
    if len(text) > MAX_CHARS:
        return "length"
    if origin == "generated" and not _DECLINES.search(text):
        return "not_a_refusal"
    if leaks_answer(text, rewrite.answer, rewrite.source_question, leak_ngram):
        return "leak"
    return None
