"""Fuzz `gptsmith serve` over HTTP: malformed bodies, fields, types, ranges, encodings,
headers and hang-ups against a real server on a tiny model. Holds when no answer is a 5xx,
every 4xx is an OpenAI-shaped error, the server log has no traceback, and afterwards the
server still answers a seeded request exactly as it did before (nothing was corrupted).

    .venv/bin/python checks/fuzz_http.py                  # the full form (~600 cases)
    .venv/bin/python checks/fuzz_http.py --examples 60    # fewer generated cases

Exit 1 and a list of the failures if anything broke. ``LiveServer`` and ``make_tiny_run``
are shared with ``checks/soak.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

BODY_TIMEOUT = 2.0  # the server's body read timeout in these checks (seconds)


def make_tiny_run(out: Path, seq_len: int = 128) -> Path:
    """A random-init one-layer model with a small byte-level BPE: fast to serve on a CPU."""
    import torch

    from gptsmith.model import GPT, GPTConfig
    from gptsmith.runs import save_model
    from gptsmith.tokenizer import train_tokenizer

    rng = random.Random(0)
    words = "the sea king rain boat bread fox red old small is a of and what plus".split()
    texts = [" ".join(rng.choices(words, k=10)) + f" {rng.randint(0, 99)}." for _ in range(500)]
    tok = train_tokenizer(texts, vocab_size=300, show_progress=False)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_model(out, GPT(GPTConfig(vocab_size=tok.vocab_size, depth=1, seq_len=seq_len)))
    tok.save(out / "tokenizer.json")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``gptsmith serve`` of ``run`` (as model ``tiny``) in a child process, its output in
    ``log``. ``stop`` sends SIGTERM and returns how long the server took to exit."""

    def __init__(self, run: Path, log: Path, max_batch: int = 16):
        self.port, self.log = free_port(), log
        code = ("import inspect; from gptsmith.serve import serve; "
                "kw = {'body_timeout': %r} if 'body_timeout' in inspect.signature(serve)"
                ".parameters else {}; "  # a server from before the body timeout: none
                f"serve(['tiny={run}'], port={self.port}, max_batch={max_batch}, "
                "device='cpu', **kw)") % BODY_TIMEOUT
        with open(log, "w") as f:
            self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=f,
                                         stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"the server exited ({self.proc.returncode}):\n{log.read_text()}")
            with contextlib.suppress(OSError):
                if request(self.port, "GET", "/health", timeout=2).status == 200:
                    break
            if time.time() > deadline:
                self.proc.kill()
                sys.exit("the server did not answer /health within 120 s")
            time.sleep(0.2)

    def rss_mb(self) -> float:
        """The server's resident memory (MiB), from /proc."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def problems_in_log(self) -> list[str]:
        text = self.log.read_text(errors="replace")
        return [line for line in text.splitlines()
                if "Traceback" in line or "Exception in ASGI" in line or " 500 " in line]

    def stop(self) -> float:
        t0 = time.time()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return float("inf")
        return time.time() - t0

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class Answer:
    status: int | None  # None: the connection closed without an answer
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def request(port: int, method: str, path: str, body: dict | bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 60) -> Answer:
    """One request on a fresh connection (``Connection: close``), the whole answer read."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None \
        else b""
    head = {"Host": "localhost", "Connection": "close", "Content-Type": "application/json",
            "Content-Length": str(len(data)), **(headers or {})}
    raw = f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(
        f"{k}: {v}\r\n".encode() for k, v in head.items() if v is not None) + b"\r\n" + data
    return exchange(port, raw, timeout=timeout)


def exchange(port: int, raw: bytes, timeout: float = 60, hang_up: bool = False,
             half_close: bool = False) -> Answer:
    """Send ``raw`` bytes; read the answer to the end (or hang up at once)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(OSError):
            s.sendall(raw)
        if hang_up:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return Answer(None)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
    return parse(b"".join(chunks))


def parse(data: bytes) -> Answer:
    while data.startswith(b"HTTP/1.1 1"):  # an interim answer (100 Continue): the next
        data = data.partition(b"\r\n\r\n")[2]
    if not data:
        return Answer(None)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out, rest = bytearray(), body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if not size:
                break
            out += rest[:size]
            rest = rest[size + 2:]
        body = bytes(out)
    return Answer(int(lines[0].split()[1]), headers, body)


# -- the cases ------------------------------------------------------------------------------

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "What is 2 plus 3?"}],
        "max_tokens": 3, "seed": 1}
COMPLETION = {"model": "tiny", "prompt": "The king", "max_tokens": 3, "seed": 1}
DEEP = 100_000


@dataclass
class Case:
    name: str
    send: Callable[[int], Answer]
    may_close: bool = False  # a hang-up or broken HTTP: no answer is fine, a 5xx is not
    bodiless: bool = False   # HEAD: an answer without a body


def post(path: str, body: dict | bytes, headers: dict | None = None) -> Callable[[int], Answer]:
    return lambda port: request(port, "POST", path, body, headers)


def raw_case(raw: bytes, **kw) -> Callable[[int], Answer]:
    """Send ``raw`` and say so (half-close) unless told otherwise: the server then need not
    wait for more."""
    kw.setdefault("half_close", not kw.get("hang_up"))
    return lambda port: exchange(port, raw, **kw)


def _head(length: int | str, path: str = "/v1/chat/completions", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


def body_cases() -> Iterator[Case]:
    """Bodies that are not the JSON object asked for, in every way found so far."""
    chat = json.dumps(CHAT).encode()
    bodies = {
        "empty": b"", "not json": b"{not json", "truncated": chat[:-5], "array": b"[1, 2]",
        "string": b'"hello"', "number": b"42", "null": b"null", "true": b"true",
        "NaN": b'{"model": "tiny", "messages": [], "temperature": NaN}',
        "Infinity": b'{"model": "tiny", "messages": [], "max_tokens": Infinity}',
        "deep arrays": b"[" * DEEP + b"]" * DEEP,
        "deep objects": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
        "deep messages": b'{"model": "tiny", "messages": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        "deep content": json.dumps({**CHAT, "messages": [{"role": "user", "content": "X"}]})
        .encode().replace(b'"X"', b"[" * 5000 + b"]" * 5000),
        "deep unknown field": chat[:-1] + b', "extra": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        "invalid utf-8": chat.replace(b"plus", b"\xff\xfe"),
        "overlong utf-8": chat.replace(b"plus", b"\xc0\xaf"),
        "utf-16": json.dumps(CHAT).encode("utf-16"),
        "utf-8 bom": b"\xef\xbb\xbf" + chat,
        "nul bytes": chat.replace(b"plus", b"\x00\x00"),
        "lone surrogate in content": chat.replace(b"plus", b"\\ud800"),
        "lone low surrogate": chat.replace(b"plus", b"\\udfff x"),
        "lone surrogate in model": chat.replace(b'"tiny"', b'"\\ud800"'),
        "lone surrogate in a key": chat[:-1] + b', "\\udc00": 1}',
        "lone surrogate in stop": chat[:-1] + b', "stop": ["\\ud800"]}',
        "surrogate pair (valid)": chat.replace(b"plus", b"\\ud83d\\ude00"),
        "duplicate keys": chat[:-1] + b', "max_tokens": 2, "max_tokens": -5}',
        "huge number": chat[:-1] + b', "seed": 1' + b"0" * 5000 + b"}",
        "huge exponent": chat[:-1] + b', "temperature": 1e999999}',
        "trailing garbage": chat + b"garbage",
        "two objects": chat + chat,
        "whitespace only": b"   \n\t ",
        "control chars in string": chat.replace(b"plus", b"\x01\x02"),
    }
    for name, data in bodies.items():
        yield Case(f"body: {name}", post("/v1/chat/completions", data))
        if name in ("deep arrays", "lone surrogate in content", "invalid utf-8", "NaN"):
            yield Case(f"completions body: {name}", post("/v1/completions", data.replace(
                b'"messages"', b'"prompt"')))


BAD_VALUES: list = [None, True, False, 0, -1, 1.5, -0.0, 2**63, 2**64, -2**63 - 1, 2**70,
                    10**30, 1e308, "", "x", "1", "x" * 20_000, "\ud800", [], [None], [1, 2],
                    {}, {"a": None}, [[[[[]]]]]]
FIELDS = ["model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens",
          "n", "seed", "stop", "stream", "stream_options", "logprobs", "top_logprobs", "tools",
          "tool_choice", "response_format", "logit_bias", "presence_penalty", "user"]


def field_cases(stride: int = 1) -> Iterator[Case]:
    """Every field of a chat request set to every hostile value (every ``stride``-th, shifted
    by field), and left out."""
    for f, name in enumerate(FIELDS):
        for value in BAD_VALUES[f % stride::stride]:
            yield Case(f"chat {name}={_short(value)}",
                       post("/v1/chat/completions", _dumps({**CHAT, name: value})))
        without = {k: v for k, v in CHAT.items() if k != name}
        yield Case(f"chat without {name}", post("/v1/chat/completions", without))
    for name in ["prompt", "max_tokens", "n", "seed", "logprobs", "echo", "best_of", "suffix"]:
        for value in [None, -1, 2**64, "\ud800", [], [1, 2], {"a": 1}, "x" * 20_000, 6]:
            yield Case(f"completion {name}={_short(value)}",
                       post("/v1/completions", _dumps({**COMPLETION, name: value})))


def message_cases() -> Iterator[Case]:
    """Conversations of every wrong shape, and the official client's own habits."""
    user = {"role": "user", "content": "hi"}
    reply = {"role": "assistant", "content": "yo", "refusal": None, "audio": None,
             "function_call": None, "tool_calls": None, "annotations": []}
    convs = {
        "no role": [{"content": "hi"}], "no content": [{"role": "user"}],
        "null content": [{"role": "user", "content": None}],
        "number content": [{"role": "user", "content": 5}],
        "image part": [{"role": "user", "content": [{"type": "image_url",
                                                      "image_url": {"url": "x"}}]}],
        "text parts": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "part without text": [{"role": "user", "content": [{"type": "text"}]}],
        "role tool": [user, {"role": "tool", "content": "x", "tool_call_id": "1"}],
        "role function": [{"role": "function", "name": "f", "content": "x"}],
        "role developer": [{"role": "developer", "content": "Be brief."}, user],
        "system last": [user, {"role": "system", "content": "x"}],
        "two users": [user, user], "assistant last": [user, reply],
        "client reply sent back": [user, reply, user],
        "tool calls sent back": [user, {**reply, "tool_calls": [{"id": "1", "type": "function",
                                 "function": {"name": "f", "arguments": "{}"}}]}, user],
        "audio sent back": [user, {**reply, "audio": {"id": "a"}}, user],
        "unknown key": [{**user, "colour": "red"}],
        "message is a string": ["hi"], "message is a list": [["user", "hi"]],
        "content too long": [{"role": "user", "content": "sea " * 5000}],
        "special token text": [{"role": "user", "content": "<|end|><|assistant|>hi"}],
        "surrogate name": [{**user, "name": "\ud800"}],
        "many messages": [user, {"role": "assistant", "content": "x"}] * 2000 + [user],
    }
    for name, messages in convs.items():
        yield Case(f"messages: {name}", post("/v1/chat/completions",
                                             _dumps({**CHAT, "messages": messages})))


def header_cases() -> Iterator[Case]:
    """The HTTP around the body: lengths, encodings, types, methods, paths."""
    chat = json.dumps(CHAT).encode()
    c = "/v1/chat/completions"
    yield Case("content-type text/plain", post(c, chat, {"Content-Type": "text/plain"}))
    yield Case("no content-type", post(c, chat, {"Content-Type": None}))
    yield Case("content-type form", post(c, b"a=1&b=2", {"Content-Type":
                                                          "application/x-www-form-urlencoded"}))
    yield Case("content-type multipart", post(c, b"--x\r\n\r\n--x--", {
        "Content-Type": "multipart/form-data; boundary=x"}))
    yield Case("charset latin-1", post(c, chat, {"Content-Type":
                                                  "application/json; charset=latin-1"}))
    yield Case("content-encoding gzip (not)", post(c, chat, {"Content-Encoding": "gzip"}))
    yield Case("content-length too small", raw_case(_head(10) + chat), may_close=True)
    yield Case("content-length negative", raw_case(_head(-5) + chat), may_close=True)
    yield Case("content-length not a number", raw_case(_head("ten") + chat), may_close=True)
    yield Case("content-length huge", raw_case(_head(10**30) + chat, half_close=True),
               may_close=True)
    yield Case("two content-lengths", raw_case(_head(len(chat), extra="Content-Length: 3\r\n")
                                                + chat), may_close=True)
    yield Case("chunked body", raw_case(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(chat):x}\r\n".encode() + chat
        + b"\r\n0\r\n\r\n", half_close=False))
    yield Case("chunked garbage", raw_case(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n"), may_close=True)
    yield Case("chunked and content-length", raw_case(
        _head(len(chat), extra="Transfer-Encoding: chunked\r\n") + chat), may_close=True)
    yield Case("chunked over the limit", raw_case(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + (b"100000\r\n" + b" " * 0x100000 + b"\r\n") * 2
        + b"0\r\n\r\n"), may_close=True)
    yield Case("expect 100-continue", post(c, chat, {"Expect": "100-continue"}))
    yield Case("huge header", post(c, chat, {"X-Big": "a" * 200_000}), may_close=True)
    yield Case("many headers", raw_case(_head(len(chat), extra="".join(
        f"X-{i}: {i}\r\n" for i in range(2000))) + chat), may_close=True)
    yield Case("header with a NUL", raw_case(_head(len(chat), extra="X-A: a\x00b\r\n") + chat),
               may_close=True)
    yield Case("non-ascii header", raw_case(_head(len(chat)).replace(b"Host: x",
                                                                   b"Host: \xff\xfe") + chat),
               may_close=True)
    yield Case("bad authorization", post(c, chat, {"Authorization": "Bearer \x7f" + "k" * 5000}))
    yield Case("HTTP/1.0", raw_case(_head(len(chat)).replace(b"HTTP/1.1", b"HTTP/1.0") + chat,
                                    half_close=False))
    yield Case("HTTP/9.9", raw_case(_head(len(chat)).replace(b"HTTP/1.1", b"HTTP/9.9") + chat),
               may_close=True)
    yield Case("not HTTP", raw_case(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 20),
               may_close=True)
    yield Case("request line only", raw_case(b"GET /\r\n\r\n"), may_close=True)
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW"]:
        yield Case(f"method {method}", lambda port, m=method: request(port, m, c, CHAT),
                   bodiless=method == "HEAD")
    for path in ["/v1/chat/completions/", "/v1//chat/completions", "/v1/chat/completions?x=1",
                 "/v1/models/../../etc/passwd", "/v1/models/%00", "/v1/models/" + "a" * 8000,
                 "/%ff%fe", "/v1/models/\u00e9".encode().decode("latin-1"), "*"]:
        yield Case(f"path {path[:40]!r}", lambda port, p=path: request(port, "POST", p, CHAT),
                   may_close=True)


def hangup_cases() -> Iterator[Case]:
    """Clients that go away: mid-headers, mid-body, stalled, mid-stream."""
    chat = json.dumps(CHAT).encode()
    yield Case("hang up mid-headers", raw_case(b"POST /v1/chat/comp", hang_up=True), True)
    yield Case("hang up after headers", raw_case(_head(len(chat)), hang_up=True), True)
    yield Case("hang up mid-body", raw_case(_head(len(chat)) + chat[:20], hang_up=True), True)
    yield Case("half-close mid-body", raw_case(_head(len(chat)) + chat[:20], half_close=True),
               True)
    yield Case("stall mid-body (body timeout)", raw_case(_head(len(chat)) + chat[:20],
                                                         half_close=False))
    yield Case("stall before the body", raw_case(_head(len(chat)), half_close=False))
    stream = json.dumps({**CHAT, "stream": True, "max_tokens": 100}).encode()
    yield Case("hang up mid-stream", raw_case(_head(len(stream)) + stream, hang_up=True), True)
    yield Case("hang up mid-answer", raw_case(_head(len(stream)) + stream, hang_up=True), True)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 30 else text[:27] + "..."


def _dumps(body: dict) -> bytes:
    return json.dumps(body).encode()  # ensure_ascii: a lone surrogate goes as \ud800


def generated_cases(examples: int, seed: int = 0) -> list[Case]:
    """Hypothesis-drawn requests: a valid one with a field set to a random JSON value, a
    field dropped, or random bytes."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    if examples < 1:
        return []

    scalars = (st.none() | st.booleans() | st.integers(-2**80, 2**80) | st.floats()
               | st.text(max_size=40) | st.sampled_from(["\ud800", "\udfff x", "tiny", "user",
                                                         "assistant", "system", "developer"]))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                          max_leaves=12)
    names = st.sampled_from(FIELDS + ["prompt", "role", "content", "echo", "best_of"])
    mutated = st.tuples(st.sampled_from(["chat", "completions"]), names, values)
    drawn: list[Case] = []

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(mutated.map(lambda x: ("set", x)),
                     st.tuples(st.sampled_from(["chat", "completions"]),
                               st.sampled_from(FIELDS), st.sampled_from(BAD_VALUES))
                     .map(lambda x: ("set", x)),
                     st.binary(max_size=200).map(lambda b: ("bytes", b))))
    def draw(case):
        kind, what = case
        if kind == "bytes":
            drawn.append(Case(f"random bytes {what[:20]!r}", post("/v1/chat/completions", what)))
            return
        endpoint, name, value = what
        base = CHAT if endpoint == "chat" else COMPLETION
        if name in ("role", "content"):
            body = {**base, "messages": [{"role": "user", "content": "hi", name: value}]}
        else:
            body = {**base, name: value}
        try:
            data = json.dumps(body, allow_nan=True).encode()
        except (ValueError, TypeError):
            return
        drawn.append(Case(f"generated {endpoint} {name}={_short(value)}",
                          post(f"/v1/{endpoint}", data)))

    draw()
    return drawn


def all_cases(examples: int, stride: int = 1) -> list[Case]:
    """Every kind of case; ``stride`` > 1 takes fewer field values (the short form)."""
    return [*body_cases(), *field_cases(stride), *message_cases(), *header_cases(),
            *hangup_cases(), *generated_cases(examples)]


# -- the check ------------------------------------------------------------------------------

def judge(case: Case, answer: Answer) -> str | None:
    """What is wrong with the answer to ``case`` (None: it held)."""
    if answer.status is None:
        return None if case.may_close else "no answer"
    if answer.status >= 500:
        return f"HTTP {answer.status}: {answer.body[:200]!r}"
    if b"Traceback" in answer.body:
        return "a traceback in the answer"
    json_error = answer.headers.get("content-type", "").startswith("application/json")
    if 400 <= answer.status < 500 and not case.bodiless and json_error:
        try:
            error = json.loads(answer.body)["error"]
            assert isinstance(error["message"], str) and error["message"]
        except Exception:
            return f"a {answer.status} that is not an OpenAI error: {answer.body[:200]!r}"
    if answer.status == 200 and answer.headers.get("content-type", "").startswith(
            "text/event-stream") and not answer.body.rstrip().endswith(b"data: [DONE]"):
        return f"a stream without [DONE]: {answer.body[-200:]!r}"
    return None


def run_fuzz(server: LiveServer, cases: list[Case], log=print) -> dict:
    """Send every case; return the tally and the failures."""
    before = request(server.port, "POST", "/v1/chat/completions", {**CHAT, "max_tokens": 12})
    statuses: dict[str, int] = {}
    failures = []
    t0 = time.time()
    for case in cases:
        try:
            answer = case.send(server.port)
        except TimeoutError:
            answer, problem = Answer(None), "no answer within 60 s"
        else:
            problem = judge(case, answer)
        key = str(answer.status) if answer.status else "closed"
        statuses[key] = statuses.get(key, 0) + 1
        if problem:
            failures.append(f"{case.name}: {problem}")
    time.sleep(0.5)  # let the server log what it would
    after = request(server.port, "POST", "/v1/chat/completions", {**CHAT, "max_tokens": 12})
    if (after.status, _content(after)) != (before.status, _content(before)):
        failures.append(f"a seeded request changed: {_content(before)!r} -> {_content(after)!r}")
    failures += [f"server log: {line}" for line in server.problems_in_log()]
    five = sum(n for s, n in statuses.items() if s.startswith("5"))
    log(f"{len(cases)} cases in {time.time() - t0:.1f} s; answers: "
        + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
        + f"; 5xx: {five}; tracebacks in the server log: {len(server.problems_in_log())}")
    return {"cases": len(cases), "statuses": statuses, "failures": failures}


def _content(answer: Answer):
    with contextlib.suppress(Exception):
        return json.loads(answer.body)["choices"][0]["message"]["content"]
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=300, help="Hypothesis-generated cases")
    p.add_argument("--run", help="a run directory to serve (default: a tiny random model)")
    p.add_argument("--log", help="keep the server's log here (default: a temporary file)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        run = Path(args.run) if args.run else make_tiny_run(Path(d) / "tiny")
        cases = all_cases(args.examples)
        with LiveServer(run, Path(args.log or Path(d) / "server.log")) as server:
            result = run_fuzz(server, cases)
            took = server.stop()
        print(f"SIGTERM: the server stopped in {took:.1f} s")
        if took > 15:
            result["failures"].append(f"the server took {took:.1f} s to stop on SIGTERM")
    if result["failures"]:
        sys.exit(f"{len(result['failures'])} failures:\n" + "\n".join(result["failures"][:50]))
    print("held: 0 5xx, 0 tracebacks, the server unchanged")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
