"""The fast backend gives lm-eval's hf numbers: the same greedy strings, the same log-likelihoods
(to 1e-6 relative: fp32 summation order is all that differs), whatever its batching, packing and
prefix caching do."""

from __future__ import annotations

import pytest
from lm_eval.api.instance import Instance

SYSTEM = "System: you are a careful assistant who answers briefly.\n"
SHOTS = "Q: two plus two? A: four.\nQ: the capital of France? A: Paris.\n"
PROMPTS = [SYSTEM + "User: Who wrote it?", SYSTEM + "User: Where was the author of Moon Soup born, and when?",
           SYSTEM + SHOTS + "Q: the colour of the sky? A:", SYSTEM + SHOTS + "Q: grass? A:", "Unrelated prompt",
           SYSTEM + "User: Why?", SYSTEM + SHOTS + "Q: why? A:", "a"]


@pytest.fixture()
def hf(lively):
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = lively
    return HFLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=3)


def _fast(model_and_tokenizer, **kwargs):
    from ulmr.fast_lm import FastLM

    model, tokenizer = model_and_tokenizer
    return FastLM(pretrained=model, tokenizer=tokenizer, dtype="fp32", device="cpu", **kwargs)


def _spy(lm, name, record):
    original = getattr(lm, name)
    setattr(lm, name, lambda *args, **kwargs: (record(*args), original(*args, **kwargs))[1])


def _generation_requests(until, max_gen_toks=24):
    return [Instance("generate_until", {}, (p, {"until": until, "max_gen_toks": max_gen_toks}), i)
            for i, p in enumerate(PROMPTS)]


def _padding_share(rows) -> float:
    """The share of a forward's token rows that are padding (each row padded to the longest)."""
    lengths = [len(r.ids) for r in rows]
    return 1 - sum(lengths) / (len(rows) * max(lengths))


def _admissions(lm):
    """Record generation's admissions (the prompts that take free slots together, before the next
    decoding step) and, per prompt forward, the share of its token rows that are padding."""
    admissions, padding, state = [], [], {"in_run": False, "decoded": True}
    original = lm._run

    def run(rows, head, keep=None):
        if head:
            if state["decoded"]:
                admissions.append(0)
                state["decoded"] = False
            admissions[-1] += len(rows)
            padding.append(_padding_share(rows))
        state["in_run"] = True
        try:
            return original(rows, head, keep)
        finally:
            state["in_run"] = False

    lm._run = run
    # a forward of the model outside _run is a decoding step
    lm.model.register_forward_pre_hook(lambda module, args: None if state["in_run"] else state.update(decoded=True))
    return admissions, padding


@pytest.mark.parametrize("budget", [100, 500, 10_000])  # 1 slot, 3 slots (~155 columns a row), all rows
@pytest.mark.parametrize("min_saving", [4, 10**9])  # shared prefixes cached, or none
def test_greedy_generation_equals_hf(lively, hf, budget, min_saving):
    requests = _generation_requests(until=["e", "Y"])
    expected = hf.generate_until(requests, disable_tqdm=True)
    lm = _fast(lively, generation_tokens=budget, prefix_min_saving=min_saving)
    admissions, padding = _admissions(lm)
    assert lm.generate_until(requests, disable_tqdm=True) == expected
    assert max(padding) <= 0.25
    # the rows stop at different steps (finished rows leave their slots mid-way)
    assert len({len(text) for text in expected}) > 2
    assert sum(admissions) == len(PROMPTS)
    if budget == 10_000:
        assert admissions == [len(PROMPTS)]
    else:  # waiting prompts take the slots that stopped rows free
        assert len(admissions) > 2 and max(admissions) <= (1 if budget == 100 else 3)


def test_generation_with_a_stop_string_and_eos_equals_hf(lively, hf):
    requests = _generation_requests(until=["\n\n"], max_gen_toks=40)
    assert _fast(lively).generate_until(requests, disable_tqdm=True) == hf.generate_until(requests, disable_tqdm=True)


def test_shared_prefixes_are_computed_once(lively):
    requests = _generation_requests(until=["e"])
    work = {}
    for min_saving, align in ((4, 1), (4, 32), (10**9, 1)):
        lm = _fast(lively, prefix_min_saving=min_saving, prefix_align=align)
        lm.generate_until(requests, disable_tqdm=True)
        work[min_saving, align] = lm.counters["forward_tokens"] - lm.counters["generated_tokens"]
    # prompt tokens through the model: the system turn (56 bytes) once instead of in 6 prompts, and
    # the few-shot block once instead of in 3
    assert work[10**9, 1] - work[4, 1] >= 5 * len(SYSTEM) + 2 * len(SHOTS)
    # prefixes cut to multiples of 32 tokens (the default) save less, but save
    assert work[4, 1] < work[4, 32] < work[10**9, 1]


def _loglikelihood_requests():
    pairs = [(p, c) for p in PROMPTS for c in [" yes", " no idea at all", " maybe so, maybe not"]]
    pairs += [("", "an empty context"), ("Q: why? A:", " because")]
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


@pytest.mark.parametrize("batch_size", [2, 16])
@pytest.mark.parametrize("min_saving", [4, 10**9])
def test_loglikelihoods_equal_hf(lively, hf, batch_size, min_saving):
    requests = _loglikelihood_requests()
    expected = hf.loglikelihood(requests, disable_tqdm=True)
    lm = _fast(lively, batch_size=batch_size, prefix_min_saving=min_saving)
    sizes = []
    _spy(lm, "_score_rows", lambda batch, *_: sizes.append(len(batch)))
    scored = lm.loglikelihood(requests, disable_tqdm=True)
    for (logprob, greedy), (hf_logprob, hf_greedy) in zip(scored, expected):
        assert logprob == pytest.approx(hf_logprob, rel=1e-6, abs=1e-6)
        assert greedy == hf_greedy
    assert max(sizes) <= batch_size
    if min_saving == 4:  # contexts computed once (their 3 continuations read them from the cache)
        assert lm.counters["forward_tokens"] < sum(len(lm.tok_encode(c + x)) for c, x in (r.args for r in requests)) / 2


def test_rolling_loglikelihoods_equal_hf(lively, hf):
    requests = [Instance("loglikelihood_rolling", {}, (p * 3,), i) for i, p in enumerate(PROMPTS)]
    expected = hf.loglikelihood_rolling(requests, disable_tqdm=True)
    for value, hf_value in zip(_fast(lively).loglikelihood_rolling(requests, disable_tqdm=True), expected):
        assert value == pytest.approx(hf_value, rel=1e-6, abs=1e-6)


def test_choices_differing_in_their_last_token_share_a_row(lively, hf):
    """Multiple choice by letter (MMLU's " A" ... " D"): one row, four targets."""
    requests = [Instance("loglikelihood", {}, (SYSTEM + SHOTS + "Q: pick one.\nAnswer:", f" {c}"), i)
                for i, c in enumerate("ABCD")]
    lm = _fast(lively)
    rows = []
    _spy(lm, "_score_rows", lambda batch, *_: rows.extend(batch))
    scored = lm.loglikelihood(requests, disable_tqdm=True)
    assert len(rows) == 1 and len(rows[0][2]) == 4
    for (logprob, _), (hf_logprob, _) in zip(scored, hf.loglikelihood(requests, disable_tqdm=True)):
        assert logprob == pytest.approx(hf_logprob, rel=1e-6, abs=1e-6)


def test_prefix_forwards_group_similar_lengths_with_the_same_results(lively, hf):
    """The prefixes of one tree level (here the system turn and "Unrelated prompt"; on RWKU the
    few-shot blocks of different tasks) run in forwards of similar lengths, not padded to the longest."""
    requests = _loglikelihood_requests()
    lm = _fast(lively, prefix_min_saving=4, prefix_align=1)
    padding, original = [], lm._run

    def run(rows, head, keep=None):
        if keep == 0 and not head:  # a prefix forward
            padding.append(_padding_share(rows))
        return original(rows, head, keep)

    lm._run = run
    scored = lm.loglikelihood(requests, disable_tqdm=True)
    assert len(padding) > 2 and max(padding) <= 0.25
    for (logprob, _), (hf_logprob, _) in zip(scored, hf.loglikelihood(requests, disable_tqdm=True)):
        assert logprob == pytest.approx(hf_logprob, rel=1e-6, abs=1e-6)


def test_prefix_memory_budget_splits_requests_into_chunks_with_the_same_results(lively, hf):
    requests = _loglikelihood_requests()
    lm = _fast(lively, prefix_bytes=1)  # the smallest chunks the budget allows (1024 tokens)
    chunks = []
    _spy(lm, "_prefixes", lambda sequences: chunks.append(len(sequences)))
    scored = lm.loglikelihood(requests, disable_tqdm=True)
    assert len(chunks) > 1
    for (logprob, _), (hf_logprob, _) in zip(scored, hf.loglikelihood(requests, disable_tqdm=True)):
        assert logprob == pytest.approx(hf_logprob, rel=1e-6, abs=1e-6)


def test_length_groups_bound_the_padding_of_each_forward():
    from ulmr.fast_lm import _length_groups

    lengths = [26, 1024, 206, 40, 161, 52, 26, 137, 74, 60]
    groups = _length_groups(lengths)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    assert [[lengths[i] for i in group] for group in groups] == [[1024], [206, 161], [137], [74, 60], [52, 40],
                                                                   [26, 26]]
    assert _length_groups([5, 5, 5]) == [[0, 1, 2]] and _length_groups([]) == []


def test_decode_bands_are_runs_of_similar_lengths():
    from ulmr.fast_lm import _decode_bands

    # (first slot, end slot, columns): each run's lengths within a quarter of its longest
    assert _decode_bands([100, 95, 80, 20, 18, 19, 90]) == [(0, 3, 101), (3, 6, 21), (6, 7, 91)]
    assert _decode_bands([7, 9, 8]) == [(0, 3, 10)]  # not sorted: a run's columns are its longest's
    assert _decode_bands([]) == []


def test_finished_rows_leave_holes_that_their_bands_last_rows_fill():
    from ulmr.fast_lm import _close_up

    # bands (100, 98, 97) and (20, 19, 18): slots 1 and 3 finish
    assert _close_up([100, 98, 97, 20, 19, 18], {1, 3}) == [0, 2, 4, 5]
    # one band: one move a hole (the old last row), not a shift of every later row
    assert _close_up([10] * 6, {1}) == [0, 5, 2, 3, 4]
    assert _close_up([10, 10, 3, 3], {0, 1}) == [2, 3] and _close_up([5], {0}) == []


def test_decoding_attends_in_bands_with_hf_text_and_restores_the_attention(lively, hf, monkeypatch):
    """Few-shot prompts beside short ones: a decoding step's short rows attend to their own columns,
    not to the long rows' (masked) ones, and the text is hf's."""
    import ulmr.fast_lm as fast_lm

    calls = []  # (rows, columns) of each attention call of a decoding step
    original = fast_lm.sdpa_attention_forward

    def spy(module, query, key, *args, **kwargs):
        if query.shape[2] == 1:
            calls.append((query.shape[0], key.shape[2]))
        return original(module, query, key, *args, **kwargs)

    monkeypatch.setattr(fast_lm, "sdpa_attention_forward", spy)
    long = SYSTEM + SHOTS * 6
    prompts = [long + "Q: the colour of the sky? A:", long + "Q: grass? A:", "a", "Why?", "Name one."]
    requests = [Instance("generate_until", {}, (p, {"until": ["Y"], "max_gen_toks": 16}), i)
                for i, p in enumerate(prompts)]
    lm = _fast(lively, prefix_min_saving=10**9)
    assert lm.generate_until(requests, disable_tqdm=True) == hf.generate_until(requests, disable_tqdm=True)
    widest = max(columns for _, columns in calls)
    assert any(columns < widest / 2 for _, columns in calls)  # the short rows' band
    assert lm.model.config._attn_implementation == "sdpa"


def test_a_model_without_sdpa_decodes_unbanded(tiny):
    model, _ = tiny
    model.set_attn_implementation("eager")
    requests = [Instance("generate_until", {}, (p, {"until": [], "max_gen_toks": 4}), i)
                for i, p in enumerate([SYSTEM + SHOTS * 4 + "Q: why? A:", "a"])]
    texts = _fast(tiny).generate_until(requests, disable_tqdm=True)
    assert len(texts) == 2 and model.config._attn_implementation == "eager"


def test_plan_prefixes_cuts_prefixes_to_the_alignment():
    from ulmr.fast_lm import _plan_prefixes

    sequences = [list(range(70)) + [1], list(range(70)) + [2], list(range(70)) + [3]]
    assert _plan_prefixes(sequences, min_saving=16, align=32) == ([(-1, 64, 0)], [0, 0, 0])
    assert _plan_prefixes(sequences, min_saving=16, align=1) == ([(-1, 70, 0)], [0, 0, 0])
    assert _plan_prefixes([s[:20] for s in sequences], min_saving=1, align=32) == ([], [-1, -1, -1])


def test_plan_prefixes_keeps_prefixes_that_save_work():
    from ulmr.fast_lm import _levels, _plan_prefixes

    system, shots = list(range(100, 140)), list(range(200, 260))
    sequences = [system + [1, 2], system + shots + [3], system + shots + [4, 5], system + [6], [7, 8, 9], system + [1]]
    nodes, owners = _plan_prefixes(sequences, min_saving=32)
    # the system turn (40 tokens, 5 sequences), then the few-shot block after it (60 more, 2 sequences);
    # "system + [1]" (2 sequences, 1 token more) is not worth a prefix of its own
    assert [(parent, length) for parent, length, _ in nodes] == [(-1, 40), (0, 100)]
    assert owners == [0, 1, 1, 0, -1, 0]
    assert _levels(nodes) == [[0], [1]]
    for node, (_, length, source) in enumerate(nodes):  # a node is a prefix of its example sequence
        assert all(sequences[i][:length] == sequences[source][:length] for i, o in enumerate(owners) if o == node)
    # a prefix saving less than min_saving is not kept
    assert _plan_prefixes(sequences, min_saving=10**6) == ([], [-1] * 6)


def test_generation_slots_follow_the_token_budget_and_do_not_change_the_text(tiny):
    prompts = ["Who wrote it?", "Where was the author of Moon Soup born, and when?", "Why?", "Name a colour."]
    requests = [Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 6}), i)
                for i, p in enumerate(prompts)]
    texts = {}
    for budget in (1, 10_000):
        lm = _fast(tiny, generation_tokens=budget)
        admissions, padding = _admissions(lm)
        texts[budget] = lm.generate_until(requests, disable_tqdm=True)
        assert admissions == ([1, 1, 1, 1] if budget == 1 else [4])
        # prompts of 4 to 13 words: admitted together, prefilled in forwards of similar lengths
        assert max(padding) <= 0.25 and (budget == 1 or len(padding) > 1)
    assert texts[1] == texts[10_000]


def test_an_in_memory_model_scores_as_its_checkpoint_loaded_in_the_compute_dtype(lively, tmp_path):
    """A run evaluates unlearned models in memory (fp32 master weights) and the reference rows from
    their folders; in bf16 both must score alike, bit for bit (fp32 weights under autocast did not)."""
    import copy

    from ulmr.fast_lm import FastLM
    from ulmr.models import save_checkpoint

    model, tokenizer = lively
    save_checkpoint(model, tokenizer, tmp_path / "checkpoint")
    by_path = FastLM(pretrained=str(tmp_path / "checkpoint"), dtype="bf16", device="cpu")
    in_memory = FastLM(pretrained=copy.deepcopy(model), tokenizer=tokenizer, dtype="bf16", device="cpu")
    requests = [Instance("loglikelihood", {}, (p, " the answer, twice: the answer."), i) for i, p in enumerate(PROMPTS)]
    assert in_memory.loglikelihood(requests, disable_tqdm=True) == by_path.loglikelihood(requests, disable_tqdm=True)
    generations = _generation_requests(until=["Y"])
    assert in_memory.generate_until(generations, disable_tqdm=True) == by_path.generate_until(generations, disable_tqdm=True)
    assert {name: b.dtype for name, b in in_memory.model.named_buffers()} == \
        {name: b.dtype for name, b in by_path.model.named_buffers()}
