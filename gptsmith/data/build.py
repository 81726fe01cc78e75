"""From a corpus spec to a tokenizer and to token shards: what `gptsmith tokenizer train`
and `gptsmith data prepare` do, and the pipeline with them."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from gptsmith.data.corpus import DEFAULT, read_corpus
from gptsmith.data.shards import prepare_shards
from gptsmith.data.world import World
from gptsmith.tokenizer import Tokenizer, train_tokenizer


def _limited(spec: str, max_bytes: int, world: World | None = None) -> list[str]:
    texts, total = [], 0
    for doc in read_corpus(spec, world=world):
        texts.append(doc.text)
        total += len(doc.text)
        if max_bytes and total >= max_bytes:
            break
    return texts


def bytes_per_token(tokenizer: Tokenizer, texts: list[str], sample_bytes: int = 1 << 20) -> float:
    sample, total = [], 0
    for t in texts:
        sample.append(t)
        total += len(t.encode("utf-8"))
        if total >= sample_bytes:
            break
    tokens = sum(len(ids) for ids in tokenizer.encode_batch(sample))
    return total / max(1, tokens)


def train_tokenizer_from(spec: str, vocab_size: int, out: Path, max_bytes: int = 50_000_000,
                         progress: bool = True, world: World | None = None) -> dict:
    """Train a tokenizer on (up to ``max_bytes`` of) a corpus and save it as ``out``
    (the default corpus: of ``world``, the default one if None)."""
    texts = _limited(spec, max_bytes, world)  # read (and validate) before training anything
    tokenizer = train_tokenizer(texts, vocab_size, show_progress=progress)
    tokenizer.save(out)
    stats = {"vocab_size": tokenizer.vocab_size,
             "bytes_per_token": round(bytes_per_token(tokenizer, texts), 3),
             "corpus_bytes": sum(len(t.encode("utf-8")) for t in texts)}
    print(f"tokenizer: {stats['vocab_size']} ids, {stats['bytes_per_token']} bytes/token "
          f"on this corpus -> {out}")
    return stats


def prepare_data(spec: str, tokenizer_path: Path, out: Path, val_fraction: float = 0.02,
                 overwrite: bool = False, world: World | None = None) -> dict:
    """Tokenize a corpus into ``out``; the default corpus also saves its world.json there."""
    tokenizer = Tokenizer.load(tokenizer_path)
    extra = {}
    if spec == DEFAULT:
        world = world or World()
        extra["world.json"] = json.dumps(asdict(world), indent=2) + "\n"
    meta = prepare_shards(read_corpus(spec, world=world), tokenizer, out, val_fraction=val_fraction,
                          overwrite=overwrite, extra_files=extra)
    print(f"data: {meta['train']['tokens']:,} train and {meta['val']['tokens']:,} validation "
          f"tokens -> {out} (unigram baseline {meta['unigram_bpb']:.4f} bits/byte)")
    return meta

