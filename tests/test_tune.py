"""`ulmr-bench tune`: the validation data it scores, its table, and a grid on the smoke profile."""

import json

import pytest

from ulmr.run import model_folder
from ulmr.cli import main
from ulmr.errors import UlmrError
from ulmr.profiles import load_profile
from ulmr.prompts import PromptTemplate
from ulmr.selection import evenly_spread, validation_for
from ulmr.tune import grid_points, summary_markdown, tune
from ulmr.unlearning.interface import Example, UnlearningData, ValidationData


def _task(n_forget=40, n_retain=100, validation=True):
    forget = [Example(answer=f"fa{i}", question=f"fq{i}") for i in range(n_forget)]
    retain = [Example(answer=f"ra{i}", question=f"rq{i}") for i in range(n_retain)]
    held = ValidationData([Example(f"vfa{i}", f"vfq{i}") for i in range(10)],
                          [Example(f"vra{i}", f"vrq{i}") for i in range(40)]) if validation else None
    return UnlearningData(benchmark="tofu", name="forget01", forget=forget, retain=retain,
                          forget_questions=forget, subjects=[], template=PromptTemplate(), refusals=["no"],
                          validation=held)


def test_selection_validates_on_the_benchmarks_validation_data_capped_and_refuses_none():
    validation = validation_for(_task(), 4, "tuning", "fix")
    assert [ex.question for ex in validation.forget] == ["vfq1", "vfq3", "vfq6", "vfq8"]
    assert [ex.question for ex in validation.retain] == [f"vrq{i}" for i in evenly_spread(40, 4)]
    assert len(validation_for(_task(), 40, "tuning", "fix").forget) == 10
    with pytest.raises(UlmrError, match=r"^tuning on the benchmark's validation data and tofu forget01 has none "
                                        r"\(forget and retain items\): fix$"):
        validation_for(_task(validation=False), 4, "tuning", "fix")


def _row(method, lr, **values):
    numbers = {"forget_prob": 0.5, "forget_rouge": 0.25, "retain_prob": 0.75, "retain_kept": 0.8,
               "retain_refusal_rate": 0.1, "forget_progress": 0.6, "score": 0.432}
    return {"method": method, "point": {"lr": lr}, **numbers, **values, "status": "ok", "seconds": 12.0}


def test_summary_table_shows_generation_scores_beside_probabilities():
    summary = {"benchmark": "tofu", "selection": "forget01", "model": "m", "profile": "quick", "seed": 0,
               "validation_items": {"forget": 10, "retain": 40},
               "before": {"forget_prob": 0.9, "forget_rouge": 0.8, "retain_prob": 0.85, "retain_judged": 39},
               "reference": {"forget_prob": 0.1, "forget_rouge": 0.3},
               "rows": [_row("ga", 1e-5, score=0.1), _row("ga", 1e-4), {**_row("ga", 1e-3), "status": "failed"}],
               "chosen": {"ga": {"lr": 1e-4}}}
    table = summary_markdown(summary)
    assert "| method | setting | P_f | ROUGE_f | P_r | kept | refusals | forget_progress | score | seconds |" in table
    assert "| ga | **lr=0.0001** | 0.5000 | 0.2500 | 0.7500 | 0.8000 | 0.1000 | 0.6000 | 0.4320 | 12 |" in table
    assert "| ga | lr=1e-05 | 0.5000 |" in table and "| ga | lr=0.001 | failed | failed |" in table
    assert "ROUGE_f = 0.8000" in table and "39 retain questions answered" in table
    assert "reference (never learned the forget data) P_f = 0.1000, ROUGE_f = 0.3000" in table
    assert "no reference model" in summary_markdown({**summary, "reference": None})


def test_grid_points_are_the_product_in_written_order():
    assert grid_points({"lr": [1, 2], "epochs": [3, 4]}) == [
        {"lr": 1, "epochs": 3}, {"lr": 1, "epochs": 4}, {"lr": 2, "epochs": 3}, {"lr": 2, "epochs": 4}]
    with pytest.raises(UlmrError, match="no tune_grid"):
        grid_points({})
    with pytest.raises(UlmrError, match="must list one or more values"):
        grid_points({"lr": 1e-5})


def test_tune_on_the_smoke_profile_stores_every_point_chooses_one_and_resumes(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("ULMR_CACHE", str(tmp_path / "cache"))
    profile = load_profile("smoke", {"benchmarks": ["tofu"], "methods": ["ga", "rt"]})
    lines = []
    assert tune(profile, tmp_path / "results", str(data_dir), lines.append, stored_only=True)["tofu"]["rows"] == []
    assert "0 of 4 grid points stored" in lines[-1]
    summary = tune(profile, tmp_path / "results", data_dir=str(data_dir), echo=lambda line: None)["tofu"]
    folder = tmp_path / "results" / "tune" / model_folder("tiny-random") / "tofu-forget01"
    assert sorted(p.name for p in (folder / "ga").iterdir()) == ["lr_0.001.json", "lr_1e-05.json"]
    assert len(summary["rows"]) == 4 and summary["validation_items"] == {"forget": 4, "retain": 4}
    assert summary["validation_source"] == {"authors": {"forget": [20], "retain": [21, 23]}}
    assert summary["reference"] is not None  # TOFU's retain model anchors forget progress
    for row in summary["rows"]:
        assert row["status"] == "ok" and 0 < row["forget_prob"] < 1 and 0 < row["retain_prob"] < 1
        assert 0 <= row["forget_rouge"] <= 1 and 0 <= row["retain_kept"] <= 1
        assert row["score"] == pytest.approx(row["forget_progress"] * row["retain_kept"]
                                             * (1 - row["retain_refusal_rate"]))
    stored = json.loads((folder / "ga" / "lr_0.001.json").read_text())["scores"]
    assert len(stored["forget_answers"]) == 4 and len(stored["retain_answers"]) == 4  # what a user would read
    for method in ("ga", "rt"):
        rows = [r for r in summary["rows"] if r["method"] == method]
        top = max(r["score"] for r in rows)
        assert summary["chosen"][method] == next(r["point"] for r in rows if r["score"] == top)
    assert json.loads((folder / "summary.json").read_text())["chosen"] == summary["chosen"]
    assert "| ga |" in (folder / "summary.md").read_text()
    # a larger lr moves the model further from the prepared one: ga's forget P falls more
    ga = {r["point"]["lr"]: r for r in summary["rows"] if r["method"] == "ga"}
    assert ga[1e-3]["forget_prob"] < ga[1e-5]["forget_prob"]
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("lr_*.json")}
    again = tune(profile, tmp_path / "results", data_dir=str(data_dir), echo=lambda line: None)["tofu"]
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("lr_*.json")} == stamps
    assert again["rows"] == summary["rows"] and again["chosen"] == summary["chosen"]
    (folder / "rt" / "lr_0.001.json").unlink()  # a grid in progress: the stored points, no summary written
    (folder / "summary.json").unlink()
    partial = tune(profile, tmp_path / "results", str(data_dir), lines.append, stored_only=True)["tofu"]
    assert len(partial["rows"]) == 3 and "3 of 4 grid points stored" in lines[-1]
    assert not (folder / "summary.json").exists() and not (folder / "rt" / "lr_0.001.json").exists()


def test_tune_cli_rejects_a_grid_key_no_method_config_has(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("ULMR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit):
        main(["tune", "--profile", "smoke", "--benchmarks", "tofu", "--methods", "ga", "--data-dir", str(data_dir),
              "--results-dir", str(tmp_path / "r"), "--set", "tofu.tune_grid={nonsense: [1]}"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: tofu.tune_grid key 'nonsense' is in none of the configs of ga") and "\n" not in err


def test_methods_without_the_grid_keys_or_with_a_tuned_parent_are_not_tuned(tmp_path, data_dir, monkeypatch):
    """ICU trains nothing and has no lr: tune records it as untuned instead of failing on the key; a
    variant (ga-avg) runs at its parent's choice."""
    from ulmr.tune import method_points, summary_markdown

    assert method_points("icu", {"lr": [1e-5, 1e-4]}) == []
    assert method_points("ga", {"lr": [1e-5], "beta": [0.1, 0.2]}) == [{"lr": 1e-5}]
    assert method_points("npo", {"lr": [1e-5], "beta": [0.1, 0.2]}) == [{"lr": 1e-5, "beta": 0.1},
                                                                       {"lr": 1e-5, "beta": 0.2}]
    # a variant runs at its parent's choice when the parent is tuned with it
    assert method_points("ulmr-noavg", {"lr": [1e-5]}, ["ulmr", "ulmr-noavg"]) == []
    assert method_points("ulmr-noavg", {"lr": [1e-5]}, ["ga", "ulmr-noavg"]) == [{"lr": 1e-5}]
    monkeypatch.setenv("ULMR_CACHE", str(tmp_path / "cache"))
    profile = load_profile("smoke", {"benchmarks": ["tofu"], "methods": ["icu", "ga", "ga-avg"],
                                     "tofu.tune_grid": {"lr": [1e-3]}})
    summary = tune(profile, tmp_path / "results", data_dir=str(data_dir), echo=lambda line: None)["tofu"]
    assert [r["method"] for r in summary["rows"]] == ["ga"] and summary["nothing_to_tune"] == ["icu"]
    assert summary["variants"] == {"ga-avg": "ga"} and set(summary["chosen"]) == {"ga"}
    assert "Nothing to tune" in summary_markdown(summary) and "ga-avg (ga)" in summary_markdown(summary)


def test_grid_points_are_scored_in_the_evaluations_precision(lively):
    """A trained candidate is measured as evaluation scores it (its weights cast to the evaluation's
    dtype, bf16 here), not in the fp32 it trained in."""
    import torch
    from types import SimpleNamespace

    from ulmr.selection import greedy_answers
    from ulmr.tune import _BenchmarkTuning

    model, tokenizer = lively
    template = PromptTemplate()
    validation = ValidationData([Example("Quint.", "Who wrote Moon Soup?")],
                                [Example("Blue.", "What colour is the sky?"),
                                 Example("Paris.", "Where is the Louvre?")])
    questions = [ex.question for ex in validation.forget + validation.retain]
    in_fp32 = greedy_answers(model, tokenizer, template, questions)
    tuning = _BenchmarkTuning.__new__(_BenchmarkTuning)  # only what scoring reads
    tuning.prepared_run = SimpleNamespace(settings=SimpleNamespace(dtype="bf16"), template=template)
    scores = tuning._scores(model, validation, tokenizer)
    assert model.dtype == torch.bfloat16
    assert scores["forget_answers"] + scores["retain_answers"] == greedy_answers(model, tokenizer, template, questions)
    assert scores["forget_answers"] + scores["retain_answers"] != in_fp32  # the precisions disagree here
