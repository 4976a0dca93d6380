"""The task registry: every task (pretraining objective or fine-tuning task) and every run spec, by name.

A task module registers itself when imported; the modules are found with :mod:`pkgutil` over the
``tasks`` package path (plus the folders in ``$UC2_TASK_PATH``), so adding a task is adding a module,
with no import list to edit. Two kinds of entries:

- :class:`TaskSpec` (``@register_task``): a config dataclass (the task's knobs, nested in the run config
  as ``{"task": "mrtm", "mask_prob": 0.15}``), a builder ``(config, TaskContext) -> TrainTask``, the heads
  it trains, and where its name may be listed (``"pretrain"``: a pretraining dataset's ``tasks``;
  ``"run"``: ``train.py --task``).
- :class:`RunSpec` (:func:`register_run`): what ``train.py --task NAME`` / ``evaluate.py --task NAME``
  drive: run config class, task and model builders, the step after training, the evaluation entry.

Unknown or duplicate names raise an error listing the known ones; a name used where it does not work
(``vqa`` in a pretraining dataset) is a :class:`utils.errors.ConfigError` saying where it belongs.
See docs/ARCHITECTURE.md, "Adding a task".
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from utils.config import from_dict
from utils.errors import ConfigError

#: where a task name may be listed
PRETRAIN, RUN = "pretrain", "run"
#: environment variable: extra folders whose modules are task modules too (os.pathsep-separated)
TASK_PATH_ENV = "UC2_TASK_PATH"


@dataclass(frozen=True)
class TaskSpec:
    """One registered task.

    Attributes:
        name: registered name (``"mlm"``); ``aliases`` are other accepted names (``"vmlm"``).
        config: dataclass of the task's knobs; it has a ``task`` field holding the name.
        build: ``(task config, TaskContext) -> TrainTask`` (the trainer's protocol, docs/ARCHITECTURE.md).
        heads: checkpoint key -> head factory ``(model config, backbone) -> nn.Module`` of every head the
            task trains (``{"cls": model.heads.mlm_head}``); a task whose head depends on a resource
            (VQA: the answer count) declares the name here and gives the factory on the built task.
        places: where the name may be listed: ``PRETRAIN`` and/or ``RUN``.
        target: the registered class or function (what :func:`get_task` returns).
        example_config: a run task's tiny config over the contract-test corpus, ``paths -> config``
            (keys ``txt_db``, ``img_db``, ``label_dir``, ``model_config``, ``output_dir``; see
            tests/_task_corpus.py); pretraining tasks need none (they are listed in a tiny PretrainConfig).
    """

    name: str
    config: type
    build: Callable[[Any, Any], Any]
    heads: Mapping[str, Any] = field(default_factory=dict)
    places: frozenset[str] = frozenset({PRETRAIN})
    aliases: tuple[str, ...] = ()
    target: Any = None
    example_config: Callable[[Mapping[str, str]], Any] | None = None


@dataclass(frozen=True)
class RunSpec:
    """What one entry point verb needs for a task family (``train.py --task NAME``).

    Attributes:
        name: the ``--task`` value (``"pretrain"``, ``"itm_rank"``, ``"vqa"``).
        config: run config class (parsed from ``--config`` and ``--key value`` overrides).
        build_tasks: ``(cfg, TaskContext) -> list of TrainTask``.
        build_model: ``(cfg, TaskContext, tasks) -> (model, model config dict)``; initial weights loaded.
        finish: ``(cfg, trainer, TaskContext, last validation metrics) -> result`` after training (save
            the final weights, evaluate on the test sets, ...); its result is what ``train.main`` returns.
        make_context: ``(cfg, DistInfo, device) -> TaskContext``; default: no tokenizer
            (:func:`tasks.context.run_context`).
        prepare: ``(cfg, TaskContext, tasks) -> None`` before the trainer is made (e.g. vocabulary files).
        evaluate: ``(argv) -> result``: ``evaluate.py --task NAME`` (its own arguments); None = none.
        lr_multipliers: ``cfg -> {parameter prefix: LR multiple}`` or None.
        best_metric: ``cfg -> "task/metric"`` to keep ``model_best.pt`` by, or None.
        patience: ``cfg -> n``: stop after n validations in a row without a new best (None: never).
    """

    name: str
    config: type
    build_tasks: Callable[..., list]
    build_model: Callable[..., tuple]
    finish: Callable[..., Any] = lambda cfg, trainer, ctx, metrics: metrics
    prepare: Callable[..., None] | None = None
    evaluate: Callable[..., Any] | None = None
    lr_multipliers: Callable[[Any], dict[str, float] | None] = lambda cfg: None
    best_metric: Callable[[Any], str | None] = lambda cfg: None
    patience: Callable[[Any], int | None] = lambda cfg: None
    make_context: Callable[..., Any] | None = None


class TaskRegistry:
    """Name (and alias) -> entry. One instance per process, filled by importing task modules."""

    def __init__(self, kind: str = "task"):
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, entry: Any, aliases: Iterable[str] = ()) -> None:
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                raise KeyError(f"{self.kind} name '{key}' is already registered (known: {self.known()})")
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases (e.g. ``vmlm`` -> ``mrtm``)."""
        name = self._aliases.get(name, name)
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} '{name}' (known: {self.known()})")
        return name

    def get(self, name: str) -> Any:
        return self._entries[self.canonical(name)]

    def entries(self) -> dict[str, Any]:
        return dict(self._entries)

    def known(self) -> list[str]:
        return sorted([*self._entries, *(f"{a} (= {n})" for a, n in self._aliases.items())])


# The process-wide tables (the registry pattern is global by nature: modules register when imported).
# Creating the empty tables does no work at import time.
_TASKS = TaskRegistry("task")
_RUNS = TaskRegistry("run task")


def register_task(name: str, *, config: type, heads: Mapping[str, Any] | None = None,
                  places: Iterable[str] = (PRETRAIN,), aliases: Iterable[str] = (),
                  build: Callable[[Any, Any], Any] | None = None,
                  example_config: Callable[[Mapping[str, str]], Any] | None = None) -> Callable[[Any], Any]:
    """Decorator registering a task under ``name``.

    Decorating a class (an :class:`tasks.base.Objective` subclass) registers the default builder
    ``ctx.objective_task(cls(config))``; decorating a function registers the function itself as the
    builder ``(config, ctx) -> TrainTask``; ``build`` overrides either.
    """
    def decorate(target: Any) -> Any:
        builder = build or (_objective_builder(target) if isinstance(target, type) else target)
        spec = TaskSpec(name, config, builder, dict(heads or getattr(target, "heads", {}) or {}),
                        frozenset(places), tuple(aliases), target, example_config)
        _TASKS.register(name, spec, aliases)
        if isinstance(target, type):
            target.name = name
        return target
    return decorate


def _objective_builder(cls: type) -> Callable[[Any, Any], Any]:
    def build(config: Any, ctx: Any) -> Any:
        return ctx.objective_task(cls(config))
    return build


def register_run(spec: RunSpec, aliases: Iterable[str] = ()) -> RunSpec:
    """Register what ``train.py --task NAME`` / ``evaluate.py --task NAME`` run."""
    _RUNS.register(spec.name, spec, aliases)
    return spec


# --------------------------------------------------------------------------------------------- discovery
def task_paths() -> list[str]:
    """Folders searched for task modules: the ``tasks`` package's own, then ``$UC2_TASK_PATH``."""
    import tasks

    extra = [p for p in os.environ.get(TASK_PATH_ENV, "").split(os.pathsep) if p]
    return [*tasks.__path__, *(p for p in extra if p not in tasks.__path__)]


def discover() -> None:
    """Import every module of :func:`task_paths` (private ``_name`` modules excepted) so that their
    registrations run. Idempotent (Python caches imports); called before every lookup."""
    import tasks

    for path in task_paths():
        if path not in tasks.__path__:
            tasks.__path__.append(path)  # makes the folder's modules importable as tasks.<name>
    for info in pkgutil.iter_modules(tasks.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"tasks.{info.name}")


def task_spec(name: str) -> TaskSpec:
    """The spec registered as ``name`` (or an alias); KeyError listing the known names."""
    discover()
    return _TASKS.get(name)


def get_task(name: str) -> Any:
    """The class or function registered as ``name`` (e.g. the objective class of ``"mlm"``)."""
    return task_spec(name).target


def canonical_task_name(name: str) -> str:
    discover()
    return _TASKS.canonical(name)


def known_tasks(place: str | None = None) -> list[str]:
    """Registered task names (with aliases), all or only those that may be listed in ``place``."""
    discover()
    if place is None:
        return _TASKS.known()
    return sorted(n for n, spec in _TASKS.entries().items() if place in spec.places)


def task_specs() -> dict[str, TaskSpec]:
    discover()
    return _TASKS.entries()


def run_spec(name: str) -> RunSpec:
    """The run spec of ``train.py --task name``; ConfigError listing the known ones."""
    discover()
    try:
        return _RUNS.get(name)
    except KeyError as err:
        raise ConfigError(f"--task: {err.args[0]}") from None


def known_runs() -> list[str]:
    discover()
    return _RUNS.known()


def known_head_names() -> set[str]:
    """Every head any registered task declares (weight loading does not report these as unknown)."""
    return {head for spec in task_specs().values() for head in spec.heads}


# ----------------------------------------------------------------------------------------- task configs
def resolve_task_config(entry: str | Mapping[str, Any], run_cfg: Any, where: str, place: str = PRETRAIN
                        ) -> tuple[TaskSpec, Any]:
    """The spec and the typed config of one ``tasks`` entry of a run config.

    ``entry`` is a name (``"mrtm"``, the original UC2 form) or a nested config (``{"task": "mrtm",
    "mask_prob": 0.15}``). Knobs not given fall back to the run config's key of the same name (or the
    name the config class maps it to in ``LEGACY_KEYS``, e.g. ITM's ``neg_prob`` <- ``itm_neg_prob``),
    so original configs with top-level ``mask_prob`` etc. keep working. Errors name ``where``.
    """
    data = {"task": entry} if isinstance(entry, str) else dict(entry)
    name = data.get("task")
    if not isinstance(name, str):
        raise ConfigError(f"{where}: expected a task name or an object with a 'task' key, got {entry!r}")
    try:
        spec = task_spec(name)
    except KeyError as err:
        raise ConfigError(f"{where}: {err.args[0]}") from None
    if place not in spec.places:
        raise ConfigError(f"{where}: task '{name}' cannot be listed here ({place}); it is a "
                          f"{' / '.join(sorted(spec.places))} task. Tasks for this place: {known_tasks(place)}")
    data["task"] = spec.name
    legacy = getattr(spec.config, "LEGACY_KEYS", {})
    for fld in dataclasses.fields(spec.config):
        run_key = legacy.get(fld.name, fld.name)
        if fld.name not in data and fld.name != "task" and hasattr(run_cfg, run_key):
            data[fld.name] = getattr(run_cfg, run_key)
    return spec, from_dict(spec.config, data, where)
