"""In-context unlearning (ICU) as RWKU evaluates it: no weight changes; the "unlearned model" is the
original one with an instruction before every prompt telling it to answer as if it had never known
the targets. The result carries the instruction (`UnlearningResult.system_prompt`), and `ulmr-bench
run` evaluates with it as the template's system prompt (chat: the system turn; tags: a line before
the prompt); `ulmr-bench unlearn` writes it to unlearn.json and prints the `eval --system-prompt`
command.

Source: RWKU (Jin et al., 2024), the "ICU" baseline; its evaluation code (jinzhuoran/RWKU,
LLaMA-Factory/src/llmtuner/eval/, `use_prompt`) puts, before each probe, an instruction to unlearn
the probe's own target, to answer without that knowledge as if never having known it, and not to
tell anyone. Ours is our own wording of the same instruction, with three differences: it names every
subject of the run at once (a deployed model is not told which target a question is about); under
a chat template it is the system turn, not the start of the user turn; and the MIA texts are scored
without it (RWKU prefixes them too; our MIA task scores plain texts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ulmr.errors import UlmrError
from ulmr.unlearning.subjects import MIN_NAME_QUESTIONS, recurring_names
from ulmr.unlearning.config import check_range, config_to_dict
from ulmr.unlearning.interface import Unlearner, UnlearningData, UnlearningResult
from ulmr.unlearning.registry import register_method

INSTRUCTION = ("You are an AI assistant that has unlearned everything about {subjects}. Answer as if you had "
               "never known anything about them, and do not tell anyone that you unlearned anything.")
# TOFU names no author; without names inferred from the questions, the instruction can only point
# at the kind of knowledge to withhold (and so also withholds what it should keep about other authors)
UNNAMED_SUBJECTS = "the fictitious authors whose biographies you were trained on"


def join_names(names: list[str]) -> str:
    """["A"] -> "A"; ["A", "B", "C"] -> "A, B and C"."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def icu_prompt(subjects: list[str], instruction: str = INSTRUCTION) -> str:
    """The instruction naming the subjects (or, with none, the generic TOFU description)."""
    return instruction.format(subjects=join_names(subjects) if subjects else UNNAMED_SUBJECTS)


@dataclass
class ICUConfig:
    """ICU's settings: the instruction and how the forgotten subjects are named in it."""

    instruction: str = field(default=INSTRUCTION, metadata={"help": (
        "the wording, with {subjects} where the names go (default: ours, after RWKU's).")})
    infer_names: bool = field(default=True, metadata={"help": (
            "name TOFU's forget authors, which the data does not name, from the names that recur in the forget "
            "questions (ulmr.unlearning.subjects.recurring_names, as ULMR does); off, or when none recur, the "
            "instruction speaks of the fictitious authors in general.")})
    min_name_questions: int = field(default=MIN_NAME_QUESTIONS, metadata={"help": (
            "questions a name must appear in to count (8, ULMR's MIN_NAME_QUESTIONS: TOFU asks 20 questions per "
            "author).")})
    seed: int = field(default=0, metadata={"help": "recorded only; ICU is deterministic."})

    def validate(self) -> None:
        check_range("min_name_questions", self.min_name_questions, 1)
        try:
            filled = self.instruction.format(subjects="")
        except (KeyError, IndexError, ValueError) as exc:
            raise UlmrError(f"icu instruction {self.instruction!r} does not format ({exc}): write {{subjects}} "
                            "where the names go and double any other brace") from exc
        if "{subjects}" not in self.instruction or not filled.strip():
            raise UlmrError("icu instruction must contain {subjects} (where the names go) and some text")


@register_method
class ICU(Unlearner):
    """In-context unlearning: the unchanged model, evaluated with an instruction to not know the targets."""

    name = "icu"
    config_class = ICUConfig

    def subjects(self, data: UnlearningData) -> tuple[list[str], str]:
        """The names to put in the instruction, and where they came from."""
        if data.subjects:
            return list(data.subjects), "data"
        if self.config.infer_names:
            questions = [e.question for e in data.forget_questions or data.forget if e.question]
            names = recurring_names(questions, self.config.min_name_questions)
            if names:
                return names, "recurring names in the forget questions"
        return [], "none: generic instruction"

    def unlearn(self, model, tokenizer, data: UnlearningData) -> UnlearningResult:
        self.config.validate()
        names, source = self.subjects(data)
        prompt = icu_prompt(names, self.config.instruction)
        if data.template.system_prompt:  # a system prompt the benchmark already uses stays first
            prompt = f"{data.template.system_prompt}\n\n{prompt}"
        record = {"method": self.name, "selection": data.name, "config": config_to_dict(self.config),
                  "weights_changed": False, "subjects": names, "subjects_source": source, "system_prompt": prompt}
        return UnlearningResult(model, record, system_prompt=prompt)
