"""Rejection-sampling fine-tuning: which replies are learned, a short real run that learns a
verifiable reward, and its settings checked."""

import json

import pytest
import torch

from gptsmith.errors import GptsmithError
from gptsmith.train.loop import TrainConfig
from gptsmith.train.rft import RFTConfig, best_of_groups, check_config, rft


def test_each_groups_best_is_kept_only_when_good_enough():
    rewards = torch.tensor([[1.0, 3.0, 3.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    assert best_of_groups(rewards, 2.0).tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    # a very low bar: every group's best (the first of equals), as with an RM's scores
    assert best_of_groups(rewards, -1e9).tolist() == [[0, 1, 0, 0], [0, 1, 0, 0]]
    # ties: every reply that reaches the group's best
    assert best_of_groups(rewards, 1.0, ties=True).tolist() == [[0, 1, 1, 0], [0, 1, 0, 1]]
    # a greedy baseline: only where the best beats the group's greedy reply
    above = torch.tensor([3.0, 0.0])
    assert best_of_groups(rewards, -1e9, above=above).tolist() == [[0] * 4, [0, 1, 0, 0]]


def has_a_7(prompts, replies, **fields):
    return [float("7" in r) for r in replies]


def _config(policy, prompts, out, steps) -> RFTConfig:
    # beta1 0: a step that keeps nothing moves nothing. With momentum such steps went on
    # moving the weights, and whether the greedy reply kept its 7 depended on the seed: the
    # greedy-baseline test held for 1 model seed of 8 (a CPU's rounding is a seed too);
    # without, for 55 of 55.
    return RFTConfig(
        policy=str(policy), prompts=str(prompts), reward="tests.test_rft:has_a_7",
        out=str(out), group_size=8, max_tokens=2, min_reward=1.0,
        train=TrainConfig(steps=steps, batch_size=4, lr=1e-2, warmup_steps=1, min_lr_ratio=1.0,
                          weight_decay=0.0, beta1=0.0, checkpoint_every=5, log_every=1,
                          precision="fp32", device="cpu", progress=False))


def test_rft_learns_a_verifiable_reward(tiny_run, tmp_path):
    """From an untrained tiny policy: reward "the reply has a 7" (a user function). Only
    replies with a 7 are learned, so the share of them rises, and with it the share
    of groups that have one. (8 prompts an iteration, and the rise read at its best 3
    iterations: with 4 and the last 3, 5 seeds of 68 failed: some never sampled a 7 to
    learn from, on others a late step at this large lr threw the learned policy away.)"""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": "Pick a digit."}) + "\n"
                               for _ in range(16)))

    def config():
        cfg = _config(tiny_run, prompts, tmp_path / "run", 25)
        cfg.train.batch_size = 8
        return cfg

    summary = rft(config())
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in rows]
    first = sum(rewards[:3]) / 3
    best = max(sum(rewards[i:i + 3]) / 3 for i in range(len(rewards) - 2))
    assert best > first + 0.3, (first, rewards)
    assert max(r["kept"] for r in rows) > 0.5
    assert {"kept", "reward", "reply_tokens", "end_rate", "grad_norm", "loss"} <= set(rows[-1])
    assert (tmp_path / "run" / "rft.png").exists()
    again = rft(config())  # done: not trained again
    assert again["train_seconds"] == summary["train_seconds"]


def test_a_greedy_baseline_moves_the_greedy_reply(tiny_run, tmp_path):
    """--baseline greedy: each prompt's greedy reply is decoded beside its group; groups are
    learned only while it lacks the 7, and learning them turns the greedy reply into one
    with a 7 (what RFT is for: the model's best answer), after which nothing is kept."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": "Pick a digit."}) + "\n"
                               for _ in range(16)))
    cfg = _config(tiny_run, prompts, tmp_path / "run", 25)
    cfg.baseline = "greedy"
    rft(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if "greedy_reward" in x]
    flip = next(i for i, r in enumerate(rows) if r["greedy_reward"] == 1)
    assert rows[0]["greedy_reward"] == 0 and any(r["kept"] > 0 for r in rows[:flip])
    assert all(r["kept"] == 0 for r in rows if r["greedy_reward"] == 1)  # nothing beats it
    assert all(r["greedy_reward"] == 1 for r in rows[flip:])  # and so nothing moves it


def test_a_batch_with_nothing_good_enough_learns_nothing(tiny_run, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Pick a digit."}) + "\n")
    cfg = _config(tiny_run, prompts, tmp_path / "run", 2)
    cfg.min_reward = 5.0  # has_a_7 scores at most 1
    rft(cfg)
    from gptsmith.runs import load_model

    before, after = load_model(str(tiny_run))[0], load_model(str(tmp_path / "run"))[0]
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kept"] == 0 for r in rows if "kept" in r)


@pytest.mark.parametrize("bad, message", [
    ({"policy": ""}, "rft needs --policy"),
    ({"group_size": 0}, "--group-size must be >= 1"),
    ({"temperature": 0.0}, "--temperature must be > 0"),
    ({"max_tokens": 0}, "--max-tokens must be >= 1"),
    ({"keep": "all"}, "--keep must be best or ties"),
    ({"baseline": "mean"}, "--baseline must be none or greedy"),
])
def test_bad_settings_are_named(bad, message):
    cfg = RFTConfig(policy="runs/sft", prompts="p.jsonl")
    for k, v in bad.items():
        setattr(cfg, k, v)
    with pytest.raises(GptsmithError, match=message):
        check_config(cfg)


def test_the_mixed_in_sft_loss_learns_the_demonstrations(tiny_run, tmp_path):
    """With --sft-batch and nothing good enough to keep, the step is SFT alone: the loss of
    the demonstrations falls."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Pick a digit."}) + "\n")
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": f"Say {w}.", "response": w}) + "\n"
                             for w in ("yes", "no", "maybe", "never")))
    cfg = _config(tiny_run, prompts, tmp_path / "run", 12)
    cfg.min_reward, cfg.sft_data, cfg.sft_batch = 99.0, str(demos), 4
    rft(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["sft_loss"] for r in rows if "sft_loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0] * 0.5, losses
    with pytest.raises(GptsmithError, match="--sft-batch needs --sft-data"):
        check_config(RFTConfig(policy="runs/sft", prompts="p.jsonl", sft_batch=4))


def test_zipped_streams_resume_where_they_were():
    from gptsmith.train.batches import EpochBatches, Zipped

    def streams():
        return Zipped(EpochBatches(list(range(10)), 3, seed=1), EpochBatches(list("abcde"), 2,
                                                                            seed=2))

    z = streams()
    for _ in range(4):
        z.next()
    state = z.state_dict()
    ahead = [z.next() for _ in range(3)]
    again = streams()
    again.load_state_dict(state)
    assert [again.next() for _ in range(3)] == ahead


def test_conversational_prompts_are_left_to_the_demonstrations_unless_asked(tiny_run,
                                                                            tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hello there.", "kind": "talk"}) + "\n")
    cfg = _config(tiny_run, prompts, tmp_path / "run", 2)
    cfg.reward = "truth"
    with pytest.raises(GptsmithError, match="no prompt RFT can learn from"):
        rft(cfg)
    assert not (tmp_path / "run").exists()
    cfg.talk = True
    assert rft(cfg)["steps"] == 2


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_the_talk_kl_holds_the_conversation_near_the_sft_model(tiny_run, tmp_path, lora_rank):
    """Demonstrations learned at a large step pull the policy away from the SFT model. On
    conversational prompts the KL from it starts at 0 (the policy is the SFT model) and
    grows; with --talk-kl it grows far less. With LoRA the SFT model is the policy with its
    adapters off."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(q) + "\n" for q in [
        {"prompt": "Pick a digit."}, *({"prompt": p, "kind": "talk"} for p in (
            "Hello there.", "How are you?", "Tell me a story.", "Good night."))]))
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": f"Say {w}.", "response": w}) + "\n"
                             for w in ("yes", "no", "maybe", "never")))

    def final_kl(weight: float, name: str) -> tuple[float, float]:
        cfg = _config(tiny_run, prompts, tmp_path / name, 10)
        cfg.min_reward, cfg.sft_data, cfg.sft_batch = 99.0, str(demos), 4
        cfg.talk_batch, cfg.talk_kl, cfg.max_tokens = 4, weight, 8
        cfg.lora.rank = lora_rank
        rft(cfg)
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text()
                .splitlines()]
        kls = [r["talk_kl"] for r in rows if "talk_kl" in r]
        assert len(kls) == 10 and kls[0] < 1e-6, kls
        assert all(0 <= r["talk_numbers"] <= 1 for r in rows if "talk_numbers" in r)
        return sum(kls[-3:]) / 3

    # weight 20: at 5, held/free under LoRA ranged 0.27-0.66 over model seeds (0.47 at
    # this one); at 20, 0.10-0.24. LoRA moves the policy little in 10 steps: free ~0.012
    free, held = final_kl(0.0, "free"), final_kl(20.0, "held")
    assert free > 0.005 and held < free * 0.5, (free, held)


def test_talk_batch_needs_conversational_prompts(tiny_run, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Pick a digit."}) + "\n")
    cfg = _config(tiny_run, prompts, tmp_path / "run", 2)
    cfg.talk_batch = 2
    with pytest.raises(GptsmithError, match=r"p.jsonl: --talk-batch needs conversational"):
        rft(cfg)
    with pytest.raises(GptsmithError, match="--talk-batch and --talk-kl must be >= 0"):
        check_config(RFTConfig(policy="runs/sft", prompts="p.jsonl", talk_kl=-1.0))
