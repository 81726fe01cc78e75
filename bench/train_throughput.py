"""Training throughput: our GPT vs Hugging Face ``LlamaForCausalLM`` of the same shape.

Both models get the same weights (copied over, checked to give the same fp32 logits), the same
random token batches, the same AdamW (``make_optimizer``), gradient clipping at 1.0 and the same
precision (by default the pipeline's: bf16 autocast where the CPU multiplies bf16 natively,
else fp32). A step is what ``Trainer.train_step`` does: forward with the loss, backward,
``loss.item()``, clip, optimizer step, zero grads. The two sides alternate in rounds
(``--steps`` of ours, then ``--steps`` of HF, ``--rounds`` times) so that drift in the
machine's speed hits both; the median round gives tokens/s per side and the ratio ours/HF,
also written as a JSON line to ``runs/bench.jsonl`` (``bench/results.py``).

It also says what share of the CPU's matrix-multiply peak a step reaches: the step's model
FLOPs (``train_flops_per_token``: its matrix multiplies, attention's included, forward and
backward) per second, against the best rate of square products in the step's precision
(``matmul_peak``, timed in the same run).

A third side, "compiled", is ours under ``torch.compile`` as ``--train.compile`` runs it (the
model compiled, the optimizer not), from a copy of the same weights; it compiles in its warmup
steps, whose time is printed, not in the timed rounds. ``--no-compiled`` leaves it out.

    .venv/bin/pip install "transformers>=4.45"      # or: pip install -e ".[bench]"
    .venv/bin/python bench/train_throughput.py                  # depth 4, seq 256, batch 16
    .venv/bin/python bench/train_throughput.py --precision bf16 --depth 8 --threads 2
    .venv/bin/python bench/train_throughput.py --quick          # a few seconds: does it run?
"""

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from results import add_run_flags, record  # bench/ is on sys.path when run
from transformers import LlamaConfig, LlamaForCausalLM

from gptsmith.device import autocast, set_threads
from gptsmith.interop.hf import hf_config, to_hf
from gptsmith.model import GPT, GPTConfig
from gptsmith.train.loop import TrainConfig, make_optimizer


def hf_twin(model: GPT) -> LlamaForCausalLM:
    """A ``LlamaForCausalLM`` of the same shape as ``model``, holding a copy of its weights."""
    c = model.cfg
    hf_cfg = LlamaConfig(**hf_config(c), attention_dropout=0.0, bos_token_id=None,
                         eos_token_id=None, pad_token_id=0, attn_implementation="sdpa")
    hf = LlamaForCausalLM(hf_cfg)
    ours = to_hf(model.state_dict())
    missing, unexpected = hf.load_state_dict(ours, strict=False)
    assert not unexpected, f"weights HF has no place for: {unexpected}"
    assert set(missing) <= {"lm_head.weight"} and c.tie_embeddings == bool(missing), missing
    if c.tie_embeddings:
        assert hf.lm_head.weight is hf.model.embed_tokens.weight, "HF lm_head is not tied"
    n_ours, n_hf = model.num_params(), sum(p.numel() for p in hf.parameters())
    print(f"parameters: ours {n_ours:,}  HF {n_hf:,}")
    assert abs(n_ours - n_hf) <= 0.01 * n_ours, "parameter counts differ by more than 1%"
    return hf.train(model.training)


@torch.no_grad()
def check_same_logits(model: GPT, hf: LlamaForCausalLM, batch: int = 2, atol: float = 1e-4):
    """Same weights, same fp32 logits on a random batch of full context: the shapes match."""
    idx = torch.randint(model.cfg.vocab_size, (batch, model.cfg.seq_len))
    a, b = model(idx), hf(input_ids=idx, use_cache=False).logits
    err = (a - b).abs().max().item()
    print(f"fp32 logits, ours vs HF: max abs difference {err:.2e}")
    assert err < atol, f"logits differ by {err:.2e} > {atol}: the architectures do not match"


def train_flops_per_token(model: GPT, seq_len: int) -> float:
    """A training step's matmul FLOPs per token: 2 a multiply-add, three passes (forward, and
    backward's two products); the linear layers' weights (the LM head's included, tied or
    not) and causal attention's two products (Q.K and weights.V) over T/2 keys on average."""
    c = model.cfg
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    if c.tie_embeddings:
        linear += model.embed_tokens.weight.numel()
    attention = c.depth * 2 * (c.n_head * c.head_dim) * seq_len / 2
    return 3 * 2 * (linear + attention)


def matmul_peak(dtype: torch.dtype, sizes=(512, 1024, 2048, 4096),
                seconds: float = 1.0) -> tuple[float, int]:
    """The CPU's matmul peak in ``dtype`` on its threads, and the n where it was reached:
    the best FLOP/s of n x n x n products, each n repeated for about ``seconds`` (the rate
    its kernels reach with nothing but multiplies to do)."""
    rates = {}
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best, t_end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        rates[n] = 2 * n**3 / best
    n = max(rates, key=rates.get)
    return rates[n], n


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed steps per side per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                   help="also time ours under torch.compile, as --train.compile (default on)")
    add_run_flags(p, rounds=8, fixed_shapes=True)  # pre-training's batches: one shape
    args = p.parse_args()
    if args.quick:
        args.depth, args.seq_len, args.batch_size = 2, 64, 4
        args.steps, args.rounds, args.warmup = 2, 2, 1

    torch.manual_seed(args.seed)
    set_threads(args.threads)
    device = torch.device("cpu")
    ours = GPT(GPTConfig(depth=args.depth, seq_len=args.seq_len))
    cfg = ours.cfg  # with the fields derived from depth filled in
    hf = hf_twin(ours)
    check_same_logits(ours, hf)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.precision}; "
          f"{cfg.depth} layers, width {cfg.n_embd}, heads {cfg.n_head}/{cfg.n_kv_head}, "
          f"mlp {cfg.mlp_hidden}, vocab {cfg.vocab_size}; batch {args.batch_size} x "
          f"{args.seq_len} tokens")

    tcfg = TrainConfig(batch_size=args.batch_size)
    B, T, V = args.batch_size, args.seq_len, cfg.vocab_size
    data = torch.randint(V, (args.steps, B, T + 1))  # the same batches for both sides

    def hf_loss(x, y):  # our loss, computed from HF's logits
        logits = hf(input_ids=x, use_cache=False).logits
        return F.cross_entropy(logits.float().view(-1, V), y.reshape(-1))

    sides = {
        "ours": (ours, make_optimizer(ours, tcfg), lambda x, y: ours(x, y)),
        "HF": (hf, make_optimizer(hf, tcfg), hf_loss),
    }
    if args.compiled:  # as the Trainer compiles with --train.compile
        twin = copy.deepcopy(ours)
        compiled = torch.compile(twin)
        sides["compiled"] = (twin, make_optimizer(twin, tcfg), lambda x, y: compiled(x, y))

    def run(name: str, steps: int) -> tuple[float, float]:
        model, opt, loss_fn = sides[name]
        t0 = time.perf_counter()
        for i in range(steps):
            x, y = data[i % len(data), :, :-1], data[i % len(data), :, 1:]
            with autocast(device, args.precision):
                loss = loss_fn(x, y)
            loss.backward()
            last = loss.item()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, last

    warm = {}
    for name in sides:  # warmup (and the compiled side's compiling)
        warm[name] = run(name, args.warmup)[0]
    print("warmup: " + ", ".join(f"{name} {t:.1f} s" for name, t in warm.items()))
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        line = []
        for name in sides:
            dt, loss = run(name, args.steps)
            rates[name].append(args.steps * B * T / dt)
            line.append(f"{name} {rates[name][-1]:8.0f} tok/s (loss {loss:.3f})")
        print(f"round {r + 1}: " + "   ".join(line))

    med = {name: statistics.median(v) for name, v in rates.items()}
    best = {name: max(v) for name, v in rates.items()}
    for name in sides:
        print(f"{name:>8}: median {med[name]:8.0f} tok/s   best {best[name]:8.0f} tok/s")
    ratios = [f"{name}/HF" for name in sides if name != "HF"]
    for of in ratios:
        top = of.split("/")[0]
        print(f"{of}: median {med[top] / med['HF']:.2f}x   best {best[top] / best['HF']:.2f}x")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak, n = matmul_peak(dtype, seconds=0.1 if args.quick else 1.0)
    per_token = train_flops_per_token(ours, T)
    share = {name: med[name] * per_token / peak for name in sides}
    print(f"model FLOPs: {per_token * B * T / 1e9:.1f} GFLOP a step; the CPU's "
          f"{str(dtype).removeprefix('torch.')} matmul peak: {peak / 1e9:.0f} GFLOP/s (at "
          f"{n}^3); a step reaches " + ", ".join(f"{v:.0%} of it ({name})"
                                           for name, v in share.items()))
    record("train_throughput", args, rates, "tokens/s", ratios, depth=cfg.depth,
           batch_size=B, seq_len=T, vocab=V, steps_per_round=args.steps,
           gflop_per_step=per_token * B * T / 1e9, matmul_peak_gflops=peak / 1e9, peak_n=n,
           share_of_peak={name: round(v, 4) for name, v in share.items()}, warmup_s=warm)


if __name__ == "__main__":
    main()
