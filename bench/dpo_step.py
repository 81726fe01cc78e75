"""One DPO step: ours (``gptsmith.train.dpo``) vs TRL 1.16.0's ``DPOTrainer``.

A step is one AdamW update on a batch of ``--batch-size`` (chosen, rejected) pairs, every
prompt ``--prompt-len`` tokens and every reply ``--reply-len`` tokens (``<|end|>`` included),
so nobody pads: the summed log-probs of each reply under the policy in one forward of
2 x batch rows, the sigmoid DPO loss −log σ(β·[(log π − log π_ref)(chosen) − (log π −
log π_ref)(rejected)]) averaged over pairs, backward, clipping at 1.0, optimizer step.

Ours is the shared ``Trainer.train_step`` with the loss ``dpo()`` gives it (``reply_logps`` +
``reference_logps`` + ``preference_loss``), on pairs read from a comparisons file by
``read_comparisons`` and ``to_pairs`` as ``dpo()`` reads them, for a random-init GPT of the
default shape (``GPTConfig()``, vocab of a byte-level BPE trained here offline) saved as a
policy run and loaded from it. Ours precomputes the reference log-probs once before training
(``fill_reference``, the reference model loaded from the same run): a step runs no reference
forward; that one-off pass is timed apart and printed. TRL's side is ``trl.DPOTrainer`` on a
``LlamaForCausalLM`` twin holding the same weights (checked to give the same fp32 logits),
saved with ``save_pretrained`` so that TRL loads its reference from that directory, with the
same pairs as conversations (prompt, chosen and rejected messages) tokenized by TRL through
our chat template set on the HF tokenizer (checked to give the same ids as ours). TRL is run
twice: with its default ``precompute_ref_log_probs=False`` (a no-grad reference forward of
the batch every step) and with ``precompute_ref_log_probs=True`` (a reference pass over the
data set when the trainer is built, as ours does; the reference model is then not kept).
Same β, ``loss_type=["sigmoid"]``, no label smoothing, same learning rate, betas, weight decay
and clipping, constant schedule, ``max_length=None`` (no truncation), no gradient
checkpointing, the pipeline's precision (fp32 on a CPU without native bf16; bf16: our
autocast, TRL's ``bf16=True``).

Differences left: TRL scores the replies with its fused, tiled LM head and also computes, per
step, the metrics it logs from it (entropy, mean logits, top-1 accuracy, rewards, margins);
ours takes the full-vocabulary cross-entropy and computes the loss only. TRL is a bench extra
only, never a dependency of gptsmith.

How it is timed: ours calls ``trainer.train_step()``; TRL runs whole ``train()`` calls of
``--steps`` + 1 steps and a callback stamps the clock at every ``on_step_end``: a step's
seconds are the time between consecutive stamps, so each call's setup before its first step is
left out. TRL's console logging callbacks are removed. One untimed warm-up per side, then
``--rounds`` rounds run ``--steps`` steps of ours, of TRL, of TRL with precomputed reference
log-probs, in turn; the medians give seconds per step and the ratios TRL/ours. The last line
printed is the result as one JSON object.
On a machine shared with other work, give ``--threads 1``: with more threads than free
cores, PyTorch's threads wait for each other and a step can take ten times longer.

    .venv-trl116/bin/python bench/dpo_step.py                  # 16 pairs of 32 + 96 tokens
    .venv-trl116/bin/python bench/dpo_step.py --batch-size 8 --threads 2
    .venv-trl116/bin/python bench/dpo_step.py --quick          # a few seconds: does it run?
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from grpo_step import (  # bench/ is on sys.path when run
    hf_policy,
    ours_steps,
    policy_run,
    report,
    start_libraries,
)
from ppo_iteration import (
    Clock,
    drop_console_callbacks,
    fixed_length_prompts,
    make_tokenizer,
    quiet,
    synthetic_texts,
)
from results import add_run_flags

from gptsmith.data.comparisons import read_comparisons
from gptsmith.device import autocast
from gptsmith.model import GPTConfig
from gptsmith.runs import load_model
from gptsmith.tokenizer import Tokenizer
from gptsmith.train.batches import EpochBatches
from gptsmith.train.dpo import (
    DPOConfig,
    Pair,
    fill_reference,
    preference_loss,
    reference_logps,
    reply_logps,
    to_pairs,
)
from gptsmith.train.loop import LossSum, Trainer


def text_of_length(tok: Tokenizer, n: int, words: list[str], rng: random.Random) -> str:
    """Words that our tokenizer encodes to exactly ``n`` tokens."""
    while True:
        text, got = "", 0
        while got < n:
            text = (text + " " + rng.choice(words)).strip()
            got = len(tok.encode(text))
        if got == n:
            return text


def write_comparisons(path: Path, tok: Tokenizer, n: int, prompt_len: int, reply_len: int,
                      seed: int) -> list[dict]:
    """``n`` comparisons (plain format, as ``rm`` and ``dpo`` read them) whose prompts render to
    ``prompt_len`` tokens and whose replies are ``reply_len`` tokens with ``<|end|>``."""
    rng = random.Random(seed)
    words = " ".join(synthetic_texts(2000, seed=seed + 2)).split()
    records = [{"prompt": q["messages"][0]["content"],
                "chosen": text_of_length(tok, reply_len - 1, words, rng),
                "rejected": text_of_length(tok, reply_len - 1, words, rng)}
               for q in fixed_length_prompts(tok, n, prompt_len, seed)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def build_ours(args, tmp: Path, tok: Tokenizer, data: Path) -> tuple[Trainer, float]:
    """A policy run written to ``tmp``; its pairs, reference log-probs and ``Trainer`` as
    ``dpo()`` makes them. Returns the trainer and the seconds of the reference pass."""
    run = policy_run(args, tmp, tok)
    cfg = DPOConfig(policy=str(run), data=str(data), out=str(tmp / "ours"), loss="sigmoid",
                    beta=args.beta)
    t = dataclasses.replace(cfg.train, batch_size=args.batch_size, steps=10**6,
                            precision=args.precision, threads=args.threads, seed=args.seed,
                            progress=False)
    policy, tokenizer = load_model(cfg.policy)
    groups, _ = read_comparisons(cfg.data)
    pairs = to_pairs(groups, tokenizer, policy.cfg.seq_len)
    ref_model, _ = load_model(cfg.policy)
    pad = tokenizer.pad_id
    torch.manual_seed(t.seed)

    def loss_fn(m, batch: list[Pair]) -> LossSum:
        logp, lengths = reply_logps(m, batch, pad)
        losses, _ = preference_loss(logp, reference_logps(batch, logp.device), lengths, cfg)
        return LossSum(losses.sum(), len(batch), sum(len(p.chosen) + len(p.rejected)
                                                     for p in batch))

    trainer = Trainer(policy, t, Path(cfg.out), EpochBatches(pairs, t.batch_size, t.seed),
                      loss_fn, tokenizer=tokenizer)
    trainer.pairs = pairs
    t0 = time.perf_counter()
    fill_reference(ref_model.to(trainer.device), pairs, pad,
                   lambda: autocast(trainer.device, trainer.precision), t.batch_size)
    return trainer, time.perf_counter() - t0


def build_trl(args, tmp: Path, ours: Trainer, hf_tok, records: list[dict], precompute: bool):
    """TRL's DPOTrainer on a Llama twin of ours, with the same pairs as conversations."""
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer as TRLTrainer

    hf_tok.chat_template = ours.tokenizer.chat_template
    policy = hf_policy(ours.model, hf_tok.pad_token_id, tmp / "hf")
    t = ours.cfg
    config = TRLConfig(
        output_dir=str(tmp / f"trl-{precompute}"), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, max_steps=args.steps + 1, learning_rate=t.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=t.weight_decay,
        adam_beta1=t.beta1, adam_beta2=t.beta2, max_grad_norm=t.grad_clip,
        beta=args.beta, loss_type=["sigmoid"], label_smoothing=0.0, max_length=None,
        precompute_ref_log_probs=precompute, gradient_checkpointing=False,
        bf16=args.precision == "bf16", use_cpu=True, report_to="none", save_strategy="no",
        disable_tqdm=True, dataloader_pin_memory=False, seed=args.seed,
    )
    conversations = {
        "prompt": [[{"role": "user", "content": r["prompt"]}] for r in records],
        "chosen": [[{"role": "assistant", "content": r["chosen"]}] for r in records],
        "rejected": [[{"role": "assistant", "content": r["rejected"]}] for r in records],
    }
    t0 = time.perf_counter()
    with quiet(), contextlib.redirect_stderr(io.StringIO()):  # its data set progress bars
        trainer = TRLTrainer(model=policy, args=config, train_dataset=Dataset.from_dict(
            conversations), processing_class=hf_tok)
    trainer.build_seconds = time.perf_counter() - t0
    assert (trainer.ref_model is None) == precompute, "TRL's reference is not as expected"
    for row, pair in zip(trainer.train_dataset, ours.pairs, strict=True):
        assert row["prompt_ids"] + row["chosen_ids"] == pair.chosen, "chosen ids differ"
        assert row["prompt_ids"] + row["rejected_ids"] == pair.rejected, "rejected ids differ"
    if precompute:  # TRL's reference log-probs against ours
        err = max(max(abs(row["ref_chosen_logps"] - pair.ref[0]),
                      abs(row["ref_rejected_logps"] - pair.ref[1]))
                  for row, pair in zip(trainer.train_dataset, ours.pairs, strict=True))
        print(f"reference log-probs, ours vs TRL's: max abs difference {err:.2e}")
        assert err < 1e-2, "the reference log-probs differ"
    drop_console_callbacks(trainer)
    trainer.clock = Clock(from_begin=False)
    trainer.add_callback(trainer.clock)
    return trainer


def main():
    defaults = DPOConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=GPTConfig().depth)
    p.add_argument("--seq-len", type=int, default=GPTConfig().seq_len)
    p.add_argument("--vocab-size", type=int, default=GPTConfig().vocab_size)
    p.add_argument("--batch-size", type=int, default=defaults.train.batch_size,
                   help="(chosen, rejected) pairs per step")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--reply-len", type=int, default=96, help="tokens of every reply")
    p.add_argument("--beta", type=float, default=defaults.beta)
    p.add_argument("--steps", type=int, default=4, help="timed steps per side per round")
    add_run_flags(p, rounds=5)
    args = p.parse_args()
    if args.quick:
        args.depth, args.seq_len, args.vocab_size = 1, 64, 512
        args.prompt_len, args.reply_len, args.batch_size = 12, 20, 4
        args.steps, args.rounds = 2, 2

    versions = start_libraries(args.threads)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tok, hf_tok = make_tokenizer(args.vocab_size, tmp)
        records = write_comparisons(tmp / "pairs.jsonl", tok, args.batch_size * args.steps,
                                    args.prompt_len, args.reply_len, args.seed)
        ours, ref_seconds = build_ours(args, tmp, tok, tmp / "pairs.jsonl")
        sides = {"trl": build_trl(args, tmp, ours, hf_tok, records, precompute=False),
                 "trl_precompute": build_trl(args, tmp, ours, hf_tok, records, precompute=True)}
        c = ours.model.cfg
        print(f"{versions}, {args.precision}; {c.depth} layers, width {c.n_embd}, heads "
              f"{c.n_head}/{c.n_kv_head}, mlp {c.mlp_hidden}, vocab {c.vocab_size}")
        length = args.prompt_len + args.reply_len
        print(f"step: {args.batch_size} pairs = {2 * args.batch_size} sequences of {length} "
              f"tokens ({args.reply_len} of reply), sigmoid loss, β {args.beta}")
        print(f"reference pass over {len(ours.pairs)} pairs: ours {ref_seconds:.2f} s "
              f"(fill_reference); TRL trainer built in {sides['trl'].build_seconds:.2f} s, "
              f"{sides['trl_precompute'].build_seconds:.2f} s with precompute_ref_log_probs "
              f"(not counted)")

        def run_trl(name: str, n: int) -> list[float]:
            theirs = sides[name]
            theirs.args.max_steps = n + 1
            with quiet():
                theirs.train()
            times = theirs.clock.intervals()  # the first step's stamp only starts the clock
            assert len(times) == n, f"TRL ran {len(times) + 1} steps, not {n + 1}"
            return times

        first: list[dict] = []
        ours_steps(ours, 1, first)  # warm-up, untimed
        print(f"ours: first loss {first[0]['loss']:.4f} (ln 2 = 0.6931: policy = reference)")
        for name in sides:
            run_trl(name, 1)
        times: dict[str, list[float]] = {"ours": [], **{name: [] for name in sides}}
        for r in range(args.rounds):
            times["ours"] += ours_steps(ours, args.steps, [])
            for name in sides:
                times[name] += run_trl(name, args.steps)
            line = [f"{name} {1e3 * statistics.mean(v[-args.steps:]):7.1f}"
                    for name, v in times.items()]
            print(f"round {r + 1} (ms/step): " + "   ".join(line))

        report("dpo_step", args, times, "ms/step", scale=1e3, batch_size=args.batch_size,
               prompt_len=args.prompt_len, reply_len=args.reply_len, beta=args.beta,
               loss="sigmoid", depth=c.depth, vocab=c.vocab_size,
               ours_reference="precomputed once (fill_reference)",
               ours_reference_pass_s=ref_seconds)

if __name__ == "__main__":
    main()
