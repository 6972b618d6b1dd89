"""Method registry: filled by the @register_method decorator and by the `ulmr_bench.methods`
entry-point group (an installed package adds names to --methods without touching this repo)."""

from __future__ import annotations

from ulmr.plugins import Registry

ENTRY_POINT_GROUP = "ulmr_bench.methods"
_METHODS = Registry("method", ENTRY_POINT_GROUP)


def register_method(cls):
    """Class decorator: make an Unlearner subclass available under its `name`."""
    _METHODS.add(cls)
    return cls


def available_methods() -> dict[str, type]:
    return _METHODS.all()


def get_method(name: str) -> type:
    return _METHODS.get(name)


def registered_parents(name: str) -> list[type]:
    """The registered methods that method `name` subclasses, nearest first (ulmr-noavg: [ulmr];
    ga-avg: [ga]): a variant's parents, whose profile settings it takes."""
    registered = set(available_methods().values())
    return [c for c in get_method(name).__mro__[1:] if c in registered]
