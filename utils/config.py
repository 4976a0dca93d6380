"""Typed run configs: nested dataclasses loaded from JSON, checked strictly.

A config class is a dataclass whose fields carry a one-line ``help`` in their metadata (use :func:`field`).
Loading rejects unknown keys (naming the full key path, e.g. ``train_datasets[0].mix_ratoi``, and the close
match), missing required keys and wrong types. Command-line overrides use dotted paths
(``--optim.lr 5e-5``, ``--train_datasets.0.mix_ratio [1,2]``); values are parsed as JSON when possible.

Original UNITER/UC2 JSON configs are read through :func:`adapt_original_config`, which maps their key names
onto ours and reports the keys it ignores.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

from utils.errors import ConfigError

LOG = logging.getLogger(__name__)
T = TypeVar("T")
_MISSING = dataclasses.MISSING


def field(default: Any = _MISSING, *, help: str, default_factory: Any = _MISSING) -> Any:  # noqa: A002
    """``dataclasses.field`` with a required one-line ``help`` (shown by ``--help``)."""
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


# ----------------------------------------------------------------------------------------------------------
# JSON reading
# ----------------------------------------------------------------------------------------------------------
def _strip_trailing_commas(text: str) -> str:
    """Remove commas that directly precede ``}`` or ``]`` (outside strings), as the original UC2 config had."""
    out: list[str] = []
    in_str = escaped = False
    pending_comma: int | None = None  # index in `out` of a comma that may turn out to be trailing
    for ch in text:
        if in_str:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
            continue
        if ch in "}]" and pending_comma is not None:
            out[pending_comma] = " "  # keep the length so error columns still match the file
        if not ch.isspace():
            pending_comma = len(out) if ch == "," else None
        in_str = ch == '"'
        out.append(ch)
    return "".join(out)


def load_json(path: str | Path, *, allow_trailing_commas: bool = False) -> Any:
    """Read a JSON file; invalid JSON raises :class:`ConfigError` with the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    if allow_trailing_commas:
        text = _strip_trailing_commas(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        hint = ""
        if not allow_trailing_commas and text[exc.pos:exc.pos + 1] in "}]":
            hint = " (a trailing comma? original UC2 configs can be read with allow_trailing_commas)"
        raise ConfigError(
            f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}{hint}") from exc


# ----------------------------------------------------------------------------------------------------------
# dict -> dataclass, with type checks
# ----------------------------------------------------------------------------------------------------------
def _join(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; errors name the key path under ``path``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected an object for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{_join(path, close[0])}'?" if close else ""
            raise ConfigError(f"unknown config key '{_join(path, key)}'{hint}")
    hints = _hints(cls)
    kwargs = {}
    for name, fld in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], _join(path, name))
        elif fld.default is _MISSING and fld.default_factory is _MISSING:
            raise ConfigError(f"missing required config key '{_join(path, name)}' ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)  # runs the class's own checks (__post_init__)
    except (TypeError, ValueError) as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{exc}") from exc


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check/convert one JSON value against type ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (Union, types.UnionType):
        return _convert_union(value, typing.get_args(tp), path, tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key '{path}': expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        return _convert_sequence(value, tp, path)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{path}': expected an object, got {type(value).__name__}")
        val_tp = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        return {str(k): _convert(v, val_tp, _join(path, str(k))) for k, v in value.items()}
    return _convert_scalar(value, tp, path)


def _convert_union(value: Any, args: tuple, path: str, tp: Any) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"config key '{path}': expected {_type_name(tp)}, got null")
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(value, arg, path)
        except ConfigError as exc:
            errors.append(str(exc))
    if len(errors) == 1:
        raise ConfigError(errors[0])
    raise ConfigError(f"config key '{path}': expected {_type_name(tp)}, got {value!r}")


def _convert_sequence(value: Any, tp: Any, path: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"config key '{path}': expected a list ({_type_name(tp)}), got {type(value).__name__}")
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple or tp is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], _join(path, i)) for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"config key '{path}': expected {len(args)} values ({_type_name(tp)}), "
                              f"got {len(value)}")
        return tuple(_convert(v, a, _join(path, i)) for i, (v, a) in enumerate(zip(value, args or [Any] * len(value))))
    elem = args[0] if args else Any
    return [_convert(v, elem, _join(path, i)) for i, v in enumerate(value)]


def _convert_scalar(value: Any, tp: Any, path: str) -> Any:
    ok = False
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        # JSON writes 2e5 as a float; accept it only when it is a whole number
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    elif isinstance(tp, type):
        ok = isinstance(value, tp)
    if not ok:
        raise ConfigError(f"config key '{path}': expected {_type_name(tp)}, got {value!r} "
                          f"({type(value).__name__})")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON-ready data (tuples become lists), for ``hps.json`` and checkpoints."""
    def plain(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        return obj
    return plain(cfg)


# ----------------------------------------------------------------------------------------------------------
# dotted overrides
# ----------------------------------------------------------------------------------------------------------
def _type_at(cls: type, parts: list[str]) -> Any:
    """Declared type at a dotted path (``Any`` where it cannot be told), used to parse override values."""
    tp: Any = cls
    for part in parts:
        if typing.get_origin(tp) in (Union, types.UnionType):
            non_none = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = non_none[0] if len(non_none) == 1 else Any
        if dataclasses.is_dataclass(tp):
            tp = _hints(tp).get(part, Any)
        elif typing.get_origin(tp) in (list, tuple) and part.isdigit():
            tp = typing.get_args(tp)[0] if typing.get_args(tp) else Any
        else:
            return Any
    return tp


def _parse_value(raw: str, tp: Any) -> Any:
    """JSON when it parses, except that a str field keeps the raw text (so ``--name 123`` stays a string)."""
    if tp is str or (typing.get_origin(tp) in (Union, types.UnionType) and str in typing.get_args(tp)):
        return None if raw == "null" and type(None) in typing.get_args(tp) else raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def apply_overrides(data: dict, overrides: Mapping[str, str], cls: type | None = None) -> dict:
    """Set ``data[a][b]...`` for each dotted key; list elements are addressed by index (``datasets.0.x``)."""
    for key, raw in overrides.items():
        parts = key.split(".")
        value = _parse_value(raw, _type_at(cls, parts) if cls else Any)
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            node = _descend(node, part, ".".join(parts[:depth + 1]))
        _assign(node, parts[-1], value, key)
    return data


def _descend(node: Any, part: str, where: str) -> Any:
    if isinstance(node, list):
        idx = _list_index(node, part, where)
        return node[idx]
    if not isinstance(node, dict):
        raise ConfigError(f"override '--{where}': '{where}' is not an object")
    return node.setdefault(part, {})


def _assign(node: Any, part: str, value: Any, key: str) -> None:
    if isinstance(node, list):
        node[_list_index(node, part, key)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ConfigError(f"override '--{key}': parent is not an object")


def _list_index(node: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override '--{where}': expected a list index below {len(node)}, got '{part}'")
    return int(part)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env_vars(data: Any, source: str, path: str = "") -> Any:
    """Replace ``${NAME}`` in every string of a loaded config by the environment variable NAME.

    This is how shipped configs name machine-specific roots (``${UC2_DEMO_DIR}/txt_db/...``) without
    paths relative to the working directory; an unset variable is an error naming the key.
    """
    if isinstance(data, dict):
        return {k: expand_env_vars(v, source, _join(path, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_env_vars(v, source, _join(path, i)) for i, v in enumerate(data)]
    if isinstance(data, str):
        def lookup(match: re.Match) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(f"{source}: key '{path}' uses ${{{name}}} but the environment variable "
                                  f"{name} is not set")
            return os.environ[name]
        return _VAR.sub(lookup, data)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Mapping[str, str] | None = None) -> T:
    """Load ``cls`` from a JSON file (or its defaults when ``path`` is None) plus dotted overrides.

    ``${NAME}`` in string values is replaced by the environment variable NAME (see :func:`expand_env_vars`).
    """
    data = load_json(path) if path is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    data = expand_env_vars(data, str(path))
    apply_overrides(data, overrides or {}, cls)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path or 'command line'}: {exc}") from None


# ----------------------------------------------------------------------------------------------------------
# original UNITER / UC2 configs
# ----------------------------------------------------------------------------------------------------------
def _map_fp16(value: Any) -> dict[str, Any]:
    if not isinstance(value, bool):
        raise ConfigError(f"original key 'fp16': expected true/false, got {value!r}")
    return {"precision": "fp16" if value else "fp32"}


def _map_optim(value: Any) -> dict[str, Any]:
    if str(value).lower() != "adamw":
        raise ConfigError(f"original key 'optim': only 'adamw' is supported, got {value!r}")
    return {}


# original key -> function giving our keys; keys with the same name and meaning pass through unchanged.
# `train_batch_size`/`val_batch_size` are tokens per GPU batch in both, so they need no mapping.
ORIGINAL_KEY_MAP = {
    "fp16": _map_fp16,
    "mrm_prob": lambda v: {"mask_prob": v},
    "optim": _map_optim,
}


def adapt_original_config(cls: type[T], raw: Mapping[str, Any], source: str = "original config"
                          ) -> tuple[T, list[str]]:
    """Map an original UNITER/UC2 config dict onto ``cls``; returns the config and the ignored key paths.

    Keys we do not model (e.g. ``itm_ot_lambda``, ``compressed_db``, ``rename``) are dropped and logged.
    """
    data, ignored = _adapt_object(cls, raw, "")
    if ignored:
        LOG.warning("%s: ignoring original keys not used by this code: %s", source, ", ".join(ignored))
    try:
        return from_dict(cls, data), ignored
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _adapt_object(cls: type, raw: Mapping[str, Any], path: str) -> tuple[dict, list[str]]:
    names = {f.name for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    data: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in raw.items():
        if not path and key in ORIGINAL_KEY_MAP:
            data.update(ORIGINAL_KEY_MAP[key](value))
        elif key not in names:
            ignored.append(_join(path, key))
        else:
            data[key], sub = _adapt_value(hints[key], value, _join(path, key))
            ignored.extend(sub)
    return data, ignored


def _adapt_value(tp: Any, value: Any, path: str) -> tuple[Any, list[str]]:
    """Recurse into nested dataclasses (e.g. dataset specs) so their unknown keys are dropped too."""
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return _adapt_object(tp, value, path)
    args = typing.get_args(tp)
    if typing.get_origin(tp) is list and args and dataclasses.is_dataclass(args[0]) and isinstance(value, list):
        out, ignored = [], []
        for i, item in enumerate(value):
            adapted, sub = _adapt_value(args[0], item, _join(path, i))
            out.append(adapted)
            ignored.extend(sub)
        return out, ignored
    return value, []


def load_original_config(cls: type[T], path: str | Path, *, allow_trailing_commas: bool = False,
                         overrides: Mapping[str, str] | None = None) -> tuple[T, list[str]]:
    """Read an original UNITER/UC2 JSON config file (trailing commas only when flagged) and adapt it."""
    raw = load_json(path, allow_trailing_commas=allow_trailing_commas)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    cfg, ignored = adapt_original_config(cls, raw, str(path))
    if overrides:
        data = apply_overrides(to_dict(cfg), overrides, cls)
        cfg = from_dict(cls, data)
    return cfg, ignored


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------
def config_help(cls: type, prefix: str = "") -> list[str]:
    """One line per field: dotted name, type, default and help."""
    lines = []
    hints = _hints(cls)
    for fld in dataclasses.fields(cls):
        name = _join(prefix, fld.name)
        tp = hints[fld.name]
        non_none = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (Union, types.UnionType) and len(non_none) == 1:
            tp = non_none[0]  # Optional[SubConfig]: list the sub-config's fields
        if dataclasses.is_dataclass(tp):
            lines.extend(config_help(tp, name))
            continue
        default = fld.default if fld.default is not _MISSING else (
            "<required>" if fld.default_factory is _MISSING else fld.default_factory())
        lines.append(f"  --{name} ({_type_name(tp)}, default {default!r}): {fld.metadata.get('help', '')}")
    return lines


def _split_argv(argv: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split ``--key value`` / ``--key=value`` pairs into control options and dotted overrides."""
    control_keys = {"config", "original_config", "allow_trailing_commas", "help"}
    control: dict[str, str] = {}
    overrides: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"command line: expected '--key value', got '{arg}'")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_") if key.replace("-", "_") in control_keys else key
        if key in ("allow_trailing_commas", "help"):
            control[key] = "true"
        elif eq:
            (control if key in control_keys else overrides)[key] = value
        elif i + 1 < len(argv):
            (control if key in control_keys else overrides)[key] = argv[i + 1]
            i += 1
        else:
            raise ConfigError(f"command line: '--{key}' needs a value")
        i += 1
    return control, overrides


def parse_args_and_config(cls: type[T], argv: Sequence[str] | None = None) -> T:
    """Entry-point helper: ``--config FILE`` (ours) or ``--original_config FILE`` (UNITER/UC2, add
    ``--allow_trailing_commas`` for the invalid released pretrain config), then dotted overrides.
    ``--help`` prints every field with its help and exits."""
    argv = list(sys.argv[1:] if argv is None else argv)
    control, overrides = _split_argv(argv)
    if "help" in control:
        print(f"options for {cls.__name__}:\n" + "\n".join(config_help(cls)))
        raise SystemExit(0)
    if "config" in control and "original_config" in control:
        raise ConfigError("command line: give either --config or --original_config, not both")
    if "original_config" in control:
        cfg, _ = load_original_config(cls, control["original_config"], overrides=overrides,
                                      allow_trailing_commas="allow_trailing_commas" in control)
        return cfg
    return load_config(cls, control.get("config"), overrides)
