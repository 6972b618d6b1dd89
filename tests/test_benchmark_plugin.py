"""A benchmark is one plug-in: a third one, added by registration alone, runs through the CLI's
`run --profile smoke`, `eval` and `unlearn` and lands on the leaderboard, with no core file naming it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from ulmr.run import model_folder
from ulmr.benchmarks.registry import (LOWER, Axis, Benchmark, BenchmarkPlan, available_benchmarks, register_benchmark,
                                      unregister_benchmark)
from ulmr.cli import main
from ulmr.unlearning.interface import Example, UnlearningData

TASK = "tofu_forget01_forget_rouge"  # an lm-eval task the test benchmark borrows


@dataclass
class FewQuestionsPlan(BenchmarkPlan):
    """questions: how many TOFU forget01 QA pairs to forget."""

    questions: str = "4"

    @property
    def selection(self) -> str:
        return self.questions


class FewQuestions(Benchmark):
    """Forget the first N TOFU forget01 QA pairs; scored by forget ROUGE-L only."""

    name = "few-questions"
    plan_class = FewQuestionsPlan
    selection_option = "questions"
    selection_help = "How many QA pairs to forget."
    default_selection = "4"
    columns = [("forget_rouge", "Forget ROUGE-L")]
    directions = (("forget_", LOWER),)
    trade_off_axes = ((Axis("forget_rouge", "1 - forget ROUGE-L", flipped=True),), Axis("forget_rouge", "same"))

    def tasks(self, selection):
        return [TASK]

    def forget_probe_tasks(self, selection):
        return [TASK]

    def summarize(self, results, samples):
        return {"forget_rouge": results[TASK]["rougeL_recall,none"]}, {}

    def unlearning_data(self, selection, template, data_dir=None):
        from ulmr.data.tofu import load_tofu

        rows = load_tofu("forget01", data_dir)
        forget = [Example(answer=r["answer"], question=r["question"]) for r in rows[:int(selection)]]
        retain = [Example(answer=r["answer"], question=r["question"]) for r in rows[-4:]]
        return UnlearningData(benchmark=self.name, name=selection, forget=forget, retain=retain,
                              forget_questions=forget, subjects=[], template=template, refusals=["I don't know."])


@pytest.fixture()
def registered():
    """The test benchmark, registered as an installed plugin would be: before the CLI builds its
    commands (their selection options come from the registry), so those are built again around it."""
    import importlib

    import ulmr.cli.eval
    import ulmr.cli.unlearn

    register_benchmark(FewQuestions)
    for module in (ulmr.cli.eval, ulmr.cli.unlearn):
        importlib.reload(module)
    yield
    unregister_benchmark(FewQuestions.name)
    for module in (ulmr.cli.eval, ulmr.cli.unlearn):
        importlib.reload(module)


def test_a_registered_benchmark_runs_end_to_end_through_the_cli(registered, tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("ULMR_CACHE", str(tmp_path / "cache"))
    assert "few-questions" in available_benchmarks()
    results = tmp_path / "results"
    main(["run", "--profile", "smoke", "--benchmarks", "few-questions", "--methods", "ga", "--data-dir",
          str(data_dir), "--results-dir", str(results), "--set", "few-questions.questions=3",
          "--set", "few-questions.eval.limit=2"])
    folder = results / model_folder("tiny-random") / "few-questions-3"
    ga = json.loads((folder / "ga-seed0.json").read_text())
    assert ga["status"] == "ok" and ga["benchmark"] == "few-questions" and ga["selection"] == "3"
    assert 0 <= ga["metrics"]["forget_rouge"] <= 1 and ga["unlearning"]["steps"] == 2
    assert json.loads((folder / "before-seed0.json").read_text())["status"] == "ok"
    board = (results / "leaderboard" / "leaderboard.md").read_text()
    assert "FEW-QUESTIONS 3" in board and "Forget ROUGE-L" in board
    capsys.readouterr()

    # its selection option reaches eval and unlearn; another benchmark's option is refused
    main(["eval", "--benchmark", "few-questions", "--questions", "2", "--model", "tiny-random", "--data-dir",
          str(data_dir), "--limit", "1", "--max-gen-toks", "4", "--output", str(tmp_path / "eval.json")])
    assert json.loads((tmp_path / "eval.json").read_text())["selection"] == "2"
    with pytest.raises(SystemExit) as exited:
        main(["eval", "--benchmark", "few-questions", "--split", "forget01", "--model", "tiny-random"])
    assert exited.value.code == 2
    assert "--split is not an option of few-questions" in capsys.readouterr().err
    main(["unlearn", "--method", "ga", "--benchmark", "few-questions", "--questions", "2", "--model", "tiny-random",
          "--data-dir", str(data_dir), "--output", str(tmp_path / "unlearned"), "--set", "max_steps=1"])
    assert json.loads((tmp_path / "unlearned" / "unlearn.json").read_text())["selection"] == "2"


def test_core_modules_name_no_benchmark():
    """run, tune, evaluation, the CLI and the leaderboard loop over registered benchmarks: none of them
    branches on a benchmark's name (the plug-ins and the profiles' YAML do)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    core = [repo / "ulmr" / name for name in ("run.py", "tune.py", "evaluation.py", "prepare.py", "report.py")]
    core += sorted((repo / "ulmr" / "cli").glob("*.py")) + sorted((repo / "leaderboard").glob("*.py"))
    for path in core:
        text = path.read_text()
        for bench in ("tofu", "rwku"):
            for branch in (f'== "{bench}"', f'!= "{bench}"', f'"{bench}":', f"profile.{bench}"):
                assert branch not in text, f"{path.relative_to(repo)} branches on a benchmark: {branch}"
