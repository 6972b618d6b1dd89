"""Validation data (docs/design.md, "Benchmarks"): for both benchmarks and every shipped profile, the
validation items, the documents the lm-eval tasks score, and what every method trains on are
pairwise disjoint, and the preparation trains on every validation item. No model is trained: the
profiles' plans are read, the unlearning data built, and the methods' training examples made the
way each method makes them (ULMR with its template rewriter, the only one that needs no LLM)."""

from __future__ import annotations

import functools
import re

import pytest

from lm_eval_tasks.rwku.utils import BRIEF_ANSWER, FILL_IN_THE_BLANK
from ulmr.benchmarks.registry import get_benchmark
from ulmr.profiles import load_profile
from ulmr.prompts import PromptTemplate
from ulmr.unlearning.interface import Example

PROFILES = ("smoke", "quick", "full")
TEMPLATE = PromptTemplate()
MIN_ANSWER_WORDS = 4  # shorter answers are facts ("1947", "Maine") that any two questions may share


@functools.cache
def norm(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def core(question: str) -> str:
    """A question without RWKU's instruction lines ("Please complete the blank ...\\nQuestion: ")."""
    for prefix in (FILL_IN_THE_BLANK, BRIEF_ANSWER):
        question = question.removeprefix(prefix)
    return question.removeprefix("Question: ").strip()


def item_strings(examples: list[Example]) -> set[str]:
    """What two items must not share: questions, plain texts, and answers of a sentence or more."""
    found = set()
    for ex in examples:
        if ex.question:
            found.add(norm(core(ex.question)))
        answer = norm(ex.answer.removeprefix("Answer:"))
        if ex.question is None or len(answer.split()) >= MIN_ANSWER_WORDS:
            found.add(answer)
    return found - {""}


def row_strings(rows: list[dict]) -> set[str]:
    """The same for the rows an lm-eval task's documents are built from."""
    found = set()
    for row in rows:
        for field in ("question", "query", "instruction", "text"):
            if isinstance(row.get(field), str):
                found.add(norm(row[field]))
        for field in ("answer", "reference"):
            if isinstance(row.get(field), str) and len(norm(row[field]).split()) >= MIN_ANSWER_WORDS:
                found.add(norm(row[field]))
    return found - {""}


@functools.cache
def task_subsets(benchmark: str, selection: str) -> tuple[str, ...]:
    """The dataset subset of every lm-eval task the benchmark's evaluation runs, from the task
    configs (groups expanded), as lm-eval reads them."""
    from lm_eval.tasks import TaskManager

    from lm_eval_tasks import TASKS_PATH

    index = TaskManager(include_path=str(TASKS_PATH), include_defaults=False).task_index
    subsets, pending = [], list(get_benchmark(benchmark).tasks(selection))
    while pending:
        cfg = index[pending.pop(0)].cfg
        if "group" in cfg:
            pending += cfg["task"]
        else:
            assert cfg["custom_dataset"].endswith(("utils.load_subset", "utils.load_docs")), cfg["custom_dataset"]
            subsets.append(cfg["dataset_kwargs"]["subset"])
    return tuple(dict.fromkeys(subsets))


def evaluation_strings(benchmark: str, selection: str, data_dir) -> set[str]:
    """Every scored document's strings, from the files the tasks' dataset hooks build them from
    (lm_eval_tasks/*/utils.py: load_subset reads TOFU's subset file, load_docs each target's)."""
    if benchmark == "tofu":
        from ulmr.data.tofu import load_tofu

        return set().union(*(row_strings(load_tofu(s, data_dir)) for s in task_subsets(benchmark, selection)))
    from ulmr.data.rwku import load_target_file, resolve_targets

    files = [f for s in task_subsets(benchmark, selection) for f in (("forget_mia", "retain_mia") if s == "mia" else (s,))]
    return set().union(*(row_strings(load_target_file(t, f, data_dir))
                         for t in resolve_targets(selection, data_dir) for f in files))


def method_examples(profile, benchmark: str, data) -> dict[str, list[Example]]:
    """What each registered method trains on, built as the method builds it: a loss method's forget
    parts and the retain data; ULMR's instructions are its rewriting step's output with the template
    rewriter (the original questions and their rewrites; the negative-response step only pairs them
    with bank refusals or drops them). Other methods (a test's own) are skipped."""
    from ulmr.method.method import UlmrUnlearner
    from ulmr.method.rewriting import original_instructions, rewrite_questions
    from ulmr.unlearning.subjects import recurring_names
    from ulmr.unlearning.registry import available_methods
    from ulmr.unlearning.training import LossUnlearner

    @functools.cache
    def ulmr_instructions(rewrite: bool, include_original: bool, max_questions, templates, k, leak_ngram):
        questions = data.forget_questions[:max_questions]
        subjects = data.subjects or recurring_names([q.question or "" for q in questions])
        made = original_instructions(questions, subjects) if include_original else []
        if rewrite:
            made += rewrite_questions(questions, subjects, list(templates), k, None, True, leak_ngram)[0]
        return [Example(answer="", question=r.instruction) for r in made]

    made = {}
    for name, cls in available_methods().items():
        if not issubclass(cls, (UlmrUnlearner, LossUnlearner)):
            continue  # trains on nothing (icu), or a stub another test registered
        config = profile.method_config(name, benchmark, profile.seeds[0])
        if issubclass(cls, UlmrUnlearner):
            made[name] = ulmr_instructions(config.rewrite, config.include_original, config.max_questions,
                                           tuple(config.templates), config.k, config.leak_ngram) + data.retain
        elif issubclass(cls, LossUnlearner):
            made[name] = [ex for part in cls(config).forget_parts(data).values() for ex in part] + data.retain
    return made


def preparation_examples(benchmark: str, plan, data_dir) -> tuple[list[Example], list[Example] | None]:
    """(what the prepared model is trained on, what the reference model is trained on or None)."""
    if benchmark == "tofu":
        from ulmr.benchmarks.tofu import tofu_training_rows

        forget, retain = tofu_training_rows(plan.split, plan.train_set, data_dir, plan.max_train_items,
                                            retain_eval_limit=plan.eval.get("limit"))
        as_examples = lambda rows: [Example(answer=r["answer"], question=r["question"]) for r in rows]  # noqa: E731
        return as_examples(forget + retain), as_examples(retain)
    from ulmr.benchmarks.rwku import rwku_preparation_examples

    return rwku_preparation_examples(plan.targets, data_dir, plan.max_train_items, plan.inject_passages), None


def protocol_overlap(benchmark: str, selection: str, data_dir) -> set[str]:
    """Scored documents the benchmark's own protocol trains on (not the validation's business, and
    left as it is): TOFU's methods forget the split the evaluation scores (forget01_perturbed holds
    forget01's questions), and retain_perturbed's questions are retain99's. RWKU ships a few
    reject.json questions that are also probe queries: 34 rows of targets 15, 53 and 70 (Mark Cuban,
    Travis Kelce, Vin Diesel), which the refusal methods train on."""
    if benchmark == "tofu":
        from ulmr.data.tofu import load_tofu

        return row_strings(load_tofu(selection, data_dir) + load_tofu("retain_perturbed", data_dir))
    from ulmr.benchmarks.rwku import PROBE_FILES
    from ulmr.data.rwku import load_target_file, resolve_targets

    shared = set()
    for target in resolve_targets(selection, data_dir):
        probes = {norm(row["query"]) for f in PROBE_FILES for row in load_target_file(target, f, data_dir)}
        rejects = {norm(row["instruction"]) for row in load_target_file(target, "reject", data_dir) if not row["input"]}
        if probes & rejects:
            assert target.index in (15, 53, 70), target
            shared |= probes & rejects
    return shared


# the validation counts docs/design.md states
COUNTS = {("tofu", "smoke"): (10, 40), ("tofu", "quick"): (10, 40), ("tofu", "full"): (10, 40),
          ("rwku", "smoke"): (20, 20), ("rwku", "quick"): (20, 20), ("rwku", "full"): (2000, 20)}


@pytest.mark.parametrize("profile_name", PROFILES)
@pytest.mark.parametrize("benchmark", ["tofu", "rwku"])
def test_validation_evaluation_and_training_are_disjoint(benchmark, profile_name, data_dir):
    profile = load_profile(profile_name)
    plan = profile.plan(benchmark)
    bench = get_benchmark(benchmark)
    data = bench.unlearning_data(plan.selection, TEMPLATE, data_dir)
    validation = data.validation
    assert validation == bench.validation_data(plan.selection, data_dir)
    assert (len(validation.forget), len(validation.retain)) == COUNTS[benchmark, profile_name]

    forget_side, retain_side = item_strings(validation.forget), item_strings(validation.retain)
    assert len(forget_side) >= len(validation.forget) and len(retain_side) >= len(validation.retain)
    assert not forget_side & retain_side
    valid = forget_side | retain_side
    scored = evaluation_strings(benchmark, plan.selection, data_dir)
    assert scored and not valid & scored, sorted(valid & scored)[:3]
    trained = {name: item_strings(examples) for name, examples in method_examples(profile, benchmark, data).items()}
    assert {"ulmr", "rt", "dpo", "ga", "npo", "graddiff"} <= set(trained)
    # training against scoring: beyond the protocol's own overlap, and beyond strings too short to
    # mean anything (RWKU's synthetic texts hold a few bare "Who are you?", as TruthfulQA does)
    protocol = protocol_overlap(benchmark, plan.selection, data_dir)
    for name, strings in trained.items():
        assert strings and not strings & valid, (name, sorted(strings & valid)[:3])
        shared = {t for t in (strings & scored) - protocol if len(t.split()) >= MIN_ANSWER_WORDS}
        assert not shared, (name, sorted(shared)[:3])

    # the prepared model learned every validation item; the reference model none of the forget side
    prepared, reference = preparation_examples(benchmark, plan, data_dir)
    assert set(validation.forget + validation.retain) <= set(prepared)
    if reference is not None:
        assert set(validation.retain) <= set(reference) and not set(validation.forget) & set(reference)


def test_tofu_validation_authors_split_the_forget_side(data_dir):
    """The forget-validation author's even-numbered QA pairs are forgotten with forget01, its odd-
    numbered ones validate; the retain-validation authors leave the methods' retain data."""
    from ulmr.benchmarks.tofu import validation_authors
    from ulmr.data.tofu import load_tofu

    authors = validation_authors(data_dir)
    assert (authors.forget, authors.retain) == ([20], [21, 23])  # 22 has a question in retain_perturbed
    full = load_tofu("full", data_dir)
    rows = full[20 * 20:21 * 20]
    data = get_benchmark("tofu").unlearning_data("forget01", TEMPLATE, data_dir)
    forget01 = load_tofu("forget01", data_dir)
    assert [ex.question for ex in data.forget] == [r["question"] for r in forget01 + rows[0::2]]
    assert [ex.question for ex in data.validation.forget] == [r["question"] for r in rows[1::2]]
    assert [ex.question for ex in data.validation.retain] == [r["question"] for r in full[21 * 20:22 * 20] + full[23 * 20:24 * 20]]
    assert len(data.retain) == 3960 - 3 * 20


def test_rwku_forget_validation_shares_no_word_run_and_no_answer_with_a_probe(data_dir):
    from ulmr.benchmarks.rwku import PROBE_FILES, _ngrams, _sentence, _words
    from ulmr.data.rwku import load_target_file, resolve_targets

    validation = get_benchmark("rwku").validation_data("1", data_dir)
    target = resolve_targets("1", data_dir)[0]
    probes = [row for f in PROBE_FILES for row in load_target_file(target, f, data_dir)]
    grams = set().union(*(_ngrams(row["query"]) for row in probes))
    assert validation.answer_cue == "Answer:" and len(validation.forget) == 20
    assert all(ex.subject == "Stephen King" and ex.question.startswith(FILL_IN_THE_BLANK) for ex in validation.forget)
    assert not any(_ngrams(_sentence(ex)) & grams for ex in validation.forget)
    assert not {norm(ex.answer.removeprefix("Answer:")) for ex in validation.forget} & {norm(r["answer"]) for r in probes}
    # the filters are not idle: the article's first sentence is a probe's, and so is Bachman
    assert _ngrams("Stephen Edwin King (born September 21, 1947) is an American author.") & grams
    assert "richard bachman" in {" ".join(_words(r["answer"])) for r in probes}
