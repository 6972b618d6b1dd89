"""Method registry: filled by the @register_method decorator and by the `ulmr_bench.methods`
entry-point group (an installed package adds names to --methods without touching this repo)."""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from ulmr.errors import UlmrError

ENTRY_POINT_GROUP = "ulmr_bench.methods"
_METHODS: dict[str, type] = {}


def register_method(cls):
    """Class decorator: make an Unlearner subclass available under its `name`."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name` to be registered")
    if name in _METHODS and _METHODS[name] is not cls:
        raise UlmrError(f"method name {name!r} is registered twice ({_METHODS[name].__name__} and "
                        f"{cls.__name__}): rename one")
    _METHODS[name] = cls
    return cls


@functools.cache
def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001  (a broken plugin must not take the others down)
            raise UlmrError(f"method plugin {ep.name!r} ({ep.value}) failed to import: {exc}; "
                            "fix or uninstall that package") from exc


def available_methods() -> dict[str, type]:
    _load_entry_points()
    return dict(sorted(_METHODS.items()))


def get_method(name: str) -> type:
    methods = available_methods()
    if name not in methods:
        raise UlmrError(f"unknown method {name!r}: choose from {', '.join(methods)}")
    return methods[name]
