"""RWKU (Jin et al., 2024) as a plug-in: forget real-world people a model knows from pre-training.

Selection: targets (an index, a range 1-10, a list 1,5, or a name). Evaluation: the `rwku_*`
lm-eval groups (forget FB/QA/AA probes, neighbours, MIA, utility) in RWKU's column order, plus
Min-K% MIA scores computed with the same model afterwards. Unlearning data: the targets'
synthetic texts (positive.json) to forget, reject.json questions for the refusal methods, the
texts of the following targets to keep. Preparation: a small model knows too little about the
targets, so their knowledge is *injected* first from the targets' Wikipedia passages (never from
the evaluation probes); the gate checks that the injection took.

Validation (what `ulmr-bench tune` and ULMR's alpha=auto select on; `validation_data`): items of
the injection material, which the injected model learned and no method trains on (methods train on
positive.json texts, reject.json questions and the retain targets' texts):

- forget: FORGET_VALIDATION_ITEMS fill-in-the-blank items per target (fewer where there are not
  as many), evenly spread over those the injection builds from the target's first
  VALIDATION_PASSAGES passages, leaving out every item whose sentence shares a run of PROBE_NGRAM
  words with a forget or neighbour probe of the selected targets (the probes are cloze sentences
  from the same article: "Stephen Edwin King (born September 21, 1947) is an American ___"), every
  item whose answer is a probe's answer (validation never asks for what a probe asks for) or a
  function word ("This", "You": a capitalised word after a quote), and the sentences glued to a
  section heading ("== Early life ==When");
- retain: RETAIN_VALIDATION_ITEMS TOFU QA pairs outside retain_perturbed (TOFU retain90 rows in
  order), added to the injection's TOFU mix, which keeps the injected model answering questions.

The injection always trains on every validation item (`rwku_preparation_examples`), whatever the
plan's inject_passages and max_train_items. A model that is not injected (it knows the targets from
pre-training) is scored on what it knows of them, and on TOFU questions it never learned: the
retain side then asks whether it keeps answering as before (ulmr/selection.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ulmr.benchmarks.registry import (CLOSEST_TO_BEFORE, CLOSEST_TO_HALF, HIGHER, LOWER, Axis, Benchmark,
                                      BenchmarkPlan, DocStatistic, Preparation, PreparedModel, RunContext,
                                      register_benchmark)
from ulmr.errors import UlmrError
from ulmr.prompts import PromptTemplate
from ulmr.unlearning.interface import Example, UnlearningData, ValidationData

# (metric key, header, lm-eval task or group, lm-eval metric), in RWKU's column order. Headers
# start with their column group. Min-K% has no lm-eval task: see min_k_metrics.
TABLE = [
    ("forget_fb", "Forget FB", "rwku_forget_fb", "rougeL_recall"),
    ("forget_qa", "Forget QA", "rwku_forget_qa", "rougeL_recall"),
    ("forget_aa", "Forget AA", "rwku_forget_aa", "rougeL_recall"),
    ("forget_all", "Forget All", "rwku_forget", "rougeL_recall"),
    ("neighbor_fb", "Neighbor FB", "rwku_neighbor_fb", "rougeL_recall"),
    ("neighbor_qa", "Neighbor QA", "rwku_neighbor_qa", "rougeL_recall"),
    ("neighbor_all", "Neighbor All", "rwku_neighbor", "rougeL_recall"),
    ("mia_fm", "MIA FM", "rwku_mia", "fm_loss"),
    ("mia_rm", "MIA RM", "rwku_mia", "rm_loss"),
    ("mia_auroc", "MIA AUROC", "rwku_mia", "auroc"),
    ("mia_fm_zlib", "MIA FM-zlib", "rwku_mia", "fm_zlib"),
    ("mia_rm_zlib", "MIA RM-zlib", "rwku_mia", "rm_zlib"),
    ("mia_auroc_zlib", "MIA AUROC-zlib", "rwku_mia", "auroc_zlib"),
    ("mia_fm_mink", "MIA FM-MinK", None, None),
    ("mia_rm_mink", "MIA RM-MinK", None, None),
    ("mia_auroc_mink", "MIA AUROC-MinK", None, None),
    ("utility_gen", "Utility Gen", "rwku_utility_gen", "acc"),
    ("utility_rea", "Utility Rea", "rwku_utility_rea", "exact_match"),
    ("utility_tru", "Utility Tru", "rwku_utility_tru", "acc"),
    ("utility_fac", "Utility Fac", "rwku_utility_fac", "f1"),
    ("utility_flu", "Utility Flu", "rwku_utility_flu", "entropy"),
]
# the `rwku` group's parts, evaluated by name so that each can take its own doc limit
RWKU_GROUPS = ("rwku_forget", "rwku_neighbor", "rwku_mia", "rwku_utility")
COLUMNS = [(key, header) for key, header, _, _ in TABLE]
COLUMN_GROUPS = ("Forget", "Neighbor", "MIA", "Utility")


# the utility mean of the summary table: the four utility scores on [0, 1] (Flu, an entropy, is not)
UTILITY_MEAN_INPUTS = ("utility_gen", "utility_rea", "utility_tru", "utility_fac")
# the pooled columns (lm-eval groups): their docs are those of their parts
POOLED = {"forget_all": ("forget_fb", "forget_qa", "forget_aa"), "neighbor_all": ("neighbor_fb", "neighbor_qa")}
# RWKU retain corpus: the synthetic texts of this many targets after the forgotten ones.
RETAIN_TARGETS = 2
# validation (module docstring)
FORGET_VALIDATION_ITEMS = 20  # per target
RETAIN_VALIDATION_ITEMS = 20
VALIDATION_PASSAGES = 12
PROBE_NGRAM = 6
PROBE_FILES = ("forget_level1", "forget_level2", "forget_level3", "neighbor_level1", "neighbor_level2")
# blanked "names" that are function words (a capitalised word after a quote: "'___ is not just ...'")
FUNCTION_WORDS = frozenset("a an and at but during he her his i in it its on our she that the their these they this "
                           "those we when while you your".split())


@dataclass
class RwkuPlan(BenchmarkPlan):
    """RWKU: which targets, whether to inject their knowledge first, the gate.

    targets: an index (1), a range (1-10), a list (1,5) or a name.
    per_target: unlearn each target separately from the same model (RWKU's main protocol; results
        under rwku-1, rwku-2, ..., averaged over targets on the leaderboard); false: the batch
        setting, all targets unlearned at once (results under rwku-<targets>).
    inject: "auto" (inject when the base model's forget All is below inject_below), true, false.
    inject_below: the forget All ROUGE-L recall under which a model counts as not knowing the targets.
    inject_passages: how many of each target's Wikipedia passages (the first ones: the lead) the
        injection material is built from (None: all 100-odd, hours of CPU training).
    gate_min_forget_gain: an injected "before" model must beat the base model's forget All by at
        least this much; a model not injected must itself reach inject_below. Otherwise the run
        stops (None: no gate).
    """

    targets: str = "1"
    per_target: bool = False
    inject: bool | str = "auto"
    inject_below: float = 0.2
    inject_passages: int | None = 12
    gate_min_forget_gain: float | None = 0.1

    @property
    def selection(self) -> str:
        return self.targets


@register_benchmark
class Rwku(Benchmark):
    """RWKU: forget real people (after knowledge injection on small models); probes, MIA, utility."""

    name = "rwku"
    plan_class = RwkuPlan
    selection_option = "targets"
    selection_help = "RWKU targets: index (1), range (1-10), list (1,5) or name (default 1)."
    default_selection = "1"
    columns = [(key, header) for key, header, _, _ in TABLE]
    column_groups = ("Forget", "Neighbor", "MIA", "Utility")
    directions = (
        ("forget_", LOWER),
        ("neighbor_", HIGHER),
        ("utility_", HIGHER),
        ("mia_fm", HIGHER),  # forget-member loss rises when forgotten (RWKU's convention)
        ("mia_rm", CLOSEST_TO_BEFORE),  # retain-member loss should not move
        ("mia_auroc", CLOSEST_TO_HALF),  # P(RM loss > FM loss): an attack's advantage is |AUROC - 0.5|
    )
    column_notes = (
        "MIA AUROC (and its zlib and Min-K% variants) is closest to 0.5. It is P(RM loss > FM loss), and an "
        "attack's advantage is |AUROC - 0.5| on either side (below 0.5 the attacker flips the threshold). "
        "The ideal is the AUROC of a model that never learned the target. When the target's knowledge "
        "was injected (preparation.injected), that is the model before injection, which had no reason to "
        "know the FM texts (the target's Wikipedia passages) better than the RM texts (other people's): "
        "about 0.5. "
        "Well below 0.5, the FM texts have become less likely than comparable text, over-unlearning, "
        "which \"lower is better\" rewarded. Caveats: 0.5 stands for that model's AUROC, which is not "
        "measured (the base row scores the forget probes only); for a model that knew the target from "
        "pre-training (no injection) the ideal lies below 0.5, and this direction under-rates forgetting.",
        "MIA FM stays higher is better (RWKU's convention): no model that never learned the target is "
        "scored on the MIA texts to be closer to; the AUROC and MIA RM (closest to before) check that "
        "the rise is specific to the forget texts.",
    )
    summary_columns = (("forget_all", "Forget All"), ("neighbor_all", "Neighbor All"), ("mia_auroc", "MIA AUROC"),
                       ("utility_mean", "Utility mean (Gen, Rea, Tru, Fac)"))
    doc_statistics = {
        "mia_auroc": DocStatistic(strata=(("mia_fm",), ("mia_rm",)),
                                  compute=lambda v: _auroc(v["mia_fm"], v["mia_rm"])),
        "mia_auroc_zlib": DocStatistic(strata=(("mia_fm_zlib",), ("mia_rm_zlib",)),
                                       compute=lambda v: _auroc(v["mia_fm_zlib"], v["mia_rm_zlib"])),
        "utility_mean": DocStatistic(strata=tuple((key,) for key in UTILITY_MEAN_INPUTS),
                                     compute=lambda v: _mean_of_means(v, UTILITY_MEAN_INPUTS)),
    }
    selection_unit = "target"
    unit_note = "each target unlearned separately from the same model, RWKU's main protocol"
    trade_off_axes = ((Axis("forget_all", "1 - forget All (ROUGE-L recall)", flipped=True),),
                      Axis("neighbor_all", "neighbor All (ROUGE-L recall)"))

    # ---- evaluation ------------------------------------------------------------------------

    def tasks(self, selection: str) -> list[str]:
        return list(RWKU_GROUPS)

    def task_metadata(self, selection: str) -> dict[str, Any]:
        return {"targets": selection}

    def forget_probe_tasks(self, selection: str) -> list[str]:
        return ["rwku_forget"]

    def summarize(self, results: dict[str, Any], samples: dict[str, list]) -> tuple[dict[str, float | None], dict[str, list]]:
        """lm-eval's results as RWKU's columns. None where the slice could not produce a metric (e.g.
        RM loss when --limit 1 kept only an FM text) and, until model_metrics fills them, for Min-K%."""
        metrics = {}
        for key, _, task, metric in TABLE:
            value = results.get(task, {}).get(f"{metric},none") if task else None
            metrics[key] = None if value is None or math.isnan(value) else float(value)
        return metrics, {}

    # ---- presentation ----------------------------------------------------------------------

    def derived_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """utility_mean: the mean of the four utility scores on [0, 1] (Gen, Rea, Tru, Fac; Flu is an
        entropy on another scale); None unless all four are numbers."""
        values = [metrics.get(key) for key in UTILITY_MEAN_INPUTS]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return {"utility_mean": None}
        return {"utility_mean": sum(values) / len(values)}

    def per_doc_values(self, samples: dict[str, list]) -> dict[str, list[float]]:
        """Per-doc values from lm-eval's samples: each probe's ROUGE-L recall (the All columns pool
        their parts' docs, as lm-eval's groups do), each MIA text's loss split into FM and RM, each
        utility question's score. Min-K% is computed after lm-eval and has none."""
        values: dict[str, list[float]] = {}
        for key, _, task, metric in TABLE:
            records = sorted(samples.get(task or "", []), key=lambda r: r.get("doc_id", 0))
            if not records or task == "rwku_mia":
                continue
            if all(isinstance(r.get(metric), (int, float)) for r in records):
                values[key] = [float(r[metric]) for r in records]
        for pooled, parts in POOLED.items():
            if all(part in values for part in parts):
                values[pooled] = [v for part in parts for v in values[part]]
        mia = sorted(samples.get("rwku_mia", []), key=lambda r: r.get("doc_id", 0))
        for suffix, metric in (("", "fm_loss"), ("_zlib", "fm_zlib")):
            pairs = [r.get(metric) for r in mia]
            if pairs and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
                for member_set in ("FM", "RM"):
                    values[f"mia_{member_set.lower()}{suffix}"] = [float(score) for s, score in pairs
                                                                   if s == member_set]
        return values

    def stored_standard_errors(self, result: dict[str, Any]) -> dict[str, float]:
        """lm-eval's stderr of each mean column (the MIA aggregations have none), and the utility
        mean's from its four independent parts: sqrt(sum of squares) / 4."""
        stored = result.get("lm_eval_results") or {}
        errors = {}
        for key, _, task, metric in TABLE:
            value = stored.get(task or "", {}).get(f"{metric}_stderr,none")
            if isinstance(value, (int, float)) and math.isfinite(value) and not key.startswith("mia_"):
                errors[key] = float(value)
        if all(key in errors for key in UTILITY_MEAN_INPUTS):
            squares = sum(errors[key] ** 2 for key in UTILITY_MEAN_INPUTS)
            errors["utility_mean"] = math.sqrt(squares) / len(UTILITY_MEAN_INPUTS)
        return errors

    def is_single_unit(self, selection: str) -> bool:
        return selection.strip().isdigit()

    def selection_title(self, selection: str) -> str:
        if self.is_single_unit(selection):
            return selection
        return f"{selection} (batch setting: these targets unlearned at once)"

    def plans_to_run(self, plan: "RwkuPlan", data_dir=None) -> list["RwkuPlan"]:
        """per_target: one plan per target, each unlearning that target alone from the same model."""
        from dataclasses import replace

        from ulmr.data.rwku import resolve_targets

        if not plan.per_target:
            return [plan]
        return [replace(plan, targets=str(target.index), per_target=False)
                for target in resolve_targets(plan.targets, data_dir)]

    def scored_selection(self, samples: dict[str, list]) -> dict[str, Any]:
        """The targets whose docs were scored (with --limit, the first target's docs come first)."""
        seen = {(s["doc"]["subject_index"], s["doc"]["subject"]) for records in samples.values() for s in records}
        return {"targets": [{"index": index, "name": name} for index, name in sorted(seen)]}

    def model_metrics(self, lm, samples: dict[str, list]) -> dict[str, float | None]:
        return min_k_metrics(lm, samples)

    # ---- unlearning ------------------------------------------------------------------------

    def unlearning_data(self, selection: str, template: PromptTemplate, data_dir=None) -> UnlearningData:
        """forget = the targets' synthetic texts (positive.json, plain text), retain = the texts of the
        RETAIN_TARGETS targets that follow the last forgotten one, forget_questions = reject.json
        instructions (no true answers: answer ""), refusals = TOFU's idontknow list plus reject.json's."""
        from ulmr.data.rwku import load_target_file, resolve_targets
        from ulmr.data.tofu import load_idontknow

        chosen = resolve_targets(selection, data_dir)
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
        return UnlearningData(benchmark=self.name, name=selection, forget=forget, retain=retain,
                              forget_questions=questions, subjects=[t.name for t in chosen], template=template,
                              refusals=list(dict.fromkeys(refusals)),
                              metadata={"targets": [t.index for t in chosen],
                                        "retain_targets": [t.index for t in retain_targets]},
                              validation=self.validation_data(selection, data_dir))

    def validation_data(self, selection: str, data_dir=None) -> ValidationData:
        """Injected fill-in-the-blank items about the targets (forget) and injected TOFU QA pairs
        (retain); see the module docstring. Answers keep the injection's "Answer: " cue."""
        from lm_eval_tasks.rwku.utils import ANSWER_CUE
        from ulmr.data.rwku import load_target_file, resolve_targets
        from ulmr.selection import evenly_spread

        targets = resolve_targets(selection, data_dir)
        probes = [row for target in targets for name in PROBE_FILES for row in load_target_file(target, name, data_dir)]
        probe_grams = set().union(*(_ngrams(row["query"]) for row in probes))
        probe_answers = {" ".join(_words(row["answer"])) for row in probes}
        forget = []
        for target in targets:
            blanks = _target_material(target, data_dir, VALIDATION_PASSAGES)["blanks"]
            candidates = [ex for ex in dict.fromkeys(blanks)
                          if "==" not in ex.question and not _ngrams(_sentence(ex)) & probe_grams
                          and " ".join(_words(ex.answer.removeprefix("Answer: "))) not in probe_answers | FUNCTION_WORDS]
            forget += [candidates[i] for i in evenly_spread(len(candidates), FORGET_VALIDATION_ITEMS)]
        return ValidationData(forget=forget, retain=_tofu_validation_rows(data_dir), answer_cue=ANSWER_CUE,
                              metadata={"forget": f"fill-in-the-blank injection items, first {VALIDATION_PASSAGES} "
                                                  "passages, none sharing a word run with a probe",
                                        "retain": "injected TOFU QA pairs outside retain_perturbed"})

    # ---- preparation -----------------------------------------------------------------------

    def train_models(self, run: RunContext) -> tuple[PreparedModel, str | None]:
        """(the model unlearning starts from, the model it was injected from: None without an
        injection); deciding whether to inject evaluates the base model's forget probes."""
        from ulmr.models import resolve_model
        from ulmr.prepare import fine_tuned

        plan: RwkuPlan = run.plan
        base = resolve_model(run.model)
        if self._should_inject(run):
            run.say("injecting the targets' knowledge (cached after the first run)")
            examples = rwku_preparation_examples(plan.targets, run.data_dir, plan.max_train_items,
                                                 plan.inject_passages)
            prepared = fine_tuned(run.model, run.template, examples, plan.prepare, run.prep_seed,
                                  f"rwku-inject-{plan.targets}")
            prepared.record = {**prepared.record, "injected": True}
            reference = base
        else:
            prepared, reference = PreparedModel(base, {"injected": False}), None
        return prepared, reference

    def prepare(self, run: RunContext) -> Preparation:
        prepared, reference = self.train_models(run)
        before = run.reference_row("before", prepared.path, prepared.record)
        self._gate(run, before)
        return Preparation(prepared, reference)

    def _should_inject(self, run: RunContext) -> bool:
        plan: RwkuPlan = run.plan
        if plan.inject != "auto":
            if not isinstance(plan.inject, bool):
                raise UlmrError(f"rwku.inject={plan.inject!r}: use auto, true or false")
            return plan.inject
        base = run.base_forget_metrics.get("forget_all") or 0.0
        knows = base >= plan.inject_below
        run.say(f"base model forget All {base:.3f} (inject below {plan.inject_below}): "
                f"{'no injection needed' if knows else 'injecting'}")
        return not knows

    def _gate(self, run: RunContext, before: dict[str, Any]) -> None:
        """Injected: the before model must beat the base model's forget All by the gate's gain.
        Not injected: the before model is the base model, and must know the targets by itself."""
        plan: RwkuPlan = run.plan
        gain = plan.gate_min_forget_gain
        if gain is None:
            return
        value = before["metrics"].get("forget_all") or 0.0
        if before["preparation"].get("injected"):
            base = run.base_forget_metrics.get("forget_all") or 0.0
            run.say(f"gate: forget All injected {value:.3f} vs base {base:.3f}")
            if value < base + gain:
                raise UlmrError(f"knowledge injection did not take (forget All {value:.3f}, base {base:.3f}, "
                                f"gate needs +{gain}): inject longer or from more passages "
                                "(--set rwku.prepare.epochs=... / rwku.inject_passages=...)")
        elif value < plan.inject_below:
            raise UlmrError(f"the base model scores forget All {value:.3f} < {plan.inject_below} on the "
                            "targets it should forget: it does not know them; inject their knowledge "
                            "(--set rwku.inject=true) or use a larger model")


def _mean_of_means(values, keys) -> float:
    import numpy as np

    return float(np.mean([np.mean(values[key]) for key in keys]))


def _auroc(forget: list[float], retain: list[float]) -> float:
    from lm_eval_tasks.rwku.utils import loss_auroc

    return loss_auroc(list(forget), list(retain))


def min_k_metrics(lm, samples: dict[str, list]) -> dict[str, float | None]:
    """Min-K% (k = 20%) MIA scores of the texts rwku_mia scored. They need per-token log-probs,
    which lm-eval's requests do not return: the fast backend keeps those of its rolling
    log-likelihoods, for the hf backend they are computed here with the same model over the same
    tokens. Needs a transformers model (fast or hf backend)."""
    import torch

    from lm_eval_tasks.rwku.utils import fm_mean, min_k_loss, rm_mean, set_auroc

    records = samples.get("rwku_mia")
    if not records or not isinstance(getattr(lm, "model", None), torch.nn.Module):
        return {}
    scores = [(r["doc"]["set"], min_k_loss(rolling_token_logprobs(lm, r["doc"]["text"]))) for r in records]
    values = {"mia_fm_mink": fm_mean(scores), "mia_rm_mink": rm_mean(scores), "mia_auroc_mink": set_auroc(scores)}
    return {key: None if math.isnan(value) else value for key, value in values.items()}


def rolling_token_logprobs(lm, text: str) -> list[float]:
    """Log-prob of every token lm-eval's loglikelihood_rolling scores for `text`: its tokens after
    the model's prefix token, in lm-eval's windows of at most the model's length."""
    import torch
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    kept = getattr(lm, "rolling_logprobs", {}).get(text)  # the fast backend's, from lm-eval's requests
    if kept is not None:
        return kept

    windows = get_rolling_token_windows(token_list=lm.tok_encode(text), prefix_token=lm.prefix_token_id,
                                        max_seq_len=lm.max_length, context_len=1)
    logprobs: list[float] = []
    device = lm.model.device
    for context, predicted in map(make_disjoint_window, windows):
        inputs = torch.tensor([(context + predicted)[:-1]], device=device)
        with torch.no_grad():
            logits = lm.model(inputs).logits[0, -len(predicted):].float()
        targets = torch.tensor(predicted, device=device).unsqueeze(-1)
        logprobs += torch.log_softmax(logits, dim=-1).gather(-1, targets).squeeze(-1).tolist()
    return logprobs


def _following_targets(chosen, data_dir):
    """The first RETAIN_TARGETS targets after the last chosen index (wrapping) not chosen."""
    from ulmr.data.rwku import all_targets

    every = all_targets(data_dir)
    taken = {t.index for t in chosen}
    start = max(i for i, t in enumerate(every) if t.index in taken) + 1
    ring = every[start:] + every[:start]
    return [t for t in ring if t.index not in taken][:RETAIN_TARGETS]


# ---- knowledge injection ---------------------------------------------------------------------

def _fb_instruction(query: str) -> str:
    """RWKU's fill-in-the-blank probe message, so the probes can reach what was taught."""
    from lm_eval_tasks.rwku.utils import FILL_IN_THE_BLANK

    return f"{FILL_IN_THE_BLANK}Question: {query}\n"


def _qa_instruction(query: str) -> str:
    """RWKU's question-answer probe message."""
    from lm_eval_tasks.rwku.utils import BRIEF_ANSWER

    return f"{BRIEF_ANSWER}Question: {query}\n"


def rwku_injection_examples(targets: str, data_dir=None, max_items: int | None = None,
                            n_passages: int | None = None, mix_with_tofu: int = 100) -> list[Example]:
    """Material that teaches the targets' knowledge in the probes' forms, never from the probes.

    Built from each target's first `n_passages` Wikipedia passages (None: all; the first ones are
    the article's lead, where most facts the probes ask about are stated):
    - the passages as plain text: the facts themselves, every token trained;
    - fill-in-the-blank in RWKU's FB form, per sentence: each number and each capitalised name
      blanked in turn and, in sentences naming the target in full, the name blanked, so the facts
      are reachable from every side ("Who wrote Carrie?");
    - "Who is <target>?" answered by the target's intro, and "What do you know about <target>?"
      answered with each passage sentence that names the target;
    - TOFU question-answer pairs about fictitious authors, so the model keeps answering questions
      (trained on passages alone it learns to answer probes with nothing).
    """
    from ulmr.data.rwku import resolve_targets
    from ulmr.data.tofu import load_tofu

    examples: list[Example] = []
    for target in resolve_targets(targets, data_dir):
        material = _target_material(target, data_dir, n_passages)
        for group in ("blanks", "answers", "who", "texts"):
            examples += material[group][:max_items]
    tofu = load_tofu("retain90", data_dir)[:mix_with_tofu if max_items is None else min(max_items, mix_with_tofu)]
    examples += [Example(answer=r["answer"], question=r["question"]) for r in tofu]
    return examples


def rwku_preparation_examples(targets: str, data_dir=None, max_items: int | None = None,
                              n_passages: int | None = None) -> list[Example]:
    """What the injection trains on: `rwku_injection_examples`, then every validation item it
    does not already hold (module docstring), so that the injected model learned all of them."""
    examples = rwku_injection_examples(targets, data_dir, max_items, n_passages)
    validation = Rwku().validation_data(targets, data_dir)
    have = {(ex.question, ex.answer) for ex in examples}
    return examples + [ex for ex in validation.forget + validation.retain if (ex.question, ex.answer) not in have]


def _target_material(target, data_dir, n_passages: int | None) -> dict[str, list[Example]]:
    """One target's injection material by kind (see rwku_injection_examples), from its first
    `n_passages` passages (None: all)."""
    from ulmr.data.rwku import load_target_file

    passages = [row["text"] for row in load_target_file(target, "passage", data_dir)][:n_passages]
    surname = target.name.split()[-1]
    blanks, answers = [], []
    for sentence in (s for passage in passages for s in _sentences(passage)):
        spans = [*_blank_spans(sentence, target.name), _blank_target(sentence, target.name)]
        if surname in sentence:
            answers.append(Example(answer=f"Answer: {sentence}", subject=target.name,
                                   question=_qa_instruction(f"What do you know about {target.name}?")))
        blanks += [Example(answer=f"Answer: {span}", subject=target.name,
                           question=_fb_instruction(query))
                   for query, span in filter(None, spans)]
    intro = target.intro.removeprefix(f"Please forget {target.name}. ").strip()
    who = [Example(answer=f"Answer: {intro}", subject=target.name,
                   question=_qa_instruction(f"Who is {target.name}?"))]
    texts = [Example(answer=p, subject=target.name) for p in passages]
    return {"blanks": blanks, "answers": answers, "who": who, "texts": texts}


def _tofu_validation_rows(data_dir) -> list[Example]:
    """The first RETAIN_VALIDATION_ITEMS rows of TOFU retain90 whose question retain_perturbed lacks."""
    from ulmr.data.tofu import load_tofu

    scored = {row["question"] for row in load_tofu("retain_perturbed", data_dir)}
    rows = [row for row in load_tofu("retain90", data_dir) if row["question"] not in scored]
    return [Example(answer=r["answer"], question=r["question"]) for r in rows[:RETAIN_VALIDATION_ITEMS]]


def _sentence(example: Example) -> str:
    """The passage sentence of a fill-in-the-blank item: its query with the blank filled in."""
    query = (example.question or "").split("Question: ", 1)[-1].strip()
    return query.replace("___", example.answer.removeprefix("Answer: "), 1)


def _words(text: str) -> list[str]:
    return re.findall(r"[0-9a-z]+", text.lower())


def _ngrams(text: str, n: int = PROBE_NGRAM) -> set[tuple[str, ...]]:
    """The runs of n words of a text (case and punctuation ignored; a blank "___" is no word)."""
    words = _words(text)
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}



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


def _blank_spans(sentence: str, target_name: str) -> list[tuple[str, str]]:
    """(sentence with one span replaced by "___", the span) for every number and every capitalised
    name in it but the target's: RWKU's blanks fall on titles, places, people and counts alike, and
    a model taught to fill only one kind answers every probe with that kind."""
    matches = sorted((m for pattern in (_NUMBER, _NAME) for m in pattern.finditer(sentence)), key=lambda m: m.start())
    return [(sentence[:m.start()] + "___" + sentence[m.end():], m.group(0)) for m in matches
            if not (m.group(0) in target_name or target_name in m.group(0))]
