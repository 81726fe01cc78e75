"""Run directories: atomic writes, and the model + tokenizer that every phase hands on.

A run directory holds ``model.safetensors``, ``model.json`` (its GPTConfig),
``tokenizer.json`` and ``config.yaml`` (what ran), so any command can be pointed at it.
"""

from __future__ import annotations

import contextlib
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
def _parents_made(path: Path):
    """Make ``path``'s missing parent directories; remove them again if the block fails, so
    that a failed command leaves nothing behind."""
    missing = [p for p in path.parents if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for p in missing:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    with _parents_made(path):
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
    with _parents_made(path):
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


# Settings of a phase that name the data it trains on: a resume must find the same bytes.
DATA_KEYS = ("data", "val_data", "prompts", "eval_questions", "sft_data")


def fingerprint(path: Path) -> dict[str, list]:
    """{file: [size in bytes, SHA-256 of its contents]} for every file under a directory
    (names relative to it; hidden files, a writer's temporaries, left out), or {"": ...} for
    a file. The
    whole contents are hashed: size and mtime would miss an edit that keeps the length (and
    a copy that keeps the time), a sampled hash would miss an edit between its samples.
    SHA-256 runs at hundreds of MB/s, once per process: cheap beside training on the data."""
    import hashlib

    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    out = {}
    for f in files:
        with open(f, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        out["" if f == path else str(f.relative_to(path))] = [f.stat().st_size, digest]
    return out


def data_fingerprints(phase_config: dict) -> dict[str, dict]:
    """The fingerprint of every data path a phase's settings name (see ``DATA_KEYS``)."""
    out = {}
    for key in DATA_KEYS:
        value = phase_config.get(key)
        if isinstance(value, str) and value and Path(value).exists():
            out[key] = {"path": value, "files": fingerprint(Path(value))}
    return out


def data_changes(old: dict, new: dict) -> list[str]:
    """How the data named by a checkpoint's settings (``old``, from ``data_fingerprints``)
    differs from the data there now (``new``): one line per changed file."""
    out = []
    for key, before in old.items():
        now = new.get(key, {"path": before["path"], "files": {}})
        root = Path(now["path"])
        for name, (size, digest) in before["files"].items():
            path = root / name if name else root
            if name not in now["files"]:
                out.append(f"{path} is gone")
            elif now["files"][name][0] != size:
                out.append(f"{path} is {now['files'][name][0]} bytes, was {size}")
            elif now["files"][name][1] != digest:
                out.append(f"{path} has other contents (same size, {size} bytes)")
        out += [f"{root / name} is new" for name in now["files"] if name not in before["files"]]
    return out


RUN_FILES = ("model.safetensors", "model.json", "tokenizer.json")  # what load_model reads
HEADS = {"lm": "a language model (base, SFT or RLHF run)", "scalar": "a reward model (rm run)"}


def check_run(run_dir: str | Path, head: str | None = None, flag: str = "") -> GPTConfig:
    """Refuse a run directory that lacks a file ``load_model`` reads, whose ``model.json``
    is not a model's shape, or (``head`` given) that holds the other kind of model; returns
    the model's config. Cheap: the weights are not read. ``flag`` prefixes messages."""
    named = f"{flag} {run_dir}" if flag else str(run_dir)
    run = Path(run_dir)
    if not run.exists():
        raise MissingFile(f"{named}: no such run directory")
    if not run.is_dir():
        raise GptsmithError(f"{named}: a file, not a run directory (one holding "
                            f"{', '.join(RUN_FILES)})")
    for name in RUN_FILES:
        if not (run / name).exists():
            raise MissingFile(f"{named}: no {name} here; point at a finished run directory "
                              "(e.g. runs/default/pretrain)")
    cfg = read_model_config(run / "model.json")
    if head is not None and cfg.head != head:
        raise GptsmithError(f"{named}: holds {HEADS.get(cfg.head, cfg.head)}, but "
                            f"{HEADS[head]} is needed here")
    return cfg


def read_model_config(path: Path) -> GPTConfig:
    """A ``model.json``: every field known and of its type, the shape valid."""
    from gptsmith.config import _merge, check

    try:
        values = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GptsmithError(f"{path}: not valid JSON ({e}); the run is damaged, train or "
                            "import it again") from None
    if not isinstance(values, dict):
        raise GptsmithError(f"{path}: must hold a JSON object of the model's settings")
    cfg = _merge(GPTConfig(), values, str(path))
    check(cfg, str(path))
    return cfg


def read_weights(path: Path, cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """The tensors of a ``model.safetensors``, checked against the shape ``cfg`` describes:
    every weight present, none unknown, each of its size."""
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError, and OSError
        raise GptsmithError(f"{path}: not a readable safetensors file ({e}); the run is "
                            "damaged, train or import it again") from None
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GPT(cfg).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (model.json says {expected[k]})"
             for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            missing and f"missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3
                                                              else ""),
            unexpected and f"unexpected {', '.join(unexpected[:3])}" + (
                " ..." if len(unexpected) > 3 else ""),
            wrong and f"wrong shape: {', '.join(wrong[:3])}"]))
        raise GptsmithError(f"{path}: the weights do not match {path.parent / 'model.json'} "
                            f"({detail})")
    return state


def load_model(run_dir: str | Path, device: str | torch.device = "auto",
               head: str | None = None) -> tuple[GPT, Tokenizer]:
    """The model and tokenizer saved in a run directory, on ``device`` (``auto``: a CUDA
    GPU when there is one, else the CPU); ``head`` ("lm" or "scalar"): refuse the other
    kind. Any damaged file is the user's error, named."""
    from gptsmith.device import pick_device

    device = pick_device(device) if isinstance(device, str) else device
    run_dir = Path(run_dir)
    cfg = check_run(run_dir, head)
    state = read_weights(run_dir / "model.safetensors", cfg)
    tokenizer = Tokenizer.load(run_dir / "tokenizer.json")
    if tokenizer.vocab_size > cfg.vocab_size:
        raise GptsmithError(f"{run_dir}: tokenizer.json has {tokenizer.vocab_size} ids, more "
                            f"than the model's vocabulary of {cfg.vocab_size} (model.json); "
                            "the files come from different runs")
    # no random initialisation first; weights stored in bf16 (an import) train in fp32
    model = GPT.from_state_dict(cfg, {k: v.float() for k, v in state.items()})
    return model.to(device).eval(), tokenizer
