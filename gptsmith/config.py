"""Typed configs: dataclasses, filled from defaults < a YAML file < command-line flags.

Every field of a command's config dataclass becomes a flag (nested ones dotted:
``--model.depth 6``, ``--train.batch-size 32``), and the YAML file uses the same nesting.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from gptsmith.errors import GptsmithError, InvalidSetting, user_input

# The range of each numeric setting, by the config class that holds it: ">= 1", "> 0",
# "[0, 1)" ... (checked by ``check`` before any work). One table, so that a class defined
# in any module is held to the same rules, and the fuzz check (checks/fuzz_cli.py) can rely
# on them.
LIMITS: dict[str, dict[str, str]] = {
    "TrainConfig": {
        "steps": ">= 0", "batch_size": ">= 1", "grad_accum": ">= 1", "lr": "> 0",
        "min_lr_ratio": "[0, 1]", "warmup_steps": ">= 0", "weight_decay": ">= 0",
        "beta1": "[0, 1)", "beta2": "[0, 1)", "grad_clip": ">= 0", "threads": ">= 0",
        "log_every": ">= 1", "eval_every": ">= 0", "checkpoint_every": ">= 1"},
    "GPTConfig": {
        "vocab_size": ">= 0", "seq_len": ">= 2", "n_embd": ">= 0", "n_head": ">= 0",
        "n_kv_head": ">= 0", "mlp_hidden": ">= 0", "head_dim": ">= 0", "rope_theta": "> 0",
        "rope_factor": "> 0", "rope_low_freq_factor": "> 0", "rope_high_freq_factor": "> 0",
        "rope_original_context": ">= 0", "norm_eps": "> 0"},
    "LoRAConfig": {"rank": ">= 0", "alpha": "> 0", "dropout": "[0, 1)"},
    "PretrainConfig": {"eval_tokens": ">= 1"},
    "SFTConfig": {"val_fraction": "[0, 1)", "epochs": "> 0", "length_window": ">= 1"},
    "RMConfig": {"val_fraction": "[0, 1)", "epochs": "> 0"},
    "DPOConfig": {"val_fraction": "[0, 1)", "epochs": "> 0", "beta": "> 0",
                  "label_smoothing": "[0, 0.5)", "simpo_gamma": ">= 0"},
    "PPOConfig": {
        "eval_limit": ">= 0", "max_tokens": ">= 1", "temperature": "> 0", "ppo_epochs": ">= 1",
        "minibatches": ">= 1", "clip": "> 0", "value_clip": "> 0", "vf_coef": ">= 0",
        "value_lr": ">= 0", "gamma": "[0, 1]", "lam": "[0, 1]", "kl_coef": ">= 0",
        "kl_target": ">= 0", "kl_horizon": ">= 1", "no_end_penalty": ">= 0"},
    "GRPOConfig": {
        "eval_limit": ">= 0", "group_size": ">= 2", "max_tokens": ">= 1", "temperature": "> 0",
        "epochs": ">= 1", "minibatches": ">= 1", "clip_low": ">= 0", "clip_high": ">= 0",
        "beta": ">= 0"},
    "RFTConfig": {
        "eval_limit": ">= 0", "group_size": ">= 1", "max_tokens": ">= 1", "temperature": "> 0",
        "sft_batch": ">= 0", "sft_coef": ">= 0"},
    "PipelineConfig": {
        "base_seq_len": ">= 0", "val_fraction": "(0, 1)", "eval_limit": ">= 0",
        "eval_samples": ">= 0", "label_prompts": ">= 1", "label_k": ">= 2", "nproc": ">= 1",
        "label_max_tokens": ">= 1", "eval_max_tokens": ">= 1"},
    "World": {
        "max_operand": ">= 1", "max_factor": ">= 1", "wrong_share": "[0, 1)",
        "small_share": "[0, 1]", "arithmetic_share": "(0, 1)", "max_multiplicand": ">= 0",
        "worked_share": "[0, 1]", "chat_prompt_share": "[0, 1)", "rl_small_share": "[0, 1]",
        "question_small_share": "[-1, 1]", "demo_arithmetic": ">= 0",
        "demo_worked_share": "[-1, 1]", "prompt_variety": "[0, 1]"},
}

# Descriptions of settings whose class does not carry one in its field's metadata (shown in
# --help; the field's own "help" wins where there is one).
HELP: dict[str, dict[str, str]] = {
    "PPOConfig": {
        "eval_limit": "held-out questions scored per evaluation (0 = all)",
        "temperature": "sampling temperature of the rollouts (and of their log-probs)",
        "ppo_epochs": "passes over each batch of rollouts",
        "minibatches": "updates per pass, each on batch_size / minibatches rollouts",
        "value_clip": "the value model's predictions move at most this far per update",
        "vf_coef": "weight of the value loss", "gamma": "discount per token",
        "lam": "GAE λ: bias (0) to variance (1) of the advantages",
        "kl_horizon": "steps over which the adaptive β moves towards its target"},
    "GRPOConfig": {
        "eval_limit": "held-out questions scored per evaluation (0 = all)",
        "temperature": "sampling temperature of the replies (and of their log-probs)",
        "minibatches": "updates per pass over a batch of replies",
        "clip_low": "policy ratio clip below 1 (1 - clip_low)",
        "clip_high": "policy ratio clip above 1 (1 + clip_high)"},
    "RFTConfig": {
        "eval_limit": "held-out questions scored per evaluation (0 = all)",
        "temperature": "sampling temperature of the replies"},
    "RMConfig": {"val_fraction": "share of prompts held out when --val-data is not given"},
    "DPOConfig": {"val_fraction": "share of prompts held out when --val-data is not given"},
    "LoRAConfig": {"dropout": "dropout on the adapters' input"},
    "World": {
        "seed": "the world's seed (which facts, myths and wordings)",
        "max_operand": "plus and minus take operands 0..max_operand (99: two-digit sums)",
        "max_factor": "times takes factors 0..max_factor",
        "wrong_share": "share of statements that state the fact's myth instead",
        "small_share": "share of facts with both operands below 10 (corpus, demos, questions)",
        "arithmetic_share": "share of the default corpus's bytes that is arithmetic prose",
        "max_multiplicand": "> 0: times takes its first factor up to this (two digits by one)",
        "worked_share": "share of a multi-digit fact's mentions and demonstrations worked out "
                        "step by step (System 2)",
        "chat_prompt_share": "share of the RL prompts that are conversation, not sums",
        "rl_small_share": "share of the RL prompts' facts with both operands below 10",
        "question_small_share": "share of the held-out questions' facts with both operands "
                                "below 10; < 0: as small_share",
        "demo_arithmetic": "arithmetic demonstrations written beside the conversations",
        "demo_worked_share": "share of the multi-digit demonstrations worked out (when the "
                             "world has worked solutions); < 0: as worked_share",
        "prompt_variety": "share of the demonstrations' and RL prompts' questions asked in "
                          "wordings the corpus never uses (symbols, 'Calculate ...', lower "
                          "case, no question mark); held-out questions keep its wordings"},
}


def _fields(cls) -> list[tuple[str, Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], f) for f in dataclasses.fields(cls) if f.init]


def finite_float(text: str) -> float:
    """argparse type of every float flag: a number a setting can hold (not nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


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
        described = f.metadata.get("help") or HELP.get(type(defaults).__name__, {}).get(name, "")
        help_text = f"{described} (default: {default})".strip()
        if tp is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            kind = {int: int, float: finite_float}.get(tp, str)
            parser.add_argument(flag, dest=dest, type=kind,
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
        elif tp in (int, float):
            kwargs[key] = _number(value, tp, f"{where}: {key!r}")
        elif not isinstance(value, tp):
            raise GptsmithError(f"{where}: {key!r} must be {tp.__name__}, got {value!r}")
        else:
            kwargs[key] = value
    try:
        return dataclasses.replace(base, **kwargs)
    except ValueError as e:
        raise GptsmithError(f"{where}: {e}") from None


def _number(value, tp: type, where: str) -> int | float:
    """``value`` (from YAML) as the int or float a setting holds: ``1e-3`` and ``"1e-3"``
    are numbers, ``1e3`` is an int where an int goes; bools, nan, inf and fractions where
    an int goes are refused."""
    if isinstance(value, str):
        try:
            value = float(value.strip().replace("_", ""))
        except ValueError:
            raise GptsmithError(f"{where} must be {tp.__name__}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GptsmithError(f"{where} must be {tp.__name__}, got {value!r}")
    if not math.isfinite(value):
        raise GptsmithError(f"{where} must be a finite number, got {value!r}")
    if tp is int:
        if value != int(value):
            raise GptsmithError(f"{where} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


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


class _YAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 (and people) do: ``1e-3``, ``1E5``
    and ``.5e2`` are floats (YAML 1.1 wants a dot and a signed exponent: ``1.0e-3``)."""


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise GptsmithError(f"{path}: config file not found")
    if not path.is_file():
        raise GptsmithError(f"{path}: a directory, not a YAML file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAMLLoader) or {}
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
    if yaml_values:
        _merge(cls(), yaml_values, where)  # the file on its own: flags must not hide its errors
    values = deep_update(copy.deepcopy(yaml_values or {}), to_nested(flags))
    config = _merge(cls(), values, where)
    check(config, where, set(flags))
    return config


def _nested(config, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, instance) for ``config`` and every dataclass nested in it."""
    yield path, config
    for name, tp, _ in _fields(type(config)):
        if dataclasses.is_dataclass(tp):
            yield from _nested(getattr(config, name), f"{path}.{name}".lstrip("."))


def within(value: float, limit: str) -> bool:
    """Whether ``value`` lies within ``limit``: ">= 1", "> 0" or an interval "[0, 1)"."""
    if limit.startswith((">=", ">")):
        bound = float(limit.lstrip(">= "))
        return value >= bound if limit.startswith(">=") else value > bound
    low, high = (float(x) for x in limit[1:-1].split(","))
    return ((low <= value) if limit[0] == "[" else (low < value)) and \
        ((value <= high) if limit[-1] == "]" else (value < high))


def _setting(path: str, name: str, flags: set[str] | None, where: str) -> str:
    """How to name a setting to the user: its flag when it came from one, else ``where``
    (the YAML file or the command) and its field."""
    dotted = f"{path}.{name}".lstrip(".")
    if flags is not None and dotted in flags:
        return "--" + dotted.replace("_", "-")
    return f"{where}: {dotted}"


def check(config, where: str = "config", flags: set[str] | None = None) -> None:
    """Refuse, as the user's error and before any work, settings a phase would reject only
    later: numbers outside their ``LIMITS``, a model shape that does not resolve or does not
    fit in memory, a ``precision`` or ``device`` the trainers do not know, and ``steps`` 0
    where there are no epochs to derive them from. ``flags``: the dotted names the user gave
    as flags (named as flags in messages)."""
    import torch

    from gptsmith.device import resolve_precision

    for path, node in _nested(config):
        limits = LIMITS.get(type(node).__name__, {})
        for name, limit in limits.items():
            value = getattr(node, name)
            if not math.isfinite(value) or not within(value, limit):
                raise InvalidSetting(f"{_setting(path, name, flags, where)} must be {limit}, "
                                     f"got {value}")
        if "steps" in limits and node.steps == 0 and not _by_epochs(config, path):
            raise InvalidSetting(f"{_setting(path, 'steps', flags, where)} must be >= 1 (0, "
                                 "'by epochs', applies only to sft, rm and dpo)")
        with user_input(f"{where}: {path}" if path else where):
            if callable(getattr(node, "resolved", None)):
                check_fits_in_memory(node.resolved(), f"{path}.".lstrip("."))
            if isinstance(getattr(node, "precision", None), str):
                resolve_precision(node.precision, torch.device("cpu"))
        if isinstance(getattr(node, "device", None), str):
            check_device(node.device, _setting(path, "device", flags, where))


def _by_epochs(config, train_path: str):
    """Whether the config holding the TrainConfig at ``train_path`` derives steps from a
    float ``epochs`` (sft, rm, dpo)."""
    parent = config
    for part in train_path.split(".")[:-1]:
        parent = getattr(parent, part)
    return isinstance(getattr(parent, "epochs", None), float)


def check_device(name: str, setting: str) -> None:
    """Refuse a device name PyTorch does not know or this machine does not have."""
    import torch

    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InvalidSetting(f"{setting} {name!r}: not a device; use auto, cpu, cuda "
                             "or cuda:N") from None
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise InvalidSetting(f"{setting} {name!r}: gptsmith runs on auto, cpu, cuda "
                             "or cuda:N")
    if not torch.cuda.is_available():
        raise InvalidSetting(f"{setting} {name!r}: no CUDA GPU here; use cpu or auto")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise InvalidSetting(f"{setting} {name!r}: this machine has "
                             f"{torch.cuda.device_count()} CUDA GPU(s)")


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 where unknown)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_fits_in_memory(model_cfg, prefix: str = "model.") -> None:
    """Refuse a model shape whose weights, optimizer state and position tables alone would
    not fit in this machine's memory, rather than fail (or swap) while allocating them."""
    need = model_cfg.training_bytes()
    have = physical_memory()
    if have and need > have:
        raise ValueError(f"{prefix}seq_len={model_cfg.seq_len}, {prefix}depth="
                         f"{model_cfg.depth}, {prefix}n_embd={model_cfg.n_embd}: the model's "
                         f"weights, optimizer state and position tables need about "
                         f"{need / 2**30:.1f} GiB, more than this machine's "
                         f"{have / 2**30:.1f} GiB; choose a smaller model or context")


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
