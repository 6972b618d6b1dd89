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
