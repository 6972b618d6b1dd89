"""TOFU (Maini et al., 2024) as a plug-in: forget a split of 200 fictitious authors' QA pairs.

Selection: a forget split (forget01/05/10). Evaluation: the `tofu_<split>` lm-eval group, its 12
subset metrics, model utility, and forget quality against the retain model. Preparation: the base
model fine-tuned on the profile's TOFU training set (the *target*, "before") and on the same set
minus the forget side (the *retain* model, forget quality's reference); the gate checks that the
target learned its forget set.

Validation (what `ulmr-bench tune` and ULMR's alpha=auto select on; `validation_authors`): three
retain authors that no evaluation task scores (none of their questions is in retain_perturbed, the
only retain set the evaluation reads) and whose questions and answers occur nowhere else in TOFU:

- the *forget-validation author* joins the forget side: the target learns all 20 of its QA pairs,
  the retain model none; methods forget the even-numbered 10 together with the split, and the
  odd-numbered 10 are the forget validation (the split itself is scored in full by the evaluation,
  so none of it can be held out);
- the two *retain-validation authors* are learned by both the target and the retain model; their 40
  QA pairs are the retain validation, and are left out of the methods' retain data.

Every train_set trains on them ("full" has every author anyway; its retain model leaves out the
forget-validation author), so the target has learned every validation item under every profile.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from ulmr.benchmarks.registry import (CLOSEST_TO_REFERENCE, HIGHER, LOWER, Axis, Benchmark, BenchmarkPlan,
                                      DocStatistic, Preparation, PreparedModel, RunContext,
                                      register_benchmark)
from ulmr.errors import UlmrError
from ulmr.prompts import PromptTemplate
from ulmr.unlearning.interface import AVOID_RESPONSES, Example, UnlearningData, ValidationData

SUBSETS = (("forget", "Forget"), ("retain", "Retain"), ("real_authors", "Real authors"),
           ("world_facts", "World facts"))
METRICS = (("prob", "Prob"), ("rougeL_recall", "ROUGE-L"), ("truth_ratio", "TR"))
# model utility's nine inputs: every metric of every subset but the forget set
UTILITY_INPUTS = tuple(f"{s}_{m}" for s, _ in SUBSETS[1:] for m, _ in METRICS)


# KS p-values by (D * n * m, n, m): a p-value depends on nothing else, so the bootstrap of forget
# quality computes each distinct one once
_KS_P_VALUES: dict[tuple[int, int, int], float] = {}


def _forget_quality_of(values) -> float:
    """Forget quality of per-doc lists (DocStatistic.compute): the KS test's p-value between the run's
    and the retain model's forget truth ratios."""
    import warnings

    import numpy as np

    from ulmr.metrics import forget_quality

    run = np.sort(np.asarray(values["forget_truth_ratio_r"], dtype=float))
    reference = np.sort(np.asarray(values["reference_truth_ratio_r"], dtype=float))
    n, m = run.size, reference.size
    both = np.concatenate([run, reference])
    # the KS statistic times n * m, exactly: the largest gap between the counts at or below each value
    d = int(np.max(np.abs(np.searchsorted(run, both, side="right") * m
                          - np.searchsorted(reference, both, side="right") * n)))
    if (d, n, m) not in _KS_P_VALUES:
        with warnings.catch_warnings():  # scipy says when its exact p-value falls back to the asymptotic one
            warnings.simplefilter("ignore", RuntimeWarning)
            _KS_P_VALUES[(d, n, m)] = forget_quality(run.tolist(), reference.tolist())
    return _KS_P_VALUES[(d, n, m)]


def _model_utility_of(values) -> float:
    """Model utility of per-doc lists (DocStatistic.compute): the harmonic mean of the nine means."""
    import numpy as np

    from ulmr.metrics import model_utility

    return model_utility([float(np.mean(values[key])) for key in UTILITY_INPUTS])


# validation authors (module docstring): one on the forget side, two on the retain side
FORGET_VALIDATION_AUTHORS, RETAIN_VALIDATION_AUTHORS = 1, 2


@dataclass
class TofuPlan(BenchmarkPlan):
    """TOFU: which split to forget, what the target/retain models are fine-tuned on, the gate.

    split: the forget split (forget01, forget05, forget10).
    train_set: "full" (TOFU's protocol: target on full.json, retain model on the retain split
        less the forget-validation author) or "forget_plus_retain_eval" (the forget authors plus
        the authors retain_perturbed covers: the smallest set on which every TOFU metric is
        meaningful); both add the validation authors (module docstring).
    gate_min_rouge_gain: the target model's forget ROUGE-L recall must beat the base model's by at
        least this much, or the run stops (None: no gate).
    """

    split: str = "forget01"
    train_set: str = "forget_plus_retain_eval"
    gate_min_rouge_gain: float | None = 0.1

    @property
    def selection(self) -> str:
        return self.split


@register_benchmark
class Tofu(Benchmark):
    """TOFU: forget a split of fictitious authors; forget quality against a retain model."""

    name = "tofu"
    plan_class = TofuPlan
    selection_option = "split"
    selection_help = "TOFU forget split: forget01, forget05 or forget10 (default forget01)."
    default_selection = "forget01"
    columns = ([("forget_quality", "Forget quality"), ("model_utility", "Model utility")]
               + [(f"{s}_{m}", f"{sh} {mh}") for s, sh in SUBSETS for m, mh in METRICS])
    directions = (
        ("forget_quality", HIGHER),  # KS p-value: truth ratios look like the retain model's
        ("forget_truth_ratio", HIGHER),  # min(R, 1/R): 1 = paraphrase and perturbations alike
        ("forget_prob", CLOSEST_TO_REFERENCE),  # a likelihood: below the retain model's is over-unlearning
        ("forget_", LOWER),  # ROUGE-L: the forget answers are no longer generated
        ("", HIGHER),  # model utility; retain, real authors, world facts
    )
    column_notes = (
        "Forget Prob is closest to the retain row's: it is a likelihood, and one below what a model that "
        "never saw the forget set gives is over-unlearning (the forget answers made less likely than "
        "unseen text, which a membership test detects), which \"lower is better\" would reward.",
        "Forget ROUGE-L stays lower is better (TOFU's convention): a generation below the retain model's "
        "overlap, e.g. a refusal, reproduces none of the answer; its cost shows in the retain columns.",
        "Forget TR is min(R, 1/R), at most 1 (true and false answers equally likely): higher is better.",
        "Forget quality's q: the KS p-value recomputed on resampled forget questions, the same questions "
        "for the run and the retain model (their truth ratios, stored in each result's per_question). "
        "Model utility's q resamples each of its three subsets' questions (Prob, ROUGE-L and TR of a "
        "question together).",
    )
    summary_columns = (("forget_quality", "Forget quality"), ("model_utility", "Model utility"),
                       ("forget_rougeL_recall", "Forget ROUGE-L"), ("retain_rougeL_recall", "Retain ROUGE-L"))
    table_groups = (
        ("Forget set", ("forget_quality", "forget_prob", "forget_rougeL_recall", "forget_truth_ratio")),
        ("Retain set and model utility", ("model_utility", "retain_prob", "retain_rougeL_recall",
                                          "retain_truth_ratio")),
        ("Real authors and world facts", tuple(f"{s}_{m}" for s in ("real_authors", "world_facts")
                                              for m, _ in METRICS)),
    )
    # model utility: the retain, real-authors and world-facts docs resampled separately, each doc's
    # Prob, ROUGE-L and TR together; forget quality: the forget questions, for the run and the retain
    # model together (reference_per_doc_values)
    doc_statistics = {
        "model_utility": DocStatistic(strata=tuple(tuple(f"{s}_{m}" for m, _ in METRICS) for s, _ in SUBSETS[1:]),
                                      compute=_model_utility_of),
        "forget_quality": DocStatistic(strata=(("forget_truth_ratio_r", "reference_truth_ratio_r"),),
                                       compute=_forget_quality_of)}
    trade_off_axes = ((Axis("forget_quality", "forget quality (KS p-value)", log=True),
                       Axis("forget_rougeL_recall", "1 - forget ROUGE-L recall", flipped=True)),
                      Axis("model_utility", "model utility"))
    reference_role = "retain"
    reference_columns = ("forget_quality",)
    reference_note = "Forget quality: KS test of each run's forget truth ratios against the retain model's"

    # ---- evaluation ------------------------------------------------------------------------

    def tasks(self, selection: str) -> list[str]:
        from ulmr.data.tofu import forget_fraction

        forget_fraction(selection)  # validates the split name
        return [f"tofu_{selection}"]

    def forget_probe_tasks(self, selection: str) -> list[str]:
        return [f"tofu_{selection}_forget_rouge"]

    def summarize(self, results: dict[str, Any], samples: dict[str, list]) -> tuple[dict[str, float], dict[str, list]]:
        from lm_eval_tasks.tofu.utils import question_stats
        from ulmr.metrics import model_utility

        split = next(t.split("_")[1] for t in results if t.startswith("tofu_forget") and "_forget_" in t)
        metrics = {}
        for subset, _ in SUBSETS:
            for metric, _ in METRICS:
                task = results.get(_task_name(subset, metric, split))
                if task is not None:  # a run of a subset of the tasks reports what it has
                    metrics[f"{subset}_{metric}"] = task[f"{metric},none"]
        utility_inputs = [f"{s}_{m}" for s, _ in SUBSETS[1:] for m, _ in METRICS]
        if all(k in metrics for k in utility_inputs):
            metrics["model_utility"] = model_utility([metrics[k] for k in utility_inputs])
        forget_samples = sorted(samples.get(f"tofu_{split}_forget_prob", []), key=lambda s: s["doc_id"])
        ratios = [question_stats(s["doc"], [float(r[0][0]) for r in s["resps"]])["truth_ratio_r"]
                  for s in forget_samples]
        return metrics, {"forget_truth_ratio": ratios}

    def per_doc_values(self, samples: dict[str, list]) -> dict[str, list[float]]:
        """Every subset column's per-question values (lm-eval's per-doc prob, truth_ratio and
        rougeL_recall), in doc order, so that one subset's lists are aligned question by question."""
        splits = [t.split("_")[1] for t in samples if t.startswith("tofu_forget") and "_forget_" in t]
        values = {}
        for subset, _ in SUBSETS:
            for metric, _ in METRICS:
                records = samples.get(_task_name(subset, metric, splits[0] if splits else ""), [])
                if records and all(isinstance(r.get(metric), (int, float)) for r in records):
                    values[f"{subset}_{metric}"] = [float(r[metric]) for r in sorted(records, key=_doc_id)]
        return values

    def reference_per_doc_values(self, result: dict[str, Any], reference: dict[str, Any]) -> dict[str, list[float]]:
        """Both runs' per-question forget truth ratios R, in question order, for forget quality's bootstrap."""
        ratios, reference_ratios = forget_truth_ratios(result), forget_truth_ratios(reference)
        if not ratios or not reference_ratios:
            return {}
        return {"forget_truth_ratio_r": ratios, "reference_truth_ratio_r": reference_ratios}

    def stored_standard_errors(self, result: dict[str, Any]) -> dict[str, float]:
        """lm-eval's stderr of each subset column's mean (model utility and forget quality: none)."""
        stored = result.get("lm_eval_results") or {}
        errors = {}
        for subset, _ in SUBSETS:
            for metric, _ in METRICS:
                value = stored.get(_task_name(subset, metric, str(result.get("selection"))), {}).get(
                    f"{metric}_stderr,none")
                if isinstance(value, (int, float)):
                    errors[f"{subset}_{metric}"] = float(value)
        return errors

    def reference_metrics(self, result: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
        """Forget quality: the KS test of the run's forget truth ratios against the retain model's
        on the same split (None when either result has none)."""
        from ulmr.metrics import forget_quality

        if reference.get("selection") != result.get("selection"):
            raise UlmrError(f"reference results are for {reference.get('selection')}, not "
                            f"{result.get('selection')}: evaluate the retain model on the same split")
        ratios, reference_ratios = forget_truth_ratios(result), forget_truth_ratios(reference)
        return {"forget_quality": forget_quality(ratios, reference_ratios) if ratios and reference_ratios else None}

    # ---- unlearning and tuning -------------------------------------------------------------

    def unlearning_data(self, selection: str, template: PromptTemplate, data_dir=None) -> UnlearningData:
        """forget = the split's QA pairs and the forget-validation author's trained half, retain =
        the matching retain split (forget01 -> retain99) less the validation authors, refusals =
        TOFU's idontknow list, validation = `validation_data`. TOFU has no author-name field, so
        subjects stay empty."""
        from ulmr.data.tofu import load_idontknow, load_tofu, retain_split_for

        retain_split = retain_split_for(selection)  # also rejects a split name that is not a forget split
        authors = validation_authors(data_dir)
        rows = _author_rows(data_dir)
        trained_half = [row for author in authors.forget for row in rows[author][0::2]]
        forget = _examples(load_tofu(selection, data_dir) + trained_half)
        held = {row["question"] for author in authors.forget + authors.retain for row in rows[author]}
        retain = _examples([row for row in load_tofu(retain_split, data_dir) if row["question"] not in held])
        # the paraphrased and perturbed answers the truth ratio scores: a generated negative response
        # (ULMR's negatives=alternative) must never be one of them
        avoid = {row["question"]: [row["paraphrased_answer"], *row["perturbed_answer"]]
                 for row in load_tofu(f"{selection}_perturbed", data_dir)}
        return UnlearningData(benchmark=self.name, name=selection, forget=forget, retain=retain,
                              forget_questions=forget, subjects=[], template=template,
                              refusals=load_idontknow(data_dir),
                              metadata={"retain_split": retain_split, "validation_authors": authors.as_dict(),
                                        AVOID_RESPONSES: avoid},
                              validation=self.validation_data(selection, data_dir))

    def validation_data(self, selection: str, data_dir=None) -> ValidationData:
        """forget = the odd-numbered 10 QA pairs of the forget-validation author, retain = the 40 QA
        pairs of the retain-validation authors (module docstring). The same for every split."""
        from ulmr.data.tofu import forget_fraction

        forget_fraction(selection)  # validates the split name
        authors = validation_authors(data_dir)
        rows = _author_rows(data_dir)
        forget = [row for author in authors.forget for row in rows[author][1::2]]
        retain = [row for author in authors.retain for row in rows[author]]
        return ValidationData(forget=_examples(forget), retain=_examples(retain),
                              metadata={"authors": authors.as_dict()})

    # ---- preparation -----------------------------------------------------------------------

    def train_models(self, run: RunContext) -> tuple[PreparedModel, PreparedModel]:
        """The target and the retain model."""
        from ulmr.prepare import fine_tuned

        plan: TofuPlan = run.plan
        forget, retain = tofu_training_rows(plan.split, plan.train_set, run.data_dir, plan.max_train_items,
                                            retain_eval_limit=plan.eval.get("limit"))
        # the target learns forget + retain, the retain model retain only (both with their validation authors)
        run.say("preparing the target and retain models (cached after the first run)")
        target = fine_tuned(run.model, run.template, _examples(forget + retain), plan.prepare, run.prep_seed,
                            "tofu-target")
        retain_model = fine_tuned(run.model, run.template, _examples(retain), plan.prepare, run.prep_seed,
                                  "tofu-retain")
        return target, retain_model

    def prepare(self, run: RunContext) -> Preparation:
        target, retain_model = self.train_models(run)
        before = run.reference_row("before", target.path, target.record)
        run.reference_row("retain", retain_model.path, retain_model.record)
        self._gate(run, before)
        return Preparation(target, retain_model.path)

    def _gate(self, run: RunContext, before: dict[str, Any]) -> None:
        threshold = run.plan.gate_min_rouge_gain
        if threshold is None:
            return
        base_rouge = run.base_forget_metrics["forget_rougeL_recall"]
        target_rouge = before["metrics"]["forget_rougeL_recall"]
        run.say(f"gate: forget ROUGE-L recall target {target_rouge:.3f} vs base {base_rouge:.3f}")
        if target_rouge < base_rouge + threshold:
            raise UlmrError(
                f"the target model does not know its forget set (forget ROUGE-L {target_rouge:.3f}, base "
                f"{base_rouge:.3f}, gate needs +{threshold}): train longer or with a higher lr "
                "(--set tofu.prepare.epochs=... / tofu.prepare.lr=...)")


def forget_truth_ratios(result: dict[str, Any]) -> list[float]:
    per_question = result.get("per_question")
    return (per_question.get("forget_truth_ratio") or []) if isinstance(per_question, dict) else []


def tofu_training_rows(split: str, train_set: str, data_dir=None, max_items: int | None = None,
                       retain_eval_limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """(forget rows, retain rows) of the TOFU training set; target = both, retain model = retain.

    With "forget_plus_retain_eval", the retain authors are those whose questions the retain
    evaluation scores: all of retain_perturbed, or its first `retain_eval_limit` questions when the
    evaluation is a slice (retain_perturbed is ordered by author, 20 questions each). Either way
    the validation authors follow, after the `max_items` cap (the target must have learned every
    validation item): the forget-validation author's 20 rows on the forget side, the retain-
    validation authors' on the retain side.
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
    authors = validation_authors(data_dir)
    keep_authors -= set(authors.forget + authors.retain)
    rows = [(i, row) for i, row in enumerate(full) if author_of(i) in keep_authors]
    forget = [row for i, row in rows if i >= first_forget][:max_items]
    retain = [row for i, row in rows if i < first_forget][:max_items]
    by_author = _author_rows(data_dir)
    forget += [row for author in authors.forget for row in by_author[author]]
    retain += [row for author in authors.retain for row in by_author[author]]
    return forget, retain


@dataclass(frozen=True)
class ValidationAuthors:
    """Indices (author_of) of the forget-validation and retain-validation authors."""

    forget: list[int]
    retain: list[int]

    def as_dict(self) -> dict[str, list[int]]:
        return {"forget": list(self.forget), "retain": list(self.retain)}


def validation_authors(data_dir=None) -> ValidationAuthors:
    """The first authors, in TOFU's order, that are in every retain split (retain90 included), have
    no question in retain_perturbed, and whose questions and answers (normalised) occur nowhere else
    in full.json: the first FORGET_VALIDATION_AUTHORS of them on the forget side, the next
    RETAIN_VALIDATION_AUTHORS on the retain side (module docstring)."""
    return _validation_authors(_data_key(data_dir))


@functools.cache
def _validation_authors(data_dir) -> ValidationAuthors:
    from collections import Counter

    from ulmr.data.tofu import FORGET_SPLITS, load_tofu, retain_split_for

    by_author = _author_rows(data_dir)
    scored = {row["question"] for row in load_tofu("retain_perturbed", data_dir)}
    every_retain = set.intersection(*({row["question"] for row in load_tofu(retain_split_for(s), data_dir)}
                                      for s in FORGET_SPLITS))
    counts = Counter(_normalised(row[field]) for rows in by_author for row in rows for field in ("question", "answer"))
    candidates = [author for author, rows in enumerate(by_author)
                  if all(row["question"] in every_retain and row["question"] not in scored
                         and counts[_normalised(row["question"])] == counts[_normalised(row["answer"])] == 1
                         for row in rows)]
    needed = FORGET_VALIDATION_AUTHORS + RETAIN_VALIDATION_AUTHORS
    if len(candidates) < needed:
        raise UlmrError(f"TOFU has {len(candidates)} authors outside retain_perturbed with unique questions, "
                        f"{needed} are needed for validation: check full.json and retain_perturbed.json")
    return ValidationAuthors(candidates[:FORGET_VALIDATION_AUTHORS], candidates[FORGET_VALIDATION_AUTHORS:needed])


@functools.cache
def _author_rows_cached(data_dir) -> list[list[dict]]:
    from ulmr.data.tofu import QUESTIONS_PER_AUTHOR, load_tofu

    full = load_tofu("full", data_dir)
    return [full[start:start + QUESTIONS_PER_AUTHOR] for start in range(0, len(full), QUESTIONS_PER_AUTHOR)]


def _author_rows(data_dir) -> list[list[dict]]:
    """full.json's rows, one list per author (20 each, in TOFU's order)."""
    return _author_rows_cached(_data_key(data_dir))


def _data_key(data_dir):
    """A hashable, resolved data directory (or None for the hub), for the caches above."""
    from ulmr.data.common import data_dir as resolve

    root = resolve(data_dir)
    return None if root is None else str(root.resolve())


def _normalised(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _examples(rows: list[dict]) -> list[Example]:
    return [Example(answer=r["answer"], question=r["question"]) for r in rows]


def _doc_id(record: dict[str, Any]) -> int:
    return record.get("doc_id", 0)


def _task_name(subset: str, metric: str, split: str) -> str:
    prefix = f"tofu_{split}_forget" if subset == "forget" else f"tofu_{subset}"
    return f"{prefix}_{'rouge' if metric == 'rougeL_recall' else 'prob'}"
