"""Run profiles: model, benchmarks, methods, seeds, splits, budgets in one YAML.

`smoke` (tests, seconds), `quick` (default; a laptop CPU, the embedded model) and `full` (GPUs, the
paper protocol) ship as YAML files beside this module; `--profile` also takes a path to your own.
Dotted `--set` keys override single fields: `--set tofu.eval.limit=20 --set seeds=[0,1,2]`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ulmr.errors import UlmrError, first_line

PROFILE_DIR = Path(__file__).resolve().parent
PROFILES = tuple(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))


@dataclass
class Profile:
    name: str
    model: str
    benchmarks: list[str]
    methods: list[str]
    seeds: list[int]
    template: dict[str, Any] = field(default_factory=lambda: {"prompt_template": "chat"})
    # seed of the preparation fine-tuning: one prepared model serves every unlearning seed, so
    # `--seeds 1` adds runs to a results directory made with `--seeds 0` without preparing again
    prepare_seed: int = 0
    # one section per benchmark, keyed by its name (the YAML's top-level `tofu:`, `rwku:`, ...),
    # each the benchmark's plan_class; a benchmark without a section runs its plan's defaults
    plans: dict[str, Any] = field(default_factory=dict)
    # per-method config overrides; "all" applies first, to every method whose config has the key;
    # a method's entry also reaches its registered subclasses (ULMR's ablations), see below
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        from ulmr.unlearning.config import check_range

        for name, items in (("methods", self.methods), ("benchmarks", self.benchmarks), ("seeds", self.seeds)):
            if not items:
                raise UlmrError(f"the profile's {name} list is empty: name at least one (e.g. --{name} ...)")
            repeated = sorted({item for item in items if items.count(item) > 1}, key=str)
            if repeated:
                raise UlmrError(f"{name} lists {repeated[0]!r} twice: name each once")
        for seed in self.seeds:
            check_range("seed", seed, 0)
        check_range("prepare_seed", self.prepare_seed, 0)

    def plan(self, benchmark: str):
        """The benchmark's section of the profile (its plan_class' defaults when the YAML has none)."""
        from ulmr.benchmarks.registry import get_benchmark

        if benchmark not in self.plans:
            self.plans[benchmark] = get_benchmark(benchmark).plan_class()
        return self.plans[benchmark]

    def method_config_overrides(self, method: str, benchmark: str) -> dict[str, Any]:
        """The profile's overrides, then the benchmark's: each "all" (keys the config has), then
        those of the registered methods this one subclasses, then the method's own. A variant such
        as the ablation `ulmr-noavg` so trains on `ulmr`'s budget, except the fields its config
        presets (alpha there), which an override of its parent must not undo."""
        from ulmr.unlearning.registry import get_method, registered_parents

        config_class = get_method(method).config_class
        known = {f.name for f in dataclasses.fields(config_class)}
        parents = [(c.name, _changed_defaults(c.config_class, config_class))  # outermost first
                   for c in reversed(registered_parents(method))]
        merged: dict[str, Any] = {}
        for overrides in (self.method_overrides, self.plan(benchmark).method_overrides):
            merged.update({k: v for k, v in overrides.get("all", {}).items() if k in known})
            for parent, presets in parents:
                merged.update({k: v for k, v in overrides.get(parent, {}).items() if k not in presets})
            merged.update(overrides.get(method, {}))
        return merged

    def method_config(self, method: str, benchmark: str, seed: int, extra: dict[str, Any] | None = None,
                      where: str = ""):
        """The method's validated config on this benchmark: its overrides, then `extra`, then the seed."""
        from ulmr.unlearning.config import build_config
        from ulmr.unlearning.registry import get_method

        overrides = {**self.method_config_overrides(method, benchmark), **(extra or {}), "seed": seed}
        return build_config(get_method(method).config_class, overrides, where=f"{method} config{where}")


def _changed_defaults(parent_config: type, config: type) -> set[str]:
    """The fields whose default `config` changes from `parent_config`'s (a variant's presets)."""
    parent_defaults = {f.name: _default(f) for f in dataclasses.fields(parent_config)}
    return {f.name for f in dataclasses.fields(config) if _default(f) != parent_defaults.get(f.name, _default(f))}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def load_profile(name_or_path: str, overrides: dict[str, Any] | None = None) -> Profile:
    """A shipped profile by name, or a YAML file; dotted-key overrides applied before validation."""
    path = Path(name_or_path)
    if not path.suffix:
        if name_or_path not in PROFILES:
            raise UlmrError(f"unknown profile {name_or_path!r}: choose from {', '.join(PROFILES)} "
                            "or pass a YAML file")
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UlmrError(f"profile file {path} not found: pass a profile name ({', '.join(PROFILES)}) "
                        "or an existing YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: {getattr(exc, 'problem', '')}" if mark else first_line(exc)
        raise UlmrError(f"profile file {path} is not valid YAML ({where}): fix it") from exc
    if not isinstance(raw, dict):
        raise UlmrError(f"profile file {path} must hold a mapping of profile fields (model, methods, tofu, ...)")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return _build(raw, path.stem)


def _set_dotted(raw: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UlmrError(f"--set {dotted}: {key!r} is not a section of the profile")
    node[keys[-1]] = copy.deepcopy(value)


def _build(raw: dict[str, Any], name: str) -> Profile:
    from ulmr.benchmarks.registry import available_benchmarks
    from ulmr.unlearning.config import build_config

    raw = dict(raw)
    registered = available_benchmarks()
    plans = {bench: build_config(registered[bench].plan_class, raw.pop(bench) or {}, where=f"profile {bench}")
             for bench in list(raw) if bench in registered}
    raw.setdefault("name", name)
    profile = build_config(Profile, raw, where="profile")
    for bench in profile.benchmarks:
        if bench not in registered:
            raise UlmrError(f"unknown benchmark {bench!r} in profile {name}: choose from {', '.join(registered)}")
    profile.plans = plans
    return profile
