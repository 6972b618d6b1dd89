"""Typed method configs: dataclasses with documented defaults, overridden from a YAML/JSON file and
from `--set key=value` options, with one-line errors for unknown keys and bad values."""

from __future__ import annotations

import contextvars
import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any

import yaml

from ulmr.errors import UlmrError


def parse_set_options(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """["lr=1e-5", "lora=true"] -> {"lr": 1e-05, "lora": True} (values parsed as YAML scalars)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UlmrError(f"--set {pair!r} is not key=value: write e.g. --set lr=1e-5")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UlmrError(f"config file {path} not found: pass an existing YAML or JSON file")
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UlmrError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                        f"{str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise UlmrError(f"config file {path} must hold a mapping of option names to values")
    return data


def build_config(config_class: type, overrides: dict[str, Any] | None = None, where: str = "config"):
    """An instance of `config_class` with `overrides` applied, type-checked, then validated."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    values = {}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise UlmrError(f"unknown {where} key {key!r}: valid keys are {', '.join(fields)}")
        values[key] = _coerce(value, hints[key], f"{where} key {key!r}")
    config = config_class(**values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        try:  # range checks first: their message names the allowed range
            validate()
        except UlmrError as exc:  # say where the value came from
            raise UlmrError(f"{where}: {exc}") from None
    for f in dataclasses.fields(config):  # then every number validate() has no range for
        bad = _non_finite(getattr(config, f.name))
        if bad is not None:
            raise UlmrError(f"{where} key {f.name!r} holds {bad}: every number must be finite; "
                            "pass a real value")
    return config


def check_range(name: str, value, low=None, high=None, low_open=False) -> None:
    """One-line error for an out-of-range hyperparameter. NaN and +-inf are always out of range
    (NaN compares False to every bound, so it is tested first)."""
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    too_low = finite and low is not None and (value <= low if low_open else value < low)
    too_high = finite and high is not None and value > high
    bounds = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, " \
             f"{high if high is not None else 'inf'}{']' if high is not None else ')'}"
    recorder = _RANGES.get()
    if recorder is not None:  # describe_fields is asking which ranges validate() checks
        recorder[name] = bounds
        return
    if not finite:
        raise UlmrError(f"{name}={value} is out of range: it must be a finite number in {bounds}")
    if too_low or too_high:
        raise UlmrError(f"{name}={value} is out of range: it must lie in {bounds}")


_RANGES: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("config_ranges", default=None)


def describe_fields(config_class: type) -> list[dict[str, Any]]:
    """Every field of a config class: name, type, default, the range its validate() checks (read by
    running validate() on the defaults with check_range recording instead of checking) and its help
    (the field's metadata)."""
    hints = typing.get_type_hints(config_class)
    ranges: dict[str, str] = {}
    token = _RANGES.set(ranges)
    try:
        validate = getattr(config_class(), "validate", None)
        if validate is not None:
            validate()
    finally:
        _RANGES.reset(token)
    return [{"name": f.name, "type": _type_name(hints[f.name]),
             "default": f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default,
             "range": ranges.get(f.name, ""), "help": _help(config_class, f.name)}
            for f in dataclasses.fields(config_class)]


def _help(config_class: type, name: str) -> str:
    """A field's help; a subclass that only changes a field's default (a preset) keeps its parent's."""
    for cls in config_class.__mro__:
        field = getattr(cls, "__dataclass_fields__", {}).get(name)
        if field is not None and field.metadata.get("help"):
            return field.metadata["help"]
    return ""


def _type_name(hint) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(map(repr, typing.get_args(hint)))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _non_finite(value):
    """The first NaN or infinite float inside a config value (lists and dicts walked), else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return value
    children = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for child in children:
        bad = _non_finite(child)
        if bad is not None:
            return bad
    return None


def config_to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


# field metadata of a setting that changes how a result is computed, never the result (e.g. gradient
# checkpointing: the same weights bit for bit); such settings stay out of the keys of stored work
SAME_RESULT = "same_result"


def config_key(config) -> dict[str, Any]:
    """The config as stored work is keyed by: every field but the SAME_RESULT ones, so that turning
    one on finds the results, grid points and prepared models computed without it."""
    neutral = {f.name for f in dataclasses.fields(config) if f.metadata.get(SAME_RESULT)}
    return {name: value for name, value in dataclasses.asdict(config).items() if name not in neutral}


def _coerce(value, hint, where):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except UlmrError as exc:
                errors.append(exc)
        raise errors[0]
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML reads 1e-5 (no dot) as a string; it is a float to every user
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # YAML reads `targets=1` as a number; a selection is a string to every user
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        inner = args[0] if args else typing.Any
        return [v if inner is typing.Any else _coerce(v, inner, where) for v in value]
    if origin is dict and isinstance(value, dict):
        return dict(value)
    if origin is typing.Literal and value in args:
        return value
    if hint is typing.Any:
        return value
    expected = ", ".join(map(repr, args)) if origin is typing.Literal else getattr(hint, "__name__", str(hint))
    raise UlmrError(f"{where} got {value!r}: expected {expected}")
