"""What the RL methods share: sampling replies with the engine, the log-probs of the sampled
tokens, reward-model scores of exactly what was generated, and masked statistics.

PPO (``ppo.py``) and GRPO/RLOO/REINFORCE++ (``grpo.py``) both start an iteration with
:func:`sample`; they differ in how they turn rewards into advantages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gptsmith.chat import prompt_ids
from gptsmith.device import autocast
from gptsmith.engine import Sampling, generate
from gptsmith.model import GPT
from gptsmith.tokenizer import Tokenizer
from gptsmith.train.batches import right_padded
from gptsmith.train.lora import folded


@dataclass
class Replies:
    """Sampled replies, right-padded after their prompts: ``seq`` (B, T); ``pos`` (B, R), the
    positions whose logits predict each reply token; ``mask`` (B, R), 1 on reply tokens;
    ``ended`` (B,), whether the reply closed its turn; ``texts``, without the stop token."""

    seq: torch.Tensor
    pos: torch.Tensor
    mask: torch.Tensor
    ended: torch.Tensor
    texts: list[str]

    def rows(self, sel: slice) -> Replies:
        """The replies of rows ``sel``, as wide as all of them."""
        return Replies(self.seq[sel], self.pos[sel], self.mask[sel], self.ended[sel],
                       self.texts[sel])

    @property
    def last(self) -> torch.Tensor:
        """Each reply's last token's position (B,)."""
        rows = torch.arange(self.seq.size(0), device=self.seq.device)
        return self.pos[rows, self.mask.sum(1).long() - 1] + 1


@torch.no_grad()
def sample(policy: GPT, tok: Tokenizer, conversations: list[list[dict]], max_tokens: int,
           temperature: float, seed: int, precision: str, greedy: Sequence[int] = ()) -> Replies:
    """One reply per conversation (row i samples with seed + i; the rows in ``greedy`` take
    the likeliest tokens), under the autocast the log-probs are taken in, so that π_old is
    the distribution sampled from. LoRA adapters are folded into their weights for it
    (``lora.folded``): the same distribution up to bf16 rounding, in a third of the
    matmuls."""
    device = next(policy.parameters()).device
    prompts = [prompt_ids(tok, c) for c in conversations]
    was_training = policy.training
    policy.eval()
    s = Sampling(max_tokens=max_tokens, temperature=temperature, seed=seed,
                 stop_ids=tok.stop_ids)
    dtype = torch.bfloat16 if precision == "bf16" else None
    with autocast(device, precision), folded(policy, dtype):  # LoRA: adapters folded in
        replies = generate(policy, prompts, s, greedy)
    policy.train(was_training)
    B, R = len(prompts), max(len(r) for r in replies)
    seq = right_padded([p + r for p, r in zip(prompts, replies, strict=True)], tok.pad_id)
    pos = torch.zeros(B, R, dtype=torch.long)
    mask = torch.zeros(B, R)
    for i, (p, r) in enumerate(zip(prompts, replies, strict=True)):
        pos[i] = len(p) - 1 + torch.arange(R).clamp(max=len(r) - 1)
        mask[i, :len(r)] = 1
    ended = [r[-1] in tok.stop_ids for r in replies]
    texts = [tok.decode(r[:-1] if e else r) for r, e in zip(replies, ended, strict=True)]
    return Replies(seq.to(device), pos.to(device), mask.to(device),
                   torch.tensor(ended, device=device), texts)


def at_positions(model: GPT, seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``model(seq, positions=pos)``, without computing the columns after the last position
    any row reads: a minibatch's rows are padded to the whole batch's longest reply, and a
    causal model's outputs up to a position do not depend on what follows it. (Packing
    short rows together, as SFT does, measured no faster here: rollouts are alike in
    length, so two rarely fit in the longest one's width.)"""
    return model(seq[:, :int(pos.max()) + 1] if pos.numel() else seq, positions=pos)


def reply_logprobs(model: GPT, seq: torch.Tensor, pos: torch.Tensor, temperature: float = 1.0,
                   with_entropy=False):
    """log π of each reply token (B, R): the logits at ``pos`` predict the token after it.

    ``temperature`` is the one the replies were sampled at, so π is what they came from.
    """
    logp_all = F.log_softmax(at_positions(model, seq, pos).float() / temperature, dim=-1)
    targets = seq.gather(1, pos + 1)
    logp = logp_all.gather(2, targets[..., None]).squeeze(-1)
    if not with_entropy:
        return logp
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def reward_scores(reward_model: GPT, r: Replies) -> torch.Tensor:
    """The reward model's score of each reply as generated, at its last token (B,)."""
    return at_positions(reward_model, r.seq, r.last[:, None]).float()[:, 0]


def recent_means(metrics_path: Path, keys: tuple[str, ...], n: int = 10) -> dict:
    """Each of ``keys`` averaged over the last ``n`` logged iterations that hold ``keys[0]``
    (the summary of an RL run: one iteration is noisy)."""
    from gptsmith.plots import read_metrics

    rows = [r for r in read_metrics(metrics_path) if keys[0] in r][-n:]
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys
            if rows and all(k in r for r in rows)}


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)
