"""`ulmr-bench run`: prepare -> for each seed and method: unlearn -> evaluate -> store.

The benchmark plug-in (ulmr/benchmarks/) prepares and says what to evaluate; this module loops
and stores. The CLI regenerates the leaderboard from the stored results afterwards.

Every stored result is one JSON file (schema in ulmr.results) under
<results_dir>/<model>/<benchmark>-<selection>/<method>-seed<seed>.json, written atomically. A rerun
skips a result already stored with the same key (prepared model, data, method config, seed,
evaluation settings, code version); a method that raises is stored as failed and the others go on.
"""

from __future__ import annotations

import functools
import re
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ulmr import __version__
from ulmr.errors import UlmrError, first_line
from ulmr.benchmarks.registry import Preparation, get_benchmark
from ulmr.evaluation import SCORING_VERSION, evaluate, settings_from_plan
from ulmr.profiles import Profile
from ulmr.prompts import PromptTemplate
from ulmr.hardware import DTYPE_TAGS, release_freed_memory, resolve_dtype
from ulmr.results import RESULT_SCHEMA, content_key, provenance, stored_or_compute, write_json_atomic
from ulmr.selection import SELECTION_VERSION
from ulmr.storage import model_identity, model_slug, weights_fingerprint

Echo = Callable[[str], None]


@dataclass
class RunSummary:
    """What a run did, for the closing table: (benchmark, method, seed) -> status, seconds, and the
    seconds of its stages done in this run (unlearn, eval; a stored row did none), and the seconds the
    benchmarks' preparations took besides their reference rows (training or loading prepared models,
    gates)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    preparation_seconds: float = 0.0

    def add(self, benchmark: str, selection: str, method: str, seed: int, status: str, seconds: float,
            error: str | None = None, stages: dict[str, float] | None = None):
        self.rows.append({"benchmark": benchmark, "selection": selection, "method": method, "seed": seed,
                          "status": status, "seconds": round(seconds, 1), "error": error,
                          "stages": {k: round(v, 1) for k, v in (stages or {}).items()}})

    def failure(self) -> str | None:
        """One line on the rows that failed (None if none did), for a run's non-zero exit."""
        failed = [r for r in self.rows if r["status"] == "failed"]
        if not failed:
            return None
        what = "; ".join(f"{r['method']} seed {r['seed']} on {r['benchmark']} {r['selection']}: {r['error']}"
                         for r in failed)
        return (f"{len(failed)} of {len(self.rows)} runs failed ({what}); the others are stored: fix the cause "
                "and rerun, stored results are skipped")

    @classmethod
    def merged(cls, parts: list[dict[str, Any]]) -> RunSummary:
        """One summary of runs that split the rows between them (`ulmr-bench run --jobs`; each part a
        `dataclasses.asdict` of a RunSummary): each row once, as the run that computed it saw it (the
        others found it stored); their preparations' seconds added up."""
        merged, by_row = cls(), {}
        for part in parts:
            merged.preparation_seconds += part["preparation_seconds"]
            for row in part["rows"]:
                key = (row["benchmark"], row["selection"], row["method"], row["seed"])
                if key not in by_row or by_row[key]["status"] == "stored":
                    by_row[key] = row
        merged.rows = list(by_row.values())
        return merged

    def format(self) -> str:
        def cell(row, stage):
            return f"{row['stages'][stage]:>9.1f}" if stage in row["stages"] else f"{'':>9}"

        lines = [f"{'benchmark':<16}{'method':<16}{'seed':>5}  {'status':<8}{'seconds':>9}"
                 + "".join(f"{stage:>9}" for stage in STAGES)]
        lines += [f"{r['benchmark'] + ' ' + r['selection']:<16}{r['method']:<16}{r['seed']:>5}  "
                  f"{r['status']:<8}{r['seconds']:>9.1f}" + "".join(cell(r, stage) for stage in STAGES)
                  for r in self.rows]
        totals = {"prepare": self.preparation_seconds,
                  **{stage: sum(r["stages"].get(stage, 0.0) for r in self.rows) for stage in STAGES}}
        lines.append("stages: " + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in totals.items()))
        return "\n".join(lines)


STAGES = ("unlearn", "eval")  # RunSummary's per-row stage columns


def progress_line(done: int, total: int, computed_seconds: list[float]) -> str:
    """"3/12 done; about 41 min left at this run's pace (mean 4.6 min a row computed)": the estimate
    from the rows this run computed (stored ones cost nothing), none before the first."""
    line = f"{done}/{total} done"
    if computed_seconds and done < total:
        pace = sum(computed_seconds) / len(computed_seconds)
        line += (f"; about {pace * (total - done) / 60:.0f} min left at this run's pace "
                 f"(mean {pace / 60:.1f} min a row computed)")
    return line


def run(profile: Profile, results_dir: str | Path, data_dir: str | None = None, backend: str = "fast",
        echo: Echo = print, models_only: bool = False) -> RunSummary:
    """models_only: prepare each benchmark's models (train them or find them cached) and stop."""
    check_plan(profile)
    template = PromptTemplate.from_options(profile.template)
    summary = RunSummary()
    started = time.time()
    for benchmark in profile.benchmarks:
        # one plan, or one per unit of the selection when the plan asks (RWKU's per_target)
        for plan in get_benchmark(benchmark).plans_to_run(profile.plan(benchmark), data_dir):
            runner = BenchmarkRun(profile, benchmark, template, Path(results_dir), data_dir, backend, echo, summary,
                                  plan=plan)
            if models_only:
                runner.train_models()
            else:
                runner.run_all()
    echo(f"\nrun finished in {time.time() - started:.0f} s\n{summary.format()}")
    return summary


def planned_rows(methods: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """The (method, seed) rows of a benchmark in the order they run: seed by seed, so that a run
    stopped part-way leaves whole rounds (every method on the same seeds), and within a seed the
    methods with the longest rows first (`Unlearner.relative_cost`; ties in the profile's order), so
    that processes sharing the rows do not end with one waiting for the other's long last row."""
    from ulmr.unlearning.registry import get_method

    longest_first = sorted(methods, key=lambda method: -get_method(method).relative_cost)
    return [(method, seed) for seed in seeds for method in longest_first]


def check_plan(profile: Profile) -> None:
    """Everything a run or tuning will use, validated before any model loads: each benchmark's
    evaluation settings and every method's config on every benchmark and seed."""
    for benchmark in profile.benchmarks:
        settings_from_plan(benchmark, profile.plan(benchmark))
        for method in profile.methods:
            for seed in profile.seeds:
                profile.method_config(method, benchmark, seed)


class BenchmarkRun:
    """One benchmark of a run: its prepared models, reference rows and method rows. It is the
    RunContext a benchmark plug-in prepares with (ulmr.benchmarks.registry)."""

    def __init__(self, profile: Profile, benchmark: str, template: PromptTemplate, results_dir: Path,
                 data_dir, backend: str, echo: Echo, summary: RunSummary, plan=None):
        self.profile, self.benchmark, self.template = profile, benchmark, template
        self.bench = get_benchmark(benchmark)
        self.model = profile.model
        self.plan = plan if plan is not None else profile.plan(benchmark)
        self.selection = self.plan.selection
        self.data_dir, self.echo, self.summary = data_dir, echo, summary
        self.model_identity = {k: v for k, v in model_identity(profile.model).items() if k != "source"}
        self.compute_dtype = DTYPE_TAGS[resolve_dtype("auto")]
        self.folder = results_dir / model_folder(profile.model) / f"{benchmark}-{file_slug(self.selection)}"
        self.settings = settings_from_plan(benchmark, self.plan, data_dir=data_dir, template=template,
                                           backend=backend)
        self.prep_seed = profile.prepare_seed

    def say(self, message: str) -> None:
        self.echo(f"[{self.benchmark} {self.selection}] {message}")

    def run_all(self) -> None:
        before = self.prepare().before
        # items another run on the same results directory is working on wait until the rest is done
        planned = planned_rows(self.profile.methods, self.profile.seeds)
        first, busy = len(self.summary.rows), []
        for done, (method, seed) in enumerate(planned, start=1):
            if not self.run_method(method, seed, before, wait=False):
                busy.append((method, seed))
            computed = [r["seconds"] for r in self.summary.rows[first:] if r["status"] != "stored"]
            self.say(progress_line(done, len(planned), computed))
        for method, seed in busy:
            self.run_method(method, seed, before, wait=True)

    # ---- preparation and the reference rows ------------------------------------------------

    def prepare(self) -> Preparation:
        """The benchmark's preparation (cached models, reference rows, gate), timed."""
        return self._timed_preparation("prepared", self.bench.prepare)

    def train_models(self) -> None:
        """Only the models the preparation starts from, timed (what `run --jobs` does first)."""
        self._timed_preparation("models prepared", self.bench.train_models)

    def _timed_preparation(self, done: str, step: Callable[[BenchmarkRun], Any]) -> Any:
        start, rows = time.time(), len(self.summary.rows)
        outcome = step(self)
        seconds = time.time() - start
        self.say(f"{done} in {seconds:.0f} s")
        # the preparation's own work: its time less the reference rows evaluated within it
        within = sum(r["seconds"] for r in self.summary.rows[rows:])
        self.summary.preparation_seconds += seconds - within
        return outcome

    def reference_row(self, role: str, model_path: str, preparation: dict[str, Any],
                      tasks: list[str] | None = None) -> dict[str, Any]:
        """Evaluate a model once ("before", "retain", or "base" on the forget probes only, the
        gates' yardstick), on `tasks` (default: all of them), or load its stored result."""
        content = {"role": role, "preparation": weights_fingerprint(model_path)}
        settings = self.settings
        if tasks is not None:
            content["tasks"] = tasks
            settings = replace(settings, tasks=tasks,
                               limits={k: v for k, v in settings.limits.items() if k in tasks})
        path = self.result_path(role, self.prep_seed)
        start = time.time()

        def evaluated() -> dict[str, Any]:
            self.say(f"{role}: evaluating")
            release_freed_memory()  # each stage starts from what the process holds, not the last one's peak
            result = evaluate(model_path, settings, samples_path=path.with_suffix(".samples.jsonl"),
                              model_label=self.profile.model)
            return {**result, **self.identity_fields(), "method": role, "seed": self.prep_seed, "status": "ok",
                    "preparation": _preparation_summary(preparation, model_path)}

        result, was_stored = stored_or_compute(path, self.key(content), evaluated)
        if was_stored:
            self.say(f"{role}: stored result found, skipping")
        self.summary.add(self.benchmark, self.selection, role, self.prep_seed, "stored" if was_stored else "ok",
                         time.time() - start, stages=None if was_stored else {"eval": time.time() - start})
        return result

    @functools.cached_property
    def base_forget_metrics(self) -> dict[str, Any]:
        """The untouched base model's forget-probe metrics, stored as the "base" row (read once a
        run: both the injection decision and the gate need them)."""
        from ulmr.models import resolve_model

        return self.reference_row("base", resolve_model(self.profile.model), {},
                                  self.bench.forget_probe_tasks(self.selection))["metrics"]

    # ---- methods ---------------------------------------------------------------------------

    def run_method(self, method: str, seed: int, before, wait: bool = True) -> bool:
        """Unlearn, evaluate and store one row (or find it stored); False when wait is False and
        another process is producing it."""
        from ulmr.models import load_model
        from ulmr.unlearning.config import config_key
        from ulmr.unlearning.registry import get_method

        method_class = get_method(method)
        path = self.result_path(method, seed)
        start = time.time()
        try:
            config = self.profile.method_config(method, self.benchmark, seed)
            data = self.bench.unlearning_data(self.selection, self.template, self.data_dir)
            key = self.key({"method": method, "config": config_key(config), "selection_version": SELECTION_VERSION,
                            "preparation": weights_fingerprint(before.path),
                            "data": _data_fingerprint(data)})

            def unlearned_and_evaluated() -> dict[str, Any]:
                self.say(f"{method} seed {seed}: unlearning")
                release_freed_memory()
                model, tokenizer = load_model(before.path, dtype="fp32")
                outcome = method_class(config).unlearn(model, tokenizer, data)
                unlearn_seconds = time.time() - start
                self.say(f"{method} seed {seed}: evaluating")
                release_freed_memory()  # the training's gradients and optimizer state
                evaluable, eval_tokenizer = self.evaluable(outcome.model, tokenizer, method, seed)
                settings = self.settings
                if outcome.system_prompt is not None:  # a method that acts through the prompt (icu)
                    settings = replace(settings, template=replace(settings.template,
                                                                  system_prompt=outcome.system_prompt))
                result = evaluate(evaluable, settings, samples_path=path.with_suffix(".samples.jsonl"),
                                  tokenizer=eval_tokenizer, model_label=self.profile.model)
                if outcome.artifacts:
                    write_json_atomic(path.with_suffix(".artifacts.json"), outcome.artifacts)
                    result["artifacts_file"] = path.with_suffix(".artifacts.json").name
                result.update(self.identity_fields(), method=method, seed=seed, status="ok", unlearning=outcome.record,
                              preparation=_preparation_summary(before.record, before.path))
                result["timings"]["unlearn_seconds"] = round(unlearn_seconds, 2)
                return result

            done = stored_or_compute(path, key, unlearned_and_evaluated, wait=wait)
            if done is None:
                self.say(f"{method} seed {seed}: another run is producing it, coming back to it later")
                return False
            result, was_stored = done
            if was_stored:
                self.say(f"{method} seed {seed}: stored result found, skipping")
            timings = result["timings"]
            self.summary.add(self.benchmark, self.selection, method, seed, "stored" if was_stored else "ok",
                             time.time() - start, stages=None if was_stored else
                             {"unlearn": timings["unlearn_seconds"], "eval": timings["eval_seconds"]})
            return True
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001  (recorded as failed; the other methods go on)
            message = _one_line(exc)
            self.say(f"{method} seed {seed}: FAILED: {message}")
            write_json_atomic(path, {
                "schema": RESULT_SCHEMA, "benchmark": self.benchmark, "selection": self.selection,
                "model": self.profile.model, "method": method, "seed": seed, "status": "failed",
                "error": message, "traceback": traceback.format_exc(limit=8),
                "timings": {"seconds": round(time.time() - start, 2)}, "provenance": provenance()})
            self.summary.add(self.benchmark, self.selection, method, seed, "failed", time.time() - start, message)
            return True

    def evaluable(self, model, tokenizer, method: str, seed: int):
        """(model, tokenizer) args for evaluate: in memory for the fast backend, else saved first."""
        if self.settings.backend == "fast":
            return model, tokenizer
        from ulmr.models import save_checkpoint

        folder = self.folder / "checkpoints" / f"{method}-seed{seed}"
        save_checkpoint(model, tokenizer, folder)
        return str(folder), None

    # ---- bookkeeping -----------------------------------------------------------------------

    def result_path(self, method: str, seed: int) -> Path:
        return self.folder / f"{method}-seed{seed}.json"

    def identity_fields(self) -> dict[str, Any]:
        """What every stored result says about the model and precision it came from."""
        return {"model_identity": self.model_identity, "compute_dtype": self.compute_dtype}

    def key(self, content: dict[str, Any]) -> str:
        eval_settings = {k: v for k, v in vars(self.settings).items() if k not in ("data_dir", "template")}
        payload = {**content, "model": self.model_identity, "benchmark": self.benchmark,
                   "selection": self.selection, "template": self.template.as_options(),
                   "eval": eval_settings, "compute_dtype": self.compute_dtype,
                   "eval_dtype": DTYPE_TAGS[resolve_dtype(self.settings.dtype)], "scoring": SCORING_VERSION,
                   "code_version": __version__}
        return content_key(payload)


def model_folder(model: str) -> str:
    """The results folder of a model on this machine. Results are kept apart by what the model is
    (an alias, or a folder's weights hash: never only its folder's last name) and by the precision
    "auto" computes in here, so bf16 and fp32 runs of one model never share an entry."""
    return f"{model_slug(model_identity(model))}-{DTYPE_TAGS[resolve_dtype('auto')]}"


def _data_fingerprint(data) -> str:
    content = [(e.question, e.answer) for e in data.forget + data.retain + data.forget_questions]
    return content_key([content, data.refusals])


def _preparation_summary(record: dict[str, Any], path: str) -> dict[str, Any]:
    keep = ("label", "key", "base", "n_examples", "recipe", "injected")
    summary = {k: record[k] for k in keep if k in record}
    summary["weights"] = weights_fingerprint(path)  # what the rows are keyed by (`key` names the inputs)
    if "training" in record:
        summary["training"] = {k: record["training"][k] for k in ("steps", "time_s", "tokens", "tokens_per_s")}
        summary["training"]["final_loss"] = record["training"]["losses"][-1] if record["training"]["losses"] else None
    return summary


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, UlmrError):  # already a message for the user
        return first_line(exc, limit=None)
    message = first_line(exc, limit=300)
    return message if message == type(exc).__name__ else f"{type(exc).__name__}: {message}"


def file_slug(text: str) -> str:
    """A name safe in a file path: a model path's last part, other characters than [A-Za-z0-9._-] as _."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).name if "/" in text else text).strip("_")
