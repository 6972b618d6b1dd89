"""`ulmr-bench tune`: every method gets the same small hyperparameter grid, chosen on validation data.

The protocol (README "Tuning"; the criterion as written before any grid point was scored with it:
ulmr/selection.py):

- Validation data, per benchmark: the plug-in's (`Benchmark.validation_data`, attached to the
  UnlearningData): items the prepared model learned, that no evaluation task scores and that no
  method trains on (TOFU: half the QA pairs of a forget-validation author whose other half joins the
  forget set, and two retain-validation authors outside retain_perturbed; RWKU: injected
  fill-in-the-blank items about the targets and injected TOFU QA pairs). At most
  `tune_validation_items` of each side, evenly spread. Methods train on exactly what `ulmr-bench
  run` gives them.
- Measurements and criterion: ulmr/selection.py, the same as ULMR's alpha=auto: answer
  probabilities and greedy answers on both sides; score = forget_progress x retain_kept x
  (1 - retain_refusal_rate), with "before" the prepared model unlearning starts from and the
  reference a model that never learned the forget data (TOFU: the retain model; RWKU: the base
  model before injection; none for RWKU without injection). The highest score is chosen; a tie goes
  to the earlier grid point (the grid lists the gentler settings first).
- Every grid point trains once, from the same prepared model, with the profile's first seed.

(The protocol before this one scored answer probabilities only, forget_progress x retain_kept, on
forget items held out of training and on retain99 items the quick target had never learned: it
could not see a model that refuses in generation while keeping the answers' probability.)

Results: <results_dir>/tune/<model>/<benchmark>-<selection>/<method>/<point>.json per grid point
(atomic, skipped on rerun when stored with the same key; the measurements with every greedy answer),
before.json and reference.json the same for those models, and summary.json + summary.md beside them.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, Callable

from ulmr import __version__
from ulmr.errors import UlmrError
from ulmr.hardware import release_freed_memory
from ulmr.profiles import Profile
from ulmr.results import content_key, provenance, read_stored, stored_or_compute, write_json_atomic
from ulmr.run import check_plan, file_slug, progress_line
from ulmr.selection import SELECTION_VERSION, best, judge, summary, validation_for
from ulmr.storage import weights_fingerprint
from ulmr.unlearning.interface import Example, UnlearningData, ValidationData

Echo = Callable[[str], None]
VALIDATION_MAX_LENGTH = 512  # tokens per scored validation item
FAILED = {"forget_progress": 0.0, "retain_kept": 0.0, "retain_refusal_rate": None, "score": -1.0}  # below any that ran


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the grid, in the order written (first key slowest)."""
    if not grid:
        raise UlmrError("the profile has no tune_grid for this benchmark: set e.g. tofu.tune_grid: "
                        "{lr: [1.0e-5, 3.0e-5, 1.0e-4]}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UlmrError(f"tune_grid key {key!r} must list one or more values, e.g. {key}: [1, 2]")
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def method_grid(method: str, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The part of the grid the method's config has (ICU, which trains nothing, has no lr): a
    method with none of the keys has nothing to tune and runs its configured setting."""
    import dataclasses

    from ulmr.unlearning.registry import get_method

    fields = {f.name for f in dataclasses.fields(get_method(method).config_class)}
    return {key: values for key, values in grid.items() if key in fields}


def tuned_parent(method: str, methods: list[str]) -> str | None:
    """The nearest registered method among `methods` that `method` subclasses (ulmr-noavg: ulmr;
    ga-avg: ga), or None. A variant is not tuned on its own: it runs at its parent's chosen setting
    (a profile passes a parent's overrides to its variants), so that it differs from the parent only
    in what makes it a variant."""
    from ulmr.unlearning.registry import registered_parents

    return next((c.name for c in registered_parents(method) if c.name in methods), None)


def method_points(method: str, grid: dict[str, list[Any]], methods: list[str] = ()) -> list[dict[str, Any]]:
    """The grid points of one method of `methods`: none for a variant of another of them, or when
    its config has none of the grid's keys."""
    grid_points(grid)  # an empty or malformed grid is an error whichever the method
    own = method_grid(method, grid)
    return grid_points(own) if own and tuned_parent(method, methods) is None else []


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
        known = set().union(*(method_grid(method, plan.tune_grid) for method in profile.methods))
        unknown = [key for key in plan.tune_grid if key not in known]
        if unknown:
            raise UlmrError(f"{benchmark}.tune_grid key {unknown[0]!r} is in none of the configs of "
                            f"{', '.join(profile.methods)}: `ulmr-bench methods --verbose` lists their keys")
        for method in profile.methods:
            for point in method_points(method, plan.tune_grid, profile.methods):
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
        validation = validation_for(data, self.plan.tune_validation_items, "tuning scores every grid point",
                                    "its benchmark plug-in must provide validation_data")
        prepared_run.say(f"tuning on {len(data.forget)} forget / {len(data.retain)} retain items; "
                         f"validating on {len(validation.forget)} forget / {len(validation.retain)} retain items")
        fingerprint = _fingerprint([validation.forget, validation.retain, data.forget, data.retain,
                                    data.forget_questions]) + f"-cue{validation.answer_cue!r}"
        before_scores = self._stored_or(
            "before", {"model": weights_fingerprint(before.path), "split": fingerprint},
            lambda: self._scores(before.path, validation))
        reference = preparation.reference_model
        reference_scores = None if reference is None else self._stored_or(
            "reference", {"model": reference, "split": fingerprint}, lambda: self._scores(reference, validation))
        points = [(method, point) for method in self.profile.methods
                  for point in method_points(method, self.plan.tune_grid, self.profile.methods)]
        rows, computed = [], []
        for done, (method, point) in enumerate(points, start=1):
            started = time.time()
            row, trained = self._point(method, point, before, data, validation, fingerprint, before_scores,
                                       reference_scores, stored_only)
            if row is not None:
                rows.append(row)
            if trained:
                computed.append(time.time() - started)
            if not stored_only:
                prepared_run.say(f"tune: {progress_line(done, len(points), computed)}")
        summary_ = self._summary(rows, before_scores, reference_scores, validation)
        if stored_only:
            self.echo(f"{len(rows)} of {len(points)} grid points stored\n" + summary_markdown(summary_))
            return summary_
        write_json_atomic(self.folder / "summary.json", summary_)
        (self.folder / "summary.md").write_text(summary_markdown(summary_))
        self.echo(summary_markdown(summary_))
        return summary_

    def _point(self, method, point, before, data, validation, fingerprint, before_scores, reference_scores,
               stored_only: bool) -> tuple[dict | None, bool]:
        """(the grid point's row, whether it was trained now rather than read back); (None, False)
        for a point not stored yet under stored_only."""
        from ulmr.models import load_model
        from ulmr.unlearning.config import config_key
        from ulmr.unlearning.registry import get_method

        method_class = get_method(method)
        config = self.profile.method_config(method, self.benchmark, self.seed, point, _where(point))
        content = {"method": method, "config": config_key(config), "split": fingerprint,
                   "model": weights_fingerprint(before.path)}
        key = _key(content)
        path = self.folder / method / f"{file_slug(point_label(point))}.json"
        if stored_only and read_stored(path, key) is None:
            return None, False

        def trained_and_scored() -> dict[str, Any]:
            self.prepared_run.say(f"tune {method} {point_label(point)}: unlearning")
            start = time.time()
            release_freed_memory()  # the previous point's training and scoring
            model, tokenizer = load_model(before.path, dtype="fp32")
            try:
                outcome = method_class(config).unlearn(model, tokenizer, data)
                scores, status, error = self._scores(outcome.model, validation, tokenizer), "ok", None
            except UlmrError as exc:  # a diverged or refused setting loses; the grid goes on
                scores, status, error = None, "failed", str(exc)
            return {"method": method, "point": point, "status": status, "error": error, "scores": scores,
                    "seconds": round(time.time() - start, 1), "provenance": provenance()}

        # a failed point is stored as the setting's outcome too: rerunning it would fail the same way
        stored, was_stored = stored_or_compute(path, key, trained_and_scored, reuse=lambda stored: True)
        ok = stored["status"] == "ok"
        numbers = summary(stored["scores"]) if ok else {}
        judged = judge(stored["scores"], before_scores, reference_scores) if ok else dict(FAILED)
        return {"method": method, "point": point, **numbers, **judged, "status": stored["status"],
                "seconds": stored["seconds"]}, not was_stored

    def _scores(self, model, validation: ValidationData, tokenizer=None) -> dict[str, Any]:
        from ulmr.hardware import resolve_dtype
        from ulmr.models import cast_weights, load_model
        from ulmr.selection import measure

        if isinstance(model, str):
            model, tokenizer = load_model(model, dtype="fp32")
        # in place (a trained model is not used after): scored in the precision evaluation scores in
        cast_weights(model, resolve_dtype(self.prepared_run.settings.dtype))
        return measure(model, tokenizer, self.prepared_run.template, validation, VALIDATION_MAX_LENGTH)

    def _stored_or(self, name: str, content: dict, compute: Callable[[], dict]) -> dict[str, Any]:
        stored, _ = stored_or_compute(self.folder / f"{name}.json", _key(content),
                                      lambda: {"scores": compute(), "status": "ok"})
        return stored["scores"]

    def _summary(self, rows, before_scores, reference_scores, validation: ValidationData) -> dict[str, Any]:
        chosen = {}
        methods = self.profile.methods
        variants = {m: parent for m in methods if (parent := tuned_parent(m, methods)) is not None}
        untuned = [m for m in methods if m not in variants and not method_grid(m, self.plan.tune_grid)]
        for method in dict.fromkeys(r["method"] for r in rows):
            candidates = [r for r in rows if r["method"] == method]
            pick = candidates[best(candidates)]  # the first of equal scores
            chosen[method] = pick["point"] if pick["status"] == "ok" else None
        return {"benchmark": self.benchmark, "selection": self.prepared_run.selection, "model": self.profile.model,
                "profile": self.profile.name, "seed": self.seed, "grid": self.plan.tune_grid,
                "validation_items": {"forget": len(validation.forget), "retain": len(validation.retain)},
                "validation_source": validation.metadata,
                "before": {**summary(before_scores), **judge(before_scores, before_scores)},
                "reference": None if reference_scores is None else summary(reference_scores),
                "rows": rows, "chosen": chosen, "nothing_to_tune": untuned, "variants": variants,
                "code_version": __version__}


def summary_markdown(summary: dict[str, Any]) -> str:
    """The grid of one benchmark as a table, generation-based scores beside the probability ones;
    the chosen point of each method in bold."""
    before, reference = summary["before"], summary["reference"]
    anchor = ("no reference model: forget progress is the relative drop" if reference is None else
              f"reference (never learned the forget data) P_f = {reference['forget_prob']:.4f}, "
              f"ROUGE_f = {reference['forget_rouge']:.4f}")
    lines = [f"### {summary['benchmark']} {summary['selection']} ({summary['model']}, profile "
             f"{summary['profile']}, seed {summary['seed']})", "",
             f"Validation: {summary['validation_items']['forget']} forget and "
             f"{summary['validation_items']['retain']} retain items. Before unlearning P_f = "
             f"{before['forget_prob']:.4f}, ROUGE_f = {before['forget_rouge']:.4f}, P_r = {before['retain_prob']:.4f}, "
             f"{before['retain_judged']} retain questions answered; {anchor}. Score = forget_progress x "
             "retain_kept x (1 - refusals) (ulmr/selection.py).", "",
             "P: answer probability; ROUGE: ROUGE-L recall of the greedy answer against the true answer "
             "(forget) or the before model's answer (kept); refusals: share of the retain questions the "
             "before model answered that the model refuses.", "",
             "| method | setting | P_f | ROUGE_f | P_r | kept | refusals | forget_progress | score | seconds |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in summary["rows"]:
        mark = "**" if summary["chosen"].get(row["method"]) == row["point"] else ""
        keys = ("forget_prob", "forget_rouge", "retain_prob", "retain_kept", "retain_refusal_rate",
                "forget_progress", "score")
        cells = [f"{row[k]:.4f}" if row["status"] == "ok" else "failed" for k in keys]
        lines.append(f"| {row['method']} | {mark}{point_label(row['point'])}{mark} | " + " | ".join(cells)
                     + f" | {row['seconds']:.0f} |")
    variants = summary.get("variants")
    if variants:
        lines += ["", "Variants run at their parent's chosen setting (a profile passes a parent's settings to its "
                      "variants): " + ", ".join(f"{m} ({parent})" for m, parent in variants.items()) + "."]
    untuned = summary.get("nothing_to_tune")
    if untuned:
        lines += ["", f"Nothing to tune (their configs have none of the grid's keys, so they run as configured): "
                      f"{', '.join(untuned)}."]
    return "\n".join(lines) + "\n"


def _where(point: dict[str, Any]) -> str:
    return f" (tune_grid {point_label(point)})"


def _fingerprint(parts: list[list[Example]]) -> str:
    return content_key([[(ex.question, ex.answer) for ex in part] for part in parts])


def _key(content: dict[str, Any]) -> str:
    return content_key({**content, "selection": SELECTION_VERSION, "code_version": __version__})
