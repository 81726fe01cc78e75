"""Soak `gptsmith serve`: N concurrent clients for S seconds against a real server on a tiny
model, mixing streamed and whole replies, with and without max_tokens, clients that hang
up (mid-stream, mid-body) and bad requests.

Every good request is one of a set of seeded requests whose replies were first taken one at
a time (a solo run), so a reply that differs from its own, and above all one that equals
another request's, is seen. Holds when: no 5xx, every bad request is a 4xx, no reply mixed
up or different from its solo run, every stream ends with [DONE], no traceback in the server
log, and the server's memory (RSS) at the end within 10% of what it was after the warm-up.

    .venv/bin/python checks/soak.py --clients 64 --seconds 60     # the full form
    .venv/bin/python checks/soak.py --clients 8 --seconds 8       # a short form (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checks.fuzz_http import LiveServer, make_tiny_run, request  # noqa: E402

TOPICS = ["the sea", "a red fox", "numbers", "the old king", "rain", "a small boat", "bread",
          "what is 2 plus 3", "the king and the sea", "small boats"]
BAD = [  # each must be answered 4xx, never 5xx
    json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                "seed": 2**64}).encode(),
    json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 2,
                "seed": -2**63 - 1}).encode(),
    b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800 hi"}]}',
    b'{"model": "tiny", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f"}}]}).encode(),
    json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 10**6}).encode(),
    json.dumps({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}).encode(),
    b"{not json",
]


@dataclass
class Known:
    """A seeded request and the reply it got alone."""
    body: dict
    reply: str = ""
    no_max_tokens: bool = False


@dataclass
class Tally:
    counts: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    mixed_up: int = 0
    differs: int = 0
    ttft: dict[bool, list[float]] = field(default_factory=lambda: {True: [], False: []})

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def status(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


def known_requests(n: int, seq_len: int, rng: random.Random) -> list[Known]:
    """``n`` seeded requests, a quarter of them without max_tokens (the rest of the
    context), temperature 1."""
    out = []
    for i in range(n):
        body = {"model": "tiny", "temperature": 1.0, "seed": 1000 + i, "messages": [
            {"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]}, #{i}."}]}
        no_max = i % 4 == 3
        if not no_max:
            body["max_tokens"] = rng.randint(4, seq_len // 4)
        out.append(Known(body, no_max_tokens=no_max))
    return out


async def open_(port: int, body: bytes, stream_head: bool = True):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 b"Content-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    return reader, writer


async def read_head(reader) -> tuple[int, dict]:
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


async def read_body(reader, headers: dict) -> bytes:
    if headers.get("transfer-encoding") != "chunked":
        return await reader.read()
    out = bytearray()
    while (line := await reader.readline()) and (size := int(line.split(b";")[0], 16)):
        out += (await reader.readexactly(size + 2))[:-2]
    return bytes(out)


async def ask(port: int, k: Known, stream: bool, tally: Tally, knowns: list[Known]) -> None:
    body = json.dumps({**k.body, "stream": stream}).encode()
    t0 = time.perf_counter()
    reader, writer = await open_(port, body)
    try:
        status, headers = await read_head(reader)
        tally.status(status)
        if status != 200:
            tally.failures.append(f"a good request got {status}: {await reader.read(300)!r}")
            return
        text, done, first = "", False, None
        if stream:
            buf = b""
            while (line := await reader.readline()) and (size := int(line.split(b";")[0], 16)):
                buf += (await reader.readexactly(size + 2))[:-2]
                *events, buf = buf.split(b"\n\n")
                for data in (e.removeprefix(b"data: ").decode() for e in events):
                    if data == "[DONE]":
                        done = True
                        continue
                    chunk = json.loads(data)
                    if "error" in chunk:
                        tally.failures.append(f"an error event: {chunk['error']['message']}")
                    for c in chunk.get("choices", []):
                        if c["delta"].get("content"):
                            first = first or time.perf_counter() - t0
                            text += c["delta"]["content"]
            if not done:
                tally.failures.append("a stream ended without [DONE]")
            if first is not None:
                tally.ttft[k.no_max_tokens].append(first)
        else:
            text = json.loads(await read_body(reader, headers))["choices"][0]["message"][
                "content"]
        if text != k.reply:
            if any(text == o.reply for o in knowns if o is not k):
                tally.mixed_up += 1
                tally.failures.append(f"mixed up: seed {k.body['seed']} got another's reply")
            else:
                tally.differs += 1
                tally.failures.append(f"seed {k.body['seed']}: {text!r} != solo {k.reply!r}")
    finally:
        writer.close()


async def hang_up_mid_stream(port: int, k: Known, tally: Tally) -> None:
    reader, writer = await open_(port, json.dumps({**k.body, "stream": True}).encode())
    status, _ = await read_head(reader)
    tally.status(status)
    await reader.readline()
    writer.transport.abort()


async def hang_up_mid_body(port: int, k: Known) -> None:
    body = json.dumps(k.body).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body[:len(body) // 2])
    await writer.drain()
    writer.transport.abort()


async def bad(port: int, body: bytes, tally: Tally) -> None:
    reader, writer = await open_(port, body)
    try:
        status, headers = await read_head(reader)
        tally.status(status)
        answer = await read_body(reader, headers)
        if not 400 <= status < 500:
            tally.failures.append(f"a bad request got {status}: {answer[:200]!r}")
    finally:
        writer.close()


async def client(port: int, rng: random.Random, knowns: list[Known], deadline: float,
                 tally: Tally) -> None:
    actions = ["stream", "whole", "hang up mid-stream", "hang up mid-body", "bad request"]
    weights = [40, 30, 10, 5, 15]
    while time.perf_counter() < deadline:
        action = rng.choices(actions, weights)[0]
        k = rng.choice(knowns)
        tally.count(action)
        try:
            if action in ("stream", "whole"):
                await ask(port, k, action == "stream", tally, knowns)
            elif action == "hang up mid-stream":
                await hang_up_mid_stream(port, k, tally)
            elif action == "hang up mid-body":
                await hang_up_mid_body(port, k)
            else:
                await bad(port, rng.choice(BAD), tally)
        except Exception as e:  # a dropped connection, a malformed answer
            tally.failures.append(f"{action}: {type(e).__name__}: {e}")


async def sample_rss(server: LiveServer, out: list[tuple[float, float]], stop: asyncio.Event):
    t0 = time.perf_counter()
    while not stop.is_set():
        out.append((time.perf_counter() - t0, server.rss_mb()))
        await asyncio.sleep(0.5)


async def load(server: LiveServer, knowns: list[Known], args) -> tuple[Tally, list]:
    tally, rss, stop = Tally(), [], asyncio.Event()
    sampler = asyncio.create_task(sample_rss(server, rss, stop))
    deadline = time.perf_counter() + args.seconds
    await asyncio.gather(*(client(server.port, random.Random(args.seed * 1000 + i), knowns,
                                  deadline, tally) for i in range(args.clients)))
    await asyncio.sleep(1.0)  # the server drops what the hang-ups left
    stop.set()
    await sampler
    return tally, rss


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def run_soak(args, server: LiveServer, log=print) -> dict:
    """Soak the running ``server`` (serving a model of context ``args.seq_len`` as 'tiny'),
    then stop it."""
    knowns = known_requests(args.requests, args.seq_len, random.Random(args.seed))
    for k in knowns:  # the solo run: one at a time
        answer = request(server.port, "POST", "/v1/chat/completions", k.body)
        k.reply = json.loads(answer.body)["choices"][0]["message"]["content"]
    t0 = time.time()
    tally, rss = asyncio.run(load(server, knowns, args))
    took = time.time() - t0
    problems = server.problems_in_log()
    stop_s = server.stop()
    warm = [m for t, m in rss if t >= args.warmup] or [m for _, m in rss]
    start, end, peak = warm[0], rss[-1][1], max(m for _, m in rss)
    five = sum(n for s, n in tally.statuses.items() if s >= 500)
    failures = list(tally.failures)
    failures += [f"server log: {line}" for line in problems]
    if five:
        failures.append(f"{five} answers were 5xx")
    if end > start * 1.10:
        failures.append(f"memory grew {start:.0f} -> {end:.0f} MiB (> 10%)")
    if stop_s > 15:
        failures.append(f"the server took {stop_s:.1f} s to stop on SIGTERM")
    requests = sum(tally.counts.values())
    log(f"{args.clients} clients, {took:.0f} s: {requests} requests ("
        + ", ".join(f"{k} {v}" for k, v in sorted(tally.counts.items())) + "); answers "
        + ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items())))
    log(f"5xx: {five}; mixed up: {tally.mixed_up}; differ from the solo run: {tally.differs}; "
        f"other failures: {len(failures) - tally.mixed_up - tally.differs - bool(five)}")
    for no_max, xs in tally.ttft.items():
        log(f"first token ({'no max_tokens' if no_max else 'with max_tokens'}, streamed): "
            f"p50 {pct(xs, .5):.3f} s, p95 {pct(xs, .95):.3f} s over {len(xs)}")
    log(f"server RSS: {start:.0f} MiB after the {args.warmup:g} s warm-up, {end:.0f} MiB at "
        f"the end ({(end / start - 1) * 100:+.1f}%), peak {peak:.0f} MiB; SIGTERM stop "
        f"{stop_s:.1f} s")
    return {"requests": requests, "five": five, "mixed_up": tally.mixed_up,
            "differs": tally.differs, "failures": failures, "rss": (start, end, peak)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of load before the memory baseline (default: a quarter)")
    p.add_argument("--requests", type=int, default=32, help="distinct seeded requests")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128, help="the tiny model's context")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", help="a run directory to serve as 'tiny' (default: a tiny model)")
    p.add_argument("--log", help="keep the server's log here")
    return p


def main() -> None:
    args = parser().parse_args()
    if args.warmup is None:
        args.warmup = args.seconds / 4
    with tempfile.TemporaryDirectory() as d:
        run = Path(args.run) if args.run else make_tiny_run(Path(d) / "tiny", args.seq_len)
        with LiveServer(run, Path(args.log or Path(d) / "server.log"), args.max_batch) as server:
            result = run_soak(args, server)
    if result["failures"]:
        sys.exit(f"{len(result['failures'])} failures:\n" + "\n".join(result["failures"][:30]))
    print("held: 0 5xx, 0 mixed-up replies, memory within 10%")


if __name__ == "__main__":
    main()
