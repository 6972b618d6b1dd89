"""UnlearningDatas from the benchmarks' training data (never from their evaluation probes)."""

from __future__ import annotations

import os

from ulmr.errors import UlmrError
from ulmr.prompts import PromptTemplate
from ulmr.unlearning.interface import Example, UnlearningData

# RWKU retain corpus: the synthetic texts of this many targets after the forgotten ones.
RWKU_RETAIN_TARGETS = 2


def build_task(benchmark: str, selection: str | None, template: PromptTemplate,
               data_dir: str | os.PathLike | None = None) -> UnlearningData:
    """TOFU with a forget split (forget01/05/10) or RWKU with a target spec (1, 1-10, 1,5, a name)."""
    if benchmark == "tofu":
        return tofu_task(selection or "forget01", template, data_dir)
    if benchmark == "rwku":
        return rwku_task(selection or "1", template, data_dir)
    raise UlmrError(f"unknown benchmark {benchmark!r}: choose from tofu, rwku")


def tofu_task(split: str, template: PromptTemplate, data_dir=None) -> UnlearningData:
    """forget = the split's QA pairs, retain = the matching retain split (forget01 -> retain99),
    refusals = TOFU's idontknow list. TOFU has no author-name field, so subjects stay empty."""
    from ulmr.data.tofu import load_idontknow, load_tofu, retain_split_for

    retain_split = retain_split_for(split)  # also rejects a split name that is not a forget split
    forget = [Example(answer=row["answer"], question=row["question"]) for row in load_tofu(split, data_dir)]
    retain = [Example(answer=row["answer"], question=row["question"]) for row in load_tofu(retain_split, data_dir)]
    return UnlearningData(benchmark="tofu", name=split, forget=forget, retain=retain, forget_questions=forget,
                          subjects=[], template=template, refusals=load_idontknow(data_dir),
                          metadata={"retain_split": retain_split})


def rwku_task(targets: str, template: PromptTemplate, data_dir=None) -> UnlearningData:
    """forget = the targets' synthetic texts (positive.json, plain text), retain = the texts of the
    RWKU_RETAIN_TARGETS targets that follow the last forgotten one, forget_questions = reject.json
    instructions (no true answers: answer ""), refusals = TOFU's idontknow list plus reject.json's."""
    from ulmr.data.rwku import load_target_file, resolve_targets
    from ulmr.data.tofu import load_idontknow

    chosen = resolve_targets(targets, data_dir)
    forget, questions, refusals = [], [], list(load_idontknow(data_dir))
    for target in chosen:
        forget += [Example(answer=row["text"], subject=target.name)
                   for row in load_target_file(target, "positive", data_dir)]
        for row in load_target_file(target, "reject", data_dir):
            instruction = f"{row['instruction']}\n{row['input']}" if row.get("input") else row["instruction"]
            questions.append(Example(answer="", question=instruction, subject=target.name))
            refusals.append(row["output"])
    retain_targets = _following_targets(chosen, data_dir)
    retain = [Example(answer=row["text"], subject=target.name)
              for target in retain_targets for row in load_target_file(target, "positive", data_dir)]
    return UnlearningData(benchmark="rwku", name=targets, forget=forget, retain=retain,
                          forget_questions=questions, subjects=[t.name for t in chosen], template=template,
                          refusals=list(dict.fromkeys(refusals)),
                          metadata={"targets": [t.index for t in chosen],
                                    "retain_targets": [t.index for t in retain_targets]})


def _following_targets(chosen, data_dir):
    """The first RWKU_RETAIN_TARGETS targets after the last chosen index (wrapping) not chosen."""
    from ulmr.data.rwku import all_targets

    every = all_targets(data_dir)
    taken = {t.index for t in chosen}
    start = max(i for i, t in enumerate(every) if t.index in taken) + 1
    ring = every[start:] + every[:start]
    return [t for t in ring if t.index not in taken][:RWKU_RETAIN_TARGETS]
