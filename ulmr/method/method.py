"""ULMR (docs/design.md, "ULMR") as an Unlearner: rewrite -> negative responses -> fine-tune -> average.

    1. rewriting.py   K rewrites of every forget question with the designed templates
    2. negatives.py   a negative response for every instruction: a refusal (bank, subject-aware, or
                      LLM-written) or a made-up wrong answer (LLM-written)
    3. the shared training loop: SFT on (instruction -> refusal), loss on the refusal tokens,
       optionally + retain_weight * retain term; trajectory checkpoints kept for a soup
    4. averaging      theta = alpha * theta_unlearned + (1 - alpha) * theta_original
                      (ulmr/unlearning/averaging.py), alpha fixed or chosen (alpha=auto) on the
                      benchmark's validation data by the selection criterion that `ulmr-bench
                      tune` uses too (ulmr/selection.py, auto_alpha); every grid alpha's scores
                      are recorded

Registered as `ulmr`, with the ablation presets `ulmr-norewrite` (original questions only) and
`ulmr-noavg` (alpha = 1). The generated pairs come back in `UnlearningResult.artifacts["pairs"]`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from ulmr.errors import UlmrError
from ulmr.method.generation import TextGenerator
from ulmr.method.leak import DEFAULT_NGRAM
from ulmr.method.negatives import LLM_SOURCES, Pair, negative_responses
from ulmr.method.rewriting import TEMPLATES, check_template_names, original_instructions, rewrite_questions
from ulmr.selection import ALPHA_GRID, ALPHA_VALIDATION_ITEMS, auto_alpha, validation_for
from ulmr.unlearning.config import check_range, config_to_dict
from ulmr.unlearning.averaging import OnDisk, interpolate, load_weights, soup
from ulmr.unlearning.interface import AVOID_RESPONSES, Example, Unlearner, UnlearningData, UnlearningResult
from ulmr.unlearning.losses import answer_nll, retain_term
from ulmr.unlearning.registry import register_method
from ulmr.unlearning.subjects import recurring_names
from ulmr.unlearning.training import TrainingConfig, full_state_dict, planned_steps, retain_items, train


@dataclass
class UlmrConfig(TrainingConfig):
    """ULMR's switches, on top of the shared TrainingConfig (lr, epochs, max_steps, lora,
    retain_weight, seed, ...; an epoch is one pass over the training pairs).

    retain_weight (inherited): 0 by default, as in RT, so that comparing the two isolates what
        rewriting and averaging add; averaging is ULMR's own guard of model utility.
    average_alpha (inherited): refused; ULMR's step 4 is `alpha`.

    The paper's values are not available to us; these defaults are our choices: k=4 plus the
    original gives five instructions per forget question (so an epoch is five times RT's: compare
    methods at a fixed max_steps and batch, as the quick profile does, not at fixed epochs), alpha
    is chosen on validation data rather than fixed, by the criterion `ulmr-bench tune` uses.
    """

    rewrite: bool = field(default=True, metadata={"help": (
            "rewrite the forget questions (False: the original questions only).")})
    rewriter: str = field(default="self", metadata={"help": (
            "\"self\" (the model being unlearned, prompted with the templates), \"template\" (deterministic string "
            "templates, no LLM), or a model (alias, folder, hub id) loaded for it. An LLM rewriter also writes the "
            "responses of negatives=generated/both/alternative. The record's \"acceptance\" says how many LLM "
            "rewrites were accepted and how many fell back to templates.")})
    templates: list[str] = field(default_factory=lambda: list(TEMPLATES), metadata={"help": (
            "rewrite templates to use, from ulmr.method.rewriting.TEMPLATES (default: all).")})
    k: int = field(default=4, metadata={"help": "rewrites per forget question."})
    include_original: bool = field(default=True, metadata={"help": "train on the original forget questions too."})
    rewrite_temperature: float = field(default=0.7, metadata={"help": "rewriter sampling temperature; 0 = greedy."})
    rewrite_max_new_tokens: int = field(default=64, metadata={"help": (
            "longest rewrite or generated refusal, in tokens.")})
    rewrite_fallback: bool = field(default=True, metadata={"help": (
            "a rejected LLM rewrite is replaced by the template-only form of the same template (so a weak rewriter "
            "still yields K rewrites per question).")})
    inference_batch_size: int = field(default=16, metadata={"help": (
            "prompts per batch when generating rewrites and when scoring the alphas' answer probabilities (the "
            "validation answers decode together through the fast backend, not in batches of this size).")})
    leak_ngram: int = field(default=DEFAULT_NGRAM, metadata={"help": (
            "span length of the leak filter (ulmr.method.leak).")})
    negatives: Literal["bank", "generated", "both", "alternative"] = field(default="bank", metadata={"help": (
            "\"bank\" (refusal bank + subject-aware refusals), \"generated\" (refusals by the rewriter LLM), "
            "\"both\", or \"alternative\": plausible but wrong answers about the same subject, made up by the "
            "rewriter LLM, dropped (and replaced by a bank refusal) when one refuses, does not name the subject, "
            "leaks the true answer, or equals or leaks a text the unlearning data lists under "
            "metadata[\"avoid_responses\"] (e.g. a benchmark's scored wrong answers). The LLM kinds need an LLM "
            "rewriter. The record's \"acceptance\" counts, per kind, the responses tried, accepted, dropped.")})
    subject_refusal_share: float = field(default=0.5, metadata={"help": (
            "chance that a bank negative is a subject-aware refusal, when the instruction names its subject.")})
    alpha: float | Literal["auto"] = field(default="auto", metadata={"help": (
            "weight of the unlearned model in the parameter average: a number in [0, 1] (1 = no averaging), or "
            "\"auto\": chosen on the benchmark's validation data (UnlearningData.validation) by ulmr/selection.py's "
            "criterion, see ulmr.selection.choose_alpha.")})
    alpha_grid: list[float] = field(default_factory=lambda: list(ALPHA_GRID), metadata={"help": (
            "candidate alphas for alpha=auto.")})
    validation_max: int = field(default=ALPHA_VALIDATION_ITEMS, metadata={"help": (
            "auto: at most this many validation items per side (forget, retain), evenly spread, since every grid "
            "alpha and the original are scored, and answer, on all of them.")})
    soup: int = field(default=1, metadata={"help": (
            "unlearned weights = the uniform average of this many evenly spaced checkpoints of the training "
            "trajectory, the last included (1: the final weights).")})
    max_questions: int | None = field(default=None, metadata={"help": (
            "rewrite only the first this many forget questions (None: all; RWKU has 300 a target, and LLM rewriting "
            "of all of them is minutes on a CPU).")})

    def validate(self) -> None:
        if self.average_alpha is not None:  # the shared post-step's switch; ULMR's step 4 is `alpha`
            raise UlmrError(f"ULMR averages through alpha: set alpha={self.average_alpha} instead of average_alpha")
        super().validate()
        check_template_names(self.templates)
        check_range("k", self.k, 1)
        check_range("rewrite_temperature", self.rewrite_temperature, 0)
        check_range("rewrite_max_new_tokens", self.rewrite_max_new_tokens, 1)
        check_range("inference_batch_size", self.inference_batch_size, 1)
        check_range("leak_ngram", self.leak_ngram, 1)
        check_range("subject_refusal_share", self.subject_refusal_share, 0, 1)
        check_range("validation_max", self.validation_max, 1)
        check_range("soup", self.soup, 1)
        if self.max_questions is not None:
            check_range("max_questions", self.max_questions, 1)
        if self.alpha != "auto":
            check_range("alpha", self.alpha, 0, 1)
        if not self.alpha_grid:
            raise UlmrError("alpha_grid is empty: give at least one alpha in [0, 1], e.g. [0.5, 1.0]")
        for alpha in self.alpha_grid:
            check_range("alpha_grid value", alpha, 0, 1)
        if self.negatives in LLM_SOURCES and self.rewriter == "template":
            raise UlmrError(f"negatives={self.negatives} needs an LLM rewriter to write its responses and rewriter=template "
                            "has none: set rewriter to 'self' or a model, or use negatives=bank")
        if not (self.rewrite or self.include_original):
            raise UlmrError("rewrite=false and include_original=false leave ULMR nothing to train on: "
                            "set one of them to true")


@register_method
class UlmrUnlearner(Unlearner):
    """ULMR: SFT on rewritten forget instructions paired with refusals, then parameter averaging."""

    name = "ulmr"
    config_class = UlmrConfig
    # the quick profile on the AVX2 proxy: 1.6-1.8x ga's row; alpha=auto's validation passes are 2/3 of its unlearning
    relative_cost = 1.7

    def unlearn(self, model, tokenizer, data: UnlearningData) -> UnlearningResult:
        config = self.config
        config.validate()
        auto = config.alpha == "auto"
        # before any work: fails where the benchmark has no validation data
        validation = validation_for(data, config.validation_max, "alpha=auto chooses alpha",
                                    "set alpha to a number") if auto else None
        retain = retain_items(self.name, config, data)  # checked before the pairs are generated
        started = time.perf_counter()
        pairs, generation_record = self._make_pairs(model, tokenizer, data)
        generation_record["generation_time_s"] = time.perf_counter() - started

        original = OnDisk(full_state_dict(model)) if auto or config.alpha < 1 else None

        forget = [Example(answer=p.response, question=p.instruction, subject=p.subject) for p in pairs]
        checkpoints, soup_steps = [], self._soup_steps(len(forget))

        def snapshot(step, trained):
            if step in soup_steps:
                checkpoints.append(full_state_dict(trained))

        model, training = train(model, tokenizer, data.template, config, self._loss, {"forget": forget}, retain,
                                reference=retain is not None and config.retain_loss == "kl",
                                on_step=snapshot if config.soup > 1 else None, desc=self.name)

        # Step 4. The unlearned weights are the final ones or the trajectory soup; with alpha = 1 and
        # no soup the trained model is already the result.
        started = time.perf_counter()
        averaging = {"alpha": 1.0, "reason": "alpha=1: no averaging", "soup_steps": sorted(soup_steps)}
        artifacts = {}
        if original is not None or checkpoints:
            original = original.load() if original is not None else None
            unlearned = soup(checkpoints) if checkpoints else full_state_dict(model)
            del checkpoints[:]
            if auto:
                chosen, answers = auto_alpha(model, tokenizer, data.template, unlearned, original, validation,
                                             training.compute_dtype, config.alpha_grid,
                                             config.max_length, config.inference_batch_size)
                averaging.update(chosen)
                artifacts["validation_answers"] = answers
            elif original is not None:
                averaging.update(alpha=config.alpha, reason="alpha from the config")
            averaged = unlearned if original is None else interpolate(unlearned, original, averaging["alpha"])
            load_weights(model, averaged)
        averaging["time_s"] = time.perf_counter() - started

        record = {
            "method": self.name, "selection": data.name, "config": config_to_dict(config), **training.as_dict(),
            **generation_record,
            "pairs": {"total": len(pairs), "per_template": dict(Counter(p.template for p in pairs))},
            "averaging": averaging,
        }
        artifacts = {"pairs": [pair_record(p) for p in pairs], **artifacts}
        return UnlearningResult(model.eval(), record, artifacts)

    def _make_pairs(self, model, tokenizer, data: UnlearningData) -> tuple[list[Pair], dict]:
        """Steps 1-2: (instruction, negative response) pairs, and what was kept and dropped."""
        config = self.config
        if not data.forget_questions:
            raise UlmrError(f"{data.benchmark} {data.name} has no forget questions: ULMR rewrites them; build the unlearning data "
                            "with its benchmark plug-in")
        questions = data.forget_questions[:config.max_questions]
        subjects = data.subjects or recurring_names([q.question or "" for q in questions])
        generate = self._generator(model, tokenizer)
        instructions = original_instructions(questions, subjects) if config.include_original else []
        rewrite_stats = {}
        if config.rewrite:
            rewrites, rewrite_stats = rewrite_questions(questions, subjects, config.templates, config.k,
                                                        generate, config.rewrite_fallback, config.leak_ngram)
            instructions += rewrites
        pairs, negative_stats = negative_responses(instructions, data.refusals, config.negatives,
                                                   config.subject_refusal_share, config.seed, generate,
                                                   config.leak_ngram, data.metadata.get(AVOID_RESPONSES))
        if not pairs:
            raise UlmrError(f"ULMR made no training pairs for {data.benchmark} {data.name} (every candidate was dropped, "
                            "see the leak filter): use rewriter=template or a larger k")
        return pairs, {"subjects": subjects, "subjects_inferred": not data.subjects,
                       "rewriting": rewrite_stats, "negatives": negative_stats,
                       "acceptance": acceptance(rewrite_stats, negative_stats, llm_rewriter=generate is not None
                                                and config.rewrite)}

    def _generator(self, model, tokenizer) -> TextGenerator | None:
        """The rewriter LLM, or None for the template-only rewriter (or when nothing needs an LLM)."""
        config = self.config
        if config.rewriter == "template" or not (config.rewrite or config.negatives != "bank"):
            return None
        if config.rewriter != "self":
            from ulmr.models import load_model

            model, tokenizer = load_model(config.rewriter, device=str(model.device))
        return TextGenerator(model, tokenizer, config.rewrite_temperature, config.rewrite_max_new_tokens,
                             config.inference_batch_size, config.seed)

    def _loss(self, model, batch, reference):
        return {"forget": answer_nll(model, batch["forget"]), **retain_term(model, batch, reference, self.config)}

    def _soup_steps(self, n_pairs: int) -> set[int]:
        """Optimizer steps whose weights go into the soup: evenly spaced, the last one included."""
        from accelerate import PartialState

        steps = planned_steps(self.config, n_pairs, PartialState().num_processes)
        return {round(steps * (i + 1) / self.config.soup) for i in range(self.config.soup)} - {0}


def acceptance(rewrite_stats: dict, negative_stats: dict, llm_rewriter: bool) -> dict:
    """What the rewriter LLM's output was worth, from the per-template rewriting counts and the
    negatives' counts: LLM rewrites accepted vs replaced by the template form (or dropped), and per
    kind of negative response, how many were tried, accepted and dropped; with a one-line summary."""
    planned = sum(c["planned"] for c in rewrite_stats.values())
    kept = sum(c["kept"] for c in rewrite_stats.values())
    fallback = sum(c["fallback"] for c in rewrite_stats.values())
    rewrites = {"planned": planned, "kept": kept, "dropped": planned - kept,
                "llm_written": planned if llm_rewriter else 0, "llm_accepted": kept - fallback if llm_rewriter else 0,
                "template_written": fallback if llm_rewriter else planned, "template_fallback": fallback}
    kinds = negative_stats.get("kinds", {})
    lines = [f"{rewrites['llm_accepted']} of {planned} LLM rewrites accepted ({fallback} fell back to templates, "
             f"{planned - kept} dropped)" if llm_rewriter else f"{kept} of {planned} template rewrites kept"] if planned else []
    lines += [f"{c['accepted']} of {c['tried']} {kind} negatives accepted" for kind, c in kinds.items()
              if kind in ("generated", "alternative")]
    used = negative_stats.get("responses", {})
    lines.append("responses: " + ", ".join(f"{n} {kind}" for kind, n in sorted(used.items())))
    return {"rewrites": rewrites, "negatives": kinds, "summary": "; ".join(lines)}


def pair_record(pair: Pair) -> dict:
    """One entry of artifacts["pairs"] (`ulmr-bench unlearn` saves them in artifacts.json): what was
    trained on and where it came from; the true answer is left out."""
    return {"instruction": pair.instruction, "response": pair.response, "template": pair.template,
            "response_source": pair.response_source, "source_question": pair.source_question,
            "subject": pair.subject}


@dataclass
class UlmrNoRewriteConfig(UlmrConfig):
    """ULMR without rewriting: the original forget questions only."""

    rewrite: bool = False


@register_method
class UlmrNoRewrite(UlmrUnlearner):
    """Ablation: ULMR trained on the original forget questions, averaged as usual."""

    name = "ulmr-norewrite"
    config_class = UlmrNoRewriteConfig


@dataclass
class UlmrNoAverageConfig(UlmrConfig):
    """ULMR without parameter averaging: alpha = 1, the fine-tuned model as is."""

    alpha: float | Literal["auto"] = 1.0


@register_method
class UlmrNoAverage(UlmrUnlearner):
    """Ablation: ULMR's fine-tuned model without averaging with the original."""

    name = "ulmr-noavg"
    config_class = UlmrNoAverageConfig
    relative_cost = 1.0  # ULMR's row less its alpha=auto selection: about ga's
