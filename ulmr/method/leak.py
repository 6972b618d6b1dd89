"""When does a text give away a forget answer? The one rule every ULMR instruction and response passes.

A text leaks the answer to a question when, after normalisation (Unicode NFKC, lower case,
punctuation as spaces, whitespace collapsed, so "Al-Kuwaiti's" reads "al kuwaiti s"), its words
contain, as a contiguous run,

1. the whole answer, or
2. for answers of at least `ngram` words, any `ngram`-word span of the answer that holds a content
   word (not a FUNCTION_WORD) the question does not have. Spans of question words and function
   words are not evidence (restating the question, "... of Basil Mahfouz Al-Kuwaiti", is not
   answering it); a span with a new content word is the answer's key content ("born in Kuwait
   City", "father was a florist").

An empty answer (RWKU's refusal questions have none) never leaks. The rule errs towards dropping.
"""

from __future__ import annotations

import re
import unicodedata

DEFAULT_NGRAM = 4
_NON_WORD = re.compile(r"[\W_]+")
FUNCTION_WORDS = frozenset(
    "a an the this that these those of in on at to for from by with about as into and or but so "
    "is are was were be been being has have had do does did will would can could should may might "
    "he she it they we you i his her its their our your my him them me who whom whose which what "
    "s not no yes also very".split())


def words(text: str) -> list[str]:
    """Normalised words: NFKC, lower case, punctuation and whitespace as separators."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split()


def normalise(text: str) -> str:
    return " ".join(words(text))


def leaks_answer(text: str, answer: str, question: str = "", ngram: int = DEFAULT_NGRAM) -> bool:
    """True when `text` contains `answer` (whole, or a key span of it) in the sense of the module rule."""
    answer_words = words(answer)
    if not answer_words:
        return False
    padded = f" {normalise(text)} "
    if f" {' '.join(answer_words)} " in padded:
        return True
    known = FUNCTION_WORDS | set(words(question))
    for start in range(len(answer_words) - ngram + 1):
        span = answer_words[start:start + ngram]
        if not known.issuperset(span) and f" {' '.join(span)} " in padded:
            return True
    return False
