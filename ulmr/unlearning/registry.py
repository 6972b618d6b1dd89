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
