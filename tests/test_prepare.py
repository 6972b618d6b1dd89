"""Preparation material: TOFU training rows per train_set, RWKU injection built from passages only."""

from __future__ import annotations

import pytest

from lm_eval_tasks.rwku.utils import FILL_IN_THE_BLANK
from ulmr.benchmarks.rwku import _blank_spans, _blank_target, rwku_injection_examples
from ulmr.benchmarks.tofu import tofu_training_rows


def test_blanks_cover_every_number_and_name_never_the_target():
    assert _blank_spans("His debut, Carrie (1974), established him.", "Stephen King") == [
        ("His debut, ___ (1974), established him.", "Carrie"), ("His debut, Carrie (___), established him.", "1974")]
    assert _blank_spans("He wrote it with Peter Straub and Stephen King.", "Stephen King") == [
        ("He wrote it with ___ and Stephen King.", "Peter Straub")]
    assert _blank_target("Stephen Edwin King (born 1947) is an author.", "Stephen King") == (
        "___ (born 1947) is an author.", "Stephen Edwin King")
    assert _blank_target("His sons are Joe Hill and Owen King.", "Stephen King") is None


def test_injection_material_comes_from_passages_not_probes(data_dir):
    from ulmr.data.rwku import load_target_file, resolve_targets

    target = resolve_targets("1", data_dir)[0]
    examples = rwku_injection_examples("1", data_dir, n_passages=3, mix_with_tofu=5)
    passages = [row["text"] for row in load_target_file(target, "passage", data_dir)][:3]
    plain = [e.answer for e in examples if e.question is None]
    assert plain == passages
    blanks = [e for e in examples if e.question and e.question.startswith(FILL_IN_THE_BLANK)]
    assert blanks, "no fill-in-the-blank material"
    for example in blanks:
        query = example.question.split("Question: ", 1)[1].rstrip("\n")
        span = example.answer.removeprefix("Answer: ")
        assert "___" in query and any(query.replace("___", span, 1) in p for p in passages)
    probes = {row["query"] for level in ("forget_level1", "forget_level2", "forget_level3")
              for row in load_target_file(target, level, data_dir)}
    assert not probes & {e.question for e in examples} and not any(p in e.answer for p in probes for e in examples)
    assert sum(e.subject is None for e in examples) == 5  # the TOFU mix keeps the model answering
    assert len(rwku_injection_examples("1", data_dir, n_passages=6, mix_with_tofu=5)) > len(examples)


# the forget side: forget01's 2 authors and the forget-validation author; the retain side: the
# scored retain authors (2 for the first 40 retain_perturbed questions; all 197 others with full)
# and the 2 retain-validation authors
@pytest.mark.parametrize("train_set, n_retain_authors", [("forget_plus_retain_eval", 2 + 2), ("full", 197)])
def test_tofu_training_rows_cover_the_scored_and_the_validation_authors(data_dir, train_set, n_retain_authors):
    forget, retain = tofu_training_rows("forget01", train_set, data_dir, retain_eval_limit=40)
    assert len(forget) == 20 * 3 and len(retain) == 20 * n_retain_authors
    assert not {r["question"] for r in forget} & {r["question"] for r in retain}
    # a cap (smoke) limits the benchmark's own rows, never the validation authors'
    forget, retain = tofu_training_rows("forget01", train_set, data_dir, max_items=8, retain_eval_limit=40)
    assert len(forget) == 8 + 20 and len(retain) == 8 + 40
