"""TOFU in the evaluator: the forget-split group, the 12 subset metrics, model utility."""

from __future__ import annotations

from typing import Any

from ulmr.benchmarks import Benchmark, register_benchmark
from ulmr.data.tofu import forget_fraction
from ulmr.metrics import model_utility

SUBSETS = (("forget", "Forget"), ("retain", "Retain"), ("real_authors", "Real authors"),
           ("world_facts", "World facts"))
METRICS = (("prob", "Prob"), ("rougeL_recall", "ROUGE-L"), ("truth_ratio", "TR"))


def _tasks(split: str) -> list[str]:
    forget_fraction(split)  # validates the split name
    return [f"tofu_{split}"]


def _task_name(subset: str, metric: str, split: str) -> str:
    prefix = f"tofu_{split}_forget" if subset == "forget" else f"tofu_{subset}"
    return f"{prefix}_{'rouge' if metric == 'rougeL_recall' else 'prob'}"


def summarize(results: dict[str, Any], samples: dict[str, list]) -> tuple[dict[str, float], dict[str, list]]:
    from lm_eval_tasks.tofu.utils import question_stats

    split = next(t.split("_")[1] for t in results if t.startswith("tofu_forget") and "_forget_" in t)
    metrics = {}
    for subset, _ in SUBSETS:
        for metric, _ in METRICS:
            task = results.get(_task_name(subset, metric, split))
            if task is not None:  # a run of a subset of the tasks reports what it has
                metrics[f"{subset}_{metric}"] = task[f"{metric},none"]
    utility_inputs = [f"{s}_{m}" for s, _ in SUBSETS[1:] for m, _ in METRICS]
    if all(k in metrics for k in utility_inputs):
        metrics["model_utility"] = model_utility([metrics[k] for k in utility_inputs])
    forget_samples = sorted(samples.get(f"tofu_{split}_forget_prob", []), key=lambda s: s["doc_id"])
    ratios = [question_stats(s["doc"], [float(r[0][0]) for r in s["resps"]])["truth_ratio_r"]
              for s in forget_samples]
    return metrics, {"forget_truth_ratio": ratios}


COLUMNS = ([("forget_quality", "Forget quality"), ("model_utility", "Model utility")]
           + [(f"{s}_{m}", f"{sh} {mh}") for s, sh in SUBSETS for m, mh in METRICS])

register_benchmark(Benchmark(name="tofu", tasks=_tasks, summarize=summarize, columns=COLUMNS,
                             default_selection="forget01"))
