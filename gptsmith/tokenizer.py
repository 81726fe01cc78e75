"""Byte-level BPE (Hugging Face ``tokenizers``): digits split one by one, chat tokens reserved.

Any text round-trips exactly: the alphabet is the 256 bytes, and special-token strings found
in ordinary text are encoded as ordinary bytes (only the chat renderer emits the real ids).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

BOS, USER, ASSISTANT, SYSTEM, END, PAD = (
    "<|bos|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|pad|>",
)
SPECIAL_TOKENS = [BOS, USER, ASSISTANT, SYSTEM, END, PAD]


class Tokenizer:
    """A thin wrapper that fixes how we encode (no special-token parsing) and decode."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        self.hf.encode_special_tokens = True
        missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}")
        self.bos_id, self.user_id, self.assistant_id, self.system_id, self.end_id, self.pad_id = (
            hf.token_to_id(t) for t in SPECIAL_TOKENS
        )

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no tokenizer here (run `gptsmith tokenizer train`)")
        return cls(HFTokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        from gptsmith.runs import atomic_write_text

        atomic_write_text(Path(path), self.hf.to_str(pretty=True))

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> set[int]:
        return {self.hf.token_to_id(t) for t in SPECIAL_TOKENS}

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each token stands for (0 for special tokens): the bits-per-byte divisor."""
        out = np.zeros(self.vocab_size, dtype=np.int64)
        specials = self.special_ids
        for tok, i in self.hf.get_vocab(with_added_tokens=True).items():
            if i not in specials:
                out[i] = len(tok)  # the byte-level alphabet spells each byte as one character
        return out


def train_tokenizer(texts: Iterable[str], vocab_size: int, show_progress: bool = True) -> Tokenizer:
    """Learn a byte-level BPE of ``vocab_size`` ids (special tokens included)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be > {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=show_progress,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)


class IncrementalDecoder:
    """Turns a stream of ids into text pieces, holding back incomplete UTF-8 characters.

    Only the ids not yet sent are decoded (byte-level tokens decode piecewise), so each
    push costs the same however long the reply already is.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self.tokenizer, self.skip_special = tokenizer, skip_special
        self.pending: list[int] = []

    def push(self, token: int) -> str:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending, skip_special=self.skip_special)
        if text.endswith("\ufffd"):
            return ""  # wait for the rest of the character
        self.pending = []
        return text
