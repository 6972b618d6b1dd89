"""Selection that sees what a user sees: the one criterion of `ulmr-bench tune` and ULMR's alpha=auto.

Both pick among candidate models (tune: one per grid point; alpha=auto: one per grid alpha, the
unlearned weights interpolated with the original ones) by scoring each on the benchmark's
validation data (`ValidationData`, built by the benchmark plug-in: items the prepared model learned,
that no evaluation task scores and no method trains on). Written down before any candidate was
scored with it:

Measurements of a model m (`measure`), each a mean over the validation items, in the precision the
evaluation scores m in (its weights cast to the compute dtype, as loading it in that dtype would):
    P_f(m)  answer probability of the true forget answers: exp(mean log-prob of the answer tokens
            and EOS given the prompt), teacher-forced, per item (as the evaluation's Prob);
    R_f(m)  ROUGE-L recall of m's greedy answer to each forget question against the true answer
            (rouge_score's rougeL with stemming, TOFU's ROUGE); what a user still reads;
    P_r(m)  the answer probability of the retain items (reported, not scored);
and m's greedy answers to the retain questions. Greedy answers are at most GENERATION_TOKENS new
tokens, prompted with the benchmark's template as in training and evaluation; an answer cue the
learned answers start with (ValidationData.answer_cue, RWKU's "Answer:") is left out of both sides
of every comparison.

Judgement of m against the model selection starts from, "before" (tune: the prepared model; alpha=auto:
the original weights, alpha 0), and where there is one a reference that never learned the forget
data (tune: TOFU's retain model, RWKU's base model before injection; alpha=auto: none), `judge`:

    score = forget_progress x retain_kept x (1 - retain_refusal_rate)

    forget_progress     = (progress(R_f) + progress(P_f)) / 2, with
                          progress(X) = clip((X(before) - X(m)) / (X(before) - X(reference)), 0, 1);
                          where there is no reference, or it scores X at or above the before model,
                          X(reference) = 0 (progress is the relative drop). Half for no longer
                          producing the forget answers, half for making them unlikely; forgetting
                          past the reference earns nothing more.
    retain_kept         = mean ROUGE-L recall of m's greedy retain answer against the BEFORE
                          model's greedy answer to the same question, over the judged retain items.
                          Against the before model's answer rather than the gold one: selection must
                          not change what the user got before unlearning on what is not forgotten,
                          whether or not that answer was right; the before model scores exactly 1;
                          and it stays meaningful where the before model never learned the gold
                          answers (a model that is not injected, on TOFU questions).
    retain_refusal_rate = the share of the judged retain items whose answer by m is a refusal
                          (`is_refusal`: a pattern detector of "I don't know"-style declines; an
                          empty answer declines too).
    judged retain items = those the before model answered: a greedy answer with words ROUGE reads
                          (Latin letters or digits) that is not a refusal. With none, retain_kept = 1
                          and the refusal rate 0 (nothing to keep), and `retain_judged` says 0.

A refusal lowers both retain factors: refusing to answer is what the probability criterion this
replaces (P_r(m) / P_r(before)) could not see. Every factor lies in [0, 1]; the before model scores 0
(no progress). The highest score wins; a tie goes to the earlier candidate (tune: the grid's order,
gentler settings first; alpha=auto: the smaller alpha, closer to the original model). Reported
beside the score, not part of it: P_r, the forget refusal rate, and ROUGE-L recall of the retain
answers against the gold answers.

Cost: one batched teacher-forced pass and one batched greedy generation per validation item and
candidate (tens of items of GENERATION_TOKENS tokens), cheap enough on a CPU.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable

from ulmr.errors import UlmrError
from ulmr.prompts import PromptTemplate, render_prompt
from ulmr.unlearning.interface import Example, UnlearningData, ValidationData

GENERATION_TOKENS = 48  # new tokens of each greedy answer
# Part of the keys of stored tuning points and method results: bump when what `measure` returns, or
# what alpha=auto chooses from, changes. 2: candidates are measured in the evaluation's precision
# (bf16 where dtype=auto resolves to it), not in the fp32 of the trained weights.
SELECTION_VERSION = 2
# alpha=auto (ULMR's alpha, every loss-based method's average_alpha): the alphas scored, and the
# validation items a side each is scored on (every alpha and the original answer all of them)
ALPHA_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
ALPHA_VALIDATION_ITEMS = 64


# ---- the refusal detector --------------------------------------------------------------------

# Declines in the first person or about the model's own knowledge: "I don't know", "I'm not sure",
# "I can't provide an answer", "I have no information", "That's beyond my knowledge", "My training
# didn't cover that", "I couldn't find any information", "Sorry, I am unable to". Third-person
# statements ("The author was not sure ...") are answers, not refusals.
_REFUSAL_PATTERNS = [
    # "I don't know", "I do not have", "I didn't learn", "I can't say", "I cannot provide", "I couldn't find"
    r"\bi (?:really )?(?:do not|don't|dont|did not|didn't|cannot|can't|cant|can not|could not|couldn't)"
    r" (?:know|have|hold|possess|recall|remember|seem|find|locate|say|tell|answer|provide|help|offer|give|"
    r"shed|access|comment|speak|confirm|share|be sure|be certain)\b",
    # "I'm not sure", "I am not familiar", "I'm not the right AI", "I'm not able to"
    r"\bi(?:'m| am) (?:not|afraid i|unable|sorry|unaware|clueless|stumped|blank|drawing a blank|at a loss|in the dark|"
    r"at a disadvantage|lacking|missing|uncertain|unsure|unfamiliar)\b",
    # "I have no idea", "I've got no clue", "I've no insight", "I have yet to be informed", "I seem to have no data"
    r"\bi(?:'ve| have)(?: got)? (?:no|not|yet to|never)\b",
    r"\bi (?:seem to have no|lack|must (?:admit|confess|decline)|regret|wish i could|haven't|have not|hasn't)\b",
    r"\bi've (?:come up short|not been)\b",
    # "That's beyond my knowledge", "That's outside my area", "That's not something I'm familiar with",
    # "That topic is out of my scope", "That information is not within my reach"
    r"\b(?:beyond|outside|out of|not within|not in) my\b",
    r"\bthat(?:'s| is) (?:not something|not information|not in|a mystery|a blind spot|uncharted|an area i|a topic i|"
    r"something i|a good question, but|not my)\b",
    # "My training didn't cover", "My knowledge doesn't cover", "My database does not have", "My understanding is limited"
    r"\bmy (?:training|knowledge|database|databases|data|resources|programming|understanding|capabilities|sources)"
    r"\b[^.!?]{0,30}?(?:\bnot\b|n't\b|\blimited\b|\bno\b)",
    # "That hasn't been included in my training data", "That subject is not something I'm familiar with"
    r"\b(?:hasn't|has not|haven't|have not) been (?:included|covered|briefed|trained|informed|educated)\b",
    r"\bnot something i\b",
    # "unknown to me", "not familiar to me"
    r"\b(?:unknown|unfamiliar|new) to me\b",
    # "Sorry, ...", "I'm sorry, but", "Unfortunately, I ...", "I apologize, but ..." ("Unfortunately, his
    # father died" answers)
    r"^\W*(?:i'm |i am )?sorry\b",
    r"^\W*(?:unfortunately|regrettably|apologies),? (?:i|my|that's|that is)\b",
    r"\bi apologi[sz]e\b",
    # "There is no information (available) about", "No information is available" ("There is no record
    # of her collaborating with other authors" answers TOFU questions)
    r"\bthere (?:is|are|was|were) no (?:information|data|knowledge)\b",
    r"^\W*no (?:information|idea|clue|comment)\b",
    # "As an AI, ..."
    r"\bas an (?:ai|artificial intelligence|language model)\b",
]
_REFUSAL = re.compile("|".join(f"(?:{p})" for p in _REFUSAL_PATTERNS), re.IGNORECASE)
_CURLY = str.maketrans({"\u2019": "'", "\u2018": "'"})


def is_refusal(text: str) -> bool:
    """Whether an answer declines instead of answering: an "I don't know"-style phrase in its first
    two sentences (patterns above), or nothing at all."""
    text = text.translate(_CURLY).strip()
    if not re.search(r"\w", text):
        return True
    head = " ".join(re.split(r"(?<=[.!?])\s+", text)[:2])
    return _REFUSAL.search(head) is not None


# ---- measurements ----------------------------------------------------------------------------

@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(reference: str, generation: str) -> float:
    """ROUGE-L recall of `generation` against `reference` (rouge_score, stemmed: TOFU's ROUGE)."""
    return _rouge_scorer().score(reference, generation)["rougeL"].recall


def without_cue(text: str, cue: str) -> str:
    """`text` stripped, and without a leading answer cue."""
    text = text.strip()
    if cue and text.startswith(cue):
        text = text[len(cue):].strip()
    return text


def mean_answer_probability(model, tokenizer, template: PromptTemplate, examples: list[Example], max_length: int,
                            batch_size: int = 16) -> float:
    """Mean over examples of P = exp(mean log-prob of the answer tokens + EOS given the prompt),
    the per-token-normalised probability (of every token for a plain text)."""
    import torch

    from ulmr.unlearning.batches import collate, encode_example
    from ulmr.unlearning.losses import token_logprobs

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_example(tokenizer, template, ex, max_length) for ex in examples]
    was_training = model.training
    model.eval()
    probs = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            part = {k: v.to(model.device) for k, v in collate(encoded[start:start + batch_size], pad_id).items()}
            logp, mask = token_logprobs(model, part)
            probs += torch.exp(logp.sum(1) / mask.sum(1)).tolist()
    model.train(was_training)
    return sum(probs) / len(probs)


def greedy_answers(model, tokenizer, template: PromptTemplate, questions: list[str],
                   max_new_tokens: int = GENERATION_TOKENS) -> list[str]:
    """The model's greedy answer to each question, prompted as evaluation prompts it (the template's
    prompt, tokenised as lm-eval does), stopping at end-of-sequence or after max_new_tokens.

    Decoded by the fast backend's greedy loop in the model's own precision: the strings
    transformers' `generate` gives, computed in fewer steps (all questions decode together, the
    shared system turn once). alpha=auto answers the validation questions once per grid alpha: most
    of ULMR's unlearning time.
    """
    from lm_eval.api.instance import Instance

    from ulmr.fast_lm import FastLM
    from ulmr.hardware import DTYPE_TAGS

    was_training = model.training
    lm = FastLM(pretrained=model, tokenizer=tokenizer, dtype=DTYPE_TAGS[model.dtype], device=str(model.device))
    settings = {"until": [], "max_gen_toks": max_new_tokens}
    requests = [Instance("generate_until", {}, (render_prompt(tokenizer, template, q), settings), i)
                for i, q in enumerate(questions)]
    try:
        return lm.generate_until(requests, disable_tqdm=True)
    finally:
        model.train(was_training)


def measure(model, tokenizer, template: PromptTemplate, validation: ValidationData, max_length: int = 512,
            batch_size: int = 16, max_new_tokens: int = GENERATION_TOKENS) -> dict[str, Any]:
    """The measurements of the module docstring (JSON-able): forget_prob, forget_rouge, retain_prob,
    and the greedy answers (answer cue removed) to the forget and retain questions."""
    cue = validation.answer_cue
    # One decoding loop for both sides: the shared system turn and the per-step overhead once.
    questions = [ex.question or "" for ex in validation.forget + validation.retain]
    decoded = [without_cue(a, cue) for a in greedy_answers(model, tokenizer, template, questions, max_new_tokens)]
    answers = {"forget": decoded[:len(validation.forget)], "retain": decoded[len(validation.forget):]}
    gold = [without_cue(ex.answer, cue) for ex in validation.forget]
    return {
        "forget_prob": mean_answer_probability(model, tokenizer, template, validation.forget, max_length, batch_size),
        "forget_rouge": _mean([rouge_l_recall(g, a) for g, a in zip(gold, answers["forget"])]),
        "retain_prob": mean_answer_probability(model, tokenizer, template, validation.retain, max_length, batch_size),
        "retain_rouge_gold": _mean([rouge_l_recall(without_cue(ex.answer, cue), a)
                                    for ex, a in zip(validation.retain, answers["retain"])]),
        "forget_answers": answers["forget"],
        "retain_answers": answers["retain"],
    }


# ---- the criterion ---------------------------------------------------------------------------

def progress(now: float, before: float, reference: float | None) -> float:
    """clip((before - now) / (before - anchor), 0, 1); the anchor is the reference where it lies below
    before, else 0 (the relative drop); 0 where before is itself at the anchor."""
    anchor = reference if reference is not None and reference < before else 0.0
    span = before - anchor
    return min(max((before - now) / span, 0.0), 1.0) if span > 0 else 0.0


def judge(scores: dict[str, Any], before: dict[str, Any], reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """The criterion of the module docstring for one candidate's `measure` output, given the before
    model's and (optionally) the reference model's."""
    rouge_progress = progress(scores["forget_rouge"], before["forget_rouge"],
                              None if reference is None else reference["forget_rouge"])
    prob_progress = progress(scores["forget_prob"], before["forget_prob"],
                             None if reference is None else reference["forget_prob"])
    judged = [i for i, answer in enumerate(before["retain_answers"])
              if not is_refusal(answer) and rouge_l_recall(answer, answer) > 0]
    answers = scores["retain_answers"]
    kept = _mean([rouge_l_recall(before["retain_answers"][i], answers[i]) for i in judged], empty=1.0)
    refusal_rate = _mean([float(is_refusal(answers[i])) for i in judged], empty=0.0)
    forget_progress = (rouge_progress + prob_progress) / 2
    return {"forget_progress": forget_progress, "forget_rouge_progress": rouge_progress,
            "forget_prob_progress": prob_progress, "retain_kept": kept, "retain_refusal_rate": refusal_rate,
            "retain_judged": len(judged),
            "forget_refusal_rate": _mean([float(is_refusal(a)) for a in scores["forget_answers"]], empty=0.0),
            "score": forget_progress * kept * (1.0 - refusal_rate)}


def best(rows: list[dict[str, Any]]) -> int:
    """Index of the highest "score"; the first of equal scores (the module docstring's tie rule)."""
    if not rows:
        raise ValueError("no candidates to choose from")
    return max(range(len(rows)), key=lambda i: (rows[i]["score"], -i))


def summary(scores: dict[str, Any]) -> dict[str, Any]:
    """`measure`'s numbers without the answers (for records that keep the numbers only)."""
    return {k: v for k, v in scores.items() if not k.endswith("_answers")}


def evenly_spread(n: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(n) (the middle of each of `count` equal stretches)."""
    count = min(count, n)
    return [int((j + 0.5) * n / count) for j in range(count)]


def capped(validation: ValidationData, items: int) -> ValidationData:
    """At most `items` of each side, evenly spread."""
    from dataclasses import replace

    def spread(examples: list[Example]) -> list[Example]:
        return [examples[i] for i in evenly_spread(len(examples), items)]

    return replace(validation, forget=spread(validation.forget), retain=spread(validation.retain))


def validation_for(data: UnlearningData, items: int, what: str, fix: str) -> ValidationData:
    """The benchmark's validation data, at most `items` a side, evenly spread; where it has none a
    one-line error: "{what} on the benchmark's validation data and <benchmark> <name> has none ...: {fix}"."""
    if data.validation is None or not (data.validation.forget and data.validation.retain):
        raise UlmrError(f"{what} on the benchmark's validation data and {data.benchmark} {data.name} has none "
                        f"(forget and retain items): {fix}")
    return capped(data.validation, items)


# ---- alpha=auto: the parameter average chosen by the criterion ---------------------------------

@dataclass(frozen=True)
class AlphaChoice:
    alpha: float
    reason: str
    curve: list[dict]  # per grid alpha, ascending: the validation measurements and their judgement
    answers: dict  # the chosen alpha's greedy validation answers ({"forget": [...], "retain": [...]})


def choose_alpha(grid, measure_at: Callable[[float], dict], original: dict) -> AlphaChoice:
    """Pick alpha from `grid` by the criterion on validation data.

    measure_at(alpha) -> `measure` of the model averaged with that alpha; `original` is the same for
    the original model (alpha 0), the "before" every alpha is judged against. There is no reference
    model inside a method, so forget progress is the relative drop. Every grid alpha is scored (the
    curve); the highest score wins, a tie goes to the smaller alpha.
    """
    curve, answers = [], []
    for alpha in sorted(set(grid)):
        scores = measure_at(alpha)
        curve.append({"alpha": alpha, **summary(scores), **judge(scores, original)})
        answers.append({"forget": scores["forget_answers"], "retain": scores["retain_answers"]})
    chosen = best(curve)
    row = curve[chosen]
    ties = [r["alpha"] for r in curve if r["score"] == row["score"]]
    if row["score"] <= 0:
        reason = "no grid alpha scored above 0 on the validation data: the smallest alpha"
    else:
        reason = (f"highest validation score {row['score']:.4g} (forget progress {row['forget_progress']:.3f}, "
                  f"retain kept {row['retain_kept']:.3f}, retain refusals {row['retain_refusal_rate']:.3f})")
        if len(ties) > 1:
            reason += f"; tied with {', '.join(f'{a:g}' for a in ties if a != row['alpha'])}: the smallest alpha"
    return AlphaChoice(row["alpha"], reason, curve, answers[chosen])


def auto_alpha(model, tokenizer, template: PromptTemplate, unlearned: dict, original: dict,
               validation: ValidationData, dtype: str, grid=ALPHA_GRID, max_length: int = 512,
               batch_size: int = 16) -> tuple[dict[str, Any], dict[str, Any]]:
    """alpha=auto: load each average alpha * unlearned + (1 - alpha) * original into `model` (the
    original, alpha 0, first), measure it on the validation data in `dtype` (a name, as
    `TrainingRecord.compute_dtype`), the precision the evaluation scores the result in (its weights
    rounded to `dtype` as loading the saved model in that dtype rounds them, so the chosen alpha's
    answers are the evaluated model's), and choose by `choose_alpha`. Returns the record's
    averaging fields (the whole curve included) and, for the artifacts, the greedy validation
    answers of the original and of the chosen alpha. `model` is left in its own dtype holding the
    last alpha scored, rounded through `dtype`: load the chosen one after."""
    from ulmr.hardware import resolve_dtype
    from ulmr.models import cast_weights
    from ulmr.unlearning.averaging import interpolate, load_weights

    def measure_at(alpha):
        load_weights(model, interpolate(unlearned, original, alpha))  # rounded to the model's dtype
        return measure(model, tokenizer, template, validation, max_length, batch_size)

    own_dtype = model.dtype
    cast_weights(model, resolve_dtype(dtype))
    try:
        before = measure_at(0.0)
        choice = choose_alpha(grid, measure_at, before)
    finally:
        cast_weights(model, own_dtype)
    record = {"alpha": choice.alpha, "reason": choice.reason, "curve": choice.curve, "original": summary(before),
              "validation": {"forget": len(validation.forget), "retain": len(validation.retain),
                             "generation_tokens": GENERATION_TOKENS, "source": validation.metadata}}
    answers = {"questions": {"forget": [ex.question for ex in validation.forget],
                             "retain": [ex.question for ex in validation.retain]},
               "original": {"forget": before["forget_answers"], "retain": before["retain_answers"]},
               "chosen": {"alpha": choice.alpha, **choice.answers}}
    return record, answers


def _mean(values: list[float], empty: float = 0.0) -> float:
    return sum(values) / len(values) if values else empty
