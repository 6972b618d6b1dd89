"""TOFU's metrics (Maini et al., 2024) as lm-eval functions, exactly as the benchmark defines them.

Notation: for a question q and answer text x, P(x) = exp(-mean NLL of x's tokens given q), the mean
taken over the answer tokens plus the end-of-sequence token TOFU appends, never over prompt tokens
(metadata `token_boundary`, default "answer"; "open-unlearning" and "tofu" take those codebases'
token rules instead: ulmr.prompts.scored_answer).

- Probability: forget/retain mean P(answer); real authors / world facts mean of
  P(answer) / (P(answer) + sum_i P(perturbed_i)).
- Truth ratio per question: R = P_pert / P_base, P_pert the geometric mean of P over the perturbed
  answers, P_base = P(paraphrased_answer) (forget/retain) or P(answer) (real authors/world facts).
  Score: forget mean(min(R, 1/R)); the others mean(max(0, 1 - R)).
- ROUGE-L recall: rouge_score's rougeL with stemming, recall of the greedy generation against answer.

The dataset builder needs the model's tokenizer to count answer tokens: lm-eval hands it the model
arguments (`pretrained=` or `tokenizer=`), and the prompt options through `--metadata`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from lm_eval_tasks.common import task_tokenizer

# One doc kind per TOFU subset family; it decides which answers are scored and how.
KIND_FORGET, KIND_RETAIN, KIND_OPTIONS = "forget", "retain", "options"


# ---- pure metric functions (tested against hand-computed values) -------------------------------

def normalised_prob(loglik: float, n_tokens: int) -> float:
    """P(x) = exp(sum log p / n): the per-token-normalised probability."""
    return math.exp(loglik / n_tokens)


def truth_ratio(p_base: float, p_perturbed: list[float]) -> float:
    """R = geometric mean of P(perturbed) over P(base)."""
    log_geo = sum(math.log(p) for p in p_perturbed) / len(p_perturbed)
    return math.exp(log_geo - math.log(p_base))


def truth_ratio_score(ratio: float, kind: str) -> float:
    """Forget: min(R, 1/R) (1 = cannot tell true from false); else max(0, 1 - R)."""
    return min(ratio, 1.0 / ratio) if kind == KIND_FORGET else max(0.0, 1.0 - ratio)


def option_normalised_prob(p_answer: float, p_perturbed: list[float]) -> float:
    return p_answer / (p_answer + sum(p_perturbed))


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(reference: str, generation: str) -> float:
    return _rouge_scorer().score(reference, generation)["rougeL"].recall


def candidate_probs(doc: dict[str, Any], logliks: list[float]) -> list[float]:
    """P of every scored answer of a doc, from lm-eval's log-likelihoods of its choices.

    A doc's choices are its answers' continuations, then the distinct texts whose tokens lm-eval
    scores at the start of a continuation but the token boundary leaves out (`masked_choice[i]`:
    the one of answer i, or None): e.g. whitespace ending the prompt that tokenises on its own. Their
    log-likelihood is subtracted so that only the answer's scored tokens count.
    """
    n = len(doc["n_answer_tokens"])
    return [normalised_prob(ll - (logliks[m] if m is not None else 0.0), n_tokens)
            for ll, m, n_tokens in zip(logliks[:n], doc["masked_choice"], doc["n_answer_tokens"])]


def question_stats(doc: dict[str, Any], logliks: list[float]) -> dict[str, float]:
    """prob, truth ratio R and its score for one question."""
    probs = candidate_probs(doc, logliks)
    if doc["kind"] == KIND_OPTIONS:
        p_answer, p_pert = probs[0], probs[1:]
        prob, p_base = option_normalised_prob(p_answer, p_pert), p_answer
    else:  # choices: answer, paraphrased answer, perturbed answers
        prob, p_base, p_pert = probs[0], probs[1], probs[2:]
    ratio = truth_ratio(p_base, p_pert)
    return {"prob": prob, "truth_ratio_r": ratio, "truth_ratio": truth_ratio_score(ratio, doc["kind"])}


# ---- lm-eval hooks ---------------------------------------------------------------------------

def process_prob(doc, results):
    stats = question_stats(doc, [loglik for loglik, _ in results])
    return {"prob": stats["prob"], "truth_ratio": stats["truth_ratio"]}


def process_rouge(doc, results):
    return {"rougeL_recall": rouge_l_recall(doc["answer"], results[0])}


def doc_to_choice(doc):
    return doc["choices"]


def load_subset(subset: str, kind: str, **options):
    """custom_dataset hook: rows of a TOFU subset with prompts and answer token counts."""
    import datasets

    from ulmr.data.tofu import load_tofu
    from ulmr.prompts import PromptTemplate, render_prompt, scored_answer

    tokenizer = task_tokenizer(options, "TOFU tasks count answer tokens and so")
    template = PromptTemplate.from_options(options)
    docs = []
    for row in load_tofu(subset, options.get("data_dir")):
        answers = [row["answer"]]
        if kind != KIND_OPTIONS:
            answers.append(row["paraphrased_answer"])
        answers += row["perturbed_answer"]
        scored = [scored_answer(tokenizer, template, row["question"], a) for a in answers]
        # every choice follows one context (the prompt up to where the boundary's masking starts,
        # without trailing whitespace: lm-eval would move it into the choices anyway)
        masked = list(dict.fromkeys(s.masked for s in scored if s.masked))
        docs.append({"question": row["question"], "answer": row["answer"],
                     "prompt": render_prompt(tokenizer, template, row["question"]),
                     "context": scored[0].context, "kind": kind,
                     "choices": [s.continuation for s in scored] + masked,
                     "masked_choice": [len(scored) + masked.index(s.masked) if s.masked else None
                                       for s in scored],
                     "n_answer_tokens": [len(s.scored_ids) for s in scored]})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})
