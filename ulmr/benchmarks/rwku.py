"""RWKU in the evaluator: the `rwku` group for a set of targets, RWKU's table, Min-K% MIA scores."""

from __future__ import annotations

import math
from typing import Any

from ulmr.benchmarks import Benchmark, register_benchmark

# (metric key, header, lm-eval task or group, lm-eval metric), in RWKU's column order. Headers
# start with their column group. Min-K% has no lm-eval task: see min_k_metrics.
TABLE = [
    ("forget_fb", "Forget FB", "rwku_forget_fb", "rougeL_recall"),
    ("forget_qa", "Forget QA", "rwku_forget_qa", "rougeL_recall"),
    ("forget_aa", "Forget AA", "rwku_forget_aa", "rougeL_recall"),
    ("forget_all", "Forget All", "rwku_forget", "rougeL_recall"),
    ("neighbor_fb", "Neighbor FB", "rwku_neighbor_fb", "rougeL_recall"),
    ("neighbor_qa", "Neighbor QA", "rwku_neighbor_qa", "rougeL_recall"),
    ("neighbor_all", "Neighbor All", "rwku_neighbor", "rougeL_recall"),
    ("mia_fm", "MIA FM", "rwku_mia", "fm_loss"),
    ("mia_rm", "MIA RM", "rwku_mia", "rm_loss"),
    ("mia_auroc", "MIA AUROC", "rwku_mia", "auroc"),
    ("mia_fm_zlib", "MIA FM-zlib", "rwku_mia", "fm_zlib"),
    ("mia_rm_zlib", "MIA RM-zlib", "rwku_mia", "rm_zlib"),
    ("mia_auroc_zlib", "MIA AUROC-zlib", "rwku_mia", "auroc_zlib"),
    ("mia_fm_mink", "MIA FM-MinK", None, None),
    ("mia_rm_mink", "MIA RM-MinK", None, None),
    ("mia_auroc_mink", "MIA AUROC-MinK", None, None),
    ("utility_gen", "Utility Gen", "rwku_utility_gen", "acc"),
    ("utility_rea", "Utility Rea", "rwku_utility_rea", "exact_match"),
    ("utility_tru", "Utility Tru", "rwku_utility_tru", "acc"),
    ("utility_fac", "Utility Fac", "rwku_utility_fac", "f1"),
    ("utility_flu", "Utility Flu", "rwku_utility_flu", "entropy"),
]
# the `rwku` group's parts, evaluated by name so that each can take its own doc limit
RWKU_GROUPS = ("rwku_forget", "rwku_neighbor", "rwku_mia", "rwku_utility")
COLUMNS = [(key, header) for key, header, _, _ in TABLE]
COLUMN_GROUPS = ("Forget", "Neighbor", "MIA", "Utility")


def summarize(results: dict[str, Any], samples: dict[str, list]) -> tuple[dict[str, float | None], dict[str, list]]:
    """lm-eval's results as RWKU's columns. None where the slice could not produce a metric (e.g.
    RM loss when --limit 1 kept only an FM text) and, until min_k_metrics fills them, for Min-K%."""
    metrics = {}
    for key, _, task, metric in TABLE:
        value = results.get(task, {}).get(f"{metric},none") if task else None
        metrics[key] = None if value is None or math.isnan(value) else float(value)
    return metrics, {}


def scored_targets(samples: dict[str, list]) -> dict[str, Any]:
    """The targets whose docs were scored (with --limit, the first target's docs come first)."""
    seen = {(s["doc"]["subject_index"], s["doc"]["subject"]) for records in samples.values() for s in records}
    return {"targets": [{"index": index, "name": name} for index, name in sorted(seen)]}


def min_k_metrics(lm, samples: dict[str, list]) -> dict[str, float | None]:
    """Min-K% (k = 20%) MIA scores of the texts rwku_mia scored. They need per-token log-probs,
    which lm-eval's requests do not return, so they are computed here with the same model over the
    same tokens as lm-eval's rolling log-likelihood. Needs a transformers model (fast or hf backend)."""
    import torch

    from lm_eval_tasks.rwku.utils import fm_mean, min_k_loss, rm_mean, set_auroc

    records = samples.get("rwku_mia")
    if not records or not isinstance(getattr(lm, "model", None), torch.nn.Module):
        return {}
    scores = [(r["doc"]["set"], min_k_loss(token_logprobs(lm, r["doc"]["text"]))) for r in records]
    values = {"mia_fm_mink": fm_mean(scores), "mia_rm_mink": rm_mean(scores), "mia_auroc_mink": set_auroc(scores)}
    return {key: None if math.isnan(value) else value for key, value in values.items()}


def token_logprobs(lm, text: str) -> list[float]:
    """Log-prob of every token lm-eval's loglikelihood_rolling scores for `text`: its tokens after
    the model's prefix token, in lm-eval's windows of at most the model's length."""
    import torch
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    windows = get_rolling_token_windows(token_list=lm.tok_encode(text), prefix_token=lm.prefix_token_id,
                                        max_seq_len=lm.max_length, context_len=1)
    logprobs: list[float] = []
    device = lm.model.device
    for context, predicted in map(make_disjoint_window, windows):
        inputs = torch.tensor([(context + predicted)[:-1]], device=device)
        with torch.no_grad():
            logits = lm.model(inputs).logits[0, -len(predicted):].float()
        targets = torch.tensor(predicted, device=device).unsqueeze(-1)
        logprobs += torch.log_softmax(logits, dim=-1).gather(-1, targets).squeeze(-1).tolist()
    return logprobs


register_benchmark(Benchmark(name="rwku", tasks=lambda targets: list(RWKU_GROUPS), summarize=summarize, columns=COLUMNS,
                             default_selection="1", task_metadata=lambda targets: {"targets": targets},
                             column_groups=COLUMN_GROUPS, model_metrics=min_k_metrics,
                             scored_selection=scored_targets))
