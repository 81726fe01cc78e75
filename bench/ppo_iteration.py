"""One PPO iteration: our ``PPOTrainer.train_step`` vs TRL 1.12.0's ``PPOTrainer``.

An iteration is what both trainers do per rollout batch: sample ``--batch-size`` replies of
``--response-length`` tokens from the policy (KV-cache generation), score them with the
reference, value and reward models, compute KL-penalised rewards and GAE advantages, then
``--ppo-epochs`` passes of ``--minibatches`` clipped policy + value updates (one AdamW step
per minibatch). TRL's side is ``trl.experimental.ppo.PPOTrainer`` (1.12.0 is the last TRL
release that has it; it is a bench extra only, never a dependency of gptsmith).

Models: a random-init GPT of the default shape (``GPTConfig(depth=4, seq_len=256)``, vocab of
a byte-level BPE trained here offline on synthetic text) saved as a policy run directory, and
a scalar-head copy (``reward_model_from``, head made random with zero bias) saved as a reward
run directory; ours loads them the way ``ppo()`` does (policy + reference from the policy run,
reward + value from the reward run). TRL gets ``LlamaForCausalLM`` (policy, reference) and
``LlamaForSequenceClassification(num_labels=1)`` (reward, value) twins holding the same
weights, checked to give the same fp32 outputs. Both sides see the same prompts (all of one
token length, so nobody pads them), the same batch, response length, temperature 1, PPO
epochs and minibatches, in the pipeline's precision (fp32 on a CPU without native bf16;
with bf16, TRL's ``bf16=True`` on CPU autocasts only the trained models).

Both sides are made to generate the full response length: TRL gets no stop token, and ours,
whose engine stops a row at ``<|end|>``, runs a random policy that rarely samples it (TRL
likewise treats a sampled ``<|pad|>`` as the end); the mean reply length of each side is
printed. How it is timed: ours calls ``trainer.train_step()`` directly; TRL can only run whole
``train()`` calls, so each round is one ``train()`` of ``--steps`` iterations and a callback
stamps the clock at ``on_train_begin`` and at every ``on_step_end``, so the seconds of each
iteration are the time between stamps (what ``train()`` does before its loop and after its last
step is left out and printed separately). TRL's console logging callbacks are removed. One
untimed warm-up iteration per side, then ``--rounds`` rounds alternate ``--steps`` iterations
of ours with ``--steps`` of TRL's, so that drift in the machine's speed hits both; the
medians over iterations give seconds per iteration and the ratio TRL/ours.

    .venv/bin/pip install trl==1.12.0      # adds accelerate, datasets; keeps torch/transformers
    .venv/bin/python bench/ppo_iteration.py                          # batch 32, 16 tokens
    .venv/bin/python bench/ppo_iteration.py --response-length 64 --threads 2
    .venv/bin/python bench/ppo_iteration.py --quick                  # a few seconds: does it run?
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import logging
import os
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from results import add_run_flags, record  # bench/ is on sys.path when run
from train_throughput import check_same_logits, hf_twin
from transformers import (
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
    TrainerCallback,
)

from gptsmith.chat import prompt_ids
from gptsmith.device import set_threads
from gptsmith.interop.hf import to_hf
from gptsmith.model import GPT, GPTConfig
from gptsmith.runs import save_model
from gptsmith.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer
from gptsmith.train.ppo import PPOConfig, PPOTrainer, build_trainer
from gptsmith.train.reward import reward_model_from

# --- shared with bench/reward_step.py -------------------------------------------------------


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """Sentences of made-up words (Zipf-distributed), digits and punctuation: enough variety
    for a BPE to fill a vocabulary of a few thousand ids, with no download."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(4000)]
    weights = [1 / (i + 1) for i in range(len(words))]
    texts = []
    for _ in range(n):
        ws = rng.choices(words, weights, k=rng.randint(6, 24))
        ws = [w if rng.random() > 0.1 else str(rng.randint(0, 999)) for w in ws]
        texts.append(" ".join(ws).capitalize() + rng.choice(".?!"))
    return texts


def make_tokenizer(vocab_size: int, out_dir: Path) -> tuple[Tokenizer, PreTrainedTokenizerFast]:
    """Our tokenizer, trained offline, and the same file wrapped for transformers / TRL."""
    path = out_dir / "tokenizer.json"
    train_tokenizer(synthetic_texts(4000), vocab_size=vocab_size, show_progress=False).save(path)
    tok = Tokenizer.load(path)
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<|bos|>",
                                     eos_token="<|end|>", pad_token="<|pad|>",
                                     padding_side="left")
    assert hf_tok.pad_token_id == tok.pad_id and hf_tok.eos_token_id == tok.end_id
    return tok, hf_tok


def ordinary_ids(shape: tuple[int, ...], vocab_size: int,
                 gen: torch.Generator | None = None) -> torch.Tensor:
    """Random ids of ordinary tokens: never a special one such as <|pad|>, which the HF twins
    would take for padding (the special tokens hold the first ids)."""
    return torch.randint(len(SPECIAL_TOKENS), vocab_size, shape, generator=gen)


def lm_twin(model: GPT, pad_id: int) -> LlamaForCausalLM:
    """``hf_twin`` (same weights) with our pad id; no eos, so generation never stops early."""
    hf = hf_twin(model)
    hf.config.pad_token_id = hf.generation_config.pad_token_id = pad_id
    hf.generation_config.bos_token_id = hf.generation_config.eos_token_id = None
    return hf


def scalar_twin(model: GPT, pad_id: int) -> LlamaForSequenceClassification:
    """A ``LlamaForSequenceClassification(num_labels=1)`` holding a scalar-head GPT's weights
    (Llama's score layer has no bias, so ours must be zero)."""
    assert model.cfg.head == "scalar" and not model.score.bias.any(), "needs a zero score bias"
    with contextlib.redirect_stdout(io.StringIO()):  # the config of the LM twin of that shape
        cfg = copy.deepcopy(hf_twin(GPT(dataclasses.replace(model.cfg, head="lm"))).config)
    cfg.num_labels, cfg.pad_token_id = 1, pad_id
    hf = LlamaForSequenceClassification(cfg)
    state = to_hf({k: v for k, v in model.state_dict().items() if not k.startswith("score.")})
    state["score.weight"] = model.score.weight.detach().clone()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return hf.train(model.training)


def random_scalar_head(rm: GPT, seed: int) -> GPT:
    """Give a reward model a random head (N(0, 0.02) weight, zero bias): scores that vary."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rm.score.weight.copy_(torch.randn(rm.score.weight.shape, generator=gen) * 0.02)
        rm.score.bias.zero_()
    return rm


@contextlib.contextmanager
def quiet():
    """Silence transformers/TRL/accelerate chatter (warnings, info logs, prints)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def silence_libraries() -> None:
    import transformers

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # we know it is experimental
    transformers.logging.set_verbosity_error()
    for name in ("accelerate", "trl", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="transformers")
    warnings.filterwarnings("ignore", module="trl")


class Clock(TrainerCallback):
    """Stamps the clock at each step end, and at train begin if ``from_begin``: a transformers
    trainer's loop, timed from the inside."""

    def __init__(self, from_begin: bool = True):
        self.from_begin, self.marks = from_begin, []

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks = [time.perf_counter()] if self.from_begin else []

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


def drop_console_callbacks(trainer) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


# --- the PPO bench --------------------------------------------------------------------------


def fixed_length_prompts(tok: Tokenizer, n: int, length: int, seed: int) -> list[dict]:
    """``n`` one-turn conversations whose generation prompt is exactly ``length`` tokens."""
    rng = random.Random(seed)
    words = " ".join(synthetic_texts(2000, seed=seed + 1)).split()
    out = []
    while len(out) < n:
        text = ""
        while True:
            text = (text + " " + rng.choice(words)).strip()
            messages = [{"role": "user", "content": text}]
            got = len(prompt_ids(tok, messages))
            if got >= length:
                break
        if got == length:
            out.append({"messages": messages})
    return out


def build_ours(args, tmp: Path, tok: Tokenizer, prompts: list[dict]) -> PPOTrainer:
    """A policy run and a reward run written to ``tmp``, loaded as ``ppo()`` loads them."""
    torch.manual_seed(args.seed)
    policy = GPT(GPTConfig(depth=args.depth, vocab_size=tok.vocab_size, seq_len=args.seq_len))
    rm = random_scalar_head(reward_model_from(policy), args.seed)
    for name, m in (("policy", policy), ("reward", rm)):
        (tmp / name).mkdir()
        save_model(tmp / name, m)
        tok.save(tmp / name / "tokenizer.json")
    cfg = PPOConfig(policy=str(tmp / "policy"), reward=str(tmp / "reward"),
                    out=str(tmp / "ours"), max_tokens=args.response_length, temperature=1.0,
                    ppo_epochs=args.ppo_epochs, minibatches=args.minibatches)
    cfg.train = dataclasses.replace(cfg.train, batch_size=args.batch_size, steps=10**6,
                                    precision=args.precision, threads=args.threads,
                                    seed=args.seed, progress=False)
    return build_trainer(cfg, prompts)


def build_trl(args, tmp: Path, ours: PPOTrainer, hf_tok, prompts: list[list[int]]):
    """TRL's PPOTrainer on Llama twins of our four models."""
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig as TRLConfig
    from trl.experimental.ppo import PPOTrainer as TRLTrainer
    from trl.experimental.utils import get_reward

    pad = hf_tok.pad_token_id
    policy = lm_twin(ours.model.policy, pad)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = lm_twin(ours.ref, pad)
    value = scalar_twin(ours.model.value, pad)
    reward = scalar_twin(ours.reward_model, pad)
    check_same_logits(ours.model.policy, policy)
    with torch.no_grad():  # the path TRL scores with: backbone hidden states, then the head
        idx = ordinary_ids((2, 64), ours.tok.vocab_size)
        err = (get_reward(reward, idx, pad, 0)[0].squeeze(-1) - ours.reward_model(idx)).abs()
    print(f"fp32 reward scores, ours vs HF: max abs difference {err.max():.2e}")
    assert err.max() < 1e-4, "reward twins differ"
    ppo, t = ours.ppo, ours.cfg
    config = TRLConfig(
        output_dir=str(tmp / "trl"), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, num_mini_batches=args.minibatches,
        num_ppo_epochs=args.ppo_epochs, response_length=args.response_length,
        temperature=1.0, total_episodes=args.batch_size * args.steps,
        local_rollout_forward_batch_size=args.batch_size, num_sample_generations=0,
        learning_rate=t.lr, lr_scheduler_type="constant", weight_decay=t.weight_decay,
        kl_coef=ppo.kl_coef, vf_coef=ppo.vf_coef, cliprange=ppo.clip,
        cliprange_value=ppo.value_clip, gamma=ppo.gamma, lam=ppo.lam,
        missing_eos_penalty=ppo.no_end_penalty, gradient_checkpointing=False,
        bf16=args.precision == "bf16", use_cpu=True, report_to="none", save_strategy="no",
        disable_tqdm=True, dataloader_pin_memory=False, seed=args.seed,
    )
    with quiet():
        trainer = TRLTrainer(args=config, processing_class=hf_tok, model=policy, ref_model=ref,
                             reward_model=reward, value_model=value,
                             train_dataset=Dataset.from_dict({"input_ids": prompts}))
    drop_console_callbacks(trainer)
    trainer.clock = Clock()
    trainer.add_callback(trainer.clock)
    # record reply lengths where TRL scores replies (a wrapper around its get_reward)
    import trl.experimental.ppo.ppo_trainer as trl_ppo

    trainer.reply_lengths = []
    original = trl_ppo.get_reward

    def recording_get_reward(model, query_responses, pad_token_id, context_length):
        out = original(model, query_responses, pad_token_id, context_length)
        if model is trainer.reward_model:
            trainer.reply_lengths += (out[2] - context_length + 1).tolist()
        return out

    trl_ppo.get_reward = recording_get_reward
    return trainer


def timed(fn, into: list[float]):
    """``fn``, appending the seconds of each call to ``into``."""

    def wrapper(*a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        into.append(time.perf_counter() - t0)
        return out

    return wrapper


def main():
    defaults = PPOConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=GPTConfig().vocab_size)
    p.add_argument("--batch-size", type=int, default=defaults.train.batch_size,
                   help="rollouts per iteration")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--response-length", type=int, default=defaults.max_tokens)
    p.add_argument("--ppo-epochs", type=int, default=4,
                   help="4, the shape of the README's row (the default run uses 2)")
    p.add_argument("--minibatches", type=int, default=defaults.minibatches)
    p.add_argument("--steps", type=int, default=2, help="timed iterations per side per round")
    add_run_flags(p, rounds=5)
    args = p.parse_args()
    if args.quick:
        args.depth, args.seq_len, args.vocab_size, args.prompt_len = 1, 64, 512, 12
        args.batch_size, args.response_length, args.ppo_epochs, args.minibatches = 4, 6, 1, 2
        args.steps, args.rounds = 1, 2

    set_threads(args.threads)
    silence_libraries()
    import trl

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tok, hf_tok = make_tokenizer(args.vocab_size, tmp)
        prompts = fixed_length_prompts(tok, args.batch_size, args.prompt_len, args.seed)
        ours = build_ours(args, tmp, tok, prompts)
        theirs = build_trl(args, tmp, ours, hf_tok, [prompt_ids(tok, q["messages"])
                                                     for q in prompts])
        c = ours.model.policy.cfg
        print(f"torch {torch.__version__}, TRL {trl.__version__}, {torch.get_num_threads()} "
              f"threads, {args.precision}; {c.depth} layers, width {c.n_embd}, heads "
              f"{c.n_head}/{c.n_kv_head}, mlp {c.mlp_hidden}, vocab {c.vocab_size}")
        print(f"iteration: {args.batch_size} prompts of {args.prompt_len} tokens, replies of "
              f"{args.response_length} tokens, {args.ppo_epochs} PPO epochs x "
              f"{args.minibatches} minibatches of {args.batch_size // args.minibatches}")
        print(f"TRL optimizer: {type(theirs.optimizer.optimizer).__name__} "
              f"fused={theirs.optimizer.optimizer.defaults.get('fused')}; ours: "
              f"{type(ours.optimizer).__name__} fused={ours.optimizer.defaults.get('fused')}")

        ours_times: list[float] = []
        ours_lengths: list[float] = []
        trl_times: list[float] = []
        trl_overhead: list[float] = []
        phases: dict[str, list[float]] = {"rollout": [], "update": []}
        for phase in phases:  # time our two halves (the wrapper costs two clock reads)
            setattr(ours, phase, timed(getattr(ours, phase), phases[phase]))

        def run_ours(n: int) -> list[float]:
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                m = ours.train_step()
                times.append(time.perf_counter() - t0)
                ours.step += 1
                ours_lengths.append(m["reply_tokens"])
            return times

        def run_trl(n: int) -> list[float]:
            theirs.args.num_total_batches = n
            t0 = time.perf_counter()
            with quiet():
                theirs.train()
            total = time.perf_counter() - t0
            times = theirs.clock.intervals()
            assert len(times) == n, f"TRL ran {len(times)} iterations, not {n}"
            trl_overhead.append(total - sum(times))
            return times

        run_ours(1)  # warm-up, untimed
        run_trl(1)
        ours_lengths.clear()
        for v in phases.values():
            v.clear()
        theirs.reply_lengths.clear()
        trl_overhead.clear()
        for r in range(args.rounds):
            a, b = run_ours(args.steps), run_trl(args.steps)
            ours_times += a
            trl_times += b
            print(f"round {r + 1}: ours {statistics.mean(a):7.3f} s/it   "
                  f"TRL {statistics.mean(b):7.3f} s/it")

        med_o, med_t = statistics.median(ours_times), statistics.median(trl_times)
        best_o, best_t = min(ours_times), min(trl_times)
        print(f"mean reply length: ours {statistics.mean(ours_lengths):.2f} tokens, TRL "
              f"{statistics.mean(theirs.reply_lengths):.2f} tokens (of {args.response_length})")
        print(f"ours, median per iteration: rollout {statistics.median(phases['rollout']):.3f} s"
              f" (generation, 4 forwards, GAE), update {statistics.median(phases['update']):.3f}"
              f" s ({args.ppo_epochs * args.minibatches} minibatch steps)")
        print(f"TRL train() outside its iterations: {statistics.median(trl_overhead):.3f} s "
              f"per call (not counted)")
        print(f"ours: median {med_o:7.3f} s/iteration   best {best_o:7.3f} s/iteration")
        print(f" TRL: median {med_t:7.3f} s/iteration   best {best_t:7.3f} s/iteration")
        print(f"TRL/ours: median {med_t / med_o:.2f}x   best {best_t / best_o:.2f}x")
        record("ppo_iteration", args, {"ours": ours_times, "TRL": trl_times}, "s/iteration",
               ["TRL/ours"], lower_is_better=True, depth=c.depth, vocab=c.vocab_size,
               rollouts=args.batch_size, prompt_len=args.prompt_len,
               response_length=args.response_length, ppo_epochs=args.ppo_epochs,
               minibatches=args.minibatches,
               rollout_s=statistics.median(phases["rollout"]),
               update_s=statistics.median(phases["update"]))


if __name__ == "__main__":
    main()
