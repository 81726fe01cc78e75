"""Reward model and PPO: the pieces against hand-computed values, then short real runs."""

import json

import pytest
import torch

from gptsmith.chat import Reply
from gptsmith.data.comparisons import ranking_pairs, read_comparisons, to_group
from gptsmith.errors import GptsmithError
from gptsmith.label import rank
from gptsmith.train.ppo import KLController, gae, token_rewards, whiten
from gptsmith.train.reward import pairwise_loss


def test_pairwise_loss_value_and_gradient_sign():
    r = torch.tensor([1.0, 0.0], requires_grad=True)
    loss, acc = pairwise_loss(r, [[(0, 1)]])
    assert loss.item() == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(1.0)).item())
    loss.backward()
    assert r.grad[0] < 0 < r.grad[1]  # descending raises the chosen, lowers the rejected
    assert acc == 1.0


def test_every_prompt_weighs_the_same_however_many_pairs():
    r = torch.tensor([2.0, 1.0, 0.0, 0.0, 1.0])
    # prompt A: 3 pairs among replies 0..2 (all right); prompt B: 1 pair, wrong way round
    loss, acc = pairwise_loss(r, [[(0, 1), (0, 2), (1, 2)], [(3, 4)]])
    f = torch.nn.functional.logsigmoid
    a = -(f(torch.tensor(1.0)) + f(torch.tensor(2.0)) + f(torch.tensor(1.0))) / 3
    b = -f(torch.tensor(-1.0))
    assert loss.item() == pytest.approx(((a + b) / 2).item())
    assert acc == 3 / 4


def test_gae_matches_a_hand_computed_example():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.2, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.9)
    # row 0: d2 = 1 - .7 = .3; d1 = .7 - .6 = .1 -> .1 + .9*.3 = .37; d0 = .1 + .9*.37 = .433
    # row 1 ends at t=1: d1 = 2 - .2 = 1.8; d0 = .2 - .1 + .9*1.8 = 1.72
    torch.testing.assert_close(adv, torch.tensor([[0.433, 0.37, 0.3], [1.72, 1.8, 0.0]]))
    torch.testing.assert_close(ret[0], torch.tensor([0.933, 0.97, 1.0]))


def test_kl_penalty_on_every_token_and_score_on_the_last():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -9.0], [-2.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    r = token_rewards(torch.tensor([2.0, 3.0]), logp, ref, mask, beta=0.1,
                      ended=torch.tensor([True, False]), no_end_penalty=1.0)
    torch.testing.assert_close(r, torch.tensor([[-0.05, 2.0, 0.0], [-0.1, 0.0, 2.0]]))


def test_whitening_and_kl_controller():
    x, m = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = whiten(x, m)
    assert abs(float(w[0, :3].mean())) < 1e-6 and float(w[0, 3]) == 0.0
    kl = KLController(0.1, target=1.0, horizon=100)
    kl.update(3.0, 10)  # too much KL: β grows, by at most 20% x 10/100
    assert kl.coef == pytest.approx(0.1 * 1.02)
    fixed = KLController(0.1, target=0.0, horizon=100)
    fixed.update(3.0, 10)
    assert fixed.coef == 0.1


def test_ranking_expands_to_all_ordered_pairs():
    assert ranking_pairs([2, 0, 1]) == [(2, 0), (2, 1), (0, 1)]
    g = to_group({"prompt": "p", "responses": list("abcd"), "ranking": [3, 1, 0, 2]}, "f:1")
    assert len(g.pairs) == 6 and g.pairs[0] == (3, 1)


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_every_comparison_format(tmp_path):
    msgs = [{"role": "user", "content": "2+2?"}]
    records = [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {"chosen": msgs + [{"role": "assistant", "content": "4"}],
         "rejected": msgs + [{"role": "assistant", "content": "5"}]},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant: 4",
         "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant: 5"},
        {"prompt": "2+2?", "responses": ["5", "4", "four"], "ranking": [1, 2, 0]},
    ]
    groups, skipped = read_comparisons(write(tmp_path / "c.jsonl", records))
    assert skipped == 0 and [len(g.pairs) for g in groups] == [1, 1, 1, 3]
    assert groups[0].prompt == groups[1].prompt == msgs
    assert [m["role"] for m in groups[2].prompt] == ["user", "assistant", "user"]
    assert groups[2].replies == ["4", "5"] and groups[3].replies[1] == "4"


BAD = {
    "identical": ({"prompt": "p", "chosen": "same", "rejected": "same"},
                  "fields 'chosen' and 'rejected' are identical"),
    "hh without assistant": ({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: yo"},
                             "field 'chosen' has no final '\\n\\nAssistant:' turn"),
    "ranking not a permutation": ({"prompt": "p", "responses": ["a", "b", "c"],
                                   "ranking": [0, 0, 1]}, "field 'ranking' must be a permutation"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_comparisons_name_file_line_and_field(case, tmp_path):
    record, message = BAD[case]
    path = write(tmp_path / "c.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, record])
    with pytest.raises(GptsmithError) as err:
        read_comparisons(path)
    assert f"c.jsonl:2: {message}" in str(err.value)
    groups, skipped = read_comparisons(path, skip_bad=True)
    assert len(groups) == 1 and skipped == 1


def test_truth_labeler_prefers_correct_then_brief_and_drops_ties():
    replies = [Reply("It is 9.", True, 4), Reply("It is 7.", False, 32), Reply("7", True, 2),
               Reply("It is 8.", True, 4), Reply("Seven is it", False, 32)]
    responses, ranking = rank(replies, "7")
    assert [responses[i] for i in ranking] == ["7", "It is 7.", "It is 9.", "Seven is it"]
    assert rank([Reply("8", True, 2), Reply("9", True, 2)], "7") is None


# -- short real runs ----------------------------------------------------------------------

DIGIT_PROMPT = "Pick a digit."


@pytest.fixture(scope="module")
def digit_runs(tiny_run, tmp_path_factory):
    """An SFT policy that answers DIGIT_PROMPT with a uniformly random digit, and a
    (untrained) reward model made from it."""
    from gptsmith.runs import load_model, save_model
    from gptsmith.train.loop import TrainConfig
    from gptsmith.train.reward import reward_model_from
    from gptsmith.train.sft import SFTConfig, sft

    root = tmp_path_factory.mktemp("digits")
    demos = write(root / "demos.jsonl", [{"prompt": DIGIT_PROMPT, "response": str(i % 10)}
                                         for i in range(300)])
    sft(SFTConfig(base=str(tiny_run), data=str(demos), out=str(root / "sft"), val_fraction=0.1,
                  train=TrainConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=5,
                                    eval_every=60, precision="fp32", progress=False)))
    policy, tok = load_model(root / "sft")
    (root / "rm").mkdir()
    save_model(root / "rm", reward_model_from(policy))
    tok.save(root / "rm" / "tokenizer.json")
    write(root / "prompts.jsonl", [{"prompt": DIGIT_PROMPT}] * 64)
    return root


def ppo_config(root, out, steps, **train):
    from gptsmith.train.loop import TrainConfig
    from gptsmith.train.ppo import PPOConfig

    return PPOConfig(policy=str(root / "sft"), reward=str(root / "rm"),
                     prompts=str(root / "prompts.jsonl"), out=str(out), max_tokens=3,
                     kl_coef=0.01, kl_target=0.0, minibatches=2,
                     train=TrainConfig(steps=steps, batch_size=32, lr=5e-4, warmup_steps=1,
                                       min_lr_ratio=1.0, weight_decay=0.0, eval_every=1000,
                                       checkpoint_every=4, log_every=1, precision="fp32",
                                       progress=False, **train))


@pytest.mark.slow
def test_ppo_learns_a_toy_reward(digit_runs, tmp_path):
    """Reward 1 for answering 7: from chance (about 1 in 10) to most answers."""
    from gptsmith.train.ppo import ppo

    ppo(ppo_config(digit_runs, tmp_path / "ppo", steps=30),
        reward_fn=lambda texts: [float(t.strip().startswith("7")) for t in texts])
    rows = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["rm_score"] for r in rows[:3]) / 3
    last = sum(r["rm_score"] for r in rows[-3:]) / 3
    assert first < 0.3 and last > 0.8, (first, last)
    assert all(k in rows[-1] for k in ("kl", "entropy", "clipfrac", "approx_kl", "value_loss",
                                       "explained_var", "reply_tokens", "beta"))
    assert (tmp_path / "ppo" / "ppo.png").exists()


@pytest.mark.slow
def test_killed_ppo_resumes_to_the_same_result(digit_runs, tmp_path):
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    def run(out, fault=""):
        flags = ["--policy", str(digit_runs / "sft"), "--reward", str(digit_runs / "rm"),
                 "--prompts", str(digit_runs / "prompts.jsonl"), "--out", str(out),
                 "--max-tokens", "3", "--minibatches", "2", "--train.steps", "10",
                 "--train.batch-size", "16", "--train.checkpoint-every", "4",
                 "--train.precision", "fp32", "--train.threads", "1", "--no-train.progress"]
        return subprocess.run([sys.executable, "-m", "gptsmith", "ppo", *flags],
                              env={**os.environ, "GPTSMITH_FAULT": fault},
                              capture_output=True, text=True, timeout=300)

    assert run(tmp_path / "whole").returncode == 0
    assert run(tmp_path / "broken", fault="after-step:6").returncode == -9
    resumed = run(tmp_path / "broken")
    assert resumed.returncode == 0 and "from step 4" in resumed.stdout, resumed.stderr

    def rows(run_dir):
        return [{k: v for k, v in json.loads(x).items() if k != "tok_per_s"}
                for x in (run_dir / "metrics.jsonl").read_text().splitlines()]

    assert rows(tmp_path / "broken") == rows(tmp_path / "whole")
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(
        tmp_path / "broken" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_reward_model_learns_comparisons(digit_runs, tmp_path):
    """Prefer '7' over any other digit: held-out pairwise accuracy well above chance."""
    from gptsmith.train.loop import TrainConfig
    from gptsmith.train.reward import RMConfig, train_reward_model

    records = [{"prompt": DIGIT_PROMPT, "responses": ["7", str(d)], "ranking": [0, 1]}
               for d in (0, 1, 2, 3, 4, 5, 6, 8, 9) for _ in range(12)]
    data = write(tmp_path / "cmp.jsonl", records)
    summary = train_reward_model(RMConfig(
        base=str(digit_runs / "sft"), data=str(data), out=str(tmp_path / "rm"),
        val_fraction=0.2, train=TrainConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=2,
                                            eval_every=20, precision="fp32", progress=False)))
    assert summary["val_accuracy"] > 0.9
    assert "raw_reward_std" in summary
