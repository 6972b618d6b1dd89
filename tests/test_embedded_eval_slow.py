"""The embedded SmolLM2-135M-Instruct on a few TOFU rows, end to end (slow: the real model)."""

import json
import subprocess
import sys

import pytest

from ulmr.evaluation import EvalSettings, evaluate


@pytest.mark.slow
def test_embedded_model_scores_tofu_and_plain_lm_eval_agrees(data_dir, tmp_path):
    from ulmr.models import resolve_model

    settings = EvalSettings(benchmark="tofu", selection="forget01", data_dir=str(data_dir), limit=3,
                            dtype="fp32", device="cpu", batch_size=8)
    ours = evaluate("smollm2-135m", settings)
    metrics = ours["metrics"]
    assert len(metrics) == 13 and all(0.0 <= v <= 1.0 for v in metrics.values())
    # an instruct model answers: its generations overlap TOFU's answers somewhat
    assert metrics["retain_rougeL_recall"] > 0.05

    # plain lm-eval with its own hf model on the same tasks, model and slice
    out = tmp_path / "lm_eval"
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={resolve_model('smollm2-135m')},dtype=float32", "--device", "cpu",
                    "--include_path", str(__import__("lm_eval_tasks").TASKS_PATH), "--tasks", "tofu_forget01",
                    "--metadata", json.dumps({"data_dir": str(data_dir)}), "--limit", "3",
                    "--batch_size", "8", "--output_path", str(out)], check=True, capture_output=True)
    plain = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    for task, values in ours["lm_eval_results"].items():
        for metric, value in values.items():
            if metric.endswith(",none") and "stderr" not in metric and task in plain:
                assert plain[task][metric] == pytest.approx(value, rel=1e-3, abs=1e-5), (task, metric)
