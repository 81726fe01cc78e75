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

from gptsmith.errors import GptsmithError, InvalidSetting, MissingFile
from gptsmith.templates import OURS

BOS, USER, ASSISTANT, SYSTEM, END, PAD = (
    "<|bos|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|pad|>",
)
SPECIAL_TOKENS = [BOS, USER, ASSISTANT, SYSTEM, END, PAD]
CONFIG_FILE = "tokenizer_config.json"


class Tokenizer:
    """A thin wrapper that fixes how we encode (no special-token parsing) and decode, and
    knows the model's chat format.

    ``config`` is what a Hugging Face ``tokenizer_config.json`` holds (``chat_template``,
    ``bos_token``, ``eos_token``, ``pad_token``, ``add_bos_token``, plus the generation
    config's ``eos_token_ids``); without one the tokenizer is gptsmith's own (the six special
    tokens above, the ``ours`` template).
    """

    def __init__(self, hf: HFTokenizer, config: dict | None = None):
        self.hf = hf
        self.hf.encode_special_tokens = True
        # a second copy that does parse special tokens: what rendered chat templates need
        self.hf_special = HFTokenizer.from_str(hf.to_str())
        self.hf_special.encode_special_tokens = False
        if config is None:
            missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
            if missing:
                raise ValueError(f"tokenizer lacks the special tokens {missing}")
            config = {"chat_template": OURS, "bos_token": BOS, "eos_token": END,
                      "pad_token": PAD, "add_bos_token": True}
        self.config = config
        self.chat_template: str = config.get("chat_template") or ""
        self.bos_id = self._id(config.get("bos_token"))
        eos_id = self._id(config.get("eos_token"))
        self.end_id = self._end_of_turn() if self.chat_template else eos_id
        if self.end_id is None:
            raise ValueError("the tokenizer has no end-of-turn or end-of-text token")
        extra = [i for i in config.get("eos_token_ids", []) if isinstance(i, int)]
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys(
            [self.end_id, *([eos_id] if eos_id is not None else []), *extra]))
        pad = self._id(config.get("pad_token"))
        self.pad_id: int = pad if pad is not None else (eos_id if eos_id is not None else 0)
        self.bos_ids = [self.bos_id] if self.bos_id is not None and config.get(
            "add_bos_token", False) else []

    def _id(self, token: str | None) -> int | None:
        return self.hf.token_to_id(token) if token else None

    def _end_of_turn(self) -> int | None:
        """The token that closes an assistant turn in the chat template: the first special
        token after a probe reply (``<|end|>``, ``<|im_end|>``, ``<|eot_id|>``, ``</s>``)."""
        from gptsmith.templates import render_text

        probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
        special = self.special_tokens()
        before = render_text(self.chat_template, probe[:1], True, special)
        tail = render_text(self.chat_template, probe, False, special)[len(before):]
        tail = tail[tail.find("yo") + 2:]
        found = [(tail.find(t), t) for t in self.added_special if t in tail]
        if not found:
            return self._id(self.config.get("eos_token"))
        return self.hf.token_to_id(min(found)[1])

    @cached_property
    def added_special(self) -> list[str]:
        """The strings of every special added token (what the template parser recognises)."""
        return [t.content for t in self.hf.get_added_tokens_decoder().values() if t.special]

    def special_tokens(self) -> dict[str, str]:
        """The template variables for special tokens (bos_token, eos_token ...)."""
        return {k: self.config.get(k) or "" for k in ("bos_token", "eos_token", "pad_token",
                                                        "unk_token")}

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """``tokenizer.json`` (a directory: the one in it) with the ``tokenizer_config.json``
        beside it, if there is one."""
        import json

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise MissingFile(f"{path}: no tokenizer here (run `gptsmith tokenizer train`)")
        if not path.is_file():
            raise GptsmithError(f"{path}: a directory, not a tokenizer.json")
        config_path = path.parent / CONFIG_FILE
        config = None
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_bytes())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise GptsmithError(f"{config_path}: not valid JSON ({e})") from None
            problem = _config_problem(config)
            if problem:
                raise GptsmithError(f"{config_path}: {problem}")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust library raises a bare Exception for a bad file
            raise GptsmithError(f"{path}: not a readable tokenizer file ({e}); make one with "
                                "`gptsmith tokenizer train`") from None
        import jinja2

        try:
            return cls(hf, config)
        except (ValueError, jinja2.TemplateError) as e:
            raise GptsmithError(f"{path}: {e}") from None

    def save(self, path: str | Path) -> None:
        """``tokenizer.json`` and, beside it, ``tokenizer_config.json`` (chat template and
        special tokens, the Hugging Face file of that name)."""
        import json

        from gptsmith.runs import atomic_write_text

        path = Path(path)
        atomic_write_text(path, self.hf.to_str(pretty=True))
        atomic_write_text(path.parent / CONFIG_FILE, json.dumps(self.config, indent=2) + "\n")

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> set[int]:
        return {self.hf.token_to_id(t) for t in self.added_special}

    def encode_document(self, text: str) -> list[int]:
        """A plain-text prompt as the model saw documents in pre-training (bos first when the
        tokenizer adds one)."""
        return self.bos_ids + self.encode(text)

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


def _config_problem(config) -> str:
    """What is wrong with a ``tokenizer_config.json``'s contents, or ''."""
    if not isinstance(config, dict):
        return "must hold a JSON object"
    for key in ("chat_template", "bos_token", "eos_token", "pad_token", "unk_token"):
        if config.get(key) is not None and not isinstance(config[key], str):
            return f"field {key!r} must be a string, got {type(config[key]).__name__}"
    ids = config.get("eos_token_ids", [])
    if not isinstance(ids, list):
        return "field 'eos_token_ids' must be a list of ids"
    return ""


def train_tokenizer(texts: Iterable[str], vocab_size: int, show_progress: bool = True) -> Tokenizer:
    """Learn a byte-level BPE of ``vocab_size`` ids (special tokens included)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise InvalidSetting(f"vocab_size must be > {256 + len(SPECIAL_TOKENS)}, got "
                             f"{vocab_size}")
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
    """Turns a stream of ids into text pieces, holding back incomplete UTF-8 characters;
    :meth:`flush` at the end of the stream sends what is still held back.

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

    def flush(self) -> str:
        """What is held back, decoded as it stands (a cut character as U+FFFD): the end of
        the stream, so the pieces join to the decode of every id."""
        text = self.tokenizer.decode(self.pending, skip_special=self.skip_special)
        self.pending = []
        return text
