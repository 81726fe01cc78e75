"""Typed configs: dataclasses, filled from defaults < a YAML file < command-line flags.

Every field of a command's config dataclass becomes a flag (nested ones dotted:
``--model.depth 6``, ``--train.batch-size 32``), and the YAML file uses the same nesting.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from gptsmith.errors import GptsmithError, user_input


def _fields(cls) -> list[tuple[str, Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], f) for f in dataclasses.fields(cls) if f.init]


def add_arguments(parser: argparse.ArgumentParser, defaults, prefix: str = "") -> None:
    """One flag per (nested) field of the dataclass instance ``defaults``, its help showing
    the value ``defaults`` holds (what the command really uses, default factories included,
    not the nested class's own default); unset flags stay absent."""
    for name, tp, f in _fields(type(defaults)):
        dest, default = prefix + name, getattr(defaults, name)
        if dataclasses.is_dataclass(tp):
            add_arguments(parser, default, dest + ".")
            continue
        flag = "--" + dest.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {default})".strip()
        if tp is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=dest, type=tp if tp in (int, float) else str,
                                default=argparse.SUPPRESS, metavar=tp.__name__.upper(),
                                help=help_text)


def _merge(base, values: dict, where: str):
    """``base`` (a dataclass instance) with ``values`` applied, type-checked, recursively."""
    known = {name: tp for name, tp, _ in _fields(type(base))}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise GptsmithError(f"{where}: unknown setting {key!r} (known: {sorted(known)})")
        tp = known[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise GptsmithError(f"{where}: {key!r} must be a mapping of settings")
            kwargs[key] = _merge(getattr(base, key), value, f"{where}: {key}")
        elif tp is float and isinstance(value, int) and not isinstance(value, bool):
            kwargs[key] = float(value)
        elif not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise GptsmithError(f"{where}: {key!r} must be {tp.__name__}, got {value!r}")
        else:
            kwargs[key] = value
    try:
        return dataclasses.replace(base, **kwargs)
    except ValueError as e:
        raise GptsmithError(f"{where}: {e}") from None


def to_nested(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def deep_update(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise GptsmithError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise GptsmithError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise GptsmithError(f"{path}: the top level must be a mapping of settings")
    return data


def build(cls, args: argparse.Namespace, yaml_values: dict | None = None, where: str = "config"):
    """The config: dataclass defaults, overridden by ``yaml_values``, then by given flags;
    checked (see ``check``)."""
    flags = {k: v for k, v in vars(args).items() if "." in k or k in {f.name for f in
             dataclasses.fields(cls)}}
    values = deep_update(copy.deepcopy(yaml_values or {}), to_nested(flags))
    config = _merge(cls(), values, where)
    check(config, where)
    return config


def _nested(config, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, instance) for ``config`` and every dataclass nested in it."""
    yield path, config
    for name, tp, _ in _fields(type(config)):
        if dataclasses.is_dataclass(tp):
            yield from _nested(getattr(config, name), f"{path}.{name}".lstrip("."))


def check(config, where: str = "config") -> None:
    """Refuse, as the user's error and before any work, settings a phase would reject only
    later: every nested config with ``resolved()`` (a model's shape) must resolve, and every
    ``precision`` must be one the trainers know."""
    import torch

    from gptsmith.device import resolve_precision

    for path, node in _nested(config):
        with user_input(f"{where}: {path}" if path else where):
            if callable(getattr(node, "resolved", None)):
                node.resolved()
            if isinstance(getattr(node, "precision", None), str):
                resolve_precision(node.precision, torch.device("cpu"))


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
