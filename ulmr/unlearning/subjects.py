"""Who a forget set is about, when the benchmark does not say (TOFU has no author-name field)."""

from __future__ import annotations

import re
from collections import Counter

# Sentence openers that are lower-cased when the question follows a lead-in ("I was wondering, what ...").
QUESTION_OPENERS = {"what", "who", "whom", "whose", "which", "when", "where", "why", "how", "in", "on", "at", "can",
            "could", "did", "does", "do", "is", "are", "was", "were", "has", "have", "had", "will", "would",
            "should", "name", "list", "describe", "tell", "please", "from", "for", "to", "with", "as"}
_NAME_RUN = re.compile(r"[A-Z][\w'’.-]*(?:\s+[A-Z][\w'’.-]*)+")
_NAME_END = re.compile(r"(?:['’]s?|\.)$")  # possessive or full stop after a name
# On TOFU every forget author's name recurs in 8 or more of their 20 questions (all 20 authors of
# forget10), genres and places in at most 7.
MIN_NAME_QUESTIONS = 8


def recurring_names(questions: list[str], min_questions: int = MIN_NAME_QUESTIONS) -> list[str]:
    """Subjects for a task that names none (TOFU has no author field): runs of two or more
    capitalised words, leading question words removed, that recur in at least `min_questions`
    questions; most frequent first."""
    counts = Counter()
    for question in questions:
        found = set()
        for run in _NAME_RUN.findall(question):
            tokens = run.split()
            while tokens and tokens[0].lower() in QUESTION_OPENERS:
                tokens = tokens[1:]
            if len(tokens) >= 2:
                found.add(_NAME_END.sub("", " ".join(tokens)))
        counts.update(found)
    return [name for name, n in counts.most_common() if n >= min_questions]
