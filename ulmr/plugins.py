"""Named plug-ins of one kind (methods, benchmarks): filled by a class decorator and by a Python
entry-point group, so an installed package adds names without touching this repository."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from ulmr.errors import UlmrError


class Registry:
    """name -> a registered class (or an instance of it), for one kind of plug-in."""

    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group
        self._items: dict[str, Any] = {}
        self._loaded = False

    def add(self, cls: type, item: Any = None) -> None:
        """Register `cls` under its `name` (as `item`, default the class itself)."""
        name = getattr(cls, "name", None)
        if not name:
            raise TypeError(f"{cls.__name__} needs a class attribute `name` to be registered")
        known = self._items.get(name)
        known_class = known if isinstance(known, type) else type(known)
        if known is not None and known_class is not cls:
            raise UlmrError(f"{self.kind} name {name!r} is registered twice ({known_class.__name__} and "
                            f"{cls.__name__}): rename one")
        self._items[name] = cls if item is None else item

    def remove(self, name: str) -> None:
        self._items.pop(name, None)

    def all(self) -> dict[str, Any]:
        """Every registered plug-in by name, the entry-point group's loaded first (once)."""
        if not self._loaded:
            self._loaded = True
            for ep in entry_points(group=self.group):
                try:
                    ep.load()
                except Exception as exc:  # noqa: BLE001  (a broken plugin must say so, in one line)
                    raise UlmrError(f"{self.kind} plugin {ep.name!r} ({ep.value}) failed to import: {exc}; "
                                    "fix or uninstall that package") from exc
        return dict(sorted(self._items.items()))

    def get(self, name: str) -> Any:
        items = self.all()
        if name not in items:
            raise UlmrError(f"unknown {self.kind} {name!r}: choose from {', '.join(items)}")
        return items[name]
