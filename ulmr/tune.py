"""`ulmr-bench tune`: every method gets the same small hyperparameter grid, chosen on validation data.

The protocol, fixed before any grid result was looked at (README "Tuning"):

- Validation data, per benchmark: `tune_validation_items` items spread evenly over the forget
  training data (TOFU: the forget QA pairs, at most `tune_holdout` of them; RWKU: the targets'
  synthetic texts), and as many spread over the retain data, minus every question an evaluation
  task scores (TOFU: retain_perturbed). Both are taken out of what the methods train on.
- Score: P, the mean per-token-normalised answer probability (docs/design.md), on each validation part.
- Criterion: forget_progress x retain_kept, with
      forget_progress = clip((P_f(before) - P_f(unlearned)) / (P_f(before) - P_f(reference)), 0, 1)
      retain_kept     = clip(P_r(unlearned) / P_r(before), 0, 1)
  where "before" is the prepared model unlearning starts from and "reference" a model that never
  learned the forget data (TOFU: the retain model; RWKU: the base model before injection). Where
  there is none (RWKU without injection), or it scores P_f at or above the before model, P_f(reference)
  is 0 and progress is the relative drop of P_f. (Amended before any grid point was scored: RWKU's
  base model gives the synthetic texts P_f 0.142, the injected model 0.108, so the first rule gave
  every setting progress 0.) Forgetting past the reference earns nothing more, so among settings
  that forget fully the one that keeps most wins. The highest score is chosen; a tie goes
  to the earlier grid point (the grid lists the gentler settings first).
- Every grid point trains once, from the same prepared model, with the profile's first seed.

Results: <results_dir>/tune/<model>/<benchmark>-<selection>/<method>/<point>.json per grid point
(atomic, skipped on rerun when stored with the same key), and summary.json + summary.md beside them.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ulmr import __version__
from ulmr.errors import UlmrError
from ulmr.profiles import Profile
from ulmr.results import content_key, provenance, read_stored, stored_or_compute, write_json_atomic
from ulmr.run import check_plan, file_slug
from ulmr.unlearning.interface import Example, UnlearningData

Echo = Callable[[str], None]
VALIDATION_MAX_LENGTH = 512  # tokens per scored validation item (RWKU texts are ~250)


@dataclass
class ValidationSplit:
    """The task minus its validation items, and those items."""

    train: UnlearningData
    forget: list[Example]
    retain: list[Example]


def evenly_spread(n: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(n) (the middle of each of `count` equal stretches)."""
    count = min(count, n)
    return [int((j + 0.5) * n / count) for j in range(count)]


def validation_split(data: UnlearningData, holdout: float, items: int,
                     excluded_questions: set[str] = frozenset()) -> ValidationSplit:
    """Hold out min(items, holdout x len) forget items and `items` retain items, evenly spread; the
    retain items whose question an evaluation scores (`excluded_questions`) are never picked."""
    n_forget = min(items, int(len(data.forget) * holdout))
    if n_forget < 1:
        raise UlmrError(f"tune_holdout={holdout} holds out no item of the {len(data.forget)} forget items of "
                        f"{data.benchmark} {data.name}: raise tune_holdout")
    forget_held = set(evenly_spread(len(data.forget), n_forget))
    eligible = [i for i, ex in enumerate(data.retain) if ex.question not in excluded_questions]
    if not eligible:
        raise UlmrError(f"{data.benchmark} {data.name} has no retain item outside the evaluation sets to "
                        "validate on")
    retain_held = {eligible[i] for i in evenly_spread(len(eligible), items)}
    held_forget = [data.forget[i] for i in sorted(forget_held)]
    held_pairs = {(ex.question, ex.answer) for ex in held_forget}
    train = replace(data,
                    forget=[ex for i, ex in enumerate(data.forget) if i not in forget_held],
                    retain=[ex for i, ex in enumerate(data.retain) if i not in retain_held],
                    forget_questions=[ex for ex in data.forget_questions if (ex.question, ex.answer) not in held_pairs])
    return ValidationSplit(train, held_forget, [data.retain[i] for i in sorted(retain_held)])


def criterion(scores: dict[str, float], before: dict[str, float], reference_forget: float) -> dict[str, float]:
    """forget_progress, retain_kept and their product (the module docstring's criterion)."""
    if reference_forget >= before["forget"]:
        reference_forget = 0.0  # no lower anchor: the relative drop
    span = before["forget"] - reference_forget
    progress = (before["forget"] - scores["forget"]) / span if span > 0 else 0.0
    kept = scores["retain"] / before["retain"] if before["retain"] > 0 else 0.0
    progress, kept = min(max(progress, 0.0), 1.0), min(max(kept, 0.0), 1.0)
    return {"forget_progress": progress, "retain_kept": kept, "score": progress * kept}


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the grid, in the order written (first key slowest)."""
    if not grid:
        raise UlmrError("the profile has no tune_grid for this benchmark: set e.g. tofu.tune_grid: "
                        "{lr: [1.0e-5, 3.0e-5, 1.0e-4]}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UlmrError(f"tune_grid key {key!r} must list one or more values, e.g. {key}: [1, 2]")
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def point_label(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items())


def tune(profile: Profile, results_dir: str | Path, data_dir: str | None = None, echo: Echo = print,
         stored_only: bool = False) -> dict:
    """Run the grid of every profile method on every profile benchmark; return {benchmark: summary}.
    stored_only: train no grid point; print the table of the points stored so far (a grid in progress)
    and write no summary files."""
    from ulmr.prompts import PromptTemplate

    check_plan(profile)
    for benchmark in profile.benchmarks:  # an unknown grid key fails before any work
        plan = profile.plan(benchmark)
        for method, point in itertools.product(profile.methods, grid_points(plan.tune_grid)):
            profile.method_config(method, benchmark, profile.seeds[0], point, _where(point))
    template = PromptTemplate.from_options(profile.template)
    return {benchmark: _BenchmarkTuning(profile, benchmark, template, Path(results_dir), data_dir, echo)
            .run(stored_only) for benchmark in profile.benchmarks}


class _BenchmarkTuning:
    def __init__(self, profile: Profile, benchmark: str, template, results_dir: Path, data_dir, echo: Echo):
        from ulmr.run import BenchmarkRun, RunSummary

        # the run's own preparation (cached models, reference rows, gates), results beside the run's
        self.prepared_run = BenchmarkRun(profile, benchmark, template, results_dir, data_dir, "fast", echo,
                                         RunSummary())
        self.profile, self.benchmark, self.echo = profile, benchmark, echo
        self.plan = self.prepared_run.plan
        self.folder = results_dir / "tune" / self.prepared_run.folder.relative_to(results_dir)
        self.seed = profile.seeds[0]

    def run(self, stored_only: bool = False) -> dict[str, Any]:
        prepared_run = self.prepared_run
        preparation = prepared_run.prepare()
        before = preparation.before
        data = prepared_run.bench.unlearning_data(prepared_run.selection, prepared_run.template, prepared_run.data_dir)
        split = validation_split(data, self.plan.tune_holdout, self.plan.tune_validation_items,
                                 prepared_run.bench.evaluated_questions(prepared_run.selection, prepared_run.data_dir))
        prepared_run.say(f"tuning on {len(split.train.forget)} forget / {len(split.train.retain)} retain items; "
                         f"validating on {len(split.forget)} forget / {len(split.retain)} retain items")
        fingerprint = _fingerprint([split.forget, split.retain, split.train.forget, split.train.retain,
                                    split.train.forget_questions])
        before_scores = self._stored_or(
            "before", {"model": before.record.get("key", before.path), "split": fingerprint},
            lambda: self._scores(before.path, split))
        reference = preparation.reference_model
        reference_forget = 0.0 if reference is None else self._stored_or(
            "reference", {"model": reference, "split": fingerprint}, lambda: self._scores(reference, split))["forget"]
        points = [(method, point) for method in self.profile.methods for point in grid_points(self.plan.tune_grid)]
        rows = [self._point(method, point, before, split, fingerprint, before_scores, reference_forget, stored_only)
                for method, point in points]
        rows = [row for row in rows if row is not None]
        summary = self._summary(rows, before_scores, reference_forget, len(split.forget), len(split.retain))
        if stored_only:
            self.echo(f"{len(rows)} of {len(points)} grid points stored\n" + summary_markdown(summary))
            return summary
        write_json_atomic(self.folder / "summary.json", summary)
        (self.folder / "summary.md").write_text(summary_markdown(summary))
        self.echo(summary_markdown(summary))
        return summary

    def _point(self, method, point, before, split, fingerprint, before_scores, reference_forget,
               stored_only: bool) -> dict | None:
        from ulmr.models import load_model
        from ulmr.unlearning.config import config_to_dict
        from ulmr.unlearning.registry import get_method

        method_class = get_method(method)
        config = self.profile.method_config(method, self.benchmark, self.seed, point, _where(point))
        content = {"method": method, "config": config_to_dict(config), "split": fingerprint,
                   "model": before.record.get("key", before.path)}
        key = _key(content)
        path = self.folder / method / f"{file_slug(point_label(point))}.json"
        if stored_only and read_stored(path, key) is None:
            return None

        def trained_and_scored() -> dict[str, Any]:
            self.prepared_run.say(f"tune {method} {point_label(point)}: unlearning")
            start = time.time()
            model, tokenizer = load_model(before.path, dtype="fp32")
            try:
                outcome = method_class(config).unlearn(model, tokenizer, split.train)
                scores = self._scores(outcome.model, split, tokenizer)
                status, error = "ok", None
            except UlmrError as exc:  # a diverged or refused setting loses; the grid goes on
                scores, status, error = {"forget": None, "retain": None}, "failed", str(exc)
            return {"method": method, "point": point, "status": status, "error": error, "scores": scores,
                    "seconds": round(time.time() - start, 1), "provenance": provenance()}

        # a failed point is stored as the setting's outcome too: rerunning it would fail the same way
        stored, _ = stored_or_compute(path, key, trained_and_scored, reuse=lambda stored: True)
        judged = criterion(stored["scores"], before_scores, reference_forget) if stored["status"] == "ok" \
            else {"forget_progress": 0.0, "retain_kept": 0.0, "score": -1.0}  # below every setting that ran
        return {"method": method, "point": point, **stored["scores"], **judged, "status": stored["status"],
                "seconds": stored["seconds"]}

    def _scores(self, model, split: ValidationSplit, tokenizer=None) -> dict[str, float]:
        from ulmr.models import load_model
        from ulmr.method.method import mean_answer_probability

        if isinstance(model, str):
            model, tokenizer = load_model(model, dtype="fp32")
        template = self.prepared_run.template
        return {part: mean_answer_probability(model, tokenizer, template, items, VALIDATION_MAX_LENGTH)
                for part, items in (("forget", split.forget), ("retain", split.retain))}

    def _stored_or(self, name: str, content: dict, compute: Callable[[], dict]) -> dict[str, float]:
        stored, _ = stored_or_compute(self.folder / f"{name}.json", _key(content),
                                      lambda: {"scores": compute(), "status": "ok"})
        return stored["scores"]

    def _summary(self, rows, before_scores, reference_forget, n_forget, n_retain) -> dict[str, Any]:
        chosen = {}
        for method in dict.fromkeys(r["method"] for r in rows):
            candidates = [r for r in rows if r["method"] == method]
            best = max(candidates, key=lambda r: r["score"])  # max keeps the first of equal scores
            chosen[method] = best["point"] if best["status"] == "ok" else None
        return {"benchmark": self.benchmark, "selection": self.prepared_run.selection, "model": self.profile.model,
                "profile": self.profile.name, "seed": self.seed, "grid": self.plan.tune_grid,
                "validation_items": {"forget": n_forget, "retain": n_retain},
                "before": before_scores, "reference_forget": reference_forget, "rows": rows, "chosen": chosen,
                "code_version": __version__}


def summary_markdown(summary: dict[str, Any]) -> str:
    """The grid of one benchmark as a table; the chosen point of each method in bold."""
    before = summary["before"]
    lines = [f"### {summary['benchmark']} {summary['selection']} ({summary['model']}, profile "
             f"{summary['profile']}, seed {summary['seed']})", "",
             f"Validation: {summary['validation_items']['forget']} forget and "
             f"{summary['validation_items']['retain']} retain items. Before unlearning P_f = "
             f"{before['forget']:.4f}, P_r = {before['retain']:.4f}; reference P_f = "
             f"{summary['reference_forget']:.4f}"
             + (" (not below before: progress is the relative drop)"
                if summary["reference_forget"] >= before["forget"] else "")
             + ". Score = forget_progress x retain_kept.", "",
             "| method | setting | P_f | P_r | forget_progress | retain_kept | score | seconds |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in summary["rows"]:
        mark = "**" if summary["chosen"].get(row["method"]) == row["point"] else ""
        cells = [f"{row[k]:.4f}" if row["status"] == "ok" else "failed"
                 for k in ("forget", "retain", "forget_progress", "retain_kept", "score")]
        lines.append(f"| {row['method']} | {mark}{point_label(row['point'])}{mark} | " + " | ".join(cells)
                     + f" | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _where(point: dict[str, Any]) -> str:
    return f" (tune_grid {point_label(point)})"


def _fingerprint(parts: list[list[Example]]) -> str:
    return content_key([[(ex.question, ex.answer) for ex in part] for part in parts])


def _key(content: dict[str, Any]) -> str:
    return content_key({**content, "code_version": __version__})
