"""One reward-model training step: ours (``gptsmith.train.reward``) vs TRL 1.12.0's
``RewardTrainer``.

A step is one AdamW update on a batch of ``--batch-size`` (chosen, rejected) pairs whose
sequences are all ``--length`` tokens: score every sequence at its last token in one forward
of 2 x batch rows, the pairwise loss −log σ(r_chosen − r_rejected) averaged over pairs,
backward, gradient clipping at 1.0, optimizer step. Ours is the shared ``Trainer.train_step``
with the loss of ``train_reward_model`` (``flatten`` + ``score_sequences`` +
``pairwise_loss``; one pair per prompt, as a comparisons file gives it) on a scalar-head GPT
of the default shape (``reward_model_from`` a random-init GPT). TRL's is
``trl.RewardTrainer`` on a ``LlamaForSequenceClassification(num_labels=1)`` holding the same
weights, fed the same pairs as pre-tokenized ``chosen_ids`` / ``rejected_ids``. Both in the
pipeline's precision (fp32 on a CPU without native bf16; bf16: our autocast, TRL's
``bf16=True``), same learning rate, no
weight decay, clip 1.0, no gradient checkpointing. TRL is a bench extra only.

How it is timed: ours calls ``trainer.train_step()``; TRL runs whole ``train()`` calls of
``--steps`` + 1 steps each, and a callback stamps the clock at every ``on_step_end``: a step's
seconds are the time between consecutive stamps (batch collation, forward, loss and metrics,
backward, clipping, optimizer and scheduler steps, logging), so the setup each ``train()``
call does before its first step is left out. TRL's console logging callbacks are removed. One
untimed warm-up per side, then ``--rounds`` rounds alternate ``--steps`` steps of ours with
``--steps`` of TRL's; the medians give seconds per step and the ratio TRL/ours.

A third side, "compiled", is ours with ``--train.compile`` (a second ``Trainer`` with
``compile=True`` on a copy of the same weights and pairs); it compiles in its warm-up steps,
whose time is printed, not in the timed rounds. ``--no-compiled`` leaves it out.

    .venv/bin/pip install trl==1.12.0
    .venv/bin/python bench/reward_step.py                       # 8 pairs of 128 tokens
    .venv/bin/python bench/reward_step.py --batch-size 32 --length 256 --threads 2
    .venv/bin/python bench/reward_step.py --quick               # a few seconds: does it run?
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
from ppo_iteration import (  # bench/ is on sys.path when run
    Clock,
    drop_console_callbacks,
    make_tokenizer,
    ordinary_ids,
    quiet,
    random_scalar_head,
    scalar_twin,
    silence_libraries,
)
from results import add_run_flags, record

from gptsmith.device import set_threads
from gptsmith.model import GPT, GPTConfig
from gptsmith.train.batches import EpochBatches
from gptsmith.train.loop import Trainer
from gptsmith.train.reward import RMConfig, reward_model_from, rm_loss


def main():
    defaults = RMConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=GPTConfig().vocab_size)
    p.add_argument("--batch-size", type=int, default=defaults.train.batch_size,
                   help="(chosen, rejected) pairs per step")
    p.add_argument("--length", type=int, default=128, help="tokens in every sequence")
    p.add_argument("--steps", type=int, default=5, help="timed steps per side per round")
    p.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                   help="also time ours with --train.compile (default on)")
    add_run_flags(p, rounds=6)
    args = p.parse_args()
    if args.quick:
        args.depth, args.seq_len, args.vocab_size, args.length = 1, 64, 512, 32
        args.batch_size, args.steps, args.rounds = 4, 2, 2

    set_threads(args.threads)
    silence_libraries()
    import trl
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tok, hf_tok = make_tokenizer(args.vocab_size, tmp)
        torch.manual_seed(args.seed)
        policy = GPT(GPTConfig(depth=args.depth, vocab_size=tok.vocab_size,
                               seq_len=args.seq_len))
        model = random_scalar_head(reward_model_from(policy), args.seed)
        hf = scalar_twin(model, tok.pad_id)
        with torch.no_grad():
            probe = ordinary_ids((2, args.length), tok.vocab_size)
            err = (hf(input_ids=probe).logits.squeeze(-1) - model(probe)[:, -1]).abs().max()
        print(f"fp32 scores, ours vs HF: max abs difference {err:.2e}")
        assert err < 1e-4, "the reward twins differ"

        # the pairs: random ordinary tokens ending in <|end|>, as encode_group renders them
        n_pairs = args.batch_size * (args.steps + 1)
        gen = torch.Generator().manual_seed(args.seed)
        ids = ordinary_ids((n_pairs, 2, args.length), tok.vocab_size, gen)
        ids[..., -1] = tok.end_id
        ids = [[row.tolist() for row in pair] for pair in ids]

        # ours: the Trainer of train_reward_model with its loss_fn
        t = dataclasses.replace(defaults.train, steps=10**6, precision=args.precision,
                                threads=args.threads, seed=args.seed, progress=False)
        items = [(pair, [(0, 1)]) for pair in ids]

        def our_trainer(name: str, m: torch.nn.Module, compile: bool) -> Trainer:
            trainer = Trainer(m, dataclasses.replace(t, compile=compile), tmp / name,
                              EpochBatches(items, t.batch_size, t.seed),
                              functools.partial(rm_loss, pad_id=tok.pad_id))
            trainer.model.train()
            return trainer

        ours = {"ours": our_trainer("ours", model, False)}
        if args.compiled:
            ours["compiled"] = our_trainer("compiled", copy.deepcopy(model), True)

        # TRL: RewardTrainer on the twin, with the same pairs already tokenized
        config = RewardConfig(
            output_dir=str(tmp / "trl"), per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1, max_steps=args.steps + 1, learning_rate=t.lr,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=t.weight_decay,
            max_grad_norm=t.grad_clip, adam_beta1=t.beta1, adam_beta2=t.beta2,
            gradient_checkpointing=False, bf16=args.precision == "bf16", use_cpu=True,
            report_to="none", save_strategy="no", disable_tqdm=True,
            dataloader_pin_memory=False, seed=args.seed, max_length=None,
        )
        data = Dataset.from_dict({"chosen_ids": [c for c, _ in ids],
                                  "rejected_ids": [r for _, r in ids]})
        with quiet():
            theirs = RewardTrainer(model=hf, args=config, train_dataset=data,
                                   processing_class=hf_tok)
        drop_console_callbacks(theirs)
        clock = Clock(from_begin=False)
        theirs.add_callback(clock)

        c = model.cfg
        print(f"torch {torch.__version__}, TRL {trl.__version__}, {torch.get_num_threads()} "
              f"threads, {args.precision}; {c.depth} layers, width {c.n_embd}, heads "
              f"{c.n_head}/{c.n_kv_head}, mlp {c.mlp_hidden}, vocab {c.vocab_size}")
        print(f"step: {args.batch_size} pairs = {2 * args.batch_size} sequences of "
              f"{args.length} tokens")

        def run_ours(trainer: Trainer, n: int) -> list[float]:
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                trainer.train_step()
                times.append(time.perf_counter() - t0)
                trainer.step += 1
            return times

        def run_trl(n: int) -> list[float]:
            theirs.args.max_steps = n + 1
            with quiet(), contextlib.redirect_stderr(io.StringIO()):
                theirs.train()
            times = clock.intervals()  # the first step's stamp only starts the clock
            assert len(times) == n, f"TRL ran {len(times) + 1} steps, not {n + 1}"
            return times

        sides = {name: functools.partial(run_ours, trainer) for name, trainer in ours.items()}
        sides["TRL"] = run_trl
        warm = {}
        for name, run in sides.items():  # warm-up, untimed (the compiled side compiles)
            t0 = time.perf_counter()
            run(2 if name == "compiled" else 1)
            warm[name] = time.perf_counter() - t0
        print("warm-up: " + ", ".join(f"{name} {s:.1f} s" for name, s in warm.items()))
        times: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(args.rounds):
            line = []
            for name, run in sides.items():
                got = run(args.steps)
                times[name] += got
                line.append(f"{name} {1e3 * statistics.mean(got):8.1f} ms/step")
            print(f"round {r + 1}: " + "   ".join(line))

        med = {name: statistics.median(v) for name, v in times.items()}
        best = {name: min(v) for name, v in times.items()}
        for name in sides:
            print(f"{name:>8}: median {1e3 * med[name]:8.1f} ms/step   "
                  f"best {1e3 * best[name]:8.1f} ms/step")
        ratios = [f"TRL/{name}" for name in ours]
        for name in ours:
            print(f"TRL/{name}: median {med['TRL'] / med[name]:.2f}x   "
                  f"best {best['TRL'] / best[name]:.2f}x")
        record("reward_step", args, times, "s/step", ratios, lower_is_better=True,
               depth=c.depth, vocab=c.vocab_size, pairs=args.batch_size, length=args.length,
               warmup_s=warm)


if __name__ == "__main__":
    main()
