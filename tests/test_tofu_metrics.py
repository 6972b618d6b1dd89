"""TOFU's metrics against values computed by hand on fixed inputs."""

import math

import pytest

from lm_eval_tasks.tofu.utils import (
    candidate_probs, normalised_prob, option_normalised_prob, question_stats, rouge_l_recall,
    truth_ratio, truth_ratio_score)
from ulmr.metrics import forget_quality, model_utility


def test_normalised_prob_is_exp_of_mean_token_loglik():
    assert normalised_prob(-6.0, 3) == pytest.approx(math.exp(-2.0), abs=1e-15)


def test_truth_ratio_uses_geometric_mean_of_perturbed():
    # geometric mean of 0.25 and 0.0625 is 0.125; over P_base 0.5 gives 0.25
    assert truth_ratio(0.5, [0.25, 0.0625]) == pytest.approx(0.25, abs=1e-15)


@pytest.mark.parametrize("ratio, kind, expected", [
    (0.25, "forget", 0.25), (4.0, "forget", 0.25), (1.0, "forget", 1.0),
    (0.25, "retain", 0.75), (2.0, "retain", 0.0), (0.1, "options", 0.9)])
def test_truth_ratio_scores(ratio, kind, expected):
    assert truth_ratio_score(ratio, kind) == pytest.approx(expected, abs=1e-15)


def test_option_normalised_prob():
    assert option_normalised_prob(0.5, [0.25, 0.25]) == pytest.approx(0.5)
    assert option_normalised_prob(0.2, [0.3, 0.1, 0.4]) == pytest.approx(0.2)


def test_rouge_l_recall_counts_lcs_over_reference_tokens():
    # LCS of (the cat sat on the mat) and (the cat is on a mat) is "the cat on mat": 4 of 6.
    assert rouge_l_recall("The cat sat on the mat", "the cat is on a mat") == pytest.approx(4 / 6)
    assert rouge_l_recall("Answer here.", "") == 0.0
    # stemming: "writes" and "writing" share the stem "write"
    assert rouge_l_recall("She writes novels", "she writing novels") == pytest.approx(1.0)


def test_candidate_probs_subtract_masked_choices():
    # two answers whose continuations start with the prompt's whitespace token (-1.0, the third choice)
    doc = {"kind": "forget", "masked_choice": [2, 2], "n_answer_tokens": [2, 4]}
    probs = candidate_probs(doc, [-3.0, -5.0, -1.0])
    assert probs == pytest.approx([math.exp(-1.0), math.exp(-1.0)])
    # open-unlearning on a merging tag space: each answer masks its own first token; none masked
    doc = {"kind": "forget", "masked_choice": [3, 4, None], "n_answer_tokens": [1, 2, 4]}
    probs = candidate_probs(doc, [-3.0, -5.0, -6.0, -2.0, -1.0])
    assert probs == pytest.approx([math.exp(-1.0), math.exp(-2.0), math.exp(-1.5)])


def test_question_stats_forget_and_options():
    # forget: answer, paraphrase, 2 perturbed; every answer 1 token so P = exp(loglik)
    doc = {"kind": "forget", "masked_choice": [None] * 4, "n_answer_tokens": [1, 1, 1, 1]}
    lls = [math.log(0.6), math.log(0.5), math.log(0.25), math.log(0.0625)]
    stats = question_stats(doc, lls)
    assert stats["prob"] == pytest.approx(0.6)
    assert stats["truth_ratio_r"] == pytest.approx(0.25)
    assert stats["truth_ratio"] == pytest.approx(0.25)
    # options: answer vs 3 perturbed; prob normalised over the options, R against P(answer)
    doc = {"kind": "options", "masked_choice": [None] * 4, "n_answer_tokens": [1, 1, 1, 1]}
    lls = [math.log(0.4), math.log(0.2), math.log(0.2), math.log(0.2)]
    stats = question_stats(doc, lls)
    assert stats["prob"] == pytest.approx(0.4 / 1.0)
    assert stats["truth_ratio_r"] == pytest.approx(0.5)
    assert stats["truth_ratio"] == pytest.approx(0.5)


def test_model_utility_is_harmonic_mean_of_nine():
    assert model_utility([1.0] * 8 + [0.5]) == pytest.approx(9 / 10)
    assert model_utility([0.5, 0.25] + [1.0] * 7) == pytest.approx(9 / (2 + 4 + 7))
    assert model_utility([0.0] + [1.0] * 8) == 0.0
    with pytest.raises(ValueError):
        model_utility([1.0] * 8)


def test_forget_quality_is_ks_pvalue():
    assert forget_quality([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    # fully separated samples of 3 and 3: exact two-sided p = 2 / C(6, 3) = 0.1
    assert forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
