"""The fast backend's packed scoring gives the same log-likelihoods however rows are cut."""

from __future__ import annotations

import pytest
import torch


def _direct_logprob(model, context, continuation):
    ids = context + continuation
    with torch.no_grad():
        logprobs = model(torch.tensor([ids[:-1]])).logits[0].double().log_softmax(-1)
    return sum(logprobs[len(context) - 1 + j, token].item() for j, token in enumerate(continuation))


@pytest.mark.parametrize("row_tokens", [1024, 12])
def test_packed_rows_score_like_separate_forwards(tiny, row_tokens):
    from ulmr.fast_lm import FastLM

    model, tokenizer = tiny
    lm = FastLM(pretrained=model, tokenizer=tokenizer, dtype="fp32", device="cpu", batch_size=2,
                row_tokens=row_tokens)
    shared = [1, 40, 41, 42]
    requests = [((None,), shared, [50 + i, 60 + i, 70 + i, 80 + i, 90]) for i in range(5)]
    requests.append(((None,), [1], [33, 34, 35]))
    widths = []
    original = lm._score_packed
    lm._score_packed = lambda batch: (widths.extend(len(c) + sum(len(x) - 1 for x in conts)
                                                    for c, conts, _ in batch), original(batch))[1]
    scored = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    for (_, context, continuation), (logprob, _) in zip(requests, scored):
        assert logprob == pytest.approx(_direct_logprob(model, context, continuation), rel=1e-5)
    # rows respect the budget, unless one continuation alone exceeds it
    assert max(widths) <= max(row_tokens, len(shared) + 4)
    assert len(widths) == (2 if row_tokens == 1024 else 4)


def test_generation_batches_follow_the_token_budget_and_do_not_change_the_text(tiny):
    from lm_eval.api.instance import Instance

    from ulmr.fast_lm import FastLM

    model, tokenizer = tiny
    prompts = ["Who wrote it?", "Where was the author of Moon Soup born, and when?", "Why?", "Name a colour."]
    requests = [Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 6}), i)
                for i, p in enumerate(prompts)]
    texts = {}
    for budget in (1, 10_000):
        lm = FastLM(pretrained=model, tokenizer=tokenizer, dtype="fp32", device="cpu", generation_tokens=budget)
        sizes = []
        original = lm._greedy_batch
        lm._greedy_batch = lambda rows, *args: (sizes.append(len(rows)), original(rows, *args))[1]
        texts[budget] = lm.generate_until(requests, disable_tqdm=True)
        assert sizes == ([1, 1, 1, 1] if budget == 1 else [4])
    assert texts[1] == texts[10_000]
