"""Phase 3: the reward model, a scalar head on the SFT transformer, trained on comparisons.

Loss per prompt: the mean over its (better, worse) pairs of −log σ(r_better − r_worse); a
batch averages whole prompts, so every prompt weighs the same however many pairs it has.
After training the head is rescaled so that the replies in the training data (samples of
the SFT model) score mean 0 and standard deviation 1: PPO's reward has a known scale.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from gptsmith.chat import prompt_ids
from gptsmith.config import to_dict
from gptsmith.data.comparisons import PromptGroup, read_comparisons
from gptsmith.data.shards import split_held_out
from gptsmith.errors import GptsmithError
from gptsmith.model import GPT
from gptsmith.runs import load_model
from gptsmith.tokenizer import Tokenizer
from gptsmith.train.batches import EpochBatches, right_padded
from gptsmith.train.distributed import DistConfig
from gptsmith.train.loop import LossSum, TrainConfig, Trainer, finished_summary, steps_for_epochs
from gptsmith.train.lora import LoRAConfig, apply_lora, trainable_summary


def _rm_train() -> TrainConfig:
    return TrainConfig(steps=0, batch_size=8, lr=3e-4, warmup_steps=10, weight_decay=0.0,
                       eval_every=50, checkpoint_every=50, log_every=5)


@dataclass
class RMConfig:
    base: str = field(default="", metadata={"help": "SFT run directory to start from"})
    data: str = field(default="", metadata={"help": "comparisons or rankings (.jsonl ...)"})
    val_data: str = field(default="", metadata={
        "help": "held-out comparisons; empty: hold out val_fraction of --data"})
    val_fraction: float = 0.1
    skip_bad: bool = field(default=False, metadata={"help": "skip and count unusable records"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data if steps is 0"})
    out: str = field(default="runs/rm", metadata={"help": "run directory to write"})
    train: TrainConfig = field(default_factory=_rm_train)
    dist: DistConfig = field(default_factory=DistConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)


def reward_model_from(policy: GPT) -> GPT:
    """A scalar-head copy of ``policy``: same transformer weights, a fresh head.

    The head starts small and random, not zero: a zero head passes no gradient to the
    transformer, and the state at ``<|end|>`` may barely differ between two replies until
    the transformer learns to carry what matters there.
    """
    rm = GPT(dataclasses.replace(policy.cfg, head="scalar"))  # head: normal(0, 0.02), bias 0
    body = {k: v for k, v in policy.state_dict().items() if k != "lm_head.weight"}
    missing, unexpected = rm.load_state_dict(body, strict=False)
    if set(missing) != {"score.weight", "score.bias"} or unexpected:
        raise GptsmithError(f"cannot make a reward model of this model: weights missing "
                            f"{sorted(missing)}, unexpected {sorted(unexpected)}")
    return rm


def score_sequences(model: GPT, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """The scalar at each sequence's last token (right-padded batch)."""
    device = next(model.parameters()).device
    last = torch.tensor([[len(s) - 1] for s in seqs], device=device)
    return model(right_padded(seqs, pad_id).to(device), positions=last)[:, 0]


def reply_tokens(g: PromptGroup, i: int, tokenizer: Tokenizer) -> list[int]:
    """Reply ``i`` as the policy produced it, so the reward model learns on what PPO scores:
    the sampled ids when the ranking kept them (and they decode to its text with this
    tokenizer), else the text encoded; <|end|> only if the reply ended its turn."""
    text, ids = g.replies[i], g.reply_ids[i] if g.reply_ids else None
    if not (ids is not None and all(0 <= t < tokenizer.vocab_size for t in ids)
            and tokenizer.decode(ids, skip_special=True) == text):
        ids = tokenizer.encode(text)
    return ids + ([tokenizer.end_id] if g.ended[i] else [])


def encode_group(g: PromptGroup, tokenizer: Tokenizer, seq_len: int) -> list[list[int]]:
    """Prompt + reply (+ <|end|> where it ended) for each reply of the group."""
    prompt = prompt_ids(tokenizer, g.prompt)
    seqs = [prompt + reply_tokens(g, i, tokenizer) for i in range(len(g.replies))]
    longest = max(len(s) for s in seqs)
    if longest > seq_len:
        raise GptsmithError(f"{g.source}: a reply renders to {longest} tokens with its prompt, "
                            f"longer than the context of {seq_len}; pass --skip-bad to skip it")
    return seqs


def pairwise_loss(rewards: torch.Tensor, groups: list[list[tuple[int, int]]]):
    """Mean over prompts of the mean −log σ(r_better − r_worse) over the prompt's pairs, and
    the share of pairs ordered right. ``groups`` index into the flat ``rewards``."""
    losses, right, total = [], 0, 0
    for pairs in groups:
        better = rewards[[b for b, _ in pairs]]
        worse = rewards[[w for _, w in pairs]]
        losses.append(-F.logsigmoid(better - worse).mean())
        right += int((better > worse).sum())
        total += len(pairs)
    return torch.stack(losses).mean(), right / total


def rm_loss(m: GPT, batch: list, pad_id: int) -> LossSum:
    """The pairwise loss of a batch of prompt groups, summed over its prompts."""
    seqs, pair_groups = flatten(batch)
    loss, _ = pairwise_loss(score_sequences(m, seqs, pad_id), pair_groups)
    return LossSum(loss * len(pair_groups), len(pair_groups), sum(len(s) for s in seqs))


def group_key(g: PromptGroup) -> str:
    """What decides a prompt group's split: its prompt, so a prompt repeated on other lines
    never lands on both sides."""
    return json.dumps(g.prompt, sort_keys=True)


def flatten(batch: list[tuple[list[list[int]], list[tuple[int, int]]]]):
    """Sequences of a batch of groups, and each group's pairs as indices into them."""
    seqs, groups = [], []
    for group_seqs, pairs in batch:
        groups.append([(len(seqs) + b, len(seqs) + w) for b, w in pairs])
        seqs += group_seqs
    return seqs, groups


def train_reward_model(cfg: RMConfig) -> dict:
    if not cfg.base or not cfg.data:
        raise GptsmithError("rm needs --base SFT_RUN_DIR and --data COMPARISONS")
    out = Path(cfg.out)
    done = finished_summary(out, to_dict(cfg))
    if done:
        print(f"{out}: already trained with these settings (val accuracy "
              f"{done['val_accuracy']:.1%})")
        return done
    policy, tokenizer = load_model(cfg.base)
    groups, skipped = read_comparisons(cfg.data, cfg.skip_bad)
    if cfg.val_data:
        val_groups, more = read_comparisons(cfg.val_data, cfg.skip_bad)
        skipped += more
    else:
        groups, val_groups = split_held_out(groups, group_key, cfg.val_fraction)

    def encode_all(gs):
        nonlocal skipped
        items = []
        for g in gs:
            try:
                items.append((encode_group(g, tokenizer, policy.cfg.seq_len), g.pairs))
            except GptsmithError:
                if not cfg.skip_bad:
                    raise
                skipped += 1
        return items

    train_items, val_items = encode_all(groups), encode_all(val_groups)
    if not train_items or not val_items:
        raise GptsmithError(f"{cfg.data}: need comparisons both to train on and to hold out "
                            f"(got {len(train_items)} and {len(val_items)} prompts; the split "
                            "keeps each prompt on one side): give held-out ones with --val-data")
    t = steps_for_epochs(cfg.train, len(train_items), cfg.epochs)
    torch.manual_seed(t.seed)
    model = reward_model_from(policy)
    pad = tokenizer.pad_id

    def loss_fn(m, batch):
        return rm_loss(m, batch, pad)

    def evaluate(m):
        losses, right, total = [], 0, 0
        for i in range(0, len(val_items), t.batch_size):
            seqs, pair_groups = flatten(val_items[i:i + t.batch_size])
            loss, acc = pairwise_loss(score_sequences(m, seqs, pad).float(), pair_groups)
            n = sum(len(p) for p in pair_groups)
            losses.append(float(loss) * len(pair_groups))
            right, total = right + acc * n, total + n
        return {"val_loss": sum(losses) / len(val_items), "val_accuracy": right / total}

    def normalize(m) -> dict:
        """Shift and scale the head so the training replies score mean 0, std 1."""
        seqs = [s for group_seqs, _ in train_items for s in group_seqs]
        scores = torch.cat([score_sequences(m, seqs[i:i + 64], pad).float()
                            for i in range(0, len(seqs), 64)])
        mean, std = float(scores.mean()), float(scores.std().clamp(min=1e-6))
        m.score.weight.div_(std)
        m.score.bias.sub_(mean).div_(std)
        return {"raw_reward_mean": mean, "raw_reward_std": std}

    if cfg.lora.rank:
        apply_lora(model, cfg.lora)  # the new scalar head trains whole
    trainer = Trainer(model, t, out, EpochBatches(train_items, t.batch_size, t.seed), loss_fn,
                      evaluate, phase_config=to_dict(cfg), tokenizer=tokenizer, dist=cfg.dist)
    trainer.lora, trainer.lora_base = cfg.lora, cfg.base
    n_pairs = sum(len(p) for _, p in train_items)
    print(f"reward model from {cfg.base}: {len(train_items)} prompts / {n_pairs} comparisons "
          f"({len(val_items)} prompts held out), {t.steps} steps of {t.batch_size} prompts; "
          f"{trainable_summary(model)}")
    if skipped:
        print(f"skipped {skipped} unusable records (--skip-bad)")
    summary = trainer.train_and_save(f"reward model: {out}", {
        "train_prompts": len(train_items), "train_pairs": n_pairs, "skipped": skipped},
        finalize=normalize)
    print(f"done in {summary['train_seconds']:.0f}s: held-out pairwise accuracy "
          f"{summary['val_accuracy']:.1%}")
    return summary
