"""`ulmr-bench tune`: the validation split, the criterion, and a grid on the smoke profile."""

import json

import pytest

from ulmr.run import model_folder
from ulmr.cli import main
from ulmr.errors import UlmrError
from ulmr.profiles import load_profile
from ulmr.prompts import PromptTemplate
from ulmr.tune import criterion, evenly_spread, grid_points, tune, validation_split
from ulmr.unlearning.interface import Example, UnlearningData


def _task(n_forget=40, n_retain=100):
    forget = [Example(answer=f"fa{i}", question=f"fq{i}") for i in range(n_forget)]
    retain = [Example(answer=f"ra{i}", question=f"rq{i}") for i in range(n_retain)]
    return UnlearningData(benchmark="tofu", name="forget01", forget=forget, retain=retain,
                          forget_questions=forget, subjects=[], template=PromptTemplate(), refusals=["no"])


def test_evenly_spread_takes_the_middle_of_equal_stretches():
    assert evenly_spread(40, 10) == [2, 6, 10, 14, 18, 22, 26, 30, 34, 38]
    assert evenly_spread(3, 5) == [0, 1, 2]


def test_validation_split_holds_out_forget_and_retain_items_and_never_trains_on_them():
    split = validation_split(_task(), holdout=0.25, items=40, excluded_questions={"rq1", "rq3"})
    assert [ex.question for ex in split.forget] == [f"fq{i}" for i in evenly_spread(40, 10)]
    assert len(split.retain) == 40 and not {"rq1", "rq3"} & {ex.question for ex in split.retain}
    held = {ex.question for ex in split.forget + split.retain}
    trained = {ex.question for ex in split.train.forget + split.train.retain + split.train.forget_questions}
    assert not held & trained
    assert len(split.train.forget) == 30 and len(split.train.retain) == 60
    assert len(split.train.forget_questions) == 30


def test_validation_split_caps_the_forget_items_and_refuses_an_empty_holdout():
    assert len(validation_split(_task(n_forget=400), 0.25, items=20).forget) == 20
    with pytest.raises(UlmrError, match="tune_holdout=0.01 holds out no item"):
        validation_split(_task(n_forget=40), 0.01, items=20)


def test_criterion_by_hand():
    before = {"forget": 0.8, "retain": 0.5}
    # progress (0.8 - 0.5) / (0.8 - 0.2) = 0.5; kept 0.4 / 0.5 = 0.8; score 0.4
    got = criterion({"forget": 0.5, "retain": 0.4}, before, reference_forget=0.2)
    assert got == pytest.approx({"forget_progress": 0.5, "retain_kept": 0.8, "score": 0.4})
    # forgetting past the reference earns no more; retain above before is capped at 1
    got = criterion({"forget": 0.05, "retain": 0.6}, before, reference_forget=0.2)
    assert got == {"forget_progress": 1.0, "retain_kept": 1.0, "score": 1.0}
    # a model that learned more of the forget data scores 0
    assert criterion({"forget": 0.9, "retain": 0.5}, before, 0.2)["score"] == 0.0
    # a reference at or above the before model anchors nothing: progress is the relative drop 0.6 / 0.8
    got = criterion({"forget": 0.2, "retain": 0.5}, before, reference_forget=0.9)
    assert got == pytest.approx({"forget_progress": 0.75, "retain_kept": 1.0, "score": 0.75})


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
    for row in summary["rows"]:
        assert row["status"] == "ok" and 0 < row["forget"] < 1 and 0 < row["retain"] < 1
        assert row["score"] == pytest.approx(row["forget_progress"] * row["retain_kept"])
    for method in ("ga", "rt"):
        rows = [r for r in summary["rows"] if r["method"] == method]
        best = max(r["score"] for r in rows)
        assert summary["chosen"][method] == next(r["point"] for r in rows if r["score"] == best)
    assert json.loads((folder / "summary.json").read_text())["chosen"] == summary["chosen"]
    assert "| ga |" in (folder / "summary.md").read_text()
    # a larger lr moves the model further from the prepared one: ga's forget P falls more
    ga = {r["point"]["lr"]: r for r in summary["rows"] if r["method"] == "ga"}
    assert ga[1e-3]["forget"] < ga[1e-5]["forget"]
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
    assert err.startswith("error: unknown ga config (tune_grid nonsense=1) key 'nonsense'") and "\n" not in err
