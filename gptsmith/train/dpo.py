"""Direct preference optimisation: learn from comparisons without a reward model or sampling.

For a pair (chosen c, rejected r) of replies to one prompt, with h = [log π(c) − log π_ref(c)]
− [log π(r) − log π_ref(r)] (sums over reply tokens):

- ``sigmoid`` (DPO, Rafailov et al. 2023): −(1−ε)·log σ(β h) − ε·log σ(−β h), ε the label
  smoothing (conservative DPO);
- ``ipo`` (Azar et al. 2023): (h − 1/(2β))², which stops pushing once the margin is reached;
- ``simpo`` (Meng et al. 2024): −log σ(β·(mean log π(c) − mean log π(r)) − γ), length-
  normalised and with no reference model at all.

The reference is the SFT model, frozen; under LoRA it is the policy with its adapters off
(no second copy). Its log-probs do not change, so they are computed once, before training.
β·(log π − log π_ref) of a reply is DPO's implicit reward; its accuracy and margin on held-out
pairs are what to watch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from gptsmith.config import to_dict
from gptsmith.data.comparisons import read_comparisons
from gptsmith.data.shards import split_held_out
from gptsmith.device import autocast
from gptsmith.errors import GptsmithError
from gptsmith.model import GPT
from gptsmith.runs import load_model
from gptsmith.train.batches import EpochBatches, right_padded
from gptsmith.train.distributed import DistConfig
from gptsmith.train.loop import LossSum, TrainConfig, Trainer, finished_summary, steps_for_epochs
from gptsmith.train.lora import LoRAConfig, adapters_off, apply_lora, trainable_summary
from gptsmith.train.reward import encode_group, group_key

LOSSES = ("sigmoid", "ipo", "simpo")


def _dpo_train() -> TrainConfig:
    return TrainConfig(steps=0, batch_size=16, lr=1e-5, warmup_steps=10, min_lr_ratio=0.1,
                       weight_decay=0.0, eval_every=25, checkpoint_every=25, log_every=5)


@dataclass
class DPOConfig:
    policy: str = field(default="", metadata={"help": "SFT run directory (policy and reference)"})
    data: str = field(default="", metadata={"help": "comparisons or rankings, as rm reads them"})
    val_data: str = field(default="", metadata={
        "help": "held-out comparisons; empty: hold out val_fraction of --data"})
    val_fraction: float = 0.1
    skip_bad: bool = field(default=False, metadata={"help": "skip and count unusable records"})
    loss: str = field(default="sigmoid", metadata={"help": "sigmoid (DPO) | ipo | simpo"})
    beta: float = field(default=0.1, metadata={"help": "β: strength of the preference"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "sigmoid: share of pairs assumed mislabelled"})
    simpo_gamma: float = field(default=0.5, metadata={"help": "simpo: target reward margin"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the pairs if steps is 0"})
    out: str = field(default="runs/dpo", metadata={"help": "run directory to write"})
    train: TrainConfig = field(default_factory=_dpo_train)
    dist: DistConfig = field(default_factory=DistConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)


@dataclass
class Pair:
    chosen: list[int]      # prompt + reply ids
    rejected: list[int]
    prompt_len: int
    ref: tuple[float, float] = (0.0, 0.0)  # log π_ref of each reply


def reply_logps(model: GPT, pairs: list[Pair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log π and reply lengths, chosen then rejected: (2B,) each, one forward."""
    seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    starts = [p.prompt_len for p in pairs] * 2
    x = right_padded([s[:-1] for s in seqs], pad_id)
    y = right_padded([[-1] * (n - 1) + s[n:] for s, n in zip(seqs, starts, strict=True)], -1)
    device = next(model.parameters()).device
    nll = model(x.to(device), y.to(device), reduction="none")
    lengths = (y >= 0).sum(1).to(device)
    return -nll.sum(1), lengths


def reference_logps(pairs: list[Pair], device) -> torch.Tensor:
    """The stored reference log-probs, laid out as ``reply_logps`` lays out the policy's."""
    return torch.tensor([p.ref[0] for p in pairs] + [p.ref[1] for p in pairs], device=device)


def preference_loss(logp: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor,
                    cfg: DPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair loss and implicit reward margin; ``logp``/``ref``/``lengths`` are (2B,):
    chosen replies first, then rejected."""
    c, r = logp.chunk(2)
    if cfg.loss == "simpo":
        lc, lr = lengths.float().chunk(2)
        margin = cfg.beta * (c / lc - r / lr)
        return -F.logsigmoid(margin - cfg.simpo_gamma), margin
    rc, rr = ref.chunk(2)
    h = (c - rc) - (r - rr)
    if cfg.loss == "ipo":
        return (h - 1 / (2 * cfg.beta)) ** 2, cfg.beta * h
    eps = cfg.label_smoothing
    return -(1 - eps) * F.logsigmoid(cfg.beta * h) - eps * F.logsigmoid(-cfg.beta * h), \
        cfg.beta * h


def to_pairs(groups, tokenizer, seq_len: int) -> list[Pair]:
    """Every (better, worse) pair of every prompt group, as token ids."""
    from gptsmith.chat import prompt_ids

    pairs = []
    for g in groups:
        seqs = encode_group(g, tokenizer, seq_len)
        n = len(prompt_ids(tokenizer, g.prompt))
        pairs += [Pair(seqs[b], seqs[w], n) for b, w in g.pairs]
    return pairs


@torch.no_grad()
def fill_reference(model: GPT, pairs: list[Pair], pad_id: int, reference, batch: int) -> None:
    """Store each pair's reference log-probs (computed once: the reference never changes)."""
    model.eval()
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        with reference():
            logp, _ = reply_logps(model, chunk, pad_id)
        c, r = logp.float().chunk(2)
        for p, a, b in zip(chunk, c.tolist(), r.tolist(), strict=True):
            p.ref = (a, b)
    model.train()


def dpo(cfg: DPOConfig) -> dict:
    """Fine-tune ``cfg.policy`` on ``cfg.data``'s comparisons; resumable like every phase."""
    if not cfg.policy or not cfg.data:
        raise GptsmithError("dpo needs --policy SFT_RUN_DIR and --data COMPARISONS")
    if cfg.loss not in LOSSES:
        raise GptsmithError(f"--loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if cfg.beta <= 0 or not 0 <= cfg.label_smoothing < 0.5:
        raise GptsmithError("--beta must be > 0 and --label-smoothing in [0, 0.5)")
    out = Path(cfg.out)
    done = finished_summary(out, to_dict(cfg))
    if done:
        print(f"{out}: already trained with these settings")
        return done
    policy, tokenizer = load_model(cfg.policy)
    groups, skipped = read_comparisons(cfg.data, cfg.skip_bad)
    if cfg.val_data:
        val_groups, more = read_comparisons(cfg.val_data, cfg.skip_bad)
        skipped += more
    else:
        groups, val_groups = split_held_out(groups, group_key, cfg.val_fraction)
    train_pairs = to_pairs(groups, tokenizer, policy.cfg.seq_len)
    val_pairs = to_pairs(val_groups, tokenizer, policy.cfg.seq_len)
    if not train_pairs or not val_pairs:
        raise GptsmithError(f"{cfg.data}: need pairs both to train on and to hold out (got "
                            f"{len(train_pairs)} and {len(val_pairs)}); give --val-data")
    t = steps_for_epochs(cfg.train, len(train_pairs), cfg.epochs)
    torch.manual_seed(t.seed)
    ref_model = None
    if cfg.lora.rank:
        apply_lora(policy, cfg.lora)
    elif cfg.loss != "simpo":
        ref_model, _ = load_model(cfg.policy)
    pad = tokenizer.pad_id

    def loss_fn(m, batch):
        logp, lengths = reply_logps(m, batch, pad)
        losses, _ = preference_loss(logp, reference_logps(batch, logp.device), lengths, cfg)
        return LossSum(losses.sum(), len(batch), sum(len(p.chosen) + len(p.rejected)
                                                     for p in batch))

    def evaluate(m):
        losses, margins = [], []
        for i in range(0, len(val_pairs), t.batch_size):
            chunk = val_pairs[i:i + t.batch_size]
            logp, lengths = reply_logps(m, chunk, pad)
            loss, margin = preference_loss(logp.float(), reference_logps(chunk, logp.device),
                                           lengths, cfg)
            losses.append(loss)
            margins.append(margin)
        loss, margin = torch.cat(losses), torch.cat(margins)
        return {"val_loss": float(loss.mean()), "val_margin": float(margin.mean()),
                "val_accuracy": float((margin > 0).float().mean())}

    trainer = Trainer(policy, t, out, EpochBatches(train_pairs, t.batch_size, t.seed), loss_fn,
                      evaluate, phase_config=to_dict(cfg), tokenizer=tokenizer, dist=cfg.dist)
    trainer.lora, trainer.lora_base, trainer.eval_at_start = cfg.lora, cfg.policy, True
    trainer.progress_keys = {"val_accuracy": "val_acc", "val_margin": "margin"}
    if cfg.loss != "simpo":
        target = ref_model.to(trainer.device) if ref_model is not None else trainer.model

        def reference() -> contextlib.ExitStack:
            """The reference model's forward, in the precision training runs in."""
            stack = contextlib.ExitStack()
            stack.enter_context(autocast(trainer.device, trainer.precision))
            if ref_model is None:
                stack.enter_context(adapters_off(trainer.model))
            return stack

        fill_reference(target, train_pairs + val_pairs, pad, reference, t.batch_size)
        del ref_model, target
    print(f"DPO ({cfg.loss}, β {cfg.beta}) on {cfg.policy}: {len(train_pairs)} pairs "
          f"({len(val_pairs)} held out), {t.steps} steps of {t.batch_size}; "
          f"{trainable_summary(policy)}")
    summary = trainer.train_and_save(f"DPO: {out}", {"train_pairs": len(train_pairs),
                                                    "skipped": skipped})
    print(f"done in {summary['train_seconds']:.0f}s: held-out preference accuracy "
          f"{summary['val_accuracy']:.1%}, margin {summary['val_margin']:.3f}")
    return summary
