"""Phase 1: pre-training, next-token cross-entropy on token shards."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptsmith.config import to_dict
from gptsmith.data.shards import TokenWindows, read_meta
from gptsmith.errors import GptsmithError, InvalidSetting
from gptsmith.model import GPT, GPTConfig
from gptsmith.tokenizer import Tokenizer
from gptsmith.train.distributed import DistConfig
from gptsmith.train.loop import LossSum, TrainConfig, Trainer, finished_summary


@dataclass
class PretrainConfig:
    data: str = field(default="", metadata={"help": "data directory from `gptsmith data prepare`"})
    out: str = field(default="runs/pretrain", metadata={"help": "run directory to write"})
    eval_tokens: int = field(default=65536, metadata={"help": "validation tokens per evaluation"})
    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)


def bits_per_byte(model: GPT, windows, token_bytes: torch.Tensor) -> dict:
    """Validation loss per token and in bits per byte (tokenizer-independent).

    Targets that stand for no bytes (special tokens) are left out of both sums.
    """
    nats, nbytes, ntok = 0.0, 0, 0
    device = next(model.parameters()).device
    for x, y in windows:
        x, y = x.to(device), y.to(device)
        losses = model(x, y, reduction="none").float()
        b = token_bytes[y]
        counted = b > 0
        nats += float(losses[counted].sum())
        nbytes += int(b.sum())
        ntok += int(counted.sum())
    return {"val_loss": nats / ntok, "val_bpb": nats / math.log(2) / nbytes}


def pretrain(cfg: PretrainConfig) -> dict:
    """Train a base model from scratch on ``cfg.data``; resumes if ``cfg.out`` holds a
    checkpoint of the same settings. Returns a summary (also saved as summary.json)."""
    if not cfg.data:
        raise GptsmithError("pretrain needs --data DIR (make one with `gptsmith data prepare`)")
    if cfg.model.head != "lm":
        raise InvalidSetting(f"--model.head {cfg.model.head}: pretrain trains a language model "
                             "(lm); a reward model comes from `gptsmith rm`")
    data, out = Path(cfg.data), Path(cfg.out)
    meta = read_meta(data)
    tokenizer = Tokenizer.load(data / "tokenizer.json")
    # the model's shape as it will run: vocabulary from the tokenizer, derived fields filled
    cfg.model = dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size).resolved()
    done = finished_summary(out, to_dict(cfg))
    if done:
        print(f"{out}: already trained with these settings (val bpb {done['val_bpb']:.4f})")
        return done
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model)
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, {model.cfg}")
    t = cfg.train
    train = TokenWindows(data, "train", t.batch_size, cfg.model.seq_len, seed=t.seed)
    val = TokenWindows(data, "val", t.batch_size, cfg.model.seq_len).fixed(cfg.eval_tokens)
    token_bytes = torch.from_numpy(tokenizer.token_bytes)

    def loss_fn(m, batch):
        x, y = batch
        return LossSum(m(x.to(trainer.device), y.to(trainer.device), reduction="sum"),
                       y.numel(), x.numel())

    def evaluate(m):
        return bits_per_byte(m, val, token_bytes.to(trainer.device))

    trainer = Trainer(model, t, out, train, loss_fn, evaluate, phase_config=to_dict(cfg),
                      tokenizer=tokenizer, dist=cfg.dist, fixed_shapes=True)
    print(f"training {t.steps} steps of {t.batch_size * t.grad_accum} x {cfg.model.seq_len} "
          f"tokens on {trainer.device} ({trainer.precision}); unigram baseline "
          f"{meta['unigram_bpb']:.4f} bits/byte")
    summary = trainer.train_and_save(f"pre-training: {out}", {
        "params": model.num_params(), "unigram_bpb": meta["unigram_bpb"],
        "tokens": t.steps * t.batch_size * t.grad_accum * cfg.model.seq_len})
    print(f"done in {summary['train_seconds']:.0f}s: validation {summary['val_bpb']:.4f} "
          f"bits/byte (unigram baseline {meta['unigram_bpb']:.4f})")
    return summary

