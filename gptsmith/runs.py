"""Run directories: atomic writes, and the model + tokenizer that every phase hands on.

A run directory holds ``model.safetensors``, ``model.json`` (its GPTConfig),
``tokenizer.json`` and ``config.yaml`` (what ran), so any command can be pointed at it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from gptsmith.errors import GptsmithError, MissingFile
from gptsmith.model import GPT, GPTConfig
from gptsmith.tokenizer import Tokenizer

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def atomic_dir(path: Path, overwrite: bool = False):
    """Build a directory under a temporary name; it becomes ``path`` only if the block succeeds."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise GptsmithError(f"{path} already exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_config(run_dir: Path, config: dict) -> None:
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def save_model(run_dir: Path, model: GPT, state: dict[str, torch.Tensor] | None = None) -> None:
    """Weights as safetensors (the tied output matrix stored once) plus model.json;
    ``state`` replaces the model's own (LoRA adapters merged, say)."""
    state = model.state_dict() if state is None else state
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(run_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_text(run_dir / "model.json", json.dumps(model.cfg.to_dict(), indent=2) + "\n")


RUN_FILES = ("model.safetensors", "model.json", "tokenizer.json")  # what load_model reads


def check_run(run_dir: str | Path) -> None:
    """Refuse a run directory that lacks a file ``load_model`` reads."""
    for name in RUN_FILES:
        if not (Path(run_dir) / name).exists():
            raise MissingFile(f"{run_dir}: no {name} here; point at a finished run directory "
                              "(e.g. runs/default/pretrain)")


def load_model(run_dir: str | Path, device: str | torch.device = "auto") -> tuple[GPT, Tokenizer]:
    """The model and tokenizer saved in a run directory, on ``device`` (``auto``: a CUDA
    GPU when there is one, else the CPU)."""
    from gptsmith.device import pick_device

    device = pick_device(device) if isinstance(device, str) else device
    run_dir = Path(run_dir)
    check_run(run_dir)
    weights = run_dir / "model.safetensors"
    cfg = GPTConfig(**json.loads((run_dir / "model.json").read_text()))
    # no random initialisation first; weights stored in bf16 (an import) train in fp32
    model = GPT.from_state_dict(cfg, {k: v.float() for k, v in load_file(str(weights)).items()})
    return model.to(device).eval(), Tokenizer.load(run_dir / "tokenizer.json")
