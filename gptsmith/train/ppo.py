"""Phase 4: PPO. Fine-tune the SFT policy to maximise the reward model's score minus a KL
penalty against the frozen SFT model (Ziegler et al. 2019; InstructGPT).

Per iteration (``PPOTrainer.train_step``): roll out replies to a batch of prompts with the
engine; score them (reward model at the last token, minus a penalty when the turn never
ends); put −β·KL on every token; estimate advantages with GAE against the value model;
then several epochs of clipped policy and value updates over minibatches; then let the KL
controller adjust β. The whole algorithm is ``rollout`` and ``update`` below.

The value model is initialised from the reward model, not the SFT model: it starts out
knowing which replies score well, so its first estimates of the return are already
informed and the advantages are not pure noise in the first iterations (as in InstructGPT).

Under torchrun each rank rolls out its share of the prompts (row i of the global batch
samples with the seed it has in one process); whitening, the KL statistics (hence β) and
every mean of the losses are over the global batch, and the minibatches are those one
process draws: the run is a one-process run up to float error. Under FSDP2 all four models
are sharded; the policy decodes with its weights gathered whole (``ranks.gathered``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import gptsmith.train.distributed as ranks
from gptsmith.chat import complete, prompt_ids
from gptsmith.config import to_dict
from gptsmith.device import autocast
from gptsmith.engine import Sampling
from gptsmith.errors import GptsmithError
from gptsmith.evaluate import is_correct, load_questions
from gptsmith.label import record_score
from gptsmith.model import GPT
from gptsmith.plots import plot_ppo
from gptsmith.runs import load_model
from gptsmith.train.batches import EpochBatches
from gptsmith.train.distributed import DistConfig
from gptsmith.train.loop import TrainConfig, Trainer, finished_summary
from gptsmith.train.lora import LoRAConfig, adapters_off, apply_lora, lora_layers
from gptsmith.train.reward import score_sequences
from gptsmith.train.rollout import (
    at_positions,
    recent_means,
    reply_logprobs,
    reward_scores,
    sample,
)


def _ppo_train() -> TrainConfig:
    return TrainConfig(steps=100, batch_size=32, lr=3e-5, warmup_steps=5, min_lr_ratio=1.0,
                       weight_decay=0.0, eval_every=10, checkpoint_every=10, log_every=1)


@dataclass
class PPOConfig:
    policy: str = field(default="", metadata={"help": "SFT run directory (policy and reference)"})
    reward: str = field(default="", metadata={"help": "reward model run directory"})
    prompts: str = field(default="", metadata={"help": "rollout prompts (.jsonl: prompt or "
                                                       "messages; 'answer' adds a true reward)"})
    eval_questions: str = field(default="", metadata={"help": "held-out known-answer questions"})
    eval_limit: int = 100
    out: str = field(default="runs/ppo", metadata={"help": "run directory to write"})
    max_tokens: int = field(default=16, metadata={"help": "longest reply in a rollout"})
    temperature: float = 1.0
    ppo_epochs: int = 2
    minibatches: int = 4
    clip: float = field(default=0.2, metadata={"help": "policy ratio clip"})
    value_clip: float = 0.2
    vf_coef: float = 0.5
    value_lr: float = field(default=0.0, metadata={
        "help": "the value model's peak learning rate; 0: the policy's (--train.lr)"})
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = field(default=0.05, metadata={"help": "β, the KL penalty per token"})
    kl_target: float = field(default=0.5, metadata={
        "help": "adaptive β aims at this KL per reply (nats); 0 keeps β fixed"})
    kl_horizon: int = 1000
    no_end_penalty: float = field(default=1.0, metadata={
        "help": "subtracted from the reward of a reply that never ends its turn"})
    train: TrainConfig = field(default_factory=_ppo_train)
    dist: DistConfig = field(default_factory=DistConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)


class KLController:
    """β fixed (target 0) or adapted towards a target KL per reply (Ziegler et al. 2019)."""

    def __init__(self, coef: float, target: float, horizon: int):
        self.coef, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target > 0:
            error = max(-0.2, min(0.2, kl / self.target - 1))
            self.coef *= 1 + error * n / self.horizon


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the reply tokens of every rank's rollouts."""
    mean = ranks.global_mean(x, mask)
    var = ranks.global_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def gae(rewards, values, mask, gamma: float, lam: float):
    """Generalized advantage estimates and returns, per token, right-padded rows (B, T)."""
    advantages = torch.zeros_like(rewards)
    next_value = next_adv = torch.zeros(rewards.size(0), device=rewards.device)
    for t in reversed(range(rewards.size(1))):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m
        advantages[:, t] = next_adv
        next_value = torch.where(m > 0, values[:, t], next_value * 0)
    return advantages, advantages + values


def clipped_policy_loss(ratio, adv, mask, clip: float) -> torch.Tensor:
    """PPO's pessimistic surrogate: −min(r·A, clip(r, 1±ε)·A), averaged over reply tokens
    (this rank's share of the average over all ranks'). A token whose ratio already moved
    past 1±ε in its advantage's favour passes no gradient."""
    return ranks.mean_share(torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)),
                            mask)


def clipped_value_loss(v, old_v, returns, mask, clip: float) -> torch.Tensor:
    """½·max((V − R)², (V_clipped − R)²), V kept within ±clip of the rollout's values."""
    v_clipped = old_v + (v - old_v).clamp(-clip, clip)
    return ranks.mean_share(0.5 * torch.max((v - returns) ** 2, (v_clipped - returns) ** 2),
                            mask)


def token_rewards(score, logp, ref_logp, mask, beta: float, ended, no_end_penalty: float):
    """−β·(log π − log π_ref) on every reply token; the score (less the penalty for a turn
    that never ends) added at each reply's last token."""
    rewards = -beta * (logp - ref_logp) * mask
    last = mask.sum(1).long() - 1
    final = score - no_end_penalty * (~ended).float()
    rewards[torch.arange(len(last)), last] += final
    return rewards


class PPOTrainer(Trainer):
    """The shared loop with a PPO iteration as its step."""

    def setup(self, cfg: PPOConfig, ref: GPT | None, reward: GPT, tokenizer,
              reward_fn: Callable[[list[str]], list[float]] | None = None):
        """``reward_fn(texts)``, if given, scores replies instead of the reward model; ``ref``
        None: the reference is the policy with its LoRA adapters off."""
        def frozen(m: GPT) -> GPT:  # sharded under FSDP2, else whole on every rank
            return ranks.parallel(m.to(self.device), self.strategy, self.precision == "bf16")

        self.ppo, self.reward_model = cfg, frozen(reward)
        self.ref = frozen(ref) if ref is not None else None
        self.tok, self.reward_fn = tokenizer, reward_fn
        self.kl = KLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)

    def wrap(self) -> None:
        """Policy and value data-parallel apart (PPO runs each on its own): the models the
        update's losses go through (under FSDP2 the same modules, sharded in place)."""
        if ranks.world() > 1 and self.strategy == "fsdp" and lora_layers(self.model):
            raise GptsmithError("--dist.strategy fsdp with --lora.rank: LoRA trains few "
                                "weights; use --dist.strategy ddp")
        bf16 = self.precision == "bf16"
        self.policy = ranks.parallel(self.model.policy, self.strategy, bf16)
        self.value = ranks.parallel(self.model.value, self.strategy, bf16)

    def _save_model(self, gathered: dict | None) -> None:
        """model.safetensors: the policy (under FSDP2 its part of both models' weights)."""
        if gathered is not None:
            gathered = {k.removeprefix("policy."): v for k, v in gathered.items()
                        if k.startswith("policy.")}
        super()._save_model(gathered)

    def extra_state(self) -> dict:
        return {"kl_coef": self.kl.coef}

    def load_extra_state(self, state: dict) -> None:
        self.kl.coef = state["kl_coef"]

    @torch.no_grad()
    def rollout(self) -> dict:
        cfg, tok, dev = self.ppo, self.tok, self.device
        policy, value = self.model.policy, self.model.value
        batch = self.batches.next()  # this rank's share: rows from rank·len(batch) on
        first = self.cfg.seed + self.step * self.cfg.batch_size + ranks.rank() * len(batch)
        with ranks.gathered(policy):  # ranks decode their own number of steps
            r = sample(policy, tok, [q["messages"] for q in batch], cfg.max_tokens,
                       cfg.temperature, first, self.precision)
        seq, pos, mask, ended, texts = r.seq, r.pos, r.mask, r.ended, r.texts
        with autocast(dev, self.precision):
            logp, entropy = reply_logprobs(policy, seq, pos, cfg.temperature, with_entropy=True)
            if self.ref is None:
                with adapters_off(policy):
                    ref_logp = reply_logprobs(policy, seq, pos, cfg.temperature)
            else:
                ref_logp = reply_logprobs(self.ref, seq, pos, cfg.temperature)
            values = at_positions(value, seq, pos).float()
            if self.reward_fn is None:
                score = reward_scores(self.reward_model, r)
        if self.reward_fn is not None:
            score = torch.tensor(self.reward_fn(texts), dtype=torch.float, device=dev)
        rewards = token_rewards(score, logp, ref_logp, mask, self.kl.coef, ended,
                                cfg.no_end_penalty)
        advantages, returns = gae(rewards, values * mask, mask, cfg.gamma, cfg.lam)
        mean = ranks.global_mean  # over every rank's rollouts
        stats = {
            "rm_score": float(mean(score)), "kl": float(mean(((logp - ref_logp) * mask).sum(1))),
            "entropy": float(mean(entropy, mask)), "reply_tokens": float(mean(mask.sum(1))),
            "end_rate": float(mean(ended.float())), "beta": self.kl.coef,
        }
        graded = [is_correct(t, q["answer"]) for t, q in zip(texts, batch, strict=True)
                  if "answer" in q]
        right, n_graded = ranks.global_sums(sum(graded), len(graded))
        if n_graded:
            stats["train_accuracy"] = right / n_graded
        return {"seq": seq, "pos": pos, "mask": mask, "logp": logp, "values": values * mask,
                "score": score,
                "advantages": whiten(advantages, mask), "returns": returns, "stats": stats}

    def update(self, ro: dict) -> dict:
        cfg, B = self.ppo, ro["seq"].size(0)
        shares = {"policy_loss": 0.0, "value_loss": 0.0, "clipfrac": 0.0, "approx_kl": 0.0}
        sums, n = {}, 0
        for _ in range(cfg.ppo_epochs):
            for idx in ranks.rows_of_minibatches(B, cfg.minibatches):
                seq, pos, mask = ro["seq"][idx], ro["pos"][idx], ro["mask"][idx]
                old_logp, adv = ro["logp"][idx], ro["advantages"][idx]
                old_v, ret = ro["values"][idx], ro["returns"][idx]
                with autocast(self.device, self.precision):
                    logp = reply_logprobs(self.policy, seq, pos, cfg.temperature)
                    v = at_positions(self.value, seq, pos).float()
                ratio = (logp - old_logp).exp()
                policy_loss = clipped_policy_loss(ratio, adv, mask, cfg.clip)
                value_loss = clipped_value_loss(v, old_v, ret, mask, cfg.value_clip)
                (policy_loss + cfg.vf_coef * value_loss).backward()
                for k, v in self.apply_gradients().items():  # policy and value clipped apart
                    sums[k] = sums.get(k, 0.0) + v
                with torch.no_grad():  # this rank's shares of the minibatch's means
                    shares["policy_loss"] += float(policy_loss)
                    shares["value_loss"] += float(value_loss)
                    shares["clipfrac"] += float(ranks.mean_share(
                        ((ratio - 1).abs() > cfg.clip).float(), mask))
                    shares["approx_kl"] += float(ranks.mean_share(0.5 * (logp - old_logp) ** 2,
                                                                  mask))
                n += 1
        summed = dict(zip(shares, ranks.global_sums(*shares.values()), strict=True))
        out = {k: v / n for k, v in {**summed, **sums}.items()}
        returns, values, mask = ro["returns"], ro["values"], ro["mask"]
        mean = ranks.global_mean
        var_r = mean((returns - mean(returns, mask)) ** 2, mask)
        var_e = mean((returns - values - mean(returns - values, mask)) ** 2, mask)
        out["explained_var"] = float(1 - var_e / var_r.clamp(min=1e-8))
        return out

    def train_step(self) -> dict:
        self.set_lr()
        ro = self.rollout()
        metrics = {**ro["stats"], **self.update(ro)}
        self.kl.update(metrics["kl"], self.cfg.batch_size)  # rollouts of all ranks
        metrics["loss"] = metrics["policy_loss"] + self.ppo.vf_coef * metrics["value_loss"]
        metrics["tokens"] = ranks.global_count(int(ro["mask"].sum()))
        return metrics


class ActorCritic(torch.nn.Module):
    """The two trained models, so that one optimizer and one checkpoint hold both."""

    def __init__(self, policy: GPT, value: GPT):
        super().__init__()
        self.policy, self.value = policy, value


def held_out_truth(policy: GPT, reward: GPT | None, tokenizer, questions: list[dict],
                   max_tokens: int = 32) -> dict:
    """Greedy replies (of at most ``max_tokens``) to held-out questions: exact accuracy, true
    and RM reward (with a reward model), end rate."""
    with ranks.gathered(policy):  # under FSDP2: decoded with no collective per step
        replies = complete(policy, tokenizer, [q["messages"] for q in questions],
                           Sampling(max_tokens=max_tokens, temperature=0))
    n = len(questions)
    out = {
        "true_accuracy": sum(is_correct(r.text, q["answer"]) for q, r in
                             zip(questions, replies, strict=True)) / n,
        "true_reward": sum(record_score(r, q) for q, r in
                           zip(questions, replies, strict=True)) / n,
        "eval_end_rate": sum(r.ended for r in replies) / n,
    }
    if reward is not None:
        seqs = [prompt_ids(tokenizer, q["messages"]) + r.ids + [tokenizer.end_id] * r.ended
                for q, r in zip(questions, replies, strict=True)]  # scored as generated
        rm = torch.cat([score_sequences(reward, seqs[i:i + 64], tokenizer.pad_id).float()
                        for i in range(0, len(seqs), 64)])
        out["eval_rm_score"] = float(rm.mean())
    return out


def check_config(cfg: PPOConfig) -> None:
    """Refuse settings PPO would otherwise ignore or divide by."""
    if not (cfg.policy and cfg.reward and cfg.prompts):
        raise GptsmithError("ppo needs --policy SFT_RUN, --reward RM_RUN and --prompts FILE")
    if cfg.temperature <= 0:
        raise GptsmithError(f"--temperature {cfg.temperature}: PPO samples its rollouts and "
                            "takes log-probs at that temperature; it must be > 0")
    if cfg.train.grad_accum != 1:
        raise GptsmithError("--train.grad-accum does not apply to PPO: one iteration is "
                            "--train.batch-size rollouts in --minibatches updates per epoch")
    if cfg.train.compile:
        raise GptsmithError("--train.compile is not supported by PPO (rollouts decode with a "
                            "KV cache of changing shape); leave it off")
    if cfg.max_tokens < 1 or cfg.minibatches < 1 or cfg.minibatches > cfg.train.batch_size:
        raise GptsmithError("--max-tokens must be >= 1 and --minibatches between 1 and "
                            "--train.batch-size")


def build_trainer(cfg: PPOConfig, prompts: list[dict], questions: list[dict] = (),
                  reward_fn: Callable[[list[str]], list[float]] | None = None) -> PPOTrainer:
    """The four models loaded (policy and value trained; reference and reward frozen) and
    the trainer that ``ppo`` runs (the benchmark builds the same one)."""
    policy, tokenizer = load_model(cfg.policy)
    reward, _ = load_model(cfg.reward)
    value, _ = load_model(cfg.reward)
    if reward.cfg.head != "scalar":
        raise GptsmithError(f"{cfg.reward}: not a reward model (its head is {reward.cfg.head!r})")
    reward.requires_grad_(False)
    t = cfg.train
    torch.manual_seed(t.seed)  # before the adapters: --train.seed draws their A matrices too
    ref = None  # under LoRA: the policy with its adapters off, no second copy
    if cfg.lora.rank:
        apply_lora(policy, cfg.lora)
        apply_lora(value, cfg.lora)
    else:
        ref, _ = load_model(cfg.policy)
        ref.requires_grad_(False)
    value_scale = cfg.value_lr / t.lr if cfg.value_lr else 1.0
    trainer = PPOTrainer(ActorCritic(policy, value), t, Path(cfg.out),
                         EpochBatches(prompts, t.batch_size, t.seed), None,
                         (lambda m: held_out_truth(m.policy, trainer.reward_model, tokenizer,
                                                   questions, max(32, cfg.max_tokens)))
                         if questions else None,
                         phase_config=to_dict(cfg), tokenizer=tokenizer,
                         parts={"policy": (policy, 1.0), "value": (value, value_scale)},
                         dist=cfg.dist)
    trainer.setup(cfg, ref, reward, tokenizer, reward_fn)
    trainer.export, trainer.eval_at_start = policy, bool(questions)
    trainer.progress_keys = {"rm_score": "reward", "kl": "kl", "train_accuracy": "acc",
                             "true_accuracy": "eval_acc"}
    trainer.lora, trainer.lora_base = cfg.lora, cfg.policy
    return trainer


def ppo(cfg: PPOConfig, reward_fn: Callable[[list[str]], list[float]] | None = None) -> dict:
    """Run PPO; ``reward_fn`` replaces the reward model's score (for toy rewards in tests)."""
    check_config(cfg)
    out = Path(cfg.out)
    done = finished_summary(out, to_dict(cfg))
    if done:
        print(f"{out}: already trained with these settings")
        return done
    prompts = load_questions(cfg.prompts, require_answer=False)
    questions = load_questions(cfg.eval_questions, cfg.eval_limit) if cfg.eval_questions else []
    trainer = build_trainer(cfg, prompts, questions, reward_fn)
    t = cfg.train
    print(f"PPO: policy {cfg.policy}, reward {cfg.reward}, {len(prompts)} prompts; "
          f"{t.steps} iterations of {t.batch_size} rollouts on {trainer.device}")

    def last_iterations(_model) -> dict:
        if ranks.is_main():
            plot_ppo(out / "metrics.jsonl", out)  # before summary.json, which marks it done
        return recent_means(out / "metrics.jsonl", ("rm_score", "kl", "train_accuracy",
                                                    "entropy", "reply_tokens", "end_rate"))

    summary = trainer.train_and_save(f"PPO: {out}", finalize=last_iterations)
    print(f"done in {summary['train_seconds']:.0f}s")
    return summary
