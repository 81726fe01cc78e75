"""Phase 2: supervised fine-tuning on demonstrations, loss on assistant tokens only."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptsmith.chat import render
from gptsmith.config import to_dict
from gptsmith.data.demos import Conversation, read_demos
from gptsmith.data.shards import split_held_out
from gptsmith.errors import GptsmithError
from gptsmith.runs import load_model
from gptsmith.tokenizer import Tokenizer
from gptsmith.train.batches import EpochBatches, first_fit, right_padded
from gptsmith.train.distributed import DistConfig, world
from gptsmith.train.loop import LossSum, TrainConfig, Trainer, finished_summary, steps_for_epochs
from gptsmith.train.lora import LoRAConfig, apply_lora, trainable_summary


def _sft_train() -> TrainConfig:
    return TrainConfig(steps=0, batch_size=16, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1,
                       eval_every=50, checkpoint_every=50, log_every=5)


@dataclass
class SFTConfig:
    base: str = field(default="", metadata={"help": "run directory of the model to fine-tune"})
    data: str = field(default="", metadata={"help": "demonstrations (.jsonl, .json, .parquet)"})
    val_data: str = field(default="", metadata={
        "help": "held-out demonstrations; empty: hold out val_fraction of --data"})
    val_fraction: float = field(default=0.05, metadata={
        "help": "share of prompts held out when --val-data is not given; 0: none (no "
                "validation loss)"})
    format: str = field(default="auto", metadata={
        "help": "auto | pairs | messages | alpaca | sharegpt"})
    skip_bad: bool = field(default=False, metadata={
        "help": "skip (and count) unusable records instead of stopping"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data if steps is 0"})
    length_window: int = field(default=1, metadata={
        "help": "batches drawn at a time and grouped by length, so that padding wastes less "
                "(1: plain shuffle; 8 made the default SFT 1.6x faster but its held-out "
                "results a little worse)"})
    pack: bool = field(default=True, metadata={
        "help": "pack each batch's conversations into as few rows as its longest one, "
                "attending within each conversation: the same loss and gradients as padding "
                "each to the longest, from fewer positions (--no-pack: pad)"})
    out: str = field(default="runs/sft", metadata={"help": "run directory to write"})
    train: TrainConfig = field(default_factory=_sft_train)
    dist: DistConfig = field(default_factory=DistConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)


def encode_conversations(convs: list[Conversation], tokenizer: Tokenizer, seq_len: int,
                         skip_bad: bool) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(ids, mask) per conversation; one longer than the context is an error (or skipped)."""
    out, skipped = [], 0
    for c in convs:
        ids, mask = render(tokenizer, c.messages)
        if len(ids) > seq_len + 1:
            if skip_bad:
                skipped += 1
                continue
            raise GptsmithError(f"{c.source}: field 'messages' renders to {len(ids)} tokens, "
                                f"longer than the model context of {seq_len}; shorten it or "
                                "pass --skip-bad")
        out.append((ids, mask))
    return out, skipped


def pad_batch(examples: list[tuple[list[int], list[int]]], pad_id: int):
    """Inputs and targets padded to the longest example; targets are -1 where not learned."""
    x = right_padded([ids[:-1] for ids, _ in examples], pad_id)
    y = right_padded([targets(ids, mask) for ids, mask in examples], -1)
    return x, y


def targets(ids: list[int], mask: list[int]) -> list[int]:
    """Each position's next token where it is learned, else -1."""
    return [t if m else -1 for t, m in zip(ids[1:], mask[1:], strict=True)]


def pack_batch(examples: list[tuple[list[int], list[int]]], pad_id: int, rows_multiple: int = 1):
    """The batch's conversations packed into as few rows as the longest one's width allows
    (first fit, longest first), with each position's document id: the model then attends
    within each conversation and restarts its positions, so the loss and its gradients are
    those of ``pad_batch`` (up to rounding), from fewer positions. The number of rows is a
    multiple of ``rows_multiple`` (the ranks sharing the batch; extra rows learn nothing)."""
    width = max(len(ids) - 1 for ids, _ in examples)
    rows = [[examples[i] for i in row]
            for row in first_fit([len(ids) - 1 for ids, _ in examples], width)]
    rows += [[] for _ in range(-len(rows) % rows_multiple)]
    x = torch.full((len(rows), width), pad_id, dtype=torch.long)
    y = torch.full((len(rows), width), -1, dtype=torch.long)
    docs = torch.empty((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for d, (ids, mask) in enumerate(row):
            n = len(ids) - 1
            x[r, at:at + n] = torch.as_tensor(ids[:-1])
            y[r, at:at + n] = torch.as_tensor(targets(ids, mask))
            docs[r, at:at + n] = d
            at += n
        docs[r, at:] = len(row)  # the tail's padding is a document of its own
    return x, y, docs


def conversation_key(c: Conversation) -> str:
    """What decides a demonstration's split: its conversation up to the reply, so that a
    prompt repeated with other replies never lands on both sides."""
    return json.dumps(c.messages[:-1], sort_keys=True)


def check_split(cfg: SFTConfig, n_train: int, n_val: int) -> None:
    """Refuse a split with nothing to train on, or nothing held out when something should
    be, saying how to proceed."""
    if n_train and (n_val or not (cfg.val_data or cfg.val_fraction)):
        return
    if not n_train:
        where = cfg.data if not cfg.val_data else f"{cfg.data} (beside --val-data)"
        raise GptsmithError(f"{where}: no demonstrations left to train on ({n_val} held out); "
                            "give more, or pass --val-fraction 0 to train on all of them")
    if cfg.val_data:
        raise GptsmithError(f"{cfg.val_data}: no usable held-out demonstrations")
    raise GptsmithError(
        f"{cfg.data}: {n_train} demonstrations and none held out: --val-fraction "
        f"{cfg.val_fraction} of so few prompts rounds to none (the split keeps each prompt on "
        "one side). To proceed: give held-out demonstrations with --val-data FILE, or train "
        "on all of them without a validation loss with --val-fraction 0")


def sft(cfg: SFTConfig) -> dict:
    """Fine-tune ``cfg.base`` on ``cfg.data``; resumable like every phase."""
    if not cfg.base or not cfg.data:
        raise GptsmithError("sft needs --base RUN_DIR and --data FILE")
    out = Path(cfg.out)
    done = finished_summary(out, to_dict(cfg))
    if done:
        print(f"{out}: already fine-tuned with these settings" + (
            f" (val loss {done['val_loss']:.4f})" if "val_loss" in done else ""))
        return done
    model, tokenizer = load_model(cfg.base)
    seq_len = model.cfg.seq_len
    convs, skipped = read_demos(cfg.data, cfg.format, cfg.skip_bad)
    if cfg.val_data:
        val_convs, val_skipped = read_demos(cfg.val_data, cfg.format, cfg.skip_bad)
        skipped += val_skipped
    elif cfg.val_fraction:
        convs, val_convs = split_held_out(convs, conversation_key, cfg.val_fraction)
    else:
        val_convs = []  # --val-fraction 0: train on every demonstration, no validation loss
    train_ex, s1 = encode_conversations(convs, tokenizer, seq_len, cfg.skip_bad)
    val_ex, s2 = encode_conversations(val_convs, tokenizer, seq_len, cfg.skip_bad)
    skipped += s1 + s2
    check_split(cfg, len(train_ex), len(val_ex))
    if skipped:
        print(f"skipped {skipped} unusable records (--skip-bad)")
    # resolved here, not in cfg: the saved config keeps "0 = by epochs"
    t = steps_for_epochs(cfg.train, len(train_ex), cfg.epochs)
    collate = (functools.partial(pack_batch, pad_id=tokenizer.pad_id, rows_multiple=world())
               if cfg.pack else functools.partial(pad_batch, pad_id=tokenizer.pad_id))
    batches = EpochBatches(train_ex, t.batch_size, t.seed, collate=collate,
                           length=lambda e: len(e[0]), window=cfg.length_window)
    val_batches = [collate(val_ex[i:i + t.batch_size])
                   for i in range(0, len(val_ex), t.batch_size)]

    def forward(m, batch, reduction):
        x, y, *docs = (b.to(trainer.device) for b in batch)
        return m(x, y, reduction=reduction, documents=docs[0] if docs else None)

    def loss_fn(m, batch):
        n = int((batch[1] >= 0).sum())
        return LossSum(forward(m, batch, "sum"), n, n)

    def evaluate(m):
        if not val_batches:
            return {}
        total = sum(float(forward(m, b, "sum")) for b in val_batches)
        return {"val_loss": total / sum(int((b[1] >= 0).sum()) for b in val_batches)}

    torch.manual_seed(t.seed)
    if cfg.lora.rank:
        apply_lora(model, cfg.lora)
    trainer = Trainer(model, t, out, batches, loss_fn, evaluate, phase_config=to_dict(cfg),
                      tokenizer=tokenizer, dist=cfg.dist)
    trainer.lora, trainer.lora_base = cfg.lora, cfg.base
    # one pass as the trainer draws it (a copy of its sampler): positions computed, learned
    one_pass = EpochBatches(train_ex, t.batch_size, t.seed, collate, length=lambda e: len(e[0]),
                            window=cfg.length_window)
    drawn = [one_pass.next() for _ in range(max(1, len(train_ex) // t.batch_size))]
    padded = sum(b[0].numel() for b in drawn)
    learned = sum(int((b[1] >= 0).sum()) for b in drawn)
    print(f"fine-tuning {cfg.base} on {len(train_ex)} demonstrations ({len(val_ex)} held out): "
          f"{t.steps} steps of {t.batch_size}, on {trainer.device} ({trainer.precision}); "
          f"{trainable_summary(model)}")
    summary = trainer.train_and_save(f"SFT: {out}", {
        "train_examples": len(train_ex), "val_examples": len(val_ex), "skipped": skipped,
        "learned_token_share": round(learned / padded, 3)})
    print(f"done in {summary['train_seconds']:.0f}s: " + (
        f"validation loss {summary['val_loss']:.4f} nats per assistant token"
        if "val_loss" in summary else "no validation loss (--val-fraction 0)"))
    return summary
