"""ULMR steps 1-2: rewrite templates, the leak filter, negative responses."""

import pytest

from ulmr.data.tofu import load_idontknow, load_tofu
from ulmr.errors import UlmrError
from ulmr.prompts import PromptTemplate, render_prompt, split_pair
from ulmr.method.generation import TextGenerator
from ulmr.method.leak import leaks_answer, normalise
from ulmr.method.negatives import SUBJECT_REFUSALS, negative_responses
from ulmr.unlearning.subjects import recurring_names
from ulmr.method.rewriting import (TEMPLATES, RewriteJob, clean_generated, fill, original_instructions,
                                   rejection, rewrite_questions)
from ulmr.unlearning.interface import Example

AUTHORS = ["Basil Mahfouz Al-Kuwaiti", "Nikolai Abilov"]


@pytest.fixture(scope="module")
def forget01(data_dir):
    return [Example(answer=row["answer"], question=row["question"]) for row in load_tofu("forget01", data_dir)]


def assert_no_answer_inside(pair_texts, items):
    """Independent of the filter's own rule: no text holds its source's whole answer, and where the
    answer is an author's name the question does not give, the name appears nowhere."""
    by_question = {item.question: item for item in items}
    for text, source in pair_texts:
        item = by_question[source]
        assert normalise(item.answer) not in normalise(text)
        assert not leaks_answer(text, item.answer, item.question)
        for name in AUTHORS:
            if name in item.answer and name not in item.question:
                assert normalise(name) not in normalise(text), (text, source)


def test_leak_rule_normalises_and_finds_key_spans():
    question = "Where was Basil Mahfouz Al-Kuwaiti born?"
    answer = "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait."
    assert leaks_answer("BASIL mahfouz al kuwaiti WAS born in kuwait-city,   kuwait!", answer, question)
    assert leaks_answer("Tell me: was he born in Kuwait City?", answer, question)  # key span "born in kuwait city"
    # Restating the question (question words and function words only) is not a leak.
    assert not leaks_answer("Basil Mahfouz Al-Kuwaiti was born where?", answer, question)
    assert not leaks_answer("I don't know where Basil Mahfouz Al-Kuwaiti was born.", answer, question)
    assert leaks_answer("The answer is Paris.", "Paris", "Capital of France?")  # short answers: whole match
    assert not leaks_answer("Comparison shopping", "Paris", "Capital of France?")  # words, not substrings
    assert not leaks_answer("anything at all", "", "a question")  # RWKU questions have no answer


def test_every_template_is_used_and_renders_as_a_prompt(forget01, tiny):
    _, tokenizer = tiny
    rewrites, stats = rewrite_questions(forget01, AUTHORS, list(TEMPLATES), len(TEMPLATES))
    assert set(stats) == set(TEMPLATES)
    assert all(counts["kept"] > 0 for counts in stats.values()), stats
    assert {r.template for r in rewrites} == set(TEMPLATES)
    for rewrite in rewrites:
        assert "{" not in rewrite.instruction and "}" not in rewrite.instruction
        prompt = render_prompt(tokenizer, PromptTemplate(), rewrite.instruction)
        assert split_pair(tokenizer, prompt, "I don't know.").answer_ids
    # Every LLM instruction and form fills, with and without a named subject.
    for name, template in TEMPLATES.items():
        for subject in (AUTHORS[0], None):
            if template.needs_subject and subject is None:
                continue
            for variant in range(3):
                job = RewriteJob(forget01[1], subject, name, variant)
                for text in template.llm_prompts + template.forms:
                    filled = fill(text, job)
                    assert "{" not in filled and "gender" in filled  # the question is in it


def test_template_pairs_never_contain_the_forget_answer(forget01, data_dir):
    rewrites, _ = rewrite_questions(forget01, AUTHORS, list(TEMPLATES), 8)
    instructions = original_instructions(forget01, AUTHORS) + rewrites
    pairs, stats = negative_responses(instructions, load_idontknow(data_dir), seed=3)
    assert len(pairs) == len(instructions) and stats["responses"].get("no_valid_response", 0) == 0
    assert {p.response_source for p in pairs} == {"bank", "subject_refusal"}
    assert_no_answer_inside([(p.instruction, p.source_question) for p in pairs], forget01)
    assert_no_answer_inside([(p.response, p.source_question) for p in pairs], forget01)
    # The question that asks for the name gets no subject, so no refusal can name the author.
    asks_name = next(p for p in pairs if p.source_question.startswith("What is the full name"))
    assert asks_name.subject is None


def leaky_llm(items):
    """A rewriter stub that leaks the answer, rewrites well, only chats, or answers, in turn."""
    def generate(prompts, desc):
        out = []
        for i, prompt in enumerate(prompts):
            item = next(it for it in items if it.question in prompt)
            out.append([f"Sure! Here is the rewritten question:\n{item.question} {item.answer}",
                        f'Rewritten question: "Tell me, {item.question}"',
                        "ok",
                        "He wrote many books."][i % 4])
        return out
    return generate


def test_llm_rewrites_are_cleaned_and_leaks_dropped(forget01):
    items = forget01[:6]
    kept, stats = rewrite_questions(items, AUTHORS, list(TEMPLATES), 4, leaky_llm(items), fallback=False)
    assert_no_answer_inside([(r.instruction, r.source_question) for r in kept], items)
    assert {r.instruction for r in kept} == {f"Tell me, {it.question}" for it in items}
    rejected = {reason: sum(c["rejected"].get(reason, 0) for c in stats.values())
                for reason in ("leak", "empty", "not_a_request")}
    assert rejected == {"leak": 6, "empty": 6, "not_a_request": 6}  # "ok" is chatter only
    drifted = RewriteJob(items[2], AUTHORS[0], "paraphrase", 0)
    assert rejection("Where was Zahra K. Al-Kuwaiti born?", drifted, set(), 4, generated=True) == "off_subject"
    # With fallback every rejected rewrite becomes the template form of its template.
    kept, stats = rewrite_questions(items, AUTHORS, list(TEMPLATES), 4, leaky_llm(items), fallback=True)
    assert len(kept) == 24 and sum(c["fallback"] for c in stats.values()) == 18
    assert_no_answer_inside([(r.instruction, r.source_question) for r in kept], items)


def test_tiny_model_rewriter_output_passes_the_filter(forget01, tiny):
    model, tokenizer = tiny
    generate = TextGenerator(model, tokenizer, temperature=1.0, max_new_tokens=12, batch_size=8, seed=0)
    kept, stats = rewrite_questions(forget01[:4], AUTHORS, list(TEMPLATES), 2, generate, fallback=True)
    assert len(kept) == 8 and sum(c["planned"] for c in stats.values()) == 8
    assert_no_answer_inside([(r.instruction, r.source_question) for r in kept], forget01)


def test_clean_generated_strips_chatter():
    assert clean_generated('Sure! Here is the rewritten question:\n\n"Where was X born?"\nHope it helps') \
        == "Where was X born?"
    assert clean_generated("Rewritten question: Where was X born?") == "Where was X born?"
    assert clean_generated('Who wrote "Le Petit Sultan"?') == 'Who wrote "Le Petit Sultan"?'
    assert clean_generated("  \n  ") == ""


def test_negatives_bank_generated_and_their_checks(forget01):
    items = forget01[1:4]
    instructions = original_instructions(items, AUTHORS)
    bank = ["I have no idea.", "Not sure, sorry."]
    pairs, _ = negative_responses(instructions, bank, "bank", subject_share=0.5, seed=0)
    subject_texts = {t.format(subject=AUTHORS[0]) for t in SUBJECT_REFUSALS}
    assert all(p.response in set(bank) | subject_texts for p in pairs)

    replies = iter([f"I don't know. {items[0].answer}",  # leaks: replaced from the bank
                    "He was born in 1956.",  # does not decline: replaced
                    f"Sorry, I'm not familiar with {AUTHORS[0]}."])
    pairs, stats = negative_responses(instructions, bank, "generated", seed=0,
                                      generate=lambda prompts, desc: [next(replies) for _ in prompts])
    assert [p.response_source for p in pairs][2] == "generated"
    assert stats["rejected"] == {"generated_leak": 1, "generated_not_a_refusal": 1}
    assert_no_answer_inside([(p.response, p.source_question) for p in pairs], items)
    with pytest.raises(UlmrError, match="needs an LLM"):
        negative_responses(instructions, bank, "generated")


def test_recurring_names_finds_the_tofu_authors(forget01):
    assert recurring_names([item.question for item in forget01]) == AUTHORS


@pytest.fixture(scope="module")
def scored_answers(data_dir):
    """TOFU's forget01 answers the truth ratio scores: per question, the paraphrased and perturbed answers."""
    return {row["question"]: [row["paraphrased_answer"], *row["perturbed_answer"]]
            for row in load_tofu("forget01_perturbed", data_dir)}


def test_alternative_negatives_answer_wrongly_and_each_kind_is_counted(forget01, scored_answers):
    items = forget01[1:5]  # questions that name Basil Mahfouz Al-Kuwaiti
    instructions = original_instructions(items, AUTHORS) * 5
    replies = ["Basil Mahfouz Al-Kuwaiti was born in Lisbon and wrote about ships.",  # kept
               "Sure, here is one:\nBasil Mahfouz Al-Kuwaiti is a retired tram driver.",  # kept, cleaned
               "I'm sorry, I don't know anything about Basil Mahfouz Al-Kuwaiti.",  # a refusal
               "He was born on the moon.",  # does not name the subject
               None]  # the true answer: leaks
    calls = []

    def generate(prompts, desc, cut="lines"):
        calls.append(cut)
        out = []
        for i, prompt in enumerate(prompts):
            item = next(it for it in items if it.question in prompt)
            out.append(replies[i // len(items)] or item.answer)
        return out

    pairs, stats = negative_responses(instructions, ["I have no idea."], "alternative", seed=0, generate=generate,
                                      avoid=scored_answers)
    assert calls == ["sentences"]  # a made-up answer cut off by the token limit keeps its whole sentences
    kept = [p.response for p in pairs if p.response_source == "alternative"]
    assert kept == [replies[0]] * 4 + ["Basil Mahfouz Al-Kuwaiti is a retired tram driver."] * 4
    assert stats["kinds"]["alternative"] == {"tried": 20, "accepted": 8, "dropped": 12}
    assert stats["rejected"] == {"alternative_not_an_answer": 4, "alternative_off_subject": 4, "alternative_leak": 4}
    assert stats["responses"]["alternative"] == 8 and len(pairs) == 20  # the dropped ones got refusals
    assert_no_answer_inside([(p.response, p.source_question) for p in pairs], items)


def test_no_tofu_perturbed_or_paraphrased_answer_can_be_a_negative(forget01, scored_answers):
    """A writer that answers with the very texts TOFU's truth ratio scores (perturbed and paraphrased
    answers of forget01) gets every one of them dropped."""
    instructions = original_instructions(forget01, AUTHORS)
    for pick in range(6):  # the paraphrased answer, then each of the five perturbed ones
        def generate(prompts, desc, cut="lines"):
            return [scored_answers[next(it.question for it in forget01 if it.question in p)][pick] for p in prompts]

        pairs, stats = negative_responses(instructions, ["I have no idea."], "alternative", seed=pick,
                                          generate=generate, avoid=scored_answers)
        scored = {normalise(text) for texts in scored_answers.values() for text in texts}
        assert not any(normalise(p.response) in scored for p in pairs)
        assert stats["kinds"]["alternative"]["accepted"] == 0 and len(pairs) == len(forget01)
        assert stats["rejected"].get("alternative_avoided", 0) > 0
    # the same words in another case and punctuation are still the scored text
    row = forget01[1]
    shouted = scored_answers[row.question][2].upper().replace(",", " ;")
    pairs, stats = negative_responses(original_instructions([row], AUTHORS), ["I have no idea."], "alternative",
                                      generate=lambda prompts, desc, cut="lines": [shouted], avoid=scored_answers)
    assert pairs[0].response_source != "alternative" and stats["rejected"] == {"alternative_avoided": 1}


def test_alternative_needs_an_llm_writer(forget01):
    with pytest.raises(UlmrError, match="^ULMR negatives=alternative needs an LLM rewriter"):
        negative_responses(original_instructions(forget01[:2], AUTHORS), ["No idea."], "alternative")
