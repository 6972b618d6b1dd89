"""ULMR step 2: a negative response for every rewritten instruction (docs/design.md, "ULMR").

A negative response declines, states ignorance of, or answers wrongly about the instruction's
subject. Sources:
  bank         fixed sentences: the task's refusal bank (TOFU's idontknow list) and our
               subject-aware refusals below ("I'm not familiar with <subject> ...");
  generated    the rewriter LLM asked for a short natural refusal that names the subject; a reply
               that does not decline, is too long or leaks the answer is replaced by a bank sentence;
  both         each instruction draws bank or generated with equal odds;
  alternative  the rewriter LLM asked for a different, made-up answer to the source question (a
               plausible but wrong answer about the same subject); a reply that refuses, drops the
               subject's name, is too long, leaks the true answer, or matches a text in `avoid` is
               replaced by a bank sentence.
No response may contain the forget answer (ulmr.method.leak); the true answer is never used.
`avoid` lists, per source question, texts no response may be or leak (e.g. the wrong answers a
benchmark scores, TOFU's perturbed and paraphrased answers): a made-up answer equal to one would
train the model towards what the truth ratio reads.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from ulmr.errors import UlmrError
from ulmr.method.leak import leaks_answer, normalise
from ulmr.method.rewriting import Rewrite, clean_generated

NEGATIVE_SOURCES = ("bank", "generated", "both", "alternative")
LLM_SOURCES = ("generated", "both", "alternative")  # the sources an LLM writes
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
ALTERNATIVE_PROMPT = ("Question: {question}\nWrite a false but believable answer in one sentence, with invented "
                      "names, places or dates.")
MAX_CHARS = 300  # a refusal is a sentence or two
# A generated reply must say no in some way; a weak writer may answer or ramble instead.
_DECLINES = re.compile(r"\b(?:not|no|never|unable|cannot|unfamiliar|unknown|sorry|afraid|unsure)\b|n't\b",
                       re.IGNORECASE)
# A made-up answer must not be a refusal or a reply about the request (a weak writer often is).
_REFUSES = re.compile(r"\b(?:i(?:'m| am) (?:sorry|not (?:sure|familiar|aware|able))|i (?:do not|don't|cannot|can't) "
                      r"(?:know|answer|help|provide|say)|i have no (?:information|knowledge|idea)|as an ai|"
                      r"no (?:information|record)s? (?:about|on|of)|(?:is|are) not (?:provided|available|known)|"
                      r"the answer to (?:this|the|your) question)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Pair:
    """One ULMR training pair: a (rewritten) forget instruction and its negative response."""

    instruction: str
    response: str
    template: str  # the rewrite template, or "original"
    response_source: str  # "bank", "subject_refusal", "generated" or "alternative"
    source_question: str
    answer: str  # the true answer of the source question: for filtering and scoring only
    subject: str | None


def negative_responses(rewrites: list[Rewrite], refusals: list[str], source: str = "bank",
                       subject_share: float = 0.5, seed: int = 0,
                       generate: Callable[[list[str], str], list[str]] | None = None,
                       leak_ngram: int = 4, avoid: Mapping[str, Sequence[str]] | None = None
                       ) -> tuple[list[Pair], dict]:
    """Pair every rewrite with a negative response; returns the pairs and what was kept and dropped.

    subject_share: chance that a bank draw uses a subject-aware refusal (when the question names
    its subject) instead of a sentence of the refusal bank.
    generate: the rewriter LLM (a TextGenerator); required for the LLM_SOURCES.
    avoid: source question -> texts no response may equal or leak (see the module docstring).
    The stats: "responses", the pairs' responses by kind (and "no_valid_response"); "kinds", per
    kind of candidate, how many were tried, accepted and dropped; "rejected", drops by kind_reason.
    """
    if source not in NEGATIVE_SOURCES:
        raise UlmrError(f"unknown ULMR negatives source {source!r}: choose from {', '.join(NEGATIVE_SOURCES)}")
    if source in LLM_SOURCES and generate is None:
        raise UlmrError(f"ULMR negatives={source} needs an LLM rewriter to write its responses: set rewriter to "
                        "'self' or a model, or use negatives=bank")
    rng = random.Random(seed)
    wants_llm = [source in ("generated", "alternative") or (source == "both" and rng.random() < 0.5)
                 for _ in rewrites]
    kind = "alternative" if source == "alternative" else "generated"
    asked = [r for r, want in zip(rewrites, wants_llm) if want]
    written = dict(zip((i for i, want in enumerate(wants_llm) if want),
                       _alternatives(asked, generate) if kind == "alternative" else _generated_refusals(asked, generate)))
    counts, tried, rejected = Counter(), Counter(), Counter()
    pairs = []
    for i, rewrite in enumerate(rewrites):
        candidates = ([(written[i], kind)] if i in written else []) + \
            _bank_draws(rewrite.subject, refusals, subject_share, rng)
        for text, origin in candidates:
            tried[origin] += 1
            problem = _rejection(text, rewrite, origin, leak_ngram, (avoid or {}).get(rewrite.source_question, ()))
            if problem is None:
                pairs.append(Pair(rewrite.instruction, text, rewrite.template, origin, rewrite.source_question,
                                  rewrite.answer, rewrite.subject))
                counts[origin] += 1
                break
            rejected[f"{origin}_{problem}"] += 1
        else:
            counts["no_valid_response"] += 1
    kinds = {origin: {"tried": n, "accepted": counts[origin], "dropped": n - counts[origin]}
             for origin, n in tried.items()}
    return pairs, {"responses": dict(counts), "kinds": kinds, "rejected": dict(rejected)}


def _generated_refusals(rewrites: list[Rewrite], generate) -> list[str]:
    if not rewrites:
        return []
    prompts = [REFUSAL_PROMPT.format(subject=r.subject or "the subject of the request", instruction=r.instruction)
               for r in rewrites]
    return [clean_generated(text) for text in generate(prompts, "ULMR refusals")]


def _alternatives(rewrites: list[Rewrite], generate) -> list[str]:
    """Made-up answers to each rewrite's source question (the same question for all its rewrites:
    the answer must answer any of them)."""
    if not rewrites:
        return []
    prompts = [ALTERNATIVE_PROMPT.format(subject=r.subject or "its subject", question=r.source_question)
               for r in rewrites]
    return [_first_statement(text) for text in generate(prompts, "ULMR alternative answers", cut="sentences")]


def _first_statement(text: str) -> str:
    """The reply's first line of content that is not a lead-in ending in a colon ("The answer is:"),
    cleaned like a rewrite."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if not line.rstrip().endswith(":"):
            return clean_generated("\n".join(lines[i:]))
    return ""


def _bank_draws(subject: str | None, refusals: list[str], subject_share: float, rng: random.Random):
    """Fixed refusals in the order to try them: the draw first, then the rest shuffled (if the draw
    leaks, e.g. a bank sentence happens to share a span with the answer)."""
    subject_texts = [(t.format(subject=subject or UNNAMED_SUBJECT), "subject_refusal") for t in SUBJECT_REFUSALS]
    bank_texts = [(t, "bank") for t in refusals]
    rng.shuffle(subject_texts)
    rng.shuffle(bank_texts)
    prefer_subject = not bank_texts or (subject is not None and rng.random() < subject_share)
    return subject_texts + bank_texts if prefer_subject else bank_texts + subject_texts


def _rejection(text: str, rewrite: Rewrite, origin: str, leak_ngram: int, avoid: Sequence[str] = ()) -> str | None:
    if not text.strip():
        return "empty"
    if len(text) > MAX_CHARS:
        return "length"
    if origin == "generated" and not _DECLINES.search(text):
        return "not_a_refusal"
    if origin == "alternative":
        if _REFUSES.search(text) or "?" in text:
            return "not_an_answer"
        if rewrite.subject and not _names(text, rewrite.subject):
            return "off_subject"
    if leaks_answer(text, rewrite.answer, rewrite.source_question, leak_ngram):
        return "leak"
    if any(normalise(text) == normalise(other) or leaks_answer(text, other, rewrite.source_question, leak_ngram)
           for other in avoid):
        return "avoided"
    return None


def _names(text: str, subject: str) -> bool:
    """The text names the subject: its full name, or (for a name of several words) its last word."""
    padded = f" {normalise(text)} "
    parts = normalise(subject).split()
    return f" {' '.join(parts)} " in padded or (len(parts) > 1 and f" {parts[-1]} " in padded)
