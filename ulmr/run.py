"""`ulmr-bench run`: prepare -> for each method and seed: unlearn -> evaluate -> store -> leaderboard.

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
from ulmr.evaluation import EvalSettings, evaluate
from ulmr.profiles import Profile
from ulmr.prompts import PromptTemplate
from ulmr.results import RESULT_SCHEMA, content_key, provenance, read_stored, write_json_atomic

Echo = Callable[[str], None]


@dataclass
class RunSummary:
    """What a run did, for the closing table: (benchmark, method, seed) -> status and seconds."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, benchmark: str, selection: str, method: str, seed: int, status: str, seconds: float):
        self.rows.append({"benchmark": benchmark, "selection": selection, "method": method, "seed": seed,
                          "status": status, "seconds": round(seconds, 1)})

    def format(self) -> str:
        lines = [f"{'benchmark':<16}{'method':<16}{'seed':>5}  {'status':<8}{'seconds':>9}"]
        lines += [f"{r['benchmark'] + ' ' + r['selection']:<16}{r['method']:<16}{r['seed']:>5}  "
                  f"{r['status']:<8}{r['seconds']:>9.1f}" for r in self.rows]
        return "\n".join(lines)


def run(profile: Profile, results_dir: str | Path, data_dir: str | None = None, backend: str = "fast",
        leaderboard_dir: str | Path | None = None, echo: Echo = print) -> RunSummary:
    from ulmr.unlearning.registry import get_method

    for method in profile.methods:
        get_method(method)  # an unknown name fails before any work
    template = PromptTemplate.from_options(profile.template)
    summary = RunSummary()
    started = time.time()
    for benchmark in profile.benchmarks:
        runner = BenchmarkRun(profile, benchmark, template, Path(results_dir), data_dir, backend, echo, summary)
        runner.run_all()
    echo(f"\nrun finished in {time.time() - started:.0f} s\n{summary.format()}")
    if leaderboard_dir is not None:
        from leaderboard import build_leaderboard

        built = build_leaderboard(results_dir, leaderboard_dir)
        for skipped in built.skipped:
            echo(f"skipped {skipped}")
        for path in built.files:
            echo(f"leaderboard: {path}")
    return summary


class BenchmarkRun:
    """One benchmark of a run: its prepared models, reference rows and method rows."""

    def __init__(self, profile: Profile, benchmark: str, template: PromptTemplate, results_dir: Path,
                 data_dir, backend: str, echo: Echo, summary: RunSummary):
        self.profile, self.benchmark, self.template = profile, benchmark, template
        self.plan = profile.tofu if benchmark == "tofu" else profile.rwku
        self.selection = self.plan.split if benchmark == "tofu" else self.plan.targets
        self.data_dir, self.echo, self.summary = data_dir, echo, summary
        self.folder = results_dir / file_slug(profile.model) / f"{benchmark}-{file_slug(self.selection)}"
        self.settings = EvalSettings(benchmark=benchmark, selection=self.selection, data_dir=data_dir,
                                     template=template, backend=backend, **self.plan.eval)
        self.prep_seed = profile.prepare_seed

    def say(self, message: str) -> None:
        self.echo(f"[{self.benchmark} {self.selection}] {message}")

    def run_all(self) -> None:
        before = self.prepare()
        # seed by seed: a run stopped part-way leaves whole rounds, every method on the same seeds
        for seed in self.profile.seeds:
            for method in self.profile.methods:
                self.run_method(method, seed, before)

    # ---- preparation and the reference rows ------------------------------------------------

    def prepare(self):
        """Prepare (or load from cache) the models, evaluate the reference rows, apply the gate;
        return the PreparedModel that unlearning starts from. Sets `reference_model`: a model
        that never learned the forget data (TOFU's retain model; RWKU's base model when the
        targets were injected, else None)."""
        from ulmr.models import resolve_model
        from ulmr.prepare import prepare_rwku, prepare_tofu

        start = time.time()
        if self.benchmark == "tofu":
            self.say("preparing the target and retain models (cached after the first run)")
            prepared = prepare_tofu(self.profile.model, self.template, self.plan, self.prep_seed, self.data_dir)
            self.say(f"prepared in {time.time() - start:.0f} s")
            before = self.reference_row("before", prepared["target"].path, prepared["target"].record)
            self.reference_row("retain", prepared["retain"].path, prepared["retain"].record)
            self.gate_tofu(before)
            self.reference_model = prepared["retain"].path
            return prepared["target"]
        inject = self.should_inject()
        if inject:
            self.say("injecting the targets' knowledge (cached after the first run)")
            prepared = prepare_rwku(self.profile.model, self.template, self.plan, self.prep_seed, self.data_dir)
            record = {**prepared.record, "injected": True}
        else:
            from ulmr.prepare import PreparedModel

            prepared = PreparedModel(resolve_model(self.profile.model), {})
            record = {"injected": False}
        self.reference_model = resolve_model(self.profile.model) if inject else None
        prepared.record = record
        before = self.reference_row("before", prepared.path, record)
        self.gate_rwku(before)
        return prepared

    def reference_row(self, role: str, model_path: str, preparation: dict[str, Any],
                      settings: EvalSettings | None = None) -> dict[str, Any]:
        """Evaluate a model once ("before", "retain", or "base" on the forget probes only, the
        gates' yardstick), or load its stored result."""
        content = {"role": role, "preparation": preparation.get("key", model_path)}
        if settings is not None:
            content["tasks"] = settings.tasks
        settings = settings or self.settings
        key = self.key(content)
        path = self.result_path(role, self.prep_seed)
        stored = _stored(path, key)
        if stored is not None:
            self.say(f"{role}: stored result found, skipping")
            self.summary.add(self.benchmark, self.selection, role, self.prep_seed, "stored", 0)
            return stored
        self.say(f"{role}: evaluating")
        start = time.time()
        result = evaluate(model_path, settings, samples_path=path.with_suffix(".samples.jsonl"),
                          model_label=self.profile.model)
        result.update(method=role, seed=self.prep_seed, status="ok", key=key,
                      preparation=_preparation_summary(preparation))
        write_json_atomic(path, result)
        self.summary.add(self.benchmark, self.selection, role, self.prep_seed, "ok", time.time() - start)
        return result

    def gate_tofu(self, before: dict[str, Any]) -> None:
        threshold = self.plan.gate_min_rouge_gain
        if threshold is None:
            return
        base_rouge = self.base_forget_metrics["forget_rougeL_recall"]
        target_rouge = before["metrics"]["forget_rougeL_recall"]
        self.say(f"gate: forget ROUGE-L recall target {target_rouge:.3f} vs base {base_rouge:.3f}")
        if target_rouge < base_rouge + threshold:
            raise UlmrError(
                f"the target model does not know its forget set (forget ROUGE-L {target_rouge:.3f}, base "
                f"{base_rouge:.3f}, gate needs +{threshold}): train longer or with a higher lr "
                "(--set tofu.prepare.epochs=... / tofu.prepare.lr=...)")

    def should_inject(self) -> bool:
        if self.plan.inject != "auto":
            if not isinstance(self.plan.inject, bool):
                raise UlmrError(f"rwku.inject={self.plan.inject!r}: use auto, true or false")
            return self.plan.inject
        base = self.base_forget_metrics.get("forget_all") or 0.0
        knows = base >= self.plan.inject_below
        self.say(f"base model forget All {base:.3f} (inject below {self.plan.inject_below}): "
                 f"{'no injection needed' if knows else 'injecting'}")
        return not knows

    @functools.cached_property
    def base_forget_metrics(self) -> dict[str, Any]:
        """The untouched base model's forget-probe metrics, stored as the "base" row (read once a
        run: both the injection decision and the gate need them)."""
        from ulmr.models import resolve_model

        return self.reference_row("base", resolve_model(self.profile.model), {},
                                  _forget_only(self.settings))["metrics"]

    def gate_rwku(self, before: dict[str, Any]) -> None:
        """Injected: the before model must beat the base model's forget All by the gate's gain.
        Not injected: the before model is the base model, and must know the targets by itself."""
        gain = self.plan.gate_min_forget_gain
        if gain is None:
            return
        value = before["metrics"].get("forget_all") or 0.0
        if before["preparation"].get("injected"):
            base = self.base_forget_metrics.get("forget_all") or 0.0
            self.say(f"gate: forget All injected {value:.3f} vs base {base:.3f}")
            if value < base + gain:
                raise UlmrError(f"knowledge injection did not take (forget All {value:.3f}, base {base:.3f}, "
                                f"gate needs +{gain}): inject longer or from more passages "
                                "(--set rwku.prepare.epochs=... / rwku.inject_passages=...)")
        elif value < self.plan.inject_below:
            raise UlmrError(f"the base model scores forget All {value:.3f} < {self.plan.inject_below} on the "
                            "targets it should forget: it does not know them; inject their knowledge "
                            "(--set rwku.inject=true) or use a larger model")

    # ---- methods ---------------------------------------------------------------------------

    def run_method(self, method: str, seed: int, before) -> None:
        from ulmr.models import load_model
        from ulmr.unlearning.config import config_to_dict
        from ulmr.unlearning.registry import get_method
        from ulmr.unlearning.tasks import build_task

        method_class = get_method(method)
        path = self.result_path(method, seed)
        start = time.time()
        try:
            config = self.profile.method_config(method, self.benchmark, seed)
            data = build_task(self.benchmark, self.selection, self.template, self.data_dir)
            key = self.key({"method": method, "config": config_to_dict(config),
                            "preparation": before.record.get("key", before.path),
                            "data": _data_fingerprint(data)})
            if _stored(path, key) is not None:
                self.say(f"{method} seed {seed}: stored result found, skipping")
                self.summary.add(self.benchmark, self.selection, method, seed, "stored", 0)
                return
            self.say(f"{method} seed {seed}: unlearning")
            model, tokenizer = load_model(before.path, dtype="fp32")
            outcome = method_class(config).unlearn(model, tokenizer, data)
            unlearn_seconds = time.time() - start
            self.say(f"{method} seed {seed}: evaluating")
            evaluable, eval_tokenizer = self.evaluable(outcome.model, tokenizer, method, seed)
            settings = self.settings
            if outcome.system_prompt is not None:  # a method that acts through the prompt (icu)
                settings = replace(settings, template=replace(settings.template, system_prompt=outcome.system_prompt))
            result = evaluate(evaluable, settings, samples_path=path.with_suffix(".samples.jsonl"),
                              tokenizer=eval_tokenizer, model_label=self.profile.model)
            if outcome.artifacts:
                write_json_atomic(path.with_suffix(".artifacts.json"), outcome.artifacts)
                result["artifacts_file"] = path.with_suffix(".artifacts.json").name
            result.update(method=method, seed=seed, status="ok", key=key, unlearning=outcome.record,
                          preparation=_preparation_summary(before.record))
            result["timings"]["unlearn_seconds"] = round(unlearn_seconds, 2)
            write_json_atomic(path, result)
            self.summary.add(self.benchmark, self.selection, method, seed, "ok", time.time() - start)
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
            self.summary.add(self.benchmark, self.selection, method, seed, "failed", time.time() - start)

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

    def key(self, content: dict[str, Any]) -> str:
        eval_settings = {k: v for k, v in vars(self.settings).items() if k not in ("data_dir", "template")}
        payload = {**content, "model": self.profile.model, "benchmark": self.benchmark,
                   "selection": self.selection, "template": self.template.as_options(),
                   "eval": eval_settings, "code_version": __version__}
        return content_key(payload)


def _stored(path: Path, key: str) -> dict[str, Any] | None:
    """The stored result at `path` if it is complete, successful and made with the same key."""
    result = read_stored(path, key)
    return result if result is not None and result.get("status") == "ok" else None


def _forget_only(settings: EvalSettings) -> EvalSettings:
    from dataclasses import replace

    tasks = ["rwku_forget"] if settings.benchmark == "rwku" else [f"tofu_{settings.selection}_forget_rouge"]
    return replace(settings, tasks=tasks, limits={k: v for k, v in settings.limits.items() if k in tasks})


def _data_fingerprint(data) -> str:
    content = [(e.question, e.answer) for e in data.forget + data.retain + data.forget_questions]
    return content_key([content, data.refusals])


def _preparation_summary(record: dict[str, Any]) -> dict[str, Any]:
    keep = ("label", "key", "base", "n_examples", "recipe", "injected")
    summary = {k: record[k] for k in keep if k in record}
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
