"""One GRPO iteration: our ``GRPOTrainer.train_step`` vs TRL 1.16.0's ``GRPOTrainer``.

An iteration is what both trainers do per batch of prompts: sample a group of ``--group-size``
replies of ``--max-tokens`` tokens for each of ``--prompts`` prompts (KV-cache generation at
temperature 1), score every reply with the same Python reward function of its text
(``vowel_share``), turn the rewards into group-normalised advantages (reward minus group
mean, over group std), take the reference model's log-probs of the replies (β > 0, so both
load a reference), then ``--epochs`` x ``--minibatches`` clipped-surrogate + β·KL (k3)
updates, one AdamW step each. TRL is a bench extra only, never a dependency of gptsmith.

Models: a random-init GPT of the default shape (``GPTConfig()``, vocab of a byte-level BPE
trained here offline on synthetic text) saved as a policy run directory; ours loads policy
and reference from it and builds ``GRPOTrainer`` the way ``grpo()`` does (the reward spec
``grpo_step:vowel_share``, parsed by ``parse_rewards``). TRL gets an ``LlamaForCausalLM`` twin
holding the same weights (checked to give the same fp32 logits), saved with
``save_pretrained`` so that TRL loads its reference from that directory as it does for any
model; the same prompts as conversations, rendered by our chat template set on the HF
tokenizer (checked to give the same ids as ours; all prompts are ``--prompt-len`` tokens, so
nobody pads them). Settings matched: ``num_generations`` = group size,
``per_device_train_batch_size`` = prompts x group / minibatches, ``steps_per_generation`` =
minibatches, ``num_iterations`` = epochs, ``max_completion_length``, temperature 1 (top-p 1,
top-k off on both), ``beta``, ``epsilon``/``epsilon_high`` = our clip_low/clip_high,
``scale_rewards="group"``, ``loss_type`` = ours's aggregation (token: ``bnpo``, the mean over
the minibatch's reply tokens, which is also TRL's default ``dapo`` at one minibatch; sequence:
``grpo``; dr_grpo: ``dr_grpo``), ``use_bias_correction_kl=False`` (ours adds plain k3 KL, not
KL x ratio), same learning rate, betas, weight decay and clipping at 1.0, constant schedule,
no gradient checkpointing, the pipeline's precision (fp32 on a CPU without native bf16;
bf16: our autocast, TRL's ``bf16=True``).

At one epoch of one minibatch neither side runs a forward for the old log-probs: the first
minibatch's trained forward, detached, is π_old (with ``--minibatches 2`` ours runs one over
the second minibatch's rows only, TRL one over all rows). Differences left: TRL computes
the log-probs with its fused, tiled LM head; ours takes the full log-softmax. Both stop a
reply at ``<|end|>``: a random-init policy rarely samples it, so both generate (almost) the
full length; the mean reply lengths are printed.

How it is timed: ours calls ``trainer.train_step()`` directly; TRL can only run whole
``train()`` calls, so each round is one ``train()`` of ``--steps`` iterations and a callback
stamps the clock at ``on_train_begin`` and at every optimizer step's ``on_step_end``: an
iteration's seconds are the stamps' differences summed over its epochs x minibatches steps
(what ``train()`` does before its loop and after its last step is left out and printed
separately). TRL's console logging callbacks are removed. One untimed warm-up iteration per
side, then ``--rounds`` rounds alternate ``--steps`` iterations of ours with ``--steps`` of
TRL's; the medians give seconds per iteration and the ratio TRL/ours. The last line printed
is the result as one JSON object.
On a machine shared with other work, give ``--threads 1``: with more threads than free
cores, PyTorch's threads wait for each other and a step can take ten times longer.

    .venv-trl116/bin/python bench/grpo_step.py                 # 8 prompts x 8 replies of 16
    .venv-trl116/bin/python bench/grpo_step.py --max-tokens 64 --threads 2
    .venv-trl116/bin/python bench/grpo_step.py --quick         # a few seconds: does it run?
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from ppo_iteration import (  # bench/ is on sys.path when run
    Clock,
    drop_console_callbacks,
    fixed_length_prompts,
    lm_twin,
    make_tokenizer,
    quiet,
    silence_libraries,
)
from results import add_run_flags, cpu_name, record
from train_throughput import check_same_logits

from gptsmith.chat import prompt_ids
from gptsmith.config import to_dict
from gptsmith.device import set_threads
from gptsmith.model import GPT, GPTConfig
from gptsmith.runs import load_model, save_model
from gptsmith.train.batches import EpochBatches
from gptsmith.train.grpo import GRPOConfig, GRPOTrainer, check_config
from gptsmith.train.rewards import parse_rewards

# our --loss-aggregation -> TRL's loss_type computing the same loss (see the docstring)
TRL_LOSS = {"token": "bnpo", "sequence": "grpo", "dr_grpo": "dr_grpo"}


def vowel_share(prompts, completions, **_) -> list[float]:
    """The reward both sides get: the share of vowels among a reply's letters. Cheap, varies
    within a group, and reads only the reply's text (TRL passes conversational completions as
    ``[{"role": "assistant", "content": ...}]``, ours passes the text)."""
    out = []
    for c in completions:
        letters = [ch for ch in (c if isinstance(c, str) else c[-1]["content"]).lower()
                   if ch.isalpha()]
        out.append(sum(ch in "aeiou" for ch in letters) / max(1, len(letters)))
    return out


# --- shared with bench/dpo_step.py ---------------------------------------------------------


def start_libraries(threads: int) -> str:
    """Threads set, library chatter and progress bars off; what runs, in words."""
    set_threads(threads)
    silence_libraries()
    import transformers
    import trl

    transformers.utils.logging.disable_progress_bar()
    return (f"torch {torch.__version__}, TRL {trl.__version__}, {torch.get_num_threads()} "
            f"threads, {cpu_name()}")


def policy_run(args, tmp: Path, tok) -> Path:
    """A random-init GPT of ``args``' shape saved with its tokenizer as a run directory."""
    torch.manual_seed(args.seed)
    policy = GPT(GPTConfig(depth=args.depth, vocab_size=tok.vocab_size, seq_len=args.seq_len))
    run = tmp / "policy"
    run.mkdir()
    save_model(run, policy)
    tok.save(run / "tokenizer.json")
    return run


def hf_policy(ours_model: GPT, pad_id: int, directory: Path):
    """The Llama twin of ``ours_model`` saved to ``directory`` (once) and loaded back from
    it, so that TRL, which builds a reference from the policy's path, finds the same
    weights."""
    from transformers import LlamaForCausalLM

    with quiet():
        if not directory.exists():
            lm_twin(ours_model, pad_id).save_pretrained(directory)
        hf = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32)
    check_same_logits(ours_model, hf)
    return hf


def ours_steps(trainer, n: int, metrics: list[dict]) -> list[float]:
    """``n`` of our trainer's steps, as its loop takes them: the seconds of each; each step's
    metrics are appended to ``metrics``."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        metrics.append(trainer.train_step())
        times.append(time.perf_counter() - t0)
        trainer.step += 1
    return times


def report(bench: str, args, times: dict[str, list[float]], unit: str, scale: float = 1.0,
           **settings) -> None:
    """Median and best of each side (``times["ours"]`` first), the ratios to ours, then the
    result as one JSON line (``results.record``, in seconds)."""
    med_o, best_o = statistics.median(times["ours"]), min(times["ours"])
    width = max(len(name) for name in times)
    for name, v in times.items():
        print(f"{name:>{width}}: median {scale * statistics.median(v):8.3f} {unit}   "
              f"best {scale * min(v):8.3f} {unit}")
    for name, v in times.items():
        if name != "ours":
            print(f"{name}/ours: median {statistics.median(v) / med_o:.2f}x   "
                  f"best {min(v) / best_o:.2f}x")
    record(bench, args, times, "s/" + unit.split("/")[-1],
           [f"{name}/ours" for name in times if name != "ours"], lower_is_better=True,
           **settings)


# --- the GRPO bench -------------------------------------------------------------------------


def build_ours(args, tmp: Path, tok, prompts: list[dict]) -> GRPOTrainer:
    """A policy run written to ``tmp``, loaded and wired as ``grpo()`` does it."""
    cfg = GRPOConfig(policy=str(policy_run(args, tmp, tok)), prompts="(in memory)",
                     reward="grpo_step:vowel_share", out=str(tmp / "ours"),
                     group_size=args.group_size, max_tokens=args.max_tokens, temperature=1.0,
                     epochs=args.epochs, minibatches=args.minibatches, beta=args.beta,
                     loss_aggregation=args.loss_aggregation)
    cfg.train = dataclasses.replace(cfg.train, batch_size=args.prompts, steps=10**6,
                                    precision=args.precision, threads=args.threads,
                                    seed=args.seed, progress=False)
    check_config(cfg)
    policy, tokenizer = load_model(cfg.policy)
    terms = parse_rewards(cfg.reward, lambda d: load_model(d)[0].requires_grad_(False))
    ref = load_model(cfg.policy)[0].requires_grad_(False) if cfg.beta > 0 else None
    t = cfg.train
    torch.manual_seed(t.seed)
    trainer = GRPOTrainer(policy, t, Path(cfg.out), EpochBatches(prompts, t.batch_size, t.seed),
                          None, phase_config=to_dict(cfg), tokenizer=tokenizer)
    trainer.setup(cfg, ref, tokenizer, terms)
    return trainer


def build_trl(args, tmp: Path, ours: GRPOTrainer, hf_tok, prompts: list[dict]):
    """TRL's GRPOTrainer on the Llama twin, with the same prompts, reward and settings."""
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer as TRLTrainer

    hf_tok.chat_template = ours.tok.chat_template
    for q in prompts:  # TRL renders the conversations itself: the same ids as ours?
        theirs = hf_tok.apply_chat_template(q["messages"], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
        assert list(theirs) == prompt_ids(ours.tok, q["messages"]), "prompt ids differ"
    policy = hf_policy(ours.model, hf_tok.pad_token_id, tmp / "hf")
    g, t = ours.grpo, ours.cfg
    config = TRLConfig(
        output_dir=str(tmp / "trl"),
        per_device_train_batch_size=args.prompts * g.group_size // g.minibatches,
        gradient_accumulation_steps=1, steps_per_generation=g.minibatches,
        num_iterations=g.epochs, num_generations=g.group_size,
        max_completion_length=g.max_tokens, temperature=g.temperature, top_p=1.0, top_k=0,
        beta=g.beta, epsilon=g.clip_low, epsilon_high=g.clip_high, scale_rewards="group",
        loss_type=TRL_LOSS[g.loss_aggregation], use_bias_correction_kl=False,
        learning_rate=t.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=t.weight_decay, adam_beta1=t.beta1, adam_beta2=t.beta2,
        max_grad_norm=t.grad_clip, gradient_checkpointing=False,
        bf16=args.precision == "bf16", use_cpu=True, report_to="none", save_strategy="no",
        disable_tqdm=True, dataloader_pin_memory=False, seed=args.seed,
    )
    data = Dataset.from_dict({"prompt": [q["messages"] for q in prompts]})
    with quiet():
        trainer = TRLTrainer(model=policy, reward_funcs=vowel_share, args=config,
                             train_dataset=data, processing_class=hf_tok)
    assert trainer.ref_model is not None, "TRL did not load a reference"
    drop_console_callbacks(trainer)
    trainer.clock = Clock()
    trainer.add_callback(trainer.clock)
    # record reply lengths where TRL has them (a wrapper around this trainer's _generate)
    trainer.reply_lengths = []
    generate = trainer._generate

    def recording_generate(prompts):
        out = generate(prompts)
        trainer.reply_lengths += [len(ids) for ids in out[1]]
        return out

    trainer._generate = recording_generate
    return trainer


def main():
    defaults = GRPOConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=GPTConfig().depth)
    p.add_argument("--seq-len", type=int, default=GPTConfig().seq_len)
    p.add_argument("--vocab-size", type=int, default=GPTConfig().vocab_size)
    p.add_argument("--prompts", type=int, default=defaults.train.batch_size,
                   help="prompts per iteration")
    p.add_argument("--group-size", type=int, default=defaults.group_size,
                   help="replies per prompt (TRL's num_generations)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=defaults.max_tokens,
                   help="reply length (TRL's max_completion_length)")
    p.add_argument("--epochs", type=int, default=defaults.epochs,
                   help="passes over each batch of replies (TRL's num_iterations)")
    p.add_argument("--minibatches", type=int, default=defaults.minibatches,
                   help="optimizer steps per pass (TRL's steps_per_generation)")
    p.add_argument("--beta", type=float, default=defaults.beta, help="KL coefficient (> 0)")
    p.add_argument("--loss-aggregation", choices=sorted(TRL_LOSS),
                   default=defaults.loss_aggregation)
    p.add_argument("--steps", type=int, default=2, help="timed iterations per side per round")
    add_run_flags(p, rounds=5)
    args = p.parse_args()
    if args.quick:
        args.depth, args.seq_len, args.vocab_size, args.prompt_len = 1, 64, 512, 12
        args.prompts, args.group_size, args.max_tokens = 2, 4, 6
        args.steps, args.rounds = 1, 2
    if args.beta <= 0:
        p.error("--beta must be > 0: the bench compares runs that load a reference")
    if args.prompts * args.group_size % args.minibatches:
        p.error("--minibatches must divide prompts x group size")

    versions = start_libraries(args.threads)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tok, hf_tok = make_tokenizer(args.vocab_size, tmp)
        prompts = fixed_length_prompts(tok, args.prompts, args.prompt_len, args.seed)
        ours = build_ours(args, tmp, tok, prompts)
        theirs = build_trl(args, tmp, ours, hf_tok, prompts)
        k = args.epochs * args.minibatches  # optimizer steps per iteration
        c = ours.model.cfg
        print(f"{versions}, {args.precision}; {c.depth} layers, width {c.n_embd}, heads "
              f"{c.n_head}/{c.n_kv_head}, mlp {c.mlp_hidden}, vocab {c.vocab_size}")
        print(f"iteration: {args.prompts} prompts of {args.prompt_len} tokens x "
              f"{args.group_size} replies of {args.max_tokens} tokens, β {args.beta}, "
              f"{args.epochs} epoch(s) x {args.minibatches} minibatch(es) = {k} optimizer "
              f"step(s); loss: ours {args.loss_aggregation}, TRL {TRL_LOSS[args.loss_aggregation]}")

        times: dict[str, list[float]] = {"ours": [], "TRL": []}
        ours_metrics: list[dict] = []
        trl_overhead: list[float] = []

        def run_trl(n: int) -> list[float]:
            theirs.args.max_steps = n * k
            t0 = time.perf_counter()
            with quiet():
                theirs.train()
            total = time.perf_counter() - t0
            steps = theirs.clock.intervals()
            assert len(steps) == n * k, f"TRL ran {len(steps)} steps, not {n * k}"
            trl_overhead.append(total - sum(steps))
            return [sum(steps[i:i + k]) for i in range(0, n * k, k)]

        ours_steps(ours, 1, [])  # warm-up, untimed
        run_trl(1)
        opt = getattr(theirs.optimizer, "optimizer", theirs.optimizer)
        print(f"TRL optimizer: {type(opt).__name__} fused={opt.defaults.get('fused')}; ours: "
              f"{type(ours.optimizer).__name__} fused={ours.optimizer.defaults.get('fused')}")
        theirs.reply_lengths.clear()
        trl_overhead.clear()
        for r in range(args.rounds):
            a, b = ours_steps(ours, args.steps, ours_metrics), run_trl(args.steps)
            times["ours"] += a
            times["TRL"] += b
            print(f"round {r + 1}: ours {statistics.mean(a):7.3f} s/it   "
                  f"TRL {statistics.mean(b):7.3f} s/it")

        ours_len = statistics.mean(m["reply_tokens"] for m in ours_metrics)
        trl_len = statistics.mean(theirs.reply_lengths)
        print(f"mean reply length: ours {ours_len:.2f} tokens, TRL {trl_len:.2f} tokens "
              f"(of {args.max_tokens})")
        print(f"TRL train() outside its iterations: {statistics.median(trl_overhead):.3f} s "
              f"per call (not counted)")
        report("grpo_step", args, times, "s/iteration", prompts=args.prompts,
               group_size=args.group_size, prompt_len=args.prompt_len,
               max_tokens=args.max_tokens, epochs=args.epochs, minibatches=args.minibatches,
               beta=args.beta, loss_aggregation=args.loss_aggregation, depth=c.depth,
               vocab=c.vocab_size, reply_len_ours=ours_len, reply_len_trl=trl_len)

if __name__ == "__main__":
    main()
