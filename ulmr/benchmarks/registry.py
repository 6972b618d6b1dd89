"""What a benchmark is to ulmr-bench: one plug-in class, registered like the methods.

A `Benchmark` owns everything that differs between benchmarks, so that `run`, `tune`, the CLI and
the leaderboard loop over registered benchmarks without naming any:

    selection      what part of the benchmark a run covers (TOFU: a forget split; RWKU: targets),
                   its CLI option and its profile section (`plan_class`, a dataclass)
    evaluation     the lm-eval tasks of a selection, their metadata, and how lm-eval's results
                   become the benchmark's flat metrics
    unlearning     the UnlearningData that methods train on (never an evaluation doc), and the
                   validation data that selection scores (neither trained on nor evaluated)
    preparation    the model unlearning starts from, the reference rows and the knowledge gate
    presentation   table columns, each column's better direction, the summary columns and the full
                   table's groups, the trade-off plot's axes, how a column's per-doc values are
                   read from lm-eval's samples (for the leaderboard's bootstrap over docs), and how
                   its selections read and combine (RWKU: one target each, averaged over targets)

Built-in benchmarks (ulmr/benchmarks/tofu.py, rwku.py) register through the `ulmr_bench.benchmarks`
entry-point group (pyproject.toml), as a third-party package would; `@register_benchmark` adds one
from any imported module (tests do this).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol, Sequence

from ulmr.plugins import Registry
from ulmr.prompts import PromptTemplate
from ulmr.unlearning.interface import UnlearningData, ValidationData

ENTRY_POINT_GROUP = "ulmr_bench.benchmarks"

# A column's better direction, for ranking and bolding on the leaderboard. CLOSEST_TO_REFERENCE: to
# the row of the benchmark's `reference_role` (TOFU: the retain model, which never saw the forget set).
HIGHER, LOWER, CLOSEST_TO_BEFORE, CLOSEST_TO_HALF = "higher", "lower", "closest to before", "closest to 0.5"
CLOSEST_TO_REFERENCE = "closest to the reference"


@dataclass
class BenchmarkPlan:
    """A benchmark's section of a run profile: its selection and budgets. Plug-ins subclass it.

    max_train_items: cap on each kind of preparation training material (smoke runs).
    prepare: TrainingConfig overrides of the preparation fine-tuning.
    eval: EvalSettings overrides (limit, limits, batch_size, max_gen_toks, dtype, ...).
    method_overrides: per-method config overrides on this benchmark only, applied after the
        profile's own (same form: "all" first, then the method's name).
    tune_grid: `ulmr-bench tune`'s grid, {config key: [values]}; every method gets its product.
    tune_validation_items: `ulmr-bench tune` scores at most this many of the benchmark's validation
        items on each side (forget, retain), evenly spread (ulmr.tune).
    """

    max_train_items: int | None = None
    prepare: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    tune_grid: dict[str, list[Any]] = field(default_factory=dict)
    tune_validation_items: int = 40

    @property
    def selection(self) -> str:
        """The selection this plan runs (the plug-in's selection field)."""
        raise NotImplementedError

    def validate(self) -> None:
        from ulmr.unlearning.config import check_range

        check_range("tune_validation_items", self.tune_validation_items, 1)


@dataclass
class PreparedModel:
    """A checkpoint folder (or hub id) and the record of how it was made."""

    path: str
    record: dict[str, Any]


@dataclass
class Preparation:
    """What preparation hands to the methods: the model they start from ("before"), and a model that
    never learned the forget data, the yardstick of tuning (None when there is none)."""

    before: PreparedModel
    reference_model: str | None


class RunContext(Protocol):
    """What a benchmark's `prepare` may use of the run it is part of (ulmr.run.BenchmarkRun)."""

    model: str  # the base model spec
    template: PromptTemplate
    plan: BenchmarkPlan
    selection: str
    prep_seed: int
    data_dir: str | None

    def say(self, message: str) -> None: ...

    def reference_row(self, role: str, model_path: str, preparation: dict[str, Any],
                      tasks: list[str] | None = None) -> dict[str, Any]:
        """Evaluate a model once (on `tasks`, default all), or load its stored result."""

    @property
    def base_forget_metrics(self) -> dict[str, Any]:
        """The untouched base model's metrics on the benchmark's forget probes (stored as "base")."""


@dataclass(frozen=True)
class Axis:
    """One axis of a benchmark's trade-off plot."""

    key: str  # metric column
    label: str
    flipped: bool = False  # plot 1 - value, so that more forgotten is to the right
    log: bool = False


@dataclass(frozen=True)
class DocStatistic:
    """A column that is not the mean of one list of per-doc values (TOFU's model utility, an AUROC):
    how to compute it from the per-doc lists of `Benchmark.per_doc_values`, so that the
    leaderboard's bootstrap can recompute it on resampled docs.

    strata: groups of per_doc_values keys. The lists of one group are aligned (the same docs in the
        same order) and are resampled with one set of indices; groups are resampled independently,
        each keeping its size (e.g. FM and RM texts: an AUROC always sees both).
    compute: the column from the (resampled) lists, keyed as in per_doc_values.
    """

    strata: tuple[tuple[str, ...], ...]
    compute: Callable[[dict[str, Sequence[float]]], float]


class Benchmark(abc.ABC):
    """Base of every benchmark plug-in; see the module docstring for what it owns."""

    name: ClassVar[str]
    plan_class: ClassVar[type[BenchmarkPlan]]
    # the CLI option that picks a selection (e.g. "split" -> --split) and its help
    selection_option: ClassVar[str]
    selection_help: ClassVar[str]
    default_selection: ClassVar[str]
    # table columns: (metric key, header), in the benchmark's own order
    columns: ClassVar[list[tuple[str, str]]]
    # column groups, for a table with one row per group: headers start with their group's name
    column_groups: ClassVar[tuple[str, ...]] = ()
    # (metric key prefix, better direction); the first prefix that matches a column wins
    directions: ClassVar[tuple[tuple[str, str], ...]] = ()
    # trade-off plot: x axes in order of preference (the first any row has), the y axis
    trade_off_axes: ClassVar[tuple[tuple[Axis, ...], Axis] | None] = None
    # the reference row that `reference_metrics` compares each run with (TOFU: "retain"), the
    # columns it fills, and how, for the leaderboard's notes
    reference_role: ClassVar[str | None] = None
    reference_columns: ClassVar[tuple[str, ...]] = ()
    reference_note: ClassVar[str] = ""
    # the leaderboard's summary table above the full one: (metric key, header); a key may be one of
    # `derived_metrics` rather than a column
    summary_columns: ClassVar[tuple[tuple[str, str], ...]] = ()
    # the full table split into readable tables: (title, column keys); empty: by `column_groups`
    table_groups: ClassVar[tuple[tuple[str, tuple[str, ...]], ...]] = ()
    # notes on the columns for the leaderboard (why a direction, why a column has no per-doc error)
    column_notes: ClassVar[tuple[str, ...]] = ()
    # columns computed from per-doc values other than as a mean (see DocStatistic)
    doc_statistics: ClassVar[dict[str, DocStatistic]] = {}
    # what one unit of a selection is called, when single-unit selections can be averaged into one
    # table (RWKU: "target", its main protocol); None: selections are never averaged
    selection_unit: ClassVar[str | None] = None
    # how the single-unit selections were run, for the averaged table's notes
    unit_note: ClassVar[str] = ""

    # ---- evaluation ------------------------------------------------------------------------

    @abc.abstractmethod
    def tasks(self, selection: str) -> list[str]:
        """lm-eval task or group names for a selection (validates it)."""

    def task_metadata(self, selection: str) -> dict[str, Any]:
        """Extra lm-eval task metadata for a selection."""
        return {}

    @abc.abstractmethod
    def forget_probe_tasks(self, selection: str) -> list[str]:
        """The tasks that measure what a model knows of the forget set (the "base" row, the gates)."""

    @abc.abstractmethod
    def summarize(self, results: dict[str, Any], samples: dict[str, list]) -> tuple[dict[str, Any], dict[str, list]]:
        """(lm-eval results, per-task samples) -> (flat metrics in column order, per-question values)."""

    def model_metrics(self, lm, samples: dict[str, list]) -> dict[str, Any]:
        """Metrics lm-eval's requests cannot express, computed with the same model afterwards."""
        return {}

    def scored_selection(self, samples: dict[str, list]) -> dict[str, Any]:
        """What the selection amounted to in the scored docs, kept in the results."""
        return {}

    def reference_metrics(self, result: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
        """Metrics of `result` measured against the `reference_role` row's result (none by default)."""
        return {}

    # ---- unlearning and tuning -------------------------------------------------------------

    @abc.abstractmethod
    def unlearning_data(self, selection: str, template: PromptTemplate, data_dir: str | None = None) -> UnlearningData:
        """What methods forget and keep, from the benchmark's training data only."""

    def validation_data(self, selection: str, data_dir: str | None = None) -> ValidationData | None:
        """What selection (`ulmr-bench tune`, ULMR's alpha=auto) scores models on: items the prepared
        model learned, that no evaluation task scores and no method trains on (docs/design.md,
        "Benchmarks"). It depends on the selection only, so that every caller of `unlearning_data`
        gets the same; a plug-in's `unlearning_data` attaches it, and its `prepare` trains on it.
        None: the benchmark has none (tuning and alpha=auto then refuse to run)."""
        return None

    # ---- preparation -----------------------------------------------------------------------

    def train_models(self, run: RunContext) -> Any:
        """The models `prepare` starts from, fine-tuned or found cached, with nothing evaluated that
        their training does not depend on; `prepare` calls it first. `run --jobs` calls it alone
        beforehand, with every core, so that training never runs on a process's share of them.
        Default: nothing to train."""
        return None

    def prepare(self, run: RunContext) -> Preparation:
        """The model unlearning starts from, its reference rows and gate. Default: the base model."""
        from ulmr.models import resolve_model

        before = PreparedModel(resolve_model(run.model), {})
        run.reference_row("before", before.path, before.record)
        return Preparation(before, None)

    # ---- presentation ----------------------------------------------------------------------

    def derived_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Metrics computed from a result's own metrics (e.g. a mean of several columns), for the
        summary table; the leaderboard recomputes them for every stored result."""
        return {}

    def per_doc_values(self, samples: dict[str, list]) -> dict[str, list[float]]:
        """(per-task lm-eval sample records) -> {key: one value per doc}. A column key's list is the
        values whose mean the column is; other keys feed `doc_statistics`. The leaderboard reads the
        samples stored beside each result and bootstraps over these docs."""
        return {}

    def reference_per_doc_values(self, result: dict[str, Any], reference: dict[str, Any]) -> dict[str, list[float]]:
        """Per-doc values that the `doc_statistics` of `reference_columns` need, from a result and the
        `reference_role` row's result it is measured against (what the results themselves store)."""
        return {}

    def stored_standard_errors(self, result: dict[str, Any]) -> dict[str, float]:
        """{column key: standard error over docs} from what the result itself stores (lm-eval's
        stderr of a mean), for results whose samples are not stored beside them."""
        return {}

    def is_single_unit(self, selection: str) -> bool:
        """Whether a selection is one unit (RWKU: one target), averageable with the others."""
        return False

    def selection_title(self, selection: str) -> str:
        """How a selection reads in a leaderboard heading."""
        return selection

    def plans_to_run(self, plan: BenchmarkPlan, data_dir: str | None = None) -> list[BenchmarkPlan]:
        """The plans a run goes through for this benchmark's section: the plan itself, or one per
        unit when the plan asks for them separately (RWKU's per_target)."""
        return [plan]

    def direction(self, key: str) -> str | None:
        """A column's better direction; None for a column `directions` does not cover (never bold)."""
        return next((direction for prefix, direction in self.directions if key.startswith(prefix)), None)


_BENCHMARKS = Registry("benchmark", ENTRY_POINT_GROUP)


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: make a Benchmark subclass available under its `name` (as an instance)."""
    _BENCHMARKS.add(cls, cls())
    return cls


def available_benchmarks() -> dict[str, Benchmark]:
    return _BENCHMARKS.all()


def get_benchmark(name: str) -> Benchmark:
    return _BENCHMARKS.get(name)


def unregister_benchmark(name: str) -> None:
    """Remove a registered benchmark (tests that register their own clean up with this)."""
    _BENCHMARKS.remove(name)
