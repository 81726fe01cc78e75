"""Serving under load: `gptsmith serve` with continuous batching vs one request at a time.

Each configuration is a real server (``python -m gptsmith serve RUN --max-batch N``) on
loopback. ``--clients`` concurrent clients (raw HTTP on asyncio streams: a light client)
stream ``/v1/chat/completions`` until ``--requests`` are answered, after one untimed warm-up.
Request i has a varied prompt, temperature 1, ``--max-tokens`` and seed i, so both
configurations generate the same replies (up to float rounding; the output counts matches
and shows mean generated tokens per request, from the final chunk's ``usage``). req/s and
tok/s are over a configuration's wall time; TTFT is send to first text (queueing included,
which dominates one-at-a-time serving); total is send to ``[DONE]``. Server and clients
share the CPUs, so one run's rates move by a fifth or more: ``--rounds`` alternates the
configurations, a fresh server each time, and the ratios are of the rounds' medians. Errors,
non-200 answers and streams without ``[DONE]`` make it exit 1.

    .venv/bin/python bench/serve_load.py                  # a fresh random model, default shape
    .venv/bin/python bench/serve_load.py --requests 32 --run runs/default/ppo
    .venv/bin/python bench/serve_load.py --max-tokens 0   # no max_tokens, as openai sends
    .venv/bin/python bench/serve_load.py --no-max-share 0.25 --batched-only  # a quarter omit it
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import add_results_flag, record  # bench/ is on sys.path when run

from gptsmith.model import GPT, GPTConfig
from gptsmith.runs import save_model
from gptsmith.tokenizer import train_tokenizer

TOPICS = ["the sea", "a red fox", "numbers", "the old king", "rain", "a small boat", "bread"]


def make_run(out: Path) -> Path:
    """A random-init model of the default pipeline's shape, with a BPE of 2048 ids."""
    rng = random.Random(0)
    syllables = [a + b for a in "bcdfghklmnprstvz" for b in "aeiou"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(3000)]
    texts = [" ".join(rng.choices(words, k=12)) + f" {rng.randint(0, 999)}." for _ in range(8000)]
    tok = train_tokenizer(texts, vocab_size=2048, show_progress=False)
    save_model(out, GPT(GPTConfig(vocab_size=tok.vocab_size, depth=4, seq_len=256)))
    tok.save(out / "tokenizer.json")
    return out


async def http(port: int, method: str, path: str, body: dict | None = None):
    """Send one request; return (status, reader, writer), the reader past the headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode() if body is not None else b""
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                 .encode() + data)
    status = int((await reader.readline()).split()[1])
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    return status, reader, writer


def omits(i: int, share: float) -> bool:
    """Whether request i leaves max_tokens out: an even spread of ``share`` of them."""
    return int((i + 1) * share) > int(i * share)


async def one_request(port: int, model: str, i: int, max_tokens: int) -> dict:
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Tell me about {TOPICS[i % 7]}, #{i}."}],
            "temperature": 1.0, "seed": i}
    if max_tokens:  # 0: left out, as the official client does (the rest of the context)
        body["max_tokens"] = max_tokens
    r, t0 = {"ok": False, "ttft": None, "tokens": 0, "text": ""}, time.perf_counter()
    status, reader, writer = await http(port, "POST", "/v1/chat/completions", body)
    try:
        if status != 200:
            return {**r, "error": f"HTTP {status}: {(await reader.read())[:200]!r}"}
        buf = b""  # the body is chunked; each chunk holds whole or partial events
        while (line := await reader.readline()) and (size := int(line.split(b";")[0], 16)):
            buf += (await reader.readexactly(size + 2))[:-2]
            *events, buf = buf.split(b"\n\n")
            for data in (e.removeprefix(b"data: ").decode() for e in events):
                if data == "[DONE]":
                    return {**r, "ok": True, "total": time.perf_counter() - t0}
                chunk = json.loads(data)
                if "error" in chunk:
                    return {**r, "error": chunk["error"]["message"]}
                r["tokens"] = (chunk.get("usage") or {}).get("completion_tokens", r["tokens"])
                for c in chunk["choices"]:
                    if c["delta"].get("content"):
                        r["ttft"] = r["ttft"] or time.perf_counter() - t0
                        r["text"] += c["delta"]["content"]
        return {**r, "error": "the stream ended without [DONE]"}
    finally:
        writer.close()


async def load(port: int, proc: subprocess.Popen, log: Path, args) -> tuple[list[dict], float]:
    """Wait for /health, warm up, then ``--clients`` workers draw request numbers until
    ``--requests`` are answered."""
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"the server exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            status, reader, writer = await http(port, "GET", "/health")
            model = json.loads(await reader.read())["models"][0] if status == 200 else None
            writer.close()
            if model:
                break
        await asyncio.sleep(0.2)
    else:
        sys.exit("the server did not answer /health within 120 s")
    def budget(i: int) -> int:
        return 0 if omits(i, args.no_max_share) else args.max_tokens

    if not (warm := await one_request(port, model, args.requests, args.max_tokens))["ok"]:
        sys.exit(f"the warm-up request failed: {warm['error']}")
    todo, results = iter(range(args.requests)), {}

    async def client():
        for i in todo:
            try:
                results[i] = {**await one_request(port, model, i, budget(i)),
                              "omitted": budget(i) == 0}
            except Exception as e:  # a dropped connection, a malformed stream
                results[i] = {"ok": False, "error": f"{type(e).__name__}: {e}"}

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.clients)))
    return [results[i] for i in range(args.requests)], time.perf_counter() - t0


def serve_and_load(run: Path, max_batch: int, args, tmp: Path) -> tuple[list[dict], float]:
    with socket.socket() as s:  # a free port unless --port names one
        s.bind(("127.0.0.1", args.port))
        port = s.getsockname()[1]
    log = tmp / f"server-{max_batch}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "gptsmith", "serve", str(run), "--port",
                                 str(port), "--max-batch", str(max_batch)], stdout=f, stderr=f)
    try:
        return asyncio.run(load(port, proc, log, args))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=64, help="total per configuration")
    p.add_argument("--max-tokens", type=int, default=64,
                   help="per request; 0 leaves it out (each reply may fill the context)")
    p.add_argument("--max-batch", type=int, default=16, help="the batched configuration")
    p.add_argument("--run", help="a trained run directory (default: a fresh random model)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--no-max-share", type=float, default=0.0,
                   help="share of requests that leave max_tokens out (0 to 1)")
    p.add_argument("--batched-only", action="store_true",
                   help="skip the one-at-a-time configuration")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds of the configurations; ratios of their medians")
    add_results_flag(p)
    args = p.parse_args()
    if args.max_batch < 2:
        p.error("--max-batch must be >= 2 (it is compared with max_batch=1)")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    with tempfile.TemporaryDirectory() as d:
        run = Path(args.run) if args.run else make_run(Path(d) / "model")
        size = f"{args.max_tokens} tokens" if args.max_tokens else "no max_tokens"
        print(f"{args.run or 'random-init model, depth 4, vocab 2048'}; {args.clients} clients, "
              f"{args.requests} requests of {size}, temperature 1; server "
              f"and clients share {os.cpu_count()} CPUs; times in seconds")
        configs = (args.max_batch,) if args.batched_only else (args.max_batch, 1)
        out = {b: [] for b in configs}  # each configuration's rounds
        for _ in range(args.rounds):
            for b in configs:
                out[b].append(serve_and_load(run, b, args, Path(d)))
        if args.no_max_share:
            print(f"{args.no_max_share:.0%} of requests leave max_tokens out")
    print("max_batch  req/s   tok/s tok/req TTFT p50    p95 total p50    p95 errors")
    rate, errors = {b: ([], []) for b in out}, []  # requests/s and tokens/s of each round
    every_round = [(b, res, secs) for b in out for res, secs in out[b]]
    for b, res, secs in every_round:
        good = [r for r in res if r["ok"]]
        errors += [f"max_batch={b}, request {i}: {r['error']}" for i, r in enumerate(res)
                   if not r["ok"]]
        ttft, total = [r["ttft"] for r in good if r["ttft"]], [r["total"] for r in good]
        tokens = sum(r["tokens"] for r in good)
        rate[b][0].append(len(good) / secs)
        rate[b][1].append(tokens / secs)
        print(f"{b:>9} {len(good) / secs:6.2f} {tokens / secs:7.1f} "
              f"{tokens / max(1, len(good)):7.1f} "
              f"{pct(ttft, .5):8.3f} {pct(ttft, .95):6.3f} {pct(total, .5):9.3f} "
              f"{pct(total, .95):6.3f} {len(res) - len(good):6d}")
        if args.no_max_share:
            for omitted in (False, True):
                xs = [r["ttft"] for r in good if r["ttft"] and r.get("omitted") == omitted]
                print(f"{'':>9} TTFT of those {'without' if omitted else 'with':>7} max_tokens:"
                      f" p50 {pct(xs, .5):.3f} p95 {pct(xs, .95):.3f} ({len(xs)} requests)")
    if args.batched_only:
        if errors:
            sys.exit(f"{len(errors)} failed requests:\n" + "\n".join(errors[:10]))
        return
    same = sum(x["ok"] and x["text"] == y["text"] for x, y in
               zip(out[args.max_batch][0][0], out[1][0][0], strict=True))
    print(f"same reply in both configurations (first round): {same}/{args.requests}")
    (rb, tb), (r1, t1) = ([statistics.median(x) for x in rate[b]] for b in (args.max_batch, 1))
    print(f"batched/one-at-a-time, medians of {args.rounds} rounds: {tb / t1:.1f}x tokens/s, "
          f"{rb / r1:.1f}x requests/s")
    record("serve_load", args, {"batched": rate[args.max_batch][1], "one-at-a-time": rate[1][1]},
           "tokens/s", ["batched/one-at-a-time"], clients=args.clients, requests=args.requests,
           max_tokens=args.max_tokens, max_batch=args.max_batch, run=args.run or "random",
           requests_per_s_ratio=rb / r1, errors=len(errors))
    if errors:
        sys.exit(f"{len(errors)} failed requests:\n" + "\n".join(errors[:10]))


if __name__ == "__main__":
    main()
