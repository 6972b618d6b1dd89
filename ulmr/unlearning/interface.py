"""What every unlearning method receives and returns (docs/design.md, "The method interface")."""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ulmr.errors import UlmrError
from ulmr.prompts import PromptTemplate


@dataclass(frozen=True)
class Example:
    """One training text. With a question it is rendered through the prompt template and only the
    answer's tokens carry loss; without one (RWKU's synthetic passages) it is plain text and every
    token carries loss."""

    answer: str
    question: str | None = None
    subject: str | None = None


# UnlearningData.metadata key: forget question -> texts that no generated training response may equal
# or leak (e.g. the wrong answers a benchmark's truth ratio scores). A blocklist, never training data.
AVOID_RESPONSES = "avoid_responses"


@dataclass
class ValidationData:
    """What a model is selected on (`ulmr-bench tune`, ULMR's alpha=auto; ulmr/selection.py): items the
    prepared model learned, that no evaluation task scores and that no method trains on. Built by
    the benchmark plug-in (`Benchmark.validation_data`), which documents where they come from.

    forget: questions about the forgotten subjects, with the true answers the model learned.
    retain: questions the model should go on answering, with the answers it learned.
    answer_cue: a cue the learned answers start with (RWKU's injected "Answer:"), left out of both
        the gold answer and the generation when they are compared.
    """

    forget: list[Example]
    retain: list[Example]
    answer_cue: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnlearningData:
    """What to forget and what to keep, from one benchmark.

    forget: the forget corpus (TOFU forget QA pairs; RWKU the targets' synthetic texts).
    retain: items to keep (TOFU retain QA; RWKU texts of targets not being forgotten), never an
        evaluation probe.
    forget_questions: questions about the forgotten subjects with their true answers where the
        benchmark has them (TOFU: the forget QA; RWKU: reject.json questions, answer ""), for the
        refusal-style methods (rt, dpo, ulmr).
    subjects: the forgotten entities (TOFU author names where known, RWKU targets).
    refusals: a refusal bank (TOFU's idontknow list).
    validation: the benchmark's validation data (None where it has none); no method trains on it,
        only selection reads it (ULMR's alpha=auto).
    """

    benchmark: str
    name: str
    forget: list[Example]
    retain: list[Example]
    forget_questions: list[Example]
    subjects: list[str]
    template: PromptTemplate
    refusals: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    validation: ValidationData | None = None


@dataclass
class UnlearningResult:
    """The unlearned model (in memory) and a JSON-able record of what was done.

    system_prompt: set by methods that act through the prompt rather than (only) the weights, e.g.
        in-context unlearning: the model must be evaluated with this instruction before every
        prompt (the template's `system_prompt`: chat system turn, or a line before a tags prompt).
        None: evaluate with the benchmark's template as it is.
    """

    model: Any
    record: dict[str, Any]
    artifacts: dict[str, Any] = field(default_factory=dict)  # e.g. ULMR's generated pairs
    system_prompt: str | None = None


class Unlearner(abc.ABC):
    """Base of every method. Subclasses set `name` (the CLI name) and `config_class` (a dataclass)
    and are registered with `@register_method`."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    # How long one row of the method takes (unlearning and evaluating) relative to ga's. `run` starts
    # each seed's longest rows first, so that the processes of `run --jobs` sharing the rows run out
    # of work together; only the order of the work depends on it. 1.0 where not measured.
    relative_cost: ClassVar[float] = 1.0

    def __init__(self, config=None):
        self.config = config if config is not None else self.config_class()

    @abc.abstractmethod
    def unlearn(self, model, tokenizer, data: UnlearningData) -> UnlearningResult:
        """Return the unlearned model (may be `model` changed in place) and the run record."""


def with_refusals(questions: list[Example], refusals: list[str], seed: int) -> list[Example]:
    """Each question paired with a refusal drawn from the bank (seeded), in place of its answer."""
    if not refusals:
        raise UlmrError("the task has no refusals: give it a refusal bank (TOFU's idontknow.jsonl)")
    rng = random.Random(seed)
    return [Example(answer=rng.choice(refusals), question=q.question, subject=q.subject) for q in questions]
