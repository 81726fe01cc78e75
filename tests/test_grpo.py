"""GRPO, RLOO and REINFORCE++: advantages, losses and aggregation against hand-computed
values; reward specs; a short real run that learns a verifiable reward."""

import json
import math

import pytest
import torch

from gptsmith.errors import GptsmithError
from gptsmith.train.grpo import GRPOConfig, advantages, aggregate, token_loss

R = torch.tensor([[1.0, 0.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0]])


def test_group_baselines_by_hand():
    grpo = advantages(R, "grpo", "none")
    torch.testing.assert_close(grpo[0], torch.tensor([0.0, -1.0, -1.0, 2.0]))
    rloo = advantages(R, "rloo", "")  # leave-one-out: 1 - (0+0+3)/3 = 0, 0 - 4/3, ...
    torch.testing.assert_close(rloo[0], torch.tensor([0.0, -4 / 3, -4 / 3, 8 / 3]))
    pp = advantages(R, "reinforce++", "none")  # batch mean 1.5
    torch.testing.assert_close(pp[0], torch.tensor([-0.5, -1.5, -1.5, 1.5]))
    scaled = advantages(R, "grpo", "group")
    std = torch.tensor([1.0, 0.0, 0.0, 3.0]).std().item()
    torch.testing.assert_close(scaled[0], torch.tensor([0.0, -1.0, -1.0, 2.0]) / (std + 1e-4))
    batch = advantages(R, "reinforce++", "")
    torch.testing.assert_close(batch, (R - 1.5) / (R.std() + 1e-4))


def test_a_group_with_equal_rewards_gives_zero_gradient():
    for kind in ("grpo", "rloo"):
        adv = advantages(R, kind, "")[1:].reshape(-1, 1)
        assert torch.equal(adv, torch.zeros_like(adv))
        logp = torch.full((4, 3), -1.0, requires_grad=True)
        loss, _, _ = token_loss(logp, logp.detach(), None, adv, GRPOConfig(beta=0.0))
        aggregate(loss, torch.ones(4, 3), "token", 3).backward()
        assert logp.grad.abs().max().item() == 0.0


def test_kl_estimators_and_asymmetric_clip():
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-1.5]])
    _, _, k1 = token_loss(logp, logp, ref, torch.zeros(1, 1), GRPOConfig(kl_estimator="k1"))
    _, _, k3 = token_loss(logp, logp, ref, torch.zeros(1, 1), GRPOConfig(kl_estimator="k3"))
    assert k1.item() == pytest.approx(0.5)
    assert k3.item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.25, 1.35]])).requires_grad_()
    loss, ratio, _ = token_loss(new, old, None, torch.ones(1, 1),
                                GRPOConfig(clip_low=0.2, clip_high=0.3, beta=0.0))
    loss.sum().backward()
    # ratio 1.25 is inside 1 + 0.3 (gradient), 1.35 past it (none)
    assert new.grad[0, 0] < 0 and new.grad[0, 1] == 0


def test_loss_aggregations_by_hand():
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert aggregate(loss, mask, "token", 4).item() == pytest.approx(8 / 5)
    assert aggregate(loss, mask, "sequence", 4).item() == pytest.approx((1 + 4) / 2)
    assert aggregate(loss, mask, "dr_grpo", 8).item() == pytest.approx(8 / (2 * 8))


def _records(n=3):
    return [{"messages": [{"role": "user", "content": f"What is {i} plus 1?"}],
             "answer": str(i + 1), "topic": "sums"} for i in range(n)]


def _replies(texts):
    from gptsmith.train.rollout import Replies

    n = len(texts)
    return Replies(torch.zeros(n, 4, dtype=torch.long), torch.zeros(n, 2, dtype=torch.long),
                   torch.ones(n, 2), torch.ones(n, dtype=torch.bool), texts)


CALLS = []


def polite(prompts, replies, **fields):
    """A user reward (tests import it as tests.test_grpo:polite)."""
    CALLS.append((prompts, replies, fields))
    return [float("please" in r) for r in replies]


def wrong_length(prompts, replies, **fields):
    return [1.0]


def not_finite(prompts, replies, **fields):
    return [float("nan")] * len(replies)


def test_user_reward_functions_get_the_documented_arguments():
    from gptsmith.train.rewards import parse_rewards, total_reward

    terms = parse_rewards("tests.test_grpo:polite@2,truth@0.5", None)
    rewards = total_reward(terms, _records(), _replies(["please 1", "2", "nope"]))
    # polite: 1, 0, 0 (x2); truth: 2 + 1 (right and brief), 2 + 1, 0 + 1 (x0.5)
    torch.testing.assert_close(rewards, torch.tensor([2 + 1.5, 1.5, 0.5]))
    prompts, replies, fields = CALLS[-1]
    assert prompts == ["What is 0 plus 1?", "What is 1 plus 1?", "What is 2 plus 1?"]
    assert replies == ["please 1", "2", "nope"]
    assert fields == {"answer": ["1", "2", "3"], "topic": ["sums"] * 3}


def test_the_truth_reward_scores_shown_work_and_conversation_as_the_labeler_does():
    from gptsmith.train.rewards import parse_rewards, total_reward

    talk = {"messages": [{"role": "user", "content": "Hello, how are you?"}], "kind": "talk"}
    sum_ = {"messages": [{"role": "user", "content": "What is 47 plus 38?"}], "answer": "85",
            "show_work": True}
    records = [talk, talk, sum_, sum_]
    replies = _replies(["I am well.", "The answer is 12.",
                        "7 + 8 = 15, write 5 carry 1; 4 + 3 + 1 = 8; so 85.", "85."])
    rewards = total_reward(parse_rewards("truth", None), records, replies)
    # talk: no number 2 + ended 1, a number 0 + 1; sums: right and worked 4, right and brief 3
    torch.testing.assert_close(rewards, torch.tensor([3.0, 1.0, 4.0, 3.0]))
    with pytest.raises(GptsmithError, match="needs an 'answer' field.*neither"):
        total_reward(parse_rewards("truth", None), [{"messages": talk["messages"]}],
                     _replies(["hi"]))


@pytest.mark.parametrize("spec,message", [
    ("no_such_module_here:f", "cannot import module"),
    ("tests.test_grpo:missing", "has no function 'missing'"),
    ("tests.test_grpo:wrong_length", "expected a list of 3 numbers"),
    ("tests.test_grpo:not_finite", "not a finite number"),
    ("truth@lots", "weight 'lots' is not a number"),
    ("nonsense", "not 'truth', a reward-model run directory or module:function"),
])
def test_bad_reward_specs_are_named(spec, message):
    from gptsmith.train.rewards import parse_rewards, total_reward

    with pytest.raises(GptsmithError, match=message):
        total_reward(parse_rewards(spec, None), _records(), _replies(["a", "b", "c"]))


@pytest.mark.parametrize("bad,message", [
    ({"advantage": "ppo"}, "--advantage must be one of"),
    ({"group_size": 1}, "--group-size must be >= 2"),
    ({"temperature": 0.0}, "--temperature must be > 0"),
    ({"loss_aggregation": "mean"}, "--loss-aggregation must be one of"),
])
def test_bad_settings_are_named(bad, message):
    from gptsmith.train.grpo import check_config

    with pytest.raises(GptsmithError, match=message):
        check_config(GRPOConfig(policy="p", prompts="q", **bad))


def test_grpo_learns_a_verifiable_reward(tiny_run, tmp_path):
    """From an untrained tiny policy: reward 'the reply has a 7' (a user function) rises
    within a few iterations. (With 'starts with 7', which the untrained policy samples about
    1% of the time, and 4 prompts an iteration, 8 seeds in 91 never learned.)"""
    from gptsmith.train.grpo import grpo
    from gptsmith.train.loop import TrainConfig

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": "Pick a digit."}) + "\n"
                               for _ in range(16)))

    def config(out, steps):
        return GRPOConfig(
            policy=str(tiny_run), prompts=str(prompts), reward="tests.test_grpo:has_a_7",
            out=str(out), group_size=8, max_tokens=2, beta=0.0,
            train=TrainConfig(steps=steps, batch_size=8, lr=3e-2, warmup_steps=1,
                              min_lr_ratio=1.0, weight_decay=0.0, checkpoint_every=5,
                              log_every=1, precision="fp32", device="cpu", progress=False))

    grpo(config(tmp_path / "run", 25))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["reward"] for r in rows[:3]) / 3
    last = sum(r["reward"] for r in rows[-3:]) / 3
    assert last > first + 0.3, (first, last)
    assert {"zero_spread_groups", "kl", "entropy", "clipfrac", "reply_tokens",
            "end_rate", "grad_norm"} <= set(rows[-1])


def starts_with_7(prompts, replies, **fields):
    return [float(r.lstrip().startswith("7")) for r in replies]


def has_a_7(prompts, replies, **fields):
    return [float("7" in r) for r in replies]


def test_the_plot_is_drawn_before_the_run_is_marked_done(tiny_run, tmp_path, monkeypatch):
    """summary.json marks a run as done (a rerun only says so): a kill between it and the
    plot left a finished run without grpo.png for good."""
    import gptsmith.train.loop as loop
    from gptsmith.train.grpo import grpo
    from gptsmith.train.loop import TrainConfig

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Pick a digit.", "answer": "7"}) + "\n")
    plotted_when_done = []
    real = loop.atomic_write_text

    def write(path, text):
        if path.name == "summary.json":
            plotted_when_done.append((path.parent / "grpo.png").exists())
        real(path, text)

    monkeypatch.setattr(loop, "atomic_write_text", write)
    grpo(GRPOConfig(policy=str(tiny_run), prompts=str(prompts), out=str(tmp_path / "run"),
                    group_size=2, max_tokens=2,
                    train=TrainConfig(steps=1, batch_size=1, precision="fp32", device="cpu",
                                      progress=False)))
    assert plotted_when_done == [True]


@pytest.mark.parametrize("minibatches,epochs", [(1, 1), (2, 2)])
def test_pi_old_is_the_policy_before_the_iteration_with_no_extra_forward(
        tiny_run, tmp_path, monkeypatch, minibatches, epochs):
    """π_old is the policy as it samples, before the iteration's first step; the first
    minibatch's training forward supplies it, so one minibatch needs no forward of its own
    (two need one more, over the second minibatch's rows)."""
    import gptsmith.train.grpo as g
    from gptsmith.train.loop import TrainConfig

    real_logprobs, real_old = g.reply_logprobs, g.GRPOTrainer._old_logprobs
    forwards, gaps = [], []

    def counted(*args, **kwargs):
        forwards.append(len(args[1]))
        return real_logprobs(*args, **kwargs)

    def checked(self, r, first, first_logp):
        old = real_old(self, r, first, first_logp)
        with torch.no_grad():
            fresh = real_logprobs(self.model, r.seq, r.pos, self.grpo.temperature)
        gaps.append(float(((old - fresh) * r.mask).abs().max()))
        return old

    monkeypatch.setattr(g, "reply_logprobs", counted)
    monkeypatch.setattr(g.GRPOTrainer, "_old_logprobs", checked)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Pick {i}."}) + "\n" for i in range(8)))
    g.grpo(GRPOConfig(
        policy=str(tiny_run), prompts=str(prompts), reward="tests.test_grpo:starts_with_7",
        out=str(tmp_path / "run"), group_size=4, max_tokens=4, beta=0.0,
        minibatches=minibatches, epochs=epochs,
        train=TrainConfig(steps=3, batch_size=2, lr=3e-2, warmup_steps=0, eval_every=100,
                          checkpoint_every=100, precision="fp32", device="cpu",
                          progress=False)))
    assert len(gaps) == 3 and max(gaps) < 1e-5
    extra = 1 if minibatches > 1 else 0
    assert len(forwards) == 3 * (minibatches * epochs + extra)
    assert sum(forwards) == 3 * 8 * (epochs + extra / 2)  # 8 replies an iteration
