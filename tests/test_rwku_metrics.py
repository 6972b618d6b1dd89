"""RWKU's scorers: ROUGE-L recall agrees with the `rouge` package RWKU uses; F1, exact match,
entropy, AUROC and Min-K% against hand-computed values."""

import math
import random

import pytest
from rouge import Rouge

from lm_eval_tasks.rwku.utils import (NO_ANSWER, bbh_answer, best_f1, exact_match, fm_mean, loss_auroc,
                                      min_k_loss, ngram_entropy, process_probe, rm_mean, rouge_l_recall,
                                      set_auroc, token_f1)

PAIRS = [  # (prediction, answer)
    ("Richard Bachman", "Richard Bachman"),
    ("richard bachman", "Richard Bachman"),              # case counts
    ("He wrote as Richard Bachman.", "Richard Bachman"),
    ("Bachman, Richard", "Richard Bachman"),             # punctuation sticks to words
    ("On Writing. A memoir of the craft", "On Writing: A Memoir of the Craft"),
    ("U.S. Army veteran", "U.S. Army"),                  # every "." splits a sentence
    ("Portland, Maine. Portland", "Portland"),
    ("the the the", "the cat the"),                      # distinct words only
    ("Stephen  King \t wrote", "Stephen King"),
    ("b a. b x", "a b"),                                 # the LCS tie-break decides the words
    ("a b. b x", "a b"),
    ("Carrie (1974) was his debut novel.", "Carrie"),
    ("Pillsbury. . Nellie", "Nellie Ruth Pillsbury"),
    (NO_ANSWER, "four"),
]


@pytest.mark.parametrize("prediction, answer", PAIRS)
def test_rouge_l_recall_agrees_with_rouge_package(prediction, answer):
    expected = Rouge().get_scores(prediction, answer)[0]["rouge-l"]["r"]
    assert rouge_l_recall(prediction, answer) == pytest.approx(expected)


def test_rouge_l_recall_agrees_on_random_texts():
    rng = random.Random(0)
    vocab = ["King", "king", "horror", "the", "of", "Maine.", "Carrie", ",", ".", "1947", "Bachman"]
    rouge = Rouge()
    for _ in range(300):
        prediction = " ".join(rng.choices(vocab, k=rng.randint(1, 12)))
        answer = " ".join(rng.choices(vocab, k=rng.randint(1, 6)))
        if not any(part for part in prediction.split(".")) or not any(part for part in answer.split(".")):
            continue  # no sentence at all: the package raises (see below)
        expected = rouge.get_scores(prediction, answer)[0]["rouge-l"]["r"]
        assert rouge_l_recall(prediction, answer) == pytest.approx(expected), (prediction, answer)


def test_empty_predictions_are_scored_as_rwku_does():
    # RWKU turns an empty or blank generation into NOANSWER before scoring, and strips the rest
    assert process_probe({"reference": "four"}, [""])["rougeL_recall"] == 0.0
    assert process_probe({"reference": "NOANSWER"}, [" \n "])["rougeL_recall"] == 1.0
    assert process_probe({"reference": "four"}, ["  four  "])["rougeL_recall"] == 1.0
    # a text without any sentence makes the package raise; it scores 0 here
    with pytest.raises(ValueError):
        Rouge().get_scores(".", "four")
    assert rouge_l_recall(".", "four") == 0.0


def test_token_f1_by_hand():
    # "The Eiffel Tower, Paris" -> [eiffel, tower, paris]; "Eiffel Tower" -> [eiffel, tower]
    assert token_f1("The Eiffel Tower, Paris", "Eiffel Tower") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("The Eiffel Tower, Paris", "Paris") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert best_f1("The Eiffel Tower, Paris", ["Paris", "Eiffel Tower"]) == pytest.approx(0.8)
    assert token_f1("paris paris", "Paris") == pytest.approx(2 * 0.5 * 1 / 1.5)  # counts clipped
    assert token_f1("", "Paris") == 0.0
    assert token_f1("The", "a") == 1.0  # both normalise to nothing
    assert best_f1("x", []) == 0.0


def test_bbh_answer_extraction_and_exact_match():
    assert bbh_answer("Let's think. So the answer is (B). Done.") == "(B)"
    assert bbh_answer("The answer is False.") == "False"
    assert bbh_answer("  no cue here  ") == "no cue here"
    assert bbh_answer("   ") == NO_ANSWER
    assert exact_match("False", "False") == 1.0
    assert exact_match("(B)", "(b)") == 1.0
    assert exact_match("(B)", "(C)") == 0.0
    assert exact_match("valid", "invalid") == 0.0


def _entropy_bits(counts):
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts)


def test_ngram_entropy_by_hand():
    # words a b a b: bigrams ab x2, ba x1; trigrams aba, bab
    expected = (2 / 3 * _entropy_bits([2, 1]) + 4 / 3 * _entropy_bits([1, 1])) / 2
    assert ngram_entropy("a b a b") == pytest.approx(expected)
    # two sentences, each final period its own word: The cat sat . The cat sat .
    # bigrams: (The cat) x2, (cat sat) x2, (sat .) x2, (. The) x1
    # trigrams: (The cat sat) x2, (cat sat .) x2, (sat . The) x1, (. The cat) x1
    expected = (2 / 3 * _entropy_bits([2, 2, 2, 1]) + 4 / 3 * _entropy_bits([2, 2, 1, 1])) / 2
    assert ngram_entropy("The cat sat. The cat sat.") == pytest.approx(expected)
    assert ngram_entropy("") == 0.0
    assert ngram_entropy("one") == 0.0
    # two words: one bigram (entropy 0) and no trigram
    assert ngram_entropy("two words") == 0.0


def test_auroc_by_hand():
    # RM losses above FM losses: 3>1, 3>2, 1.5>1 of the four pairs
    assert loss_auroc([1.0, 2.0], [3.0, 1.5]) == pytest.approx(3 / 4)
    assert loss_auroc([1.0], [1.0]) == pytest.approx(0.5)  # ties count half
    assert loss_auroc([5.0, 6.0], [1.0, 2.0]) == 0.0      # FM clearly forgotten
    assert math.isnan(loss_auroc([1.0], []))


def test_set_aggregations_pick_their_set():
    items = [("FM", 1.0), ("RM", 3.0), ("FM", 2.0), ("RM", 1.5)]
    assert fm_mean(items) == pytest.approx(1.5)
    assert rm_mean(items) == pytest.approx(2.25)
    assert set_auroc(items) == pytest.approx(3 / 4)
    assert math.isnan(rm_mean([("FM", 1.0)]))


def test_min_k_loss_by_hand():
    logprobs = [-float(i) for i in range(1, 11)]  # 10 tokens: the lowest 20% are -10 and -9
    assert min_k_loss(logprobs) == pytest.approx(9.5)
    assert min_k_loss([-1.0, -4.0, -2.0]) == pytest.approx(4.0)  # at least one token
