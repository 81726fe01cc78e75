"""Reward model and PPO: the pieces against hand-computed values, then short real runs."""

import json
import statistics

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
    # (1, 2, 3): mean 2, variance 2/3 -> (-1, 0, 1) / sqrt(2/3); the masked 100 is ignored
    torch.testing.assert_close(w, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]) / (2 / 3) ** 0.5)
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
    assert [responses[i].text for i in ranking] == ["7", "It is 7.", "It is 9.", "Seven is it"]
    assert [responses[i].ended for i in ranking] == [True, False, True, False]
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
    val = write(root / "val.jsonl", [{"prompt": DIGIT_PROMPT, "response": str(i)}
                                     for i in range(10)])  # one prompt: no split by content
    sft(SFTConfig(base=str(tiny_run), data=str(demos), out=str(root / "sft"), val_data=str(val),
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
                     kl_coef=0.01, kl_target=0.0, minibatches=2, ppo_epochs=4,
                     train=TrainConfig(steps=steps, batch_size=32, lr=5e-4, warmup_steps=1,
                                       min_lr_ratio=1.0, weight_decay=0.0, eval_every=1000,
                                       checkpoint_every=4, log_every=1, precision="fp32",
                                       progress=False, **train))


@pytest.mark.slow
def test_ppo_learns_a_toy_reward(digit_runs, tmp_path):
    """Reward 1 for answering 7: from chance (about 1 in 10) to most answers. The end is
    read as the median of the last 5 iterations: 2 seeds of 41 reached 1.0 and then
    fell for an iteration or two (to 0.06 once)."""
    from gptsmith.train.ppo import ppo

    ppo(ppo_config(digit_runs, tmp_path / "ppo", steps=30),
        reward_fn=lambda texts: [float(t.strip().startswith("7")) for t in texts])
    rows = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["rm_score"] for r in rows[:3]) / 3
    last = statistics.median(r["rm_score"] for r in rows[-5:])
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

    def pairs(digits, repeat):
        return [{"prompt": DIGIT_PROMPT, "responses": ["7", str(d)], "ranking": [0, 1]}
                for d in digits for _ in range(repeat)]

    # one prompt throughout, so the held-out pairs come in their own file: digits never
    # seen in training. lr 2e-3: at 3e-3, 4 seeds of 43 never left the loss of ln 2 (a fresh
    # head reads states at <|end|> that differ by ~1e-5 between digits); at 2e-3, 43 of 43
    # learned
    data = write(tmp_path / "cmp.jsonl", pairs((0, 1, 2, 3, 4, 5, 6), 14))
    val = write(tmp_path / "val.jsonl", pairs((8, 9), 3))
    summary = train_reward_model(RMConfig(
        base=str(digit_runs / "sft"), data=str(data), out=str(tmp_path / "rm"),
        val_data=str(val), train=TrainConfig(steps=40, batch_size=8, lr=2e-3, warmup_steps=2,
                                            eval_every=20, precision="fp32", progress=False)))
    assert summary["val_accuracy"] > 0.9
    assert "raw_reward_std" in summary


# -- PPO's pieces on a tiny untrained policy (fast) ---------------------------------------

@pytest.fixture(scope="module")
def tiny_ppo(tiny_run, tmp_path_factory):
    """A tiny policy run (untrained) and a reward model made from it, as ppo() loads them."""
    from gptsmith.runs import load_model, save_model
    from gptsmith.train.reward import reward_model_from

    root = tmp_path_factory.mktemp("tinyppo")
    policy, tok = load_model(tiny_run)
    (root / "rm").mkdir()
    torch.manual_seed(1)
    save_model(root / "rm", reward_model_from(policy))
    tok.save(root / "rm" / "tokenizer.json")
    return root


def tiny_trainer(tiny_run, root, prompts, **overrides):
    from gptsmith.train.loop import TrainConfig
    from gptsmith.train.ppo import PPOConfig, build_trainer

    train = {"steps": 2, "batch_size": len(prompts), "precision": "fp32", "device": "cpu",
             "progress": False, **overrides.pop("train", {})}
    cfg = PPOConfig(policy=str(tiny_run), reward=str(root / "rm"), prompts="unused",
                    out=overrides.pop("out", str(root / "out")), max_tokens=6, **overrides,
                    train=TrainConfig(**train))
    return build_trainer(cfg, prompts)


PROMPTS = [{"messages": [{"role": "user", "content": text}]} for text in
           ("hi", "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar.",
            "What is 4 plus 5?", "the winter of our discontent")]


def test_rollout_rows_equal_each_row_alone(tiny_run, tiny_ppo):
    """Prompts of different lengths in one rollout: each row's log-probs, values and reward
    equal a forward pass over that row alone; its tokens are what the engine samples for it."""
    import torch.nn.functional as F

    from gptsmith.chat import prompt_ids
    from gptsmith.engine import Sampling, generate
    from gptsmith.train.reward import score_sequences

    tr = tiny_trainer(tiny_run, tiny_ppo, PROMPTS, temperature=0.7)
    ro = tr.rollout()
    tok, policy = tr.tok, tr.model.policy
    rows = ro["seq"].tolist()
    assert len({len(prompt_ids(tok, q["messages"])) for q in PROMPTS}) == len(PROMPTS)
    for i, row in enumerate(rows):  # the batch is shuffled: find each row's prompt
        (p,) = [ids for q in PROMPTS if row[:len(ids := prompt_ids(tok, q["messages"]))] == ids]
        n = int(ro["mask"][i].sum())
        reply = ro["seq"][i, len(p):len(p) + n].tolist()
        alone = generate(policy, [p], Sampling(max_tokens=6, temperature=0.7,
                                               seed=tr.cfg.seed + i, stop_ids=(tok.end_id,)))[0]
        assert reply == alone
        x = torch.tensor([p + reply])
        with torch.no_grad():
            logp = F.log_softmax(policy(x)[0, len(p) - 1:-1] / 0.7, -1)
            want = logp.gather(1, torch.tensor(reply)[:, None]).squeeze(1)
            torch.testing.assert_close(ro["logp"][i, :n], want, rtol=1e-4, atol=1e-5)
            values = tr.model.value(x)[0, len(p) - 1:-1]
            torch.testing.assert_close(ro["values"][i, :n], values, rtol=1e-4, atol=1e-5)
            score = score_sequences(tr.reward_model, [p + reply], tok.pad_id)
        assert float(ro["score"][i]) == pytest.approx(float(score), abs=1e-5)


def test_rollout_samples_in_the_precision_of_its_log_probs(tiny_run, tiny_ppo, monkeypatch):
    """π_old must be the distribution sampled from: under bf16 the engine runs under the
    same autocast as the log-prob pass."""
    import gptsmith.train.rollout as rollout_module

    seen = []
    real = rollout_module.generate

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real(*args, **kwargs)

    monkeypatch.setattr(rollout_module, "generate", spy)
    tiny_trainer(tiny_run, tiny_ppo, PROMPTS, train={"precision": "bf16"}).rollout()
    tiny_trainer(tiny_run, tiny_ppo, PROMPTS, train={"precision": "fp32"}).rollout()
    assert seen == [True, False]


def test_first_minibatch_has_ratio_one(tiny_run, tiny_ppo):
    """The update starts from the policy that made the rollout: ratio exactly 1, nothing
    clipped, until the first optimizer step; both models' gradient norms are logged."""
    tr = tiny_trainer(tiny_run, tiny_ppo, PROMPTS, ppo_epochs=1, minibatches=1)
    out = tr.update(tr.rollout())
    assert out["approx_kl"] == 0.0 and out["clipfrac"] == 0.0
    assert out["grad_norm_policy"] > 0 and out["grad_norm_value"] > 0


def test_a_minibatch_computes_only_up_to_its_longest_reply(tiny_run, tiny_ppo):
    """Rows padded to the batch's longest reply: a minibatch of shorter ones runs the model
    over fewer columns, with the log-probs and values the whole batch gave them."""
    from gptsmith.train.rollout import reply_logprobs

    tr = tiny_trainer(tiny_run, tiny_ppo, PROMPTS, temperature=0.7)
    ro = tr.rollout()
    ends = ro["pos"].max(1).values
    short = (ends < ends.max()).nonzero().flatten()
    assert len(short)  # prompts of different lengths: some rows end early
    widths = []
    hook = tr.model.policy.register_forward_pre_hook(
        lambda m, args: widths.append(args[0].size(1)))
    with torch.no_grad():
        logp = reply_logprobs(tr.model.policy, ro["seq"][short], ro["pos"][short], 0.7)
    hook.remove()
    assert widths == [int(ends[short].max()) + 1] and widths[0] < ro["seq"].size(1) - 1
    mask = ro["mask"][short] > 0
    torch.testing.assert_close(logp[mask], ro["logp"][short][mask], rtol=1e-5, atol=1e-6)


def test_the_progress_bar_shows_reward_kl_and_accuracy(tiny_run, tiny_ppo, tmp_path,
                                                       monkeypatch):
    import gptsmith.train.loop as loop

    shown = []

    class Bar:  # tqdm, recording what the bar would show after each step
        def __init__(self, *args, **kwargs):
            pass

        def set_postfix(self, **fields):
            shown.append(fields)

        def update(self, n):
            pass

        def write(self, text):
            pass

        def close(self):
            pass

    monkeypatch.setattr(loop, "tqdm", Bar)
    graded = [{**q, "answer": "9"} for q in PROMPTS]
    tr = tiny_trainer(tiny_run, tiny_ppo, graded, out=str(tmp_path / "ppo"))
    tr.run()
    assert len(shown) == 2
    assert {"loss", "reward", "kl", "acc", "tok_s"} <= set(shown[-1])
    rows = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert shown[-1]["reward"] == f"{rows[-1]['rm_score']:.3f}"
    assert shown[-1]["acc"] == f"{rows[-1]['train_accuracy']:.3f}"


def test_the_plots_are_drawn_before_the_run_is_marked_done(tiny_run, tiny_ppo, tmp_path,
                                                           monkeypatch):
    """summary.json marks a run as done (a rerun only says so): a kill between it and the
    plots left a finished run without ppo.png for good."""
    import gptsmith.train.loop as loop
    from gptsmith.train.loop import TrainConfig
    from gptsmith.train.ppo import PPOConfig, ppo

    prompts = write(tmp_path / "p.jsonl", [{"prompt": "hi"}] * 2)
    plotted_when_done = []
    real = loop.atomic_write_text

    def spy(path, text):
        if path.name == "summary.json":
            plotted_when_done.append((path.parent / "ppo.png").exists())
        real(path, text)

    monkeypatch.setattr(loop, "atomic_write_text", spy)
    ppo(PPOConfig(policy=str(tiny_run), reward=str(tiny_ppo / "rm"), prompts=str(prompts),
                  out=str(tmp_path / "ppo"), max_tokens=2, minibatches=1,
                  train=TrainConfig(steps=1, batch_size=2, precision="fp32", device="cpu",
                                    progress=False)))
    assert plotted_when_done == [True]


def test_policy_loss_clips_in_the_advantage_direction():
    from gptsmith.train.ppo import clipped_policy_loss

    mask = torch.ones(1, 4)
    # ratio: past 1+ε, past 1-ε, past 1+ε, past 1-ε; advantage: +, +, -, -
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    clipped_policy_loss(ratio, adv, mask, clip=0.2).backward()
    # moved past the clip in the advantage's favour (1 and 4): no gradient; against it
    # (2 and 3): the unclipped, pessimistic term keeps pulling back
    assert ratio.grad.tolist() == [[0.0, -0.25, 0.25, 0.0]]


def test_value_loss_takes_the_worse_of_clipped_and_unclipped():
    from gptsmith.train.ppo import clipped_value_loss

    mask = torch.ones(1, 2)
    old_v, ret = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    v = torch.tensor([[2.0, 0.5]], requires_grad=True)
    loss = clipped_value_loss(v, old_v, ret, mask, clip=0.2)
    # token 1: unclipped (2-1)^2 = 1 vs clipped (0.2-1)^2 = .64 -> 1, gradient flows
    # token 2: unclipped (.5-1)^2 = .25 vs clipped (.2-1)^2 = .64 -> .64, clipped: no gradient
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.64) / 2)
    loss.backward()
    assert v.grad[0].tolist() == pytest.approx([0.5, 0.0])


@pytest.mark.parametrize("bad,message", [
    ({"temperature": 0.0}, "must be > 0"),
    ({"train": {"grad_accum": 2}}, "--train.grad-accum does not apply to PPO"),
    ({"train": {"compile": True}}, "--train.compile is not supported by PPO"),
])
def test_ppo_refuses_settings_it_would_ignore(bad, message):
    from gptsmith.train.loop import TrainConfig
    from gptsmith.train.ppo import PPOConfig, check_config

    cfg = PPOConfig(policy="p", reward="r", prompts="q", temperature=bad.get("temperature", 1.0),
                    train=TrainConfig(**bad.get("train", {})))
    with pytest.raises(GptsmithError, match=message):
        check_config(cfg)


def test_reward_model_from_an_untied_model(tokenizer):
    from gptsmith.model import GPT, GPTConfig
    from gptsmith.train.reward import reward_model_from

    policy = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, depth=1, seq_len=32,
                           tie_embeddings=False))
    rm = reward_model_from(policy)
    assert rm.cfg.head == "scalar" and not hasattr(rm, "lm_head")
    assert torch.equal(rm.embed_tokens.weight, policy.embed_tokens.weight)
    assert rm(torch.tensor([[1, 2, 3]])).shape == (1, 3)


def test_rankings_keep_what_the_policy_generated(tiny_run, tmp_path):
    """The labeler writes each reply's sampled ids and whether it ended; the reward model
    trains on exactly those ids (no <|end|> added to a reply that never ended), which is
    what PPO scores."""
    from gptsmith.chat import prompt_ids
    from gptsmith.engine import Sampling
    from gptsmith.label import label
    from gptsmith.runs import load_model
    from gptsmith.train.reward import encode_group

    questions = write(tmp_path / "q.jsonl", [{"prompt": f"What is {i} plus 3?",
                                              "answer": str(i + 3)} for i in range(6)])
    model, tok = load_model(tiny_run)
    label(str(tiny_run), str(questions), str(tmp_path / "r.jsonl"), k=4,
          s=Sampling(max_tokens=5, temperature=1.0, seed=0))
    groups, _ = read_comparisons(tmp_path / "r.jsonl")
    assert groups, "the tiny model's replies should not all tie"
    ended_seen = set()
    for g in groups:
        prompt = prompt_ids(tok, g.prompt)
        for i, seq in enumerate(encode_group(g, tok, model.cfg.seq_len)):
            body = seq[len(prompt):]
            assert seq[:len(prompt)] == prompt
            assert (body[-1] == tok.end_id) == g.ended[i]
            assert body[:len(body) - g.ended[i]] == g.reply_ids[i]
            ended_seen.add(g.ended[i])
    assert False in ended_seen


def test_reply_ids_that_do_not_match_the_text_fall_back_to_it(tokenizer):
    from gptsmith.data.comparisons import PromptGroup
    from gptsmith.train.reward import encode_group

    g = PromptGroup([{"role": "user", "content": "q"}], ["ab", "cd"], [(0, 1)], "f:1",
                    ended=[False, True],
                    reply_ids=[[ord("a") + 10**6], tokenizer.encode("c") + tokenizer.encode("d")])
    seqs = encode_group(g, tokenizer, 64)
    assert seqs[0][-len(tokenizer.encode("ab")):] == tokenizer.encode("ab")  # out of vocab
    assert seqs[1][-3:] == tokenizer.encode("c") + tokenizer.encode("d") + [tokenizer.end_id]


def test_repeated_prompts_fall_on_one_side_of_the_split(tmp_path):
    from gptsmith.data.demos import Conversation
    from gptsmith.data.shards import split_held_out
    from gptsmith.train.reward import group_key
    from gptsmith.train.sft import conversation_key

    convs = [Conversation([{"role": "user", "content": f"q{i % 10}"},
                           {"role": "assistant", "content": f"a{i}"}], f"d.jsonl:{i + 1}")
             for i in range(200)]
    kept, out = split_held_out(convs, conversation_key, 0.3)
    assert out and kept
    assert not {c.messages[0]["content"] for c in kept} & {c.messages[0]["content"] for c in out}
    groups, _ = read_comparisons(write(tmp_path / "c.jsonl", [
        {"prompt": f"q{i % 10}", "chosen": "a", "rejected": f"b{i}"} for i in range(200)]))
    kept, out = split_held_out(groups, group_key, 0.3)
    assert out and kept
    assert not {group_key(g) for g in kept} & {group_key(g) for g in out}

