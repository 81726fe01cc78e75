"""Token shards: a corpus tokenized into flat numpy files with a train/validation split.

Layout of a data directory::

    meta.json            dtype, token and byte counts, shard list, unigram baseline
    tokenizer.json       the tokenizer the shards were made with
    train_000.bin ...    uint16 (vocab <= 65536) or uint32 token ids, documents joined by <|bos|>
    val_000.bin ...

Documents are cut into ~4 KB pieces (at blank lines) and each piece goes to validation with
probability ``val_fraction``, decided by a hash, so the split is stable and representative.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from gptsmith.data.corpus import Document
from gptsmith.errors import GptsmithError
from gptsmith.runs import atomic_dir
from gptsmith.tokenizer import Tokenizer

PIECE_BYTES = 4096


def _pieces(text: str) -> list[str]:
    if len(text) <= PIECE_BYTES:
        return [text]
    out, cur, size = [], [], 0
    for block in text.split("\n\n"):
        cur.append(block)
        size += len(block) + 2
        if size >= PIECE_BYTES:
            out.append("\n\n".join(cur))
            cur, size = [], 0
    if cur:
        out.append("\n\n".join(cur))
    return out


def held_out(key: str, fraction: float) -> bool:
    """Whether ``key`` falls in the held-out share, decided by a hash: stable across runs.
    Shards key pieces by document and piece; SFT and RM data by their prompt's content."""
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return h / 2**64 < fraction


def split_held_out(items: list, key: Callable[[Any], str],
                   fraction: float) -> tuple[list, list]:
    """(kept, held out): an item is held out when ``held_out(key(item))``. Keyed by content
    (a demonstration's prompt), so copies of one prompt always fall on the same side."""
    kept, out = [], []
    for item in items:
        (out if held_out(key(item), fraction) else kept).append(item)
    return kept, out


class _ShardWriter:
    def __init__(self, out: Path, split: str, dtype, shard_tokens: int):
        self.out, self.split, self.dtype, self.shard_tokens = out, split, dtype, shard_tokens
        self.buf: list[np.ndarray] = []
        self.buffered = 0
        self.files: list[dict] = []
        self.tokens = 0

    def add(self, ids: list[int]) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        self.buf.append(arr)
        self.buffered += len(arr)
        self.tokens += len(arr)
        if self.buffered >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        name = f"{self.split}_{len(self.files):03d}.bin"
        np.concatenate(self.buf).tofile(self.out / name)
        self.files.append({"file": name, "tokens": self.buffered})
        self.buf, self.buffered = [], 0


def prepare_shards(docs: Iterable[Document], tokenizer: Tokenizer, out: Path,
                   val_fraction: float = 0.02, shard_tokens: int = 100_000_000,
                   overwrite: bool = False, extra_files: dict[str, str] | None = None) -> dict:
    """Tokenize ``docs`` into ``out``; the directory appears only when complete."""
    if not 0 < val_fraction < 1:
        raise GptsmithError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    val_ids: list[np.ndarray] = []
    nbytes = {"train": 0, "val": 0}
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        writers = {s: _ShardWriter(tmp, s, dtype, shard_tokens) for s in ("train", "val")}
        batch: list[tuple[str, str]] = []

        def flush_batch():
            train_ids = []
            for (split, text), ids in zip(batch, tokenizer.encode_batch([t for _, t in batch]),
                                          strict=True):
                ids = [*tokenizer.bos_ids, *ids]
                writers[split].add(ids)
                nbytes[split] += len(text.encode("utf-8"))
                (train_ids if split == "train" else val_ids).append(np.asarray(ids))
            if train_ids:
                counts[:] += np.bincount(np.concatenate(train_ids), minlength=len(counts))
            batch.clear()

        progress = tqdm(docs, desc="tokenizing", unit="doc", leave=False, disable=None)
        for n, doc in enumerate(progress):
            for i, piece in enumerate(_pieces(doc.text)):
                split = "val" if held_out(f"{n}:{doc.source}#{i}", val_fraction) else "train"
                batch.append((split, piece))
            if len(batch) >= 512:
                flush_batch()
        if not writers["val"].tokens and all(split == "train" for split, _ in batch) and (
                len(batch) > 1 or (batch and writers["train"].tokens)):
            # the hash held out none of a small corpus's pieces: the last one is validation
            batch[-1] = ("val", batch[-1][1])
        flush_batch()
        for w in writers.values():
            w.flush()
        if not writers["train"].tokens or not writers["val"].tokens:
            raise GptsmithError(
                "corpus too small to split: train has {} and validation {} tokens; "
                "give more text or change --val-fraction".format(
                    writers["train"].tokens, writers["val"].tokens)
            )
        val = np.concatenate(val_ids)
        meta = {
            "dtype": np.dtype(dtype).name,
            "vocab_size": tokenizer.vocab_size,
            "train": {"tokens": writers["train"].tokens, "bytes": nbytes["train"],
                      "shards": writers["train"].files},
            "val": {"tokens": writers["val"].tokens, "bytes": nbytes["val"],
                    "shards": writers["val"].files},
            "val_fraction": val_fraction,
            "unigram_bpb": unigram_bpb(counts, val, tokenizer.token_bytes),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        tokenizer.save(tmp / "tokenizer.json")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return meta


def unigram_bpb(train_counts: np.ndarray, val: np.ndarray, token_bytes: np.ndarray) -> float:
    """Bits per byte of the best context-free model (add-one smoothed train frequencies)."""
    p = (train_counts + 1) / (train_counts.sum() + len(train_counts))
    targets = val[token_bytes[val] > 0]
    return float(-np.log2(p[targets]).sum() / token_bytes[targets].sum())


def read_meta(data_dir: Path) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise GptsmithError(f"{data_dir}: not a data directory (no meta.json); "
                            "make one with `gptsmith data prepare`")
    try:
        meta = json.loads(path.read_bytes())
        shards = [s["file"] for split in ("train", "val") for s in meta[split]["shards"]]
        np.dtype(meta["dtype"])
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise GptsmithError(f"{path}: not the meta.json `gptsmith data prepare` writes ({e}); "
                            "prepare the data again") from None
    for name in shards:
        if not (Path(data_dir) / name).is_file():
            raise GptsmithError(f"{data_dir}: shard {name} (listed in meta.json) is missing; "
                                "prepare the data again")
    return meta


@dataclass
class TokenWindows:
    """Random (input, target) windows from a split's shards, resumable exactly.

    The sampling generator's state is the data position: saving and restoring it (with
    ``state_dict``) continues the same sequence of batches after a restart.
    """

    data_dir: Path
    split: str
    batch_size: int
    seq_len: int
    seed: int = 0

    def __post_init__(self):
        meta = read_meta(self.data_dir)
        self.shards = [
            np.memmap(Path(self.data_dir) / s["file"], dtype=meta["dtype"], mode="r")
            for s in meta[self.split]["shards"]
        ]
        starts = [max(0, len(s) - self.seq_len - 1) for s in self.shards]
        if sum(starts) == 0:
            raise GptsmithError(
                f"{self.data_dir}: the {self.split} split has fewer than seq_len+1 = "
                f"{self.seq_len + 1} tokens in every shard; use more data or a shorter seq_len"
            )
        self.cum = np.cumsum(starts)
        self.gen = torch.Generator().manual_seed(self.seed)

    def _window(self, g: int) -> np.ndarray:
        s = int(np.searchsorted(self.cum, g, side="right"))
        off = g - (int(self.cum[s - 1]) if s else 0)
        return np.asarray(self.shards[s][off:off + self.seq_len + 1], dtype=np.int64)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, int(self.cum[-1]), (self.batch_size,), generator=self.gen)
        w = torch.from_numpy(np.stack([self._window(int(i)) for i in idx]))
        return w[:, :-1], w[:, 1:]

    def fixed(self, max_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Evenly spaced windows covering up to ``max_tokens`` targets: the same every call."""
        total = int(self.cum[-1])
        n = max(1, min(max_tokens // self.seq_len, math.ceil(total / self.seq_len)))
        offsets = np.linspace(0, total - 1, n).astype(np.int64)
        windows = np.stack([self._window(int(g)) for g in offsets])
        out = []
        for i in range(0, n, self.batch_size):
            w = torch.from_numpy(windows[i:i + self.batch_size])
            out.append((w[:, :-1], w[:, 1:]))
        return out

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
