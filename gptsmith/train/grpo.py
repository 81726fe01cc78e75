"""Group-baseline RL: GRPO, RLOO and REINFORCE++, with no value model.

Per iteration (``GRPOTrainer.train_step``): sample a group of G replies for each of a batch
of prompts; score them with the reward (``rewards.py``); turn rewards into one advantage
per reply from its group or batch (``advantages``); then ``epochs`` passes of the clipped
surrogate over the replies' tokens, with an optional KL penalty to the reference model
(``token_loss``), aggregated per token, per sequence or Dr. GRPO's constant normaliser.
A group whose replies all score the same teaches nothing: its advantages are zero.

Under torchrun each rank samples the groups of its share of the prompts (a group never
spans ranks); batch baselines and scales, the loss normalisers and the minibatches are
those of the global batch, as in one process. Under FSDP2 the policy, the reference and the
reward models are sharded; the policy samples with its weights gathered whole
(``ranks.gathered``), as each rank decodes its own number of steps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

import gptsmith.train.distributed as ranks
from gptsmith.config import to_dict
from gptsmith.device import autocast
from gptsmith.errors import GptsmithError
from gptsmith.evaluate import is_correct, load_questions
from gptsmith.plots import plot_rl
from gptsmith.runs import load_model
from gptsmith.train.batches import EpochBatches
from gptsmith.train.distributed import DistConfig
from gptsmith.train.loop import TrainConfig, Trainer, finished_summary
from gptsmith.train.lora import LoRAConfig, adapters_off, apply_lora, trainable_summary
from gptsmith.train.rewards import parse_rewards, total_reward
from gptsmith.train.rollout import recent_means, reply_logprobs, sample

ADVANTAGES = ("grpo", "rloo", "reinforce++")
SCALES = ("group", "batch", "none")
AGGREGATIONS = ("token", "sequence", "dr_grpo")


def _grpo_train() -> TrainConfig:
    return TrainConfig(steps=100, batch_size=8, lr=1e-5, warmup_steps=5, min_lr_ratio=1.0,
                       weight_decay=0.0, eval_every=10, checkpoint_every=10, log_every=1)


@dataclass
class SampledRLConfig:
    """What GRPO and RFT (``rft.py``) share: the policy, its prompts, the reward, the
    held-out evaluation and the groups of replies."""

    policy: str = field(default="", metadata={"help": "SFT run directory"})
    prompts: str = field(default="", metadata={"help": "prompts (.jsonl: prompt or messages, "
                                                       "plus fields the reward reads)"})
    reward: str = field(default="truth", metadata={
        "help": "truth | RM_RUN | module:function, comma-separated, each optionally @WEIGHT"})
    eval_questions: str = field(default="", metadata={"help": "held-out known-answer questions"})
    eval_limit: int = 100
    out: str = field(default="", metadata={"help": "run directory to write"})
    group_size: int = field(default=8, metadata={"help": "replies sampled per prompt"})
    max_tokens: int = field(default=16, metadata={"help": "longest reply"})
    temperature: float = 1.0


@dataclass
class GRPOConfig(SampledRLConfig):
    policy: str = field(default="", metadata={"help": "SFT run directory (policy, reference)"})
    out: str = field(default="runs/grpo", metadata={"help": "run directory to write"})
    advantage: str = field(default="grpo", metadata={"help": "grpo | rloo | reinforce++"})
    scale_rewards: str = field(default="", metadata={
        "help": "group | batch | none; '': group for grpo, none for rloo, batch for reinforce++"})
    epochs: int = field(default=1, metadata={"help": "passes over each batch of replies"})
    minibatches: int = 1
    clip_low: float = 0.2
    clip_high: float = 0.2
    loss_aggregation: str = field(default="token", metadata={
        "help": "token | sequence | dr_grpo"})
    beta: float = field(default=0.01, metadata={"help": "KL penalty to the reference; 0: none "
                                                        "(no reference model is loaded)"})
    kl_estimator: str = field(default="k3", metadata={"help": "k1 | k3"})
    train: TrainConfig = field(default_factory=_grpo_train)
    dist: DistConfig = field(default_factory=DistConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)


def advantages(rewards: torch.Tensor, kind: str, scale: str) -> torch.Tensor:
    """One advantage per reply from rewards (P prompts, G replies): the group mean (grpo),
    the mean of the other G−1 (rloo) or the batch mean (reinforce++) as baseline, then
    divided by the group's or the batch's standard deviation, or not at all."""
    G = rewards.size(1)
    if kind == "grpo":
        adv = rewards - rewards.mean(1, keepdim=True)
    elif kind == "rloo":
        adv = rewards - (rewards.sum(1, keepdim=True) - rewards) / (G - 1)
    else:
        adv = rewards - ranks.global_mean(rewards)  # the batch of all ranks
    scale = scale or {"grpo": "group", "rloo": "none", "reinforce++": "batch"}[kind]
    if scale == "group":
        adv = adv / (rewards.std(1, keepdim=True) + 1e-4)
    elif scale == "batch":
        adv = adv / (ranks.global_std(rewards) + 1e-4)
    return adv


def token_loss(logp, old_logp, ref_logp, adv, cfg: GRPOConfig):
    """Per token: the clipped surrogate −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A), plus β·KL to
    the reference (k1: log π − log π_ref; k3: e^(log π_ref − log π) − (log π_ref − log π) − 1,
    unbiased and never negative). ``adv`` is per reply (B, 1)."""
    ratio = (logp - old_logp).exp()
    loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high))
    kl = torch.zeros_like(logp)
    if ref_logp is not None:
        d = ref_logp - logp
        kl = -d if cfg.kl_estimator == "k1" else d.exp() - d - 1
    return loss + cfg.beta * kl, ratio, kl


def aggregate(loss: torch.Tensor, mask: torch.Tensor, how: str, max_tokens: int):
    """token: mean over all reply tokens; sequence: mean of each reply's mean; dr_grpo: sum
    over tokens / (replies · max_tokens), which favours neither short nor long replies.
    Tokens and replies of every rank: this rank's share of the global value."""
    if how == "token":
        return ranks.mean_share(loss, mask)
    if how == "sequence":
        return ranks.mean_share((loss * mask).sum(1) / mask.sum(1).clamp(min=1))
    return (loss * mask).sum() / (ranks.global_count(mask.size(0)) * max_tokens)


class GRPOTrainer(Trainer):
    """The shared loop with a group-baseline RL iteration as its step."""

    plot_file = "grpo.png"

    def setup(self, cfg: GRPOConfig, ref, tokenizer, terms, reward_models=()) -> None:
        """``reward_models``: those the reward's ``terms`` score with, moved and sharded in
        place like the reference (under FSDP2; whole on every rank otherwise)."""
        self.grpo, self.tok, self.terms = cfg, tokenizer, terms
        for m in [ref, *reward_models]:
            if m is not None:
                ranks.parallel(m.to(self.device), self.strategy, self.precision == "bf16")
        self.ref = ref

    @contextlib.contextmanager
    def reference(self):
        """The frozen reference to run: its copy, or under LoRA the policy with its adapters
        off."""
        if self.ref is not None:
            yield self.ref
        else:
            with adapters_off(self.model):
                yield self.model

    def _ref_logprobs(self, seq, pos):
        if self.grpo.beta == 0:
            return None
        with self.reference() as ref:
            return reply_logprobs(ref, seq, pos, self.grpo.temperature)

    def _old_logprobs(self, r, first: torch.Tensor, first_logp: torch.Tensor) -> torch.Tensor:
        """log π_old of every reply token (B, R). The first minibatch's own forward is taken
        before any step, so its log-probs are π_old's: only the other minibatches' rows need
        another forward (none with one minibatch, as in TRL's single-iteration GRPO)."""
        old = torch.zeros_like(r.mask, dtype=first_logp.dtype)
        old[first] = first_logp
        if self.grpo.minibatches > 1:  # every rank runs it, even on no rows (FSDP gathers)
            rest = torch.ones(len(old), dtype=torch.bool, device=old.device)
            rest[first] = False
            rest = rest.nonzero().flatten()
            with torch.no_grad(), autocast(self.device, self.precision):
                old[rest] = reply_logprobs(self.model, r.seq[rest], r.pos[rest],
                                           self.grpo.temperature)
        return old

    def sample_groups(self, batch: list[dict], extra: list[dict] = (), greedy: bool = False):
        """``group_size`` replies to each prompt of this rank's ``batch``, scored by the
        reward: (the prompt record of each reply, the replies, their rewards). With
        ``greedy``, then each prompt's greedy reply, scored too (its record repeated). Then
        one reply to each of ``extra``, sampled in the same decoding loop, not scored (the
        replies' last rows)."""
        G = self.grpo.group_size
        records = [q for q in batch for _ in range(G)] + (list(batch) if greedy else [])
        rows = len(records) + len(extra)  # every rank's rows draw seeds of their own
        first = self.cfg.seed + self.step * rows * ranks.world() + ranks.rank() * rows
        with ranks.gathered(self.model):  # ranks decode their own number of steps
            r = sample(self.model, self.tok, [q["messages"] for q in records + list(extra)],
                       self.grpo.max_tokens, self.grpo.temperature, first, self.precision,
                       greedy=range(len(batch) * G, len(records)))
        return records, r, total_reward(self.terms, records, r.rows(slice(len(records))))

    def train_step(self) -> dict:
        cfg, G = self.grpo, self.grpo.group_size
        self.set_lr()
        batch = self.batches.next()  # this rank's share of the prompts
        records, r, rewards = self.sample_groups(batch)
        adv = advantages(rewards.view(len(batch), G), cfg.advantage,
                         cfg.scale_rewards).reshape(-1, 1)
        with torch.no_grad(), autocast(self.device, self.precision):
            ref_logp = self._ref_logprobs(r.seq, r.pos)
        old_logp = None  # π_old: the policy before this iteration's first optimizer step
        sums = {"loss": 0.0, "clipfrac": 0.0, "kl": 0.0, "entropy": 0.0}  # ranks' shares
        n = 0
        for _ in range(cfg.epochs):
            for idx in ranks.rows_of_minibatches(len(records), cfg.minibatches):
                mask = r.mask[idx]
                with autocast(self.device, self.precision):
                    logp, entropy = reply_logprobs(self.forward_model, r.seq[idx], r.pos[idx],
                                                   cfg.temperature, with_entropy=True)
                if old_logp is None:
                    old_logp = self._old_logprobs(r, idx, logp.detach())
                loss, ratio, kl = token_loss(logp, old_logp[idx], None if ref_logp is None
                                             else ref_logp[idx], adv[idx], cfg)
                loss = aggregate(loss, mask, cfg.loss_aggregation, cfg.max_tokens)
                loss.backward()
                norms = self.apply_gradients()
                with torch.no_grad():
                    out_of_clip = (ratio < 1 - cfg.clip_low) | (ratio > 1 + cfg.clip_high)
                    sums["loss"] += float(loss)
                    sums["clipfrac"] += float(ranks.mean_share(out_of_clip.float(), mask))
                    sums["kl"] += float(ranks.mean_share((kl * mask).sum(1)))
                    sums["entropy"] += float(ranks.mean_share(entropy, mask))
                n += 1
        summed = ranks.global_sums(*sums.values())
        metrics = {k: v / n for k, v in zip(sums, summed, strict=True)}
        zero_spread = (rewards.view(len(batch), G).std(1) == 0).float()
        return {**metrics, **norms, **sampling_metrics(rewards, r, records),
                "zero_spread_groups": float(ranks.global_mean(zero_spread))}


def sampling_metrics(rewards: torch.Tensor, r, records: list[dict]) -> dict:
    """What GRPO and RFT log of an iteration's sampled replies, over every rank: reward and
    its spread, reply length, end rate, tokens, and accuracy where prompts have answers."""
    mean = ranks.global_mean
    metrics = {"reward": float(mean(rewards)), "reward_std": float(ranks.global_std(rewards)),
               "reply_tokens": float(mean(r.mask.sum(1))),
               "end_rate": float(mean(r.ended.float())),
               "tokens": ranks.global_count(int(r.mask.sum()))}
    graded = [is_correct(t, q["answer"]) for t, q in zip(r.texts, records, strict=True)
              if "answer" in q]
    right, n_graded = ranks.global_sums(sum(graded), len(graded))
    if n_graded:
        metrics["train_accuracy"] = right / n_graded
    return metrics


def refuse_unless(checks: list[tuple[bool, str]]) -> None:
    """The message of the first setting check that fails, as an error."""
    for ok, message in checks:
        if not ok:
            raise GptsmithError(message)


def check_config(cfg: GRPOConfig) -> None:
    """Refuse settings that cannot work, naming them."""
    if not (cfg.policy and cfg.prompts):
        raise GptsmithError("grpo needs --policy SFT_RUN and --prompts FILE")
    checks = [
        (cfg.advantage in ADVANTAGES, f"--advantage must be one of {', '.join(ADVANTAGES)}"),
        (cfg.scale_rewards in ("", *SCALES), f"--scale-rewards must be one of {', '.join(SCALES)}"),
        (cfg.loss_aggregation in AGGREGATIONS,
         f"--loss-aggregation must be one of {', '.join(AGGREGATIONS)}"),
        (cfg.kl_estimator in ("k1", "k3"), "--kl-estimator must be k1 or k3"),
        (cfg.group_size >= 2, "--group-size must be >= 2 (a baseline needs other replies)"),
        (cfg.temperature > 0, "--temperature must be > 0 (replies are sampled)"),
        (cfg.beta >= 0 and cfg.clip_low >= 0 and cfg.clip_high >= 0,
         "--beta, --clip-low and --clip-high must be >= 0"),
        (cfg.max_tokens >= 1 and cfg.epochs >= 1 and cfg.minibatches >= 1,
         "--max-tokens, --epochs and --minibatches must be >= 1"),
        (cfg.train.grad_accum == 1 and not cfg.train.compile,
         "--train.grad-accum and --train.compile do not apply to grpo (use --minibatches)"),
    ]
    refuse_unless(checks)


def grpo(cfg: GRPOConfig) -> dict:
    """Run group-baseline RL on ``cfg.policy``; resumable like every phase."""
    check_config(cfg)
    return run_sampled_rl(cfg, GRPOTrainer, cfg.advantage.upper(), cfg.beta > 0,
                          ("reward", "kl", "train_accuracy", "entropy", "reply_tokens",
                           "end_rate"))


def run_sampled_rl(cfg: SampledRLConfig, trainer_cls: type[GRPOTrainer], name: str,
                   with_ref: bool, summary_keys: tuple[str, ...],
                   learns=lambda record: True) -> dict:
    """What GRPO and rejection-sampling fine-tuning (``rft.py``) share around their step:
    the policy (LoRA or whole), the reward terms and their models, the frozen reference
    (``with_ref``: a copy, or the policy with its adapters off), the prompts, the held-out
    evaluation and the finished run's plot and summary (``summary_keys`` averaged over the
    last iterations). Only the prompt records ``learns`` accepts are drawn."""
    out = Path(cfg.out)
    done = finished_summary(out, to_dict(cfg))
    if done:
        print(f"{out}: already trained with these settings")
        return done
    policy, tokenizer = load_model(cfg.policy)
    reward_models = []

    def load_reward_model(run_dir: str):
        reward_models.append(load_model(run_dir)[0].requires_grad_(False))
        return reward_models[-1]

    terms = parse_rewards(cfg.reward, load_reward_model)
    prompts = [q for q in load_questions(cfg.prompts, require_answer=False) if learns(q)]
    if not prompts:
        raise GptsmithError(f"{cfg.prompts}: no prompt {name} can learn from")
    questions = load_questions(cfg.eval_questions, cfg.eval_limit) if cfg.eval_questions else []
    t = cfg.train
    torch.manual_seed(t.seed)  # before the adapters: --train.seed draws their A matrices too
    ref = None
    if cfg.lora.rank:
        apply_lora(policy, cfg.lora)
    elif with_ref:
        ref = load_model(cfg.policy)[0].requires_grad_(False)

    def evaluate(m) -> dict:
        from gptsmith.train.ppo import held_out_truth

        return held_out_truth(m, None, tokenizer, questions, max(32, cfg.max_tokens))

    trainer = trainer_cls(policy, t, out, EpochBatches(prompts, t.batch_size, t.seed), None,
                          evaluate if questions else None, phase_config=to_dict(cfg),
                          tokenizer=tokenizer, dist=cfg.dist)
    trainer.setup(cfg, ref, tokenizer, terms, reward_models)
    trainer.lora, trainer.lora_base, trainer.eval_at_start = cfg.lora, cfg.policy, bool(questions)
    trainer.progress_keys = {"reward": "reward", "kl": "kl", "kept": "kept",
                             "train_accuracy": "acc", "true_accuracy": "eval_acc"}
    print(f"{name}: policy {cfg.policy}, reward {cfg.reward}, {len(prompts)} prompts; "
          f"{t.steps} iterations of {t.batch_size} prompts x {cfg.group_size} replies on "
          f"{trainer.device}; {trainable_summary(policy)}")

    def last_iterations(_model) -> dict:
        # before summary.json, which marks the run done: a kill in between redraws it
        if ranks.is_main():
            plot_rl(out / "metrics.jsonl", out / trainer_cls.plot_file, name)
        return recent_means(out / "metrics.jsonl", summary_keys)

    summary = trainer.train_and_save(f"{name}: {out}", finalize=last_iterations)
    print(f"done in {summary['train_seconds']:.0f}s: reward {summary.get('reward', 0):.3f}")
    return summary
