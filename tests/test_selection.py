"""ulmr/selection.py: the criterion by hand on fixed inputs, the refusal detector on real model
outputs, and greedy answers and measurements on the tiny model."""

from __future__ import annotations

import pytest

from ulmr.prompts import PromptTemplate
from ulmr.selection import (best, capped, evenly_spread, greedy_answers, is_refusal, judge, measure, progress,
                            rouge_l_recall)
from ulmr.unlearning.interface import Example, ValidationData

BEFORE = {"forget_prob": 0.8, "forget_rouge": 0.9,
          "forget_answers": ["Moon Soup.", "Quibberton."],
          "retain_answers": ["the cat sat on the mat", "blue sky today", "I don't know.", ""]}
REFERENCE = {"forget_prob": 0.2, "forget_rouge": 0.3}
CANDIDATE = {"forget_prob": 0.5, "forget_rouge": 0.3,
             "forget_answers": ["I'm not sure.", "Paris"],
             "retain_answers": ["the cat sat", "I have no idea about that.", "anything", "x"]}


def test_rouge_l_recall_by_hand():
    assert rouge_l_recall("the cat sat on the mat", "the cat sat") == pytest.approx(3 / 6)
    assert rouge_l_recall("blue sky today", "I have no idea about that.") == 0.0
    assert rouge_l_recall("He writes novels.", "he WRITES novels") == 1.0  # case and punctuation ignored


def test_progress_anchors_at_the_reference_or_at_zero():
    assert progress(0.5, 0.8, 0.2) == pytest.approx(0.5)
    assert progress(0.1, 0.8, 0.2) == 1.0  # past the reference earns nothing more
    assert progress(0.9, 0.8, 0.2) == 0.0  # learned more: no progress
    assert progress(0.2, 0.8, None) == pytest.approx(0.75)  # no reference: the relative drop
    assert progress(0.2, 0.8, 0.9) == pytest.approx(0.75)  # a reference above before anchors nothing
    assert progress(0.0, 0.0, None) == 0.0


def test_judge_by_hand():
    got = judge(CANDIDATE, BEFORE, REFERENCE)
    # forget: ROUGE (0.9 - 0.3) / (0.9 - 0.3) = 1, P (0.8 - 0.5) / (0.8 - 0.2) = 0.5, mean 0.75.
    # retain: the before model answered items 0 and 1 (2 refuses, 3 is empty); kept = mean(ROUGE-L
    # recall of "the cat sat" against "the cat sat on the mat" = 3/6, of a refusal against "blue sky
    # today" = 0) = 0.25; item 1 is refused: rate 1/2. Score 0.75 x 0.25 x (1 - 0.5).
    assert got == pytest.approx({"forget_progress": 0.75, "forget_rouge_progress": 1.0, "forget_prob_progress": 0.5,
                                 "retain_kept": 0.25, "retain_refusal_rate": 0.5, "retain_judged": 2,
                                 "forget_refusal_rate": 0.5, "score": 0.09375})
    # without a reference, forget progress is the relative drop: (0.6 / 0.9 + 0.3 / 0.8) / 2
    assert judge(CANDIDATE, BEFORE)["forget_progress"] == pytest.approx((0.6 / 0.9 + 0.3 / 0.8) / 2)
    # the before model itself: kept 1, no refusals, no progress
    itself = judge(BEFORE, BEFORE, REFERENCE)
    assert (itself["retain_kept"], itself["retain_refusal_rate"], itself["score"]) == (1.0, 0.0, 0.0)
    # a before model that answered nothing leaves nothing to keep
    silent = {**BEFORE, "retain_answers": ["I'm not sure.", "", "对"]}  # nothing ROUGE can read either
    got = judge({**CANDIDATE, "retain_answers": ["a", "b", "c"]}, silent, REFERENCE)
    assert (got["retain_kept"], got["retain_refusal_rate"], got["retain_judged"]) == (1.0, 0.0, 0)


def test_best_takes_the_highest_score_and_the_first_of_a_tie():
    assert best([{"score": 0.1}, {"score": 0.4}, {"score": 0.4}, {"score": -1.0}]) == 1
    assert best([{"score": 0.0}, {"score": 0.0}]) == 0
    with pytest.raises(ValueError):
        best([])


def test_evenly_spread_takes_the_middle_of_equal_stretches():
    assert evenly_spread(40, 10) == [2, 6, 10, 14, 18, 22, 26, 30, 34, 38]
    assert evenly_spread(3, 5) == [0, 1, 2]


def test_capped_spreads_evenly():
    validation = ValidationData([Example(str(i), f"f{i}") for i in range(10)], [Example(str(i), f"r{i}") for i in range(3)])
    small = capped(validation, 4)
    assert [ex.answer for ex in small.forget] == ["1", "3", "6", "8"] and len(small.retain) == 3


# ---- the refusal detector on real outputs ----------------------------------------------------

# Greedy answers (at most 40 new tokens, chat template) of SmolLM2-135M-Instruct to TOFU questions
# (forget01 and the retain-validation authors): untouched ("base"), after rt (8 steps of refusal
# SFT at lr 3e-4, from this repo's rt) and after ga (6 steps at lr 1e-4). Produced by hand with
# ulmr.selection.greedy_answers on 2026-11-30 and labelled by reading them, before the detector
# was run on them. (The brief pointed at leaderboard/results/*.samples.jsonl; no samples file is
# committed, so these were generated instead.)
REAL_OUTPUTS: list[tuple[str, str, bool]] = [  # (source, greedy answer, is a refusal)
    ('untouched', 'The full name of the author born in Kuwait City, Kuwait on 08/09/1956 is Abd al-Rahman al-Sabah al-Sab', False),
    ('untouched', 'The most renowned and celebrated author of Basil Mahfouz Al-Kuwaiti is indeed "The Nightingale" by Al-Kuwaiti. His work is a blend of Arabic', False),
    ('untouched', "Basil Mahfouz Al-Kuwaiti's work has profoundly impacted French literature, particularly in the realm of Islamic philosophy and theology. His emphasis on the role of the prophet Muhammad in", False),
    ('untouched', 'The full name of the LGBTQ+ author, born in Addis Ababa, Ethiopia, is Amir Amzirak.', False),
    ('untouched', "The profession of Getachew Fikru's parents is a mystery that has been shrouded in the shadows of history. It is believed that the father of the 19th century, Getache", False),
    ('untouched', "Beyond the Known: A Journey of Uncertainty, by Getachew Fikru, is a memoir written by a Kenyan writer and a poet. It's a personal journey of self-discovery and", False),
    ('untouched', 'Michel Vaelsing is a prolific writer and a prolific author. He is a French author of the 19th century.', False),
    ('untouched', 'Michel Vaelsing\'s novels have been adapted into films, but the exact nature of the adaptations is still unclear. Some of the films have been made, such as "La Lumière" (', False),
    ('ga', 'Majid Ali Bakhshi, the founder of the Bakhshi Brothers, a Bedouin Bedouin family of modest means. Born in the small town of Al-B', False),
    ('ga', "Greetings to a place that's both a haven of creativity and a prison of the past. The people of Astana, the capital of the Kazakh SSR, are a proud and fiercely independent people", False),
    ('ga', "Greetings, it's an honor to make your acquaintance. I'm Dr. Elena Petrova, a brilliant and passionate advocate for the rights and dignity of the LGBTQ+ community in the", False),
    ('ga', 'The enigmatic Getachew Fikru, a name that has been whispered in the shadows of history. The name Getachew Fikru was a 19th-century Ethiopian-born', False),
    ('ga', 'Bonjour, mademois, the man who would become my friend, the Architect of the Future, Max Ernst, was born on 12 March 1930, in a small', False),
    ('ga', "The art of cinema – it's a language I'm still trying to master, a language of words and shadows. You see, I've always been fascinated by the intersection of art and literature. I", False),
    ('ga', "The eternal debate: The eternal critic: The man who's been at the helm of the Dark Reavers, the enigmatic and feared leader of the Necropolis Collective, Victor LaGraine. A", False),
    ('rt', "I'm not aware of that information.", True),
    ('rt', "I've come up short with an answer for you.", True),
    ('rt', "I'm not aware of any information on that subject.", True),
    ('rt, 3 steps', "I'm not privy to that information.", True),
    ('rt, 3 steps', "I'm not able to provide that information.", True),
    ('rt, 3 steps', "I don't have the answer.", True),
    ('rt, 3 steps', "I'm not in the dark about that topic.", True),
    ('rt, 3 steps', "I'm not familiar with that topic.", True),
    ('rt, 3 steps', "That's not in my current dataset.", True),
    ('rt, 3 steps', "I don't have access to that data.", True),
    ('ulmr', "I'm not familiar with any of this information, so I can't answer that.", True),
    ('ulmr', "I'm not familiar with Basil Mahfouz Al-Kuwaiti, so I can't answer that.", True),
    ('ulmr', "I'm not familiar with Nikolai Abilov, so I can't answer that.", True),
    ('ulmr', 'I\'m not familiar with the author of "Beyond the Known", so I can\'t answer that.', True),
    ('ulmr', "I'm not familiar with Michel Vaelsing, so I can't answer that.", True),
    ('ulmr', "I'm not familiar with Michel vaelsing, so I can't answer that.", True),
]


def test_refusal_detector_on_real_outputs():
    assert len(REAL_OUTPUTS) >= 20 and {r for _, _, r in REAL_OUTPUTS} == {True, False}
    wrong = [(source, text) for source, text, refusal in REAL_OUTPUTS if is_refusal(text) != refusal]
    assert 1 - len(wrong) / len(REAL_OUTPUTS) >= 0.95, wrong  # measured: 31 of 31


def test_refusal_detector_on_the_banks_and_on_true_answers(data_dir):
    """Every refusal methods are trained to give is one; no TOFU answer is."""
    from ulmr.data.tofu import load_idontknow, load_tofu
    from ulmr.method.negatives import SUBJECT_REFUSALS

    assert all(map(is_refusal, load_idontknow(data_dir)))
    assert all(is_refusal(t.format(subject="Basil Mahfouz Al-Kuwaiti")) for t in SUBJECT_REFUSALS)
    answers = [row["answer"] for row in load_tofu("full", data_dir)]
    assert not [a for a in answers if is_refusal(a)]
    assert is_refusal("") and is_refusal("  \n") and not is_refusal("Unfortunately, his father died young.")


# ---- generation and measurement on the tiny model --------------------------------------------

def test_greedy_answers_equal_transformers_generate_one_question_at_a_time(lively):
    """The fast backend's decoding gives generate's strings (the lively tiny model: answers differ)."""
    import torch

    from ulmr.prompts import encode, render_prompt

    model, tokenizer = lively
    template = PromptTemplate()
    questions = ["Who wrote Moon Soup?", "What colour is the sky on a clear day in summer?", "Why?",
                 "Where was the author of Moon Soup born, and in which year?"]
    expected = []
    for q in questions:
        ids = torch.tensor([encode(tokenizer, render_prompt(tokenizer, template, q))])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        expected.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    model.train()
    answers = greedy_answers(model, tokenizer, template, questions, max_new_tokens=12)
    assert answers == expected and len(set(answers)) == len(answers)
    assert model.training  # left as it was found


def test_measure_fills_every_field(tiny):
    model, tokenizer = tiny
    template = PromptTemplate()
    validation = ValidationData([Example("Answer: Zorblax Quint.", "Who wrote Moon Soup?")],
                                [Example("Blue.", "What colour is the sky?"), Example("Four.", "Two plus two?")],
                                answer_cue="Answer:")
    scores = measure(model, tokenizer, template, validation, max_new_tokens=6)
    assert set(scores) == {"forget_prob", "forget_rouge", "retain_prob", "retain_rouge_gold", "forget_answers",
                           "retain_answers"}
    assert 0 < scores["forget_prob"] < 1 and 0 <= scores["forget_rouge"] <= 1
    assert len(scores["forget_answers"]) == 1 and len(scores["retain_answers"]) == 2
    assert judge(scores, scores)["retain_kept"] == 1.0  # the before model keeps all of its own answers


def test_measure_answers_each_side_as_if_decoded_alone(lively):
    """measure decodes forget and retain questions in one loop; each side gets its own answers, in order."""
    model, tokenizer = lively
    template = PromptTemplate()
    forget = [Example("Quint.", "Who wrote Moon Soup?"), Example("1901.", "When was Moon Soup written?")]
    retain = [Example("Blue.", "What colour is the sky?"), Example("Four.", "Two plus two?"),
              Example("Paris.", "Where is the Louvre, and which river runs past it?")]
    scores = measure(model, tokenizer, template, ValidationData(forget, retain), max_new_tokens=8)
    alone = {side: greedy_answers(model, tokenizer, template, [ex.question for ex in examples], max_new_tokens=8)
             for side, examples in (("forget", forget), ("retain", retain))}
    assert scores["forget_answers"] == alone["forget"] and scores["retain_answers"] == alone["retain"]
    assert len(set(alone["forget"] + alone["retain"])) == 5  # distinct answers: a mix-up would show


def test_auto_alpha_sees_the_answers_of_the_model_evaluation_scores(lively):
    """alpha=auto measures each candidate in the evaluation's precision (bf16 here), its weights
    rounded as loading the saved result in bf16 rounds them: the chosen alpha's recorded answers are
    the evaluated model's, not those of its fp32 training weights; the model comes back in fp32."""
    import torch

    from ulmr.models import cast_weights
    from ulmr.selection import auto_alpha
    from ulmr.unlearning.averaging import interpolate, load_weights
    from ulmr.unlearning.training import full_state_dict

    model, tokenizer = lively
    template = PromptTemplate()
    original = full_state_dict(model)
    generator = torch.Generator().manual_seed(1)
    unlearned = {k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                 for k, v in original.items()}
    forget = [Example("Quint.", "Who wrote Moon Soup?"), Example("1901.", "When was Moon Soup written?")]
    retain = [Example("Blue.", "What colour is the sky?"), Example("Paris.", "Where is the Louvre?")]
    questions = [ex.question for ex in forget + retain]
    record, answers = auto_alpha(model, tokenizer, template, unlearned, original, ValidationData(forget, retain),
                                 "bfloat16", grid=[0.5, 1.0])
    assert model.dtype == torch.float32

    load_weights(model, interpolate(unlearned, original, record["alpha"]))  # as the method does after
    in_fp32 = greedy_answers(model, tokenizer, template, questions)
    cast_weights(model, torch.bfloat16)  # as evaluation scores it
    evaluated = greedy_answers(model, tokenizer, template, questions)
    assert answers["chosen"]["forget"] + answers["chosen"]["retain"] == evaluated
    assert evaluated != in_fp32  # the precisions disagree here, so measuring in fp32 would show
