"""Rejection-sampling fine-tuning (RFT, also called expert iteration): RL by imitation of
the policy's own best replies.

Per iteration (``RFTTrainer.train_step``): sample a group of G replies for each of a batch
of prompts; score them with the reward (``rewards.py``: the truth labeler, a reward model,
a program); keep each group's best reply if it scores at least ``min_reward`` (with
``truth``: a right answer; with ``baseline="greedy"``, also only if it beats the prompt's
greedy reply, decoded beside the group); then one SFT step
on the kept replies (their tokens' negative log-likelihood, averaged over those tokens),
plus, with ``sft_batch``, the SFT loss of a batch of demonstrations (InstructGPT's "ptx"),
and, with ``talk_batch``, ``talk_kl`` times the KL divergence from the SFT model of the
policy's replies to conversational prompts.
Conversational prompts (``"kind": "talk"``) are not learned from unless ``talk``: the truth
reward scores every reply without a number alike, and learning one of them a group, over
and over, narrowed the System 2 model's conversation to one sentence. The mixed-in
demonstrations and the KL penalty keep the conversation instead: the demonstrations hold
the SFT model's wording on the demonstrations' prompts, the penalty holds its distribution
on whatever the policy now says to the others (README "System 2").

It is the policy gradient with a 0/1 advantage, taken on-policy, so it needs no value
model and no clipping, and no reference but for the conversation's KL; what keeps it near
the SFT model is that it only ever learns replies the model itself wrote. Where GRPO
nudges every sampled reply by its advantage, RFT moves the model's mode to the best reply
it can find, so it lifts the greedy answer more (README "System 2"). Llama 2's "rejection
sampling fine-tuning" is this with a reward model, in a few large offline rounds; here the
rounds are small and on-policy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import gptsmith.train.distributed as ranks
from gptsmith.data.demos import read_demos
from gptsmith.device import autocast
from gptsmith.errors import GptsmithError
from gptsmith.evaluate import has_number, load_questions
from gptsmith.train.batches import EpochBatches, RankShare, Zipped
from gptsmith.train.distributed import DistConfig
from gptsmith.train.grpo import (
    GRPOTrainer,
    SampledRLConfig,
    refuse_unless,
    run_sampled_rl,
    sampling_metrics,
)
from gptsmith.train.loop import TrainConfig
from gptsmith.train.lora import LoRAConfig
from gptsmith.train.rollout import at_positions, reply_logprobs
from gptsmith.train.sft import encode_conversations, pack_batch


def _rft_train() -> TrainConfig:
    return TrainConfig(steps=100, batch_size=16, lr=1e-4, warmup_steps=5, min_lr_ratio=0.1,
                       weight_decay=0.0, eval_every=10, checkpoint_every=10, log_every=1)


@dataclass
class RFTConfig(SampledRLConfig):
    out: str = field(default="runs/rft", metadata={"help": "run directory to write"})
    min_reward: float = field(default=2.0, metadata={
        "help": "a group's best reply is learned only if it scores at least this (truth: 2 "
                "= a right answer, or conversation without a number; --min-reward=-1e9: "
                "always, as with a reward model)"})
    keep: str = field(default="best", metadata={
        "help": "best: each group's best reply (the first of equals); ties: every reply "
                "that scores the group's best"})
    baseline: str = field(default="none", metadata={
        "help": "none: learn each group's best reply; greedy: also decode each prompt's "
                "greedy reply (the model's best answer) beside the group and learn the best "
                "only where it scores above that, so RL is spent where the best answer is "
                "wrong (ReMax's baseline)"})
    talk: bool = field(default=False, metadata={
        "help": "also learn from conversational prompts (\"kind\": \"talk\"); by default "
                "they are left out and conversation is kept by --sft-batch: learning the "
                "best of replies a reward scores alike narrowed every one to one sentence"})
    sft_data: str = field(default="", metadata={
        "help": "demonstrations whose SFT loss is mixed into every step (as InstructGPT's "
                "PPO-ptx mixes pre-training), so RL does not cost what SFT taught"})
    sft_batch: int = field(default=0, metadata={
        "help": "demonstrations of --sft-data per iteration (0: no SFT loss mixed in)"})
    sft_coef: float = field(default=1.0, metadata={
        "help": "weight of the mixed-in SFT loss (each loss is a mean over its tokens)"})
    talk_batch: int = field(default=0, metadata={
        "help": "conversational prompts of --prompts (\"kind\": \"talk\") per iteration, one "
                "reply sampled to each, for --talk-kl (0: none)"})
    talk_kl: float = field(default=1.0, metadata={
        "help": "weight of KL(policy || SFT model) on the replies to --talk-batch prompts, "
                "exact over the vocabulary at each reply token: learning sums must not change "
                "how the assistant talks"})
    train: TrainConfig = field(default_factory=_rft_train)
    dist: DistConfig = field(default_factory=DistConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)


def best_of_groups(rewards: torch.Tensor, min_reward: float, ties: bool = False,
                   above: torch.Tensor | None = None) -> torch.Tensor:
    """1 on each group's best reply (the first of equals; ``ties``: every reply that
    scores the best) where it scores at least ``min_reward`` (and more than ``above``, a
    score per group, where given), else 0: rewards and result are (P prompts, G replies)."""
    best = rewards.max(1, keepdim=True)
    good = best.values >= min_reward
    if above is not None:
        good &= best.values > above.view(-1, 1)
    if ties:
        return ((rewards == best.values) & good).float()
    keep = torch.zeros_like(rewards)
    keep.scatter_(1, best.indices, good.float())
    return keep


class RFTTrainer(GRPOTrainer):
    """The shared loop with an RFT iteration as its step (GRPO's sampling and rewards)."""

    plot_file = "rft.png"

    def setup(self, cfg: RFTConfig, ref, tokenizer, terms, reward_models=()) -> None:
        """GRPO's setup, and beside the prompts a stream of demonstrations (``sft_batch``)
        and one of conversational prompts (``talk_batch``): one data state, so a run
        resumes each where it was."""
        super().setup(cfg, ref, tokenizer, terms, reward_models)
        streams = [self.batches]
        if cfg.sft_batch:
            convs, _ = read_demos(cfg.sft_data, "auto", False)
            examples, _ = encode_conversations(convs, tokenizer, self.model.cfg.seq_len, False)
            collate = functools.partial(pack_batch, pad_id=tokenizer.pad_id,
                                        rows_multiple=ranks.world())
            streams.append(EpochBatches(examples, cfg.sft_batch, self.cfg.seed, collate))
        if cfg.talk_batch:
            talk = [q for q in load_questions(cfg.prompts, require_answer=False)
                    if q.get("kind") == "talk"]
            if not talk:
                raise GptsmithError(f"{cfg.prompts}: --talk-batch needs conversational "
                                    f"prompts (\"kind\": \"talk\"); there are none")
            if cfg.talk_batch % ranks.world():
                raise GptsmithError(f"--talk-batch {cfg.talk_batch} does not split evenly over "
                                    f"the {ranks.world()} processes")
            streams.append(EpochBatches(talk, cfg.talk_batch, self.cfg.seed + 1))
        if len(streams) > 1:
            self.batches = Zipped(streams[0], *(s if ranks.world() == 1 else RankShare(s)
                                                for s in streams[1:]))

    def sft_loss(self, demos) -> torch.Tensor:
        """This rank's share of the mean loss per assistant token of packed demonstrations."""
        x, y, docs = (b.to(self.device) for b in demos)
        n = ranks.global_count(int((y >= 0).sum()))
        with autocast(self.device, self.precision):
            total = self.forward_model(x, y, reduction="sum", documents=docs)
        return total / max(1, n)

    def talk_kl_loss(self, r) -> torch.Tensor:
        """This rank's share of the mean KL(π ‖ π_SFT) per reply token of the replies ``r``
        to conversational prompts: exact at each position (a sum over the vocabulary, no
        sampling noise), differentiable through π."""
        with torch.no_grad(), autocast(self.device, self.precision), self.reference() as sft:
            ref = at_positions(sft, r.seq, r.pos)
        with autocast(self.device, self.precision):
            logits = at_positions(self.forward_model, r.seq, r.pos)
        logp, ref_logp = F.log_softmax(logits.float(), -1), F.log_softmax(ref.float(), -1)
        return ranks.mean_share((logp.exp() * (logp - ref_logp)).sum(-1), r.mask)

    def train_step(self) -> dict:
        cfg, G = self.grpo, self.grpo.group_size
        self.set_lr()
        drawn = self.batches.next()  # this rank's share of the prompts (and the other streams)
        batch, *more = drawn if isinstance(self.batches, Zipped) else (drawn,)
        demos = more.pop(0) if cfg.sft_batch else None
        talk = more.pop(0) if cfg.talk_batch else None
        greedy = cfg.baseline == "greedy"
        records, r, rewards = self.sample_groups(batch, talk or [], greedy)
        n = len(batch) * G  # the sampled replies; then the greedy ones, then the talk
        greedy_r, talk_replies = r.rows(slice(n, len(records))), r.rows(slice(len(records), None))
        r, rewards, greedy_rewards = r.rows(slice(n)), rewards[:n], rewards[n:]
        keep = best_of_groups(rewards.view(len(batch), G), cfg.min_reward, cfg.keep == "ties",
                              greedy_rewards if greedy else None).reshape(-1)
        # only the kept rows are run; a rank with none runs one row that learns nothing, so
        # that every rank takes part in the gradient's all-reduce
        rows = keep.nonzero().flatten().tolist() or [0]
        mask = r.mask[rows] * keep[rows, None]
        with autocast(self.device, self.precision):
            logp = reply_logprobs(self.forward_model, r.seq[rows], r.pos[rows])
        loss = ranks.mean_share(-logp, mask)
        sft = self.sft_loss(demos) if demos is not None else torch.zeros(())
        kl = self.talk_kl_loss(talk_replies) if talk is not None else torch.zeros(())
        numbers = sum(map(has_number, talk_replies.texts))
        (loss + cfg.sft_coef * sft + cfg.talk_kl * kl).backward()
        norms = self.apply_gradients()
        loss_sum, sft_sum, kl_sum, numbers, kept, n_groups = ranks.global_sums(
            float(loss.detach()), float(sft.detach()), float(kl.detach()), numbers,
            float(keep.sum()), len(batch))
        metrics = {"loss": loss_sum, "kept": kept / n_groups, **norms,
                   **sampling_metrics(rewards, r, records[:n])}
        if greedy:  # the best answer to the RL prompts, as it moves
            best = sampling_metrics(greedy_rewards, greedy_r, batch)
            metrics |= {f"greedy_{k}": best[k] for k in ("reward", "train_accuracy") if k in best}
        if demos is not None:
            metrics["sft_loss"] = sft_sum
        if talk is not None:
            metrics["talk_kl"] = kl_sum
            metrics["talk_numbers"] = numbers / cfg.talk_batch
        return metrics


def check_config(cfg: RFTConfig) -> None:
    """Refuse settings that cannot work, naming them."""
    if not (cfg.policy and cfg.prompts):
        raise GptsmithError("rft needs --policy SFT_RUN and --prompts FILE")
    checks = [
        (cfg.group_size >= 1, "--group-size must be >= 1"),
        (cfg.keep in ("best", "ties"), "--keep must be best or ties"),
        (cfg.baseline in ("none", "greedy"), "--baseline must be none or greedy"),
        (cfg.temperature > 0, "--temperature must be > 0 (replies are sampled)"),
        (cfg.max_tokens >= 1, "--max-tokens must be >= 1"),
        (cfg.sft_batch >= 0 and cfg.sft_coef >= 0, "--sft-batch and --sft-coef must be >= 0"),
        (cfg.sft_data or not cfg.sft_batch, "--sft-batch needs --sft-data FILE"),
        (cfg.talk_batch >= 0 and cfg.talk_kl >= 0, "--talk-batch and --talk-kl must be >= 0"),
        (cfg.train.grad_accum == 1 and not cfg.train.compile,
         "--train.grad-accum and --train.compile do not apply to rft"),
    ]
    refuse_unless(checks)


def rft(cfg: RFTConfig) -> dict:
    """Run rejection-sampling fine-tuning on ``cfg.policy``; resumable like every phase."""
    check_config(cfg)
    return run_sampled_rl(cfg, RFTTrainer, "RFT", cfg.talk_batch > 0,
                          ("reward", "kept", "train_accuracy", "reply_tokens", "end_rate"),
                          learns=lambda q: cfg.talk or q.get("kind") != "talk")
