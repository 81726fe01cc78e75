"""Generation throughput with a KV cache: ``gptsmith.engine.generate`` vs HF ``model.generate``.

Both sides hold the same weights (an HF ``LlamaForCausalLM`` twin, see train_throughput.py),
decode greedily from the same random prompts and are made to produce exactly ``--new-tokens``
tokens per row (no stop ids, no eos). Each batch size alternates the two sides for ``--rounds``
rounds; tokens/s counts generated tokens (batch x new tokens) over the whole call, prompt
prefill included, and the median round is reported with the ratio ours/HF. Precision is fp32
by default, as the project generates; ``--precision bf16`` runs both under bf16 autocast.
A third side, "compiled", is ours with ``compile=True`` (``gptsmith generate --compile``:
torch.compile'd steps over fixed cache slots); its compiling happens in the warmup call,
whose time is printed, not in the timed rounds. ``--no-compiled`` leaves it out.

    .venv/bin/pip install "transformers>=4.45"      # or: pip install -e ".[bench]"
    .venv/bin/python bench/generate_throughput.py               # depth 4, batch 1 and 16
    .venv/bin/python bench/generate_throughput.py --batch-sizes 1,4,32 --new-tokens 256
    .venv/bin/python bench/generate_throughput.py --quick       # a few seconds: does it run?
"""

import argparse
import statistics
import time

import torch
from results import add_run_flags, record  # bench/ is on sys.path when run
from train_throughput import check_same_logits, hf_twin

from gptsmith.device import autocast, set_threads
from gptsmith.engine import Sampling, generate
from gptsmith.model import GPT, GPTConfig


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batch-sizes", default="1,16", help="comma-separated")
    p.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                   help="also time ours with compiled decoding steps (default on)")
    add_run_flags(p, rounds=7, precision="fp32")  # chat, serve and eval decode in fp32
    args = p.parse_args()
    if args.quick:
        args.depth, args.prompt_len, args.new_tokens = 2, 8, 8
        args.batch_sizes, args.rounds = "1,4", 2
    P, N = args.prompt_len, args.new_tokens

    torch.manual_seed(args.seed)
    set_threads(args.threads)
    device = torch.device("cpu")
    ours = GPT(GPTConfig(depth=args.depth, seq_len=max(256, P + N))).eval()
    cfg = ours.cfg  # with the fields derived from depth filled in
    hf = hf_twin(ours).eval()
    check_same_logits(ours, hf)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.precision}; "
          f"{cfg.depth} layers, width {cfg.n_embd}, heads {cfg.n_head}/{cfg.n_kv_head}, "
          f"vocab {cfg.vocab_size}; prompt {P} tokens, {N} new tokens, greedy")

    sampling = Sampling(max_tokens=N, temperature=0.0, stop_ids=())

    def run_ours(prompts: torch.Tensor, compile: bool = False) -> torch.Tensor:
        out = torch.tensor(generate(ours, prompts.tolist(), sampling, compile=compile))
        assert out.shape == (len(prompts), N), out.shape
        return out

    @torch.no_grad()
    def run_hf(prompts: torch.Tensor) -> torch.Tensor:
        out = hf.generate(
            input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
            num_beams=1, use_cache=True, max_new_tokens=N, min_new_tokens=N,
            eos_token_id=None, pad_token_id=0,
        )[:, P:]
        assert out.shape == (len(prompts), N), out.shape
        return out

    sides = {"ours": run_ours, "HF": run_hf}
    if args.compiled:
        sides["compiled"] = lambda prompts: run_ours(prompts, compile=True)
    summary, lines = [], []
    for B in [int(b) for b in args.batch_sizes.split(",")]:
        prompts = torch.randint(cfg.vocab_size, (B, P))
        rates: dict[str, list[float]] = {name: [] for name in sides}
        with autocast(device, args.precision):
            outs, warm = {}, {}
            for name, fn in sides.items():  # warmup (and the compiled side's compiling)
                t0 = time.perf_counter()
                outs[name] = fn(prompts)
                warm[name] = time.perf_counter() - t0
            for _ in range(args.rounds):
                for name, fn in sides.items():
                    t0 = time.perf_counter()
                    fn(prompts)
                    rates[name].append(B * N / (time.perf_counter() - t0))
        same = {name: (outs[name] == outs["HF"]).float().mean().item()
                for name in sides if name != "HF"}
        print(f"batch {B}: " + "   ".join(
            f"{name} " + " ".join(f"{r:.0f}" for r in v) for name, v in rates.items())
            + " tok/s; same tokens as HF " + ", ".join(f"{n} {v:.1%}" for n, v in same.items())
            + "; warmup call " + ", ".join(f"{n} {t:.1f} s" for n, t in warm.items()))
        med = {name: statistics.median(v) for name, v in rates.items()}
        best = {name: max(v) for name, v in rates.items()}
        summary.append(f"batch {B:3d}:  " + "   ".join(
            f"{name} {med[name]:7.0f} / {best[name]:7.0f}" for name in sides) + "   " + "   ".join(
            f"{name}/HF {med[name] / med['HF']:.2f}x / {best[name] / best['HF']:.2f}x"
            for name in sides if name != "HF"))
        lines.append((rates, B, same, warm))
    print("generated tokens/s, median / best round:\n" + "\n".join(summary))
    for rates, B, same, warm in lines:
        record("generate_throughput", args, rates, "tokens/s",
               [f"{name}/HF" for name in sides if name != "HF"], batch=B, depth=cfg.depth,
               prompt_len=P, new_tokens=N, same_tokens=same["ours"],
               same_tokens_compiled=same.get("compiled"), warmup_s=warm)

if __name__ == "__main__":
    main()
