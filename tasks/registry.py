"""Registry of pretraining objectives by name (``@register_task("mlm")``).

A new objective is one module with a registered :class:`tasks.base.Objective` subclass; the
builder looks it up here. Unknown or duplicate names raise an error listing the known ones.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable


class TaskRegistry:
    """Name (and alias) -> objective class. One instance per process, filled by module imports."""

    def __init__(self):
        self._classes: dict[str, type] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, cls: type, aliases: Iterable[str] = ()) -> None:
        for key in (name, *aliases):
            if key in self._classes or key in self._aliases:
                raise KeyError(f"task name '{key}' is already registered (known: {self.known()})")
        self._classes[name] = cls
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases (e.g. ``vmlm`` -> ``mrtm``)."""
        name = self._aliases.get(name, name)
        if name not in self._classes:
            raise KeyError(f"unknown task '{name}' (known: {self.known()})")
        return name

    def get(self, name: str) -> type:
        return self._classes[self.canonical(name)]

    def known(self) -> list[str]:
        return sorted([*self._classes, *(f"{a} (= {n})" for a, n in self._aliases.items())])


# The one process-wide registry (the registry pattern is global by nature: task modules register
# themselves when imported). Creating the empty table does no work at import time.
_REGISTRY = TaskRegistry()


def register_task(name: str, aliases: Iterable[str] = ()) -> Callable[[type], type]:
    """Class decorator: register an objective under ``name`` (and ``aliases``)."""
    def decorate(cls: type) -> type:
        _REGISTRY.register(name, cls, aliases)
        cls.name = name
        return cls
    return decorate


def get_task(name: str) -> type:
    """The objective class registered as ``name`` (or an alias); imports the built-in tasks first."""
    load_builtin_tasks()
    return _REGISTRY.get(name)


def canonical_task_name(name: str) -> str:
    load_builtin_tasks()
    return _REGISTRY.canonical(name)


def known_tasks() -> list[str]:
    load_builtin_tasks()
    return _REGISTRY.known()


def load_builtin_tasks() -> None:
    """Import the task modules so that their decorators run (idempotent: Python caches imports)."""
    from tasks import itm, mlm, mrc, mrfr, mrtm, retrieval, vqa, vtlm, vtlmc  # noqa: F401
