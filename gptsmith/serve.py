"""`gptsmith serve`: the OpenAI HTTP API and a web chat page over trained run directories.

    POST /v1/chat/completions   chat (``stream: true`` for server-sent events)
    POST /v1/completions        plain text completion (base models)
    GET  /v1/models             the run directories served
    GET  /                      the web chat page

Requests to one model share one :class:`~gptsmith.batching.Batcher`, so concurrent requests
are decoded together. Errors are OpenAI-shaped JSON (``{"error": {"message", "type",
"param", "code"}}``), never a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from gptsmith.batching import Batcher, Ticket
from gptsmith.chat import check_conversation, prompt_ids
from gptsmith.engine import Sampling
from gptsmith.errors import GptsmithError
from gptsmith.model import GPT
from gptsmith.runs import load_model
from gptsmith.tokenizer import IncrementalDecoder, Tokenizer

log = logging.getLogger("gptsmith.serve")
PAGE = Path(__file__).parent / "static" / "chat.html"
MAX_N = 16
INT64 = 1 << 63  # seeds are 64-bit signed integers, as OpenAI's API takes them
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat (5 for completions)


@dataclass
class ServedModel:
    name: str
    run_dir: Path
    model: GPT
    tokenizer: Tokenizer
    batcher: Batcher
    created: int


def _split_spec(spec: str) -> tuple[str | None, Path]:
    """``NAME=RUN_DIR`` as (name, directory); a bare ``RUN_DIR`` as (None, directory)."""
    name, sep, path = spec.partition("=")
    if not sep:
        return None, Path(spec)
    if not name.strip():
        raise GptsmithError(f"{spec!r}: no name before '='; write NAME=RUN_DIR or RUN_DIR")
    if not path.strip():
        raise GptsmithError(f"{spec!r}: no run directory after '='; write NAME=RUN_DIR")
    return name.strip(), Path(path)


def parse_named_runs(specs: list[str]) -> dict[str, Path]:
    """Each ``RUN_DIR`` or ``NAME=RUN_DIR`` as name -> run directory, in order: a bare
    directory is named after itself (``runs/default/ppo`` -> ``ppo``), or after its last two
    parts when bare names collide. Two models of one name are an error, not a silent loss."""
    pairs = [_split_spec(spec) for spec in specs]
    short = [p.name for n, p in pairs if n is None]
    runs: dict[str, Path] = {}
    for name, path in pairs:
        if name is None:
            name = path.name if short.count(path.name) == 1 else f"{path.parent.name}/{path.name}"
        if name in runs:
            raise GptsmithError(f"two models are named {name!r}; name them: NAME=RUN_DIR")
        runs[name] = path
    return runs


def load_served(specs: list[str], max_batch: int = 16,
                device: str = "cpu") -> dict[str, ServedModel]:
    """Load each ``RUN_DIR`` or ``NAME=RUN_DIR`` (named as :func:`parse_named_runs` says)."""
    served: dict[str, ServedModel] = {}
    for name, path in parse_named_runs(specs).items():
        model, tokenizer = load_model(path, device)
        created = int((path / "model.safetensors").stat().st_mtime)
        served[name] = ServedModel(name, path, model, tokenizer, Batcher(model, max_batch), created)
    return served


# -- errors --------------------------------------------------------------------------------

class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error"):
        message, param = _printable(message), param and _printable(param)
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = \
            status, message, param, code, type

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        if self.code in ("request_timeout", "client_disconnected"):
            headers["Connection"] = "close"  # the body was not read to its end
        return JSONResponse(body, status_code=self.status, headers=headers)


def _printable(text: str) -> str:
    """``text`` that can be sent as UTF-8: what it echoes of a request (a field name with a
    lone surrogate) escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# -- requests ------------------------------------------------------------------------------

class _Common(BaseModel):
    # other OpenAI fields are accepted and unused, except those in UNSUPPORTED (refused)
    model_config = ConfigDict(extra="ignore")
    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, lt=INT64)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stream: bool = False
    stream_options: dict | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop may hold at most 4 sequences", "stop")
        return [s for s in stops if s]

    def top_logprobs_wanted(self) -> int | None:
        """How many alternatives each token's log-probability comes with (None: none)."""
        return None


class ChatRequest(_Common):
    messages: list[dict]
    max_completion_tokens: int | None = Field(None, ge=1, lt=INT64)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def top_logprobs_wanted(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs: set logprobs to true to use top_logprobs",
                           "top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Common):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, lt=INT64)  # the OpenAI default for completions
    logprobs: int | None = Field(None, ge=0, le=5)

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs


# What each number field takes, said when a request is out of range.
RANGES = {"seed": "a 64-bit signed integer, -2**63 to 2**63-1",
          "n": f"an integer from 1 to {MAX_N}",
          "max_tokens": "an integer of at least 1 (prompt + max_tokens within the context)",
          "max_completion_tokens": "an integer of at least 1 (prompt + it within the context)",
          "top_logprobs": f"an integer from 0 to {MAX_TOP_LOGPROBS}",
          "logprobs": "true or false (chat), an integer from 0 to 5 (completions)",
          "temperature": "a number from 0 to 2", "top_p": "a number above 0, at most 1"}


def _off(*defaults):
    """A test that a field is set to something other than its 'off' values."""
    return lambda v: v not in (None, *defaults)


# Fields that would change the answer, which this server does not do: refused by name.
UNSUPPORTED = {
    "tools": (_off([]), "tools (function calling) are not supported by this server"),
    "tool_choice": (_off("none"), "tool_choice: tools are not supported by this server"),
    "functions": (_off([]), "functions (function calling) are not supported by this server"),
    "function_call": (_off("none"), "function_call: functions are not supported by this "
                      "server"),
    "response_format": (lambda v: v is not None and v != {"type": "text"},
                        'response_format: only {"type": "text"} is supported (no JSON mode or '
                        "schemas)"),
    "logit_bias": (_off({}), "logit_bias is not supported by this server"),
    "presence_penalty": (_off(0), "presence_penalty is not supported by this server (send 0)"),
    "frequency_penalty": (_off(0), "frequency_penalty is not supported by this server "
                          "(send 0)"),
    "audio": (_off(), "audio output is not supported by this server"),
    "modalities": (_off(["text"]), 'modalities: only ["text"] is supported'),
    "prediction": (_off(), "prediction (predicted outputs) is not supported by this server"),
    "best_of": (_off(1), "best_of is not supported by this server (use n)"),
    "echo": (_off(False), "echo is not supported by this server"),
    "suffix": (_off(""), "suffix (insertion) is not supported by this server"),
}


def _refuse_unsupported(data: dict) -> None:
    for name, (is_set, message) in UNSUPPORTED.items():
        if name in data and is_set(data[name]):
            raise APIError(400, message, name, "unsupported_parameter")


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _lone_surrogate(data) -> str | None:
    """The path of the first string (key or value) that holds a lone UTF-16 surrogate (JSON
    allows ``"\\ud800"``; no tokenizer can encode it), or None."""
    stack = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                sub = f"{path}.{k}" if path else str(k)
                if not _utf8(k):
                    return sub
                stack.append((v, sub))
        elif isinstance(value, list):
            stack.extend((v, f"{path}.{i}") for i, v in enumerate(value))
        elif isinstance(value, str) and not _utf8(value):
            return path or "body"
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _validated(cls: type[BaseModel], body: bytes):
    try:
        data = json.loads(body, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise APIError(400, f"the request body is not valid JSON ({e})") from None
    except RecursionError:
        raise APIError(400, "the request body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    bad = _lone_surrogate(data)
    if bad:
        raise APIError(400, f"{bad}: the text holds a lone UTF-16 surrogate (not a character)",
                       bad)
    _refuse_unsupported(data)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = f"{param}: {first['msg']}" if param else first["msg"]
        if param in RANGES:
            message += f" ({param} takes {RANGES[param]})"
        raise APIError(400, message, param) from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply") from None


# Keys of an assistant message as the API answers it, which the official client sends back
# when a reply is appended to the conversation (`message.model_dump()`): ignored when empty.
RESPONSE_ONLY = ("refusal", "audio", "annotations", "tool_calls", "function_call",
                 "reasoning_content")


def _request_message(message, i: int) -> dict:
    """A message as :func:`check_conversation` takes it: ``developer`` is ``system`` (as
    OpenAI treats it), empty response-only keys dropped, list-of-parts content flattened."""
    if not isinstance(message, dict):
        return message
    message = dict(message)
    if message.get("role") == "developer":
        message["role"] = "system"
    for key in RESPONSE_ONLY:
        if key not in message:
            continue
        value = message.pop(key)
        if key == "refusal":
            continue  # the reply's refusal text: the content says what was said
        if value not in (None, [], {}, ""):
            raise APIError(400, f"messages[{i}].{key}: tool calls, functions and audio are "
                           "not supported by this server", f"messages.{i}.{key}")
    return _text_content(message, i)


def _text_content(message: dict, i: int) -> dict:
    """A message with list-of-parts content (``[{"type": "text", "text": ...}]``) flattened."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"),
                   str) for p in content):
            raise APIError(400, f"messages[{i}].content: only text parts are supported",
                           f"messages.{i}.content")
        message = {**message, "content": "".join(p["text"] for p in content)}
    return message


# -- generation ----------------------------------------------------------------------------

class StopText:
    """Cuts a stream of text at the first stop sequence, holding back a tail that could be
    the start of one, so a stop sequence is never sent in part."""

    def __init__(self, stops: list[str]):
        self.stops, self.held = stops, ""

    def push(self, piece: str) -> tuple[str, bool]:
        text = self.held + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return text[:min(hits)], True
        hold = max((n for s in self.stops for n in range(1, len(s)) if text.endswith(s[:n])),
                   default=0)
        self.held = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


@dataclass
class Choice:
    decoder: IncrementalDecoder
    stop: StopText
    text: str = ""
    tokens: int = 0
    finish: str | None = None
    logprobs: list[dict] | None = None  # one entry per token of the text, when asked
    pending: tuple | None = None        # the log-probs of the token about to arrive

    def last_piece(self) -> str:
        """The text held back when the choice ends: a cut last character, then whatever the
        stop sequences held (up to a stop sequence the cut character completes)."""
        piece, stopped = self.stop.push(self.decoder.flush())
        return piece if stopped else piece + self.stop.flush()


class Generation:
    """One request's choices: checked and set up at once (so errors answer as JSON before
    any streaming starts), then run by :meth:`pieces`.

    Choice i = prompt i // n, sample i % n, seeded ``seed + i % n``.
    """

    def __init__(self, served: ServedModel, request: Request, prompts: list[list[int]],
                 req: _Common, stop_ids: tuple[int, ...]):
        ctx = served.model.cfg.seq_len
        longest = max(len(p) for p in prompts)
        if longest >= ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens; the "
                           f"prompt has {longest}.", "messages", "context_length_exceeded")
        field = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) \
            else "max_tokens"
        max_tokens = getattr(req, field)
        if max_tokens is not None and longest + max_tokens > ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens; you "
                           f"requested {longest + max_tokens} ({longest} in the prompt, "
                           f"{max_tokens} for the completion). Lower {field}.",
                           field, "context_length_exceeded")
        seed = req.seed if req.seed is not None else secrets.randbits(31)
        stops = req.stops()
        top = req.top_logprobs_wanted()
        self.served, self.request, self.prompts, self.stop_ids = served, request, prompts, stop_ids
        self.events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.tickets, self.choices = [], []
        for i in range(len(prompts) * req.n):
            prompt = prompts[i // req.n]
            s = Sampling(max_tokens=max_tokens or ctx - len(prompt), temperature=req.temperature,
                         top_p=req.top_p, seed=seed + i % req.n, stop_ids=stop_ids)
            self.tickets.append(Ticket(prompt, s, loop, self.events, index=i, logprobs=top))
            self.choices.append(Choice(IncrementalDecoder(served.tokenizer, skip_special=True),
                                       StopText(stops), logprobs=None if top is None else []))

    def usage(self) -> dict:
        prompt = sum(len(p) for p in self.prompts)
        completion = sum(c.tokens for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    async def pieces(self) -> AsyncIterator[tuple[int, str, list[dict] | None]]:
        """Yield ``(choice index, new text, its tokens' log-probs or None)`` as tokens arrive,
        until every choice has its ``finish``. Everything is cancelled (batch places freed at
        once) if the client goes away or the caller stops iterating."""
        batcher = self.served.batcher
        try:
            try:
                for t in self.tickets:
                    batcher.submit(t)
            except RuntimeError as e:  # closed: the server is shutting down
                raise APIError(503, str(e), type="server_error", code="unavailable") from None
            open_ = len(self.tickets)
            while open_:
                try:
                    async with asyncio.timeout(1.0):
                        i, kind, value = await self.events.get()
                except TimeoutError:
                    if await self.request.is_disconnected():
                        return
                    continue
                c = self.choices[i]
                if c.finish is not None:
                    if kind == "error":
                        open_ -= 1  # its row failed after a stop sequence had ended it
                    continue  # a token decoded after a stop sequence had cut the choice
                if kind == "logprob":
                    c.pending = value
                elif kind == "token":
                    c.tokens += 1
                    lp, c.pending = c.pending, None
                    if value in self.stop_ids:
                        continue
                    piece, stopped = c.stop.push(c.decoder.push(value))
                    c.text += piece
                    new = None
                    if c.logprobs is not None and lp is not None:
                        new = [self._logprob(value, *lp)]
                        c.logprobs += new
                    if stopped:
                        c.finish = "stop"
                        self.tickets[i].cancel()
                        open_ -= 1
                    yield i, piece, new
                elif kind == "error":
                    if batcher.closed:
                        raise APIError(503, "the server is shutting down", type="server_error",
                                       code="unavailable")
                    raise APIError(500, f"generation failed: {value}", type="server_error")
                else:
                    c.finish = "stop" if value in ("stop", "cancelled") else "length"
                    piece = c.last_piece()
                    c.text += piece
                    open_ -= 1
                    yield i, piece, None
        finally:
            for t in self.tickets:
                t.cancel()

    def _logprob(self, token: int, logprob: float, top: list[tuple[int, float]]) -> dict:
        """One token's entry as OpenAI's chat ``logprobs.content`` lists it."""
        def entry(token: int, logprob: float) -> dict:
            text, data = token_text(self.served.tokenizer, token)
            return {"token": text, "logprob": logprob, "bytes": data}

        return {**entry(token, logprob), "top_logprobs": [entry(t, v) for t, v in top]}


def _byte_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet: each byte spelled as one printable character (the
    printable Latin-1 bytes as themselves, the others from U+0100 up, in byte order)."""
    keep = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(0x100 + extra)] = b
            extra += 1
    return chars


BYTE_OF = _byte_alphabet()


@functools.lru_cache(maxsize=1 << 16)
def token_text(tok: Tokenizer, token: int) -> tuple[str, list[int]]:
    """A token's text and its UTF-8 bytes (a token may hold part of a character: then its
    text shows the missing part as U+FFFD, and its bytes say which bytes it holds)."""
    piece = tok.hf.id_to_token(token) or ""
    if piece and all(ch in BYTE_OF for ch in piece) and token not in tok.special_ids:
        data = bytes(BYTE_OF[ch] for ch in piece)
    else:
        data = tok.decode([token]).encode()
    return data.decode("utf-8", errors="replace"), list(data)


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


# -- the app -------------------------------------------------------------------------------

@dataclass
class Server:
    """What the routes share: the served models and the access rules."""

    models: dict[str, ServedModel]
    api_key: str | None
    max_body: int
    page_html: str
    body_timeout: float = 30.0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def begin_shutdown(self, grace: float) -> None:
        """From the signal handler (on the event loop's thread): bodies still arriving are
        refused at once (503), replies under way get half of ``grace`` to finish, then end
        with an error, so that every request is answered before uvicorn cuts them."""
        self.stopping.set()
        loop = asyncio.get_running_loop()
        loop.call_later(grace / 2, lambda: loop.run_in_executor(None, self.close))

    def close(self) -> None:
        for m in self.models.values():
            m.batcher.close()

    def lookup(self, name: str) -> ServedModel:
        if name not in self.models:
            raise APIError(404, f"The model {name!r} does not exist; served: "
                           f"{', '.join(self.models)}.", "model", "model_not_found")
        return self.models[name]


def server(request: Request) -> Server:
    """The app's :class:`Server` (a dependency)."""
    return request.app.state.server


def require_key(request: Request) -> None:
    """Refuse a request without the server's API key (when it has one): a dependency of
    every ``/v1`` route, and checked before a ``/v1`` 404 or 405 too."""
    key = server(request).api_key
    if key is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
        raise APIError(401, "Incorrect or missing API key: send the header "
                       "'Authorization: Bearer <key>'.", code="invalid_api_key")


async def _receive(request: Request, limit: int) -> tuple[bytes, int]:
    """The first ``limit`` bytes of the body and its whole size (read up to 64 MiB)."""
    data, size = bytearray(), 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                data += chunk
            elif size > 64 << 20:
                break
    except ClientDisconnect:
        raise APIError(400, "the client hung up before sending the whole body",
                       code="client_disconnected") from None
    return bytes(data), size


async def read_body(request: Request, limit: int | None = None) -> tuple[bytes, int]:
    """The body (its first ``limit`` bytes, default the server's limit) and its size, also
    when it comes without Content-Length (chunked). A client that stops sending gets a 408
    after the body timeout, one that hangs up a 400 (it will not read it), and one still
    sending when the server stops a 503: never a wait without end, never a 500."""
    srv = server(request)
    reading = asyncio.ensure_future(_receive(request, srv.max_body if limit is None else limit))
    stopping = asyncio.ensure_future(srv.stopping.wait())
    try:
        done, _ = await asyncio.wait({reading, stopping}, timeout=srv.body_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not reading.done():
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
    if reading in done:
        return reading.result()
    if stopping in done:
        raise APIError(503, "the server is shutting down", type="server_error",
                       code="unavailable")
    raise APIError(408, f"the request body did not arrive within {srv.body_timeout:g} s",
                   code="request_timeout")


async def limit_body(request: Request) -> None:
    """Refuse a body whose declared size is over the limit before reading it; it is read and
    dropped first (up to 64 MiB), so that a client still sending gets the 413, not a reset."""
    limit, size = server(request).max_body, request.headers.get("content-length")
    if size is None or not size.isdigit() or int(size) <= limit:
        return
    if int(size) <= 64 << 20:
        await read_body(request, limit=0)
    raise APIError(413, f"the request body of {int(size)} bytes exceeds the limit of {limit} "
                   "bytes", code="request_too_large")


async def body(request: Request) -> bytes:
    """The body, refused (413) over the server's limit."""
    data, size = await read_body(request)
    limit = server(request).max_body
    if size > limit:
        raise APIError(413, f"the request body exceeds the limit of {limit} bytes",
                       code="request_too_large")
    return data


async def api_error(request: Request, e: APIError) -> JSONResponse:
    return e.response()


async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    """404 and 405 as OpenAI errors; under ``/v1`` a missing key still answers 401 first."""
    try:
        if request.url.path.startswith("/v1/"):
            require_key(request)
    except APIError as refused:
        return refused.response()
    code = "not_found" if e.status_code == 404 else None
    return APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}",
                    code=code).response()


async def internal_error(request: Request, e: Exception) -> JSONResponse:
    log.exception("error serving %s", request.url.path)
    return APIError(500, "internal server error (see the server log)",
                    type="server_error").response()


UseServer = Annotated[Server, Depends(server)]
pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/v1", dependencies=[Depends(require_key), Depends(limit_body)])


@pages.get("/", response_class=HTMLResponse)
async def page(srv: UseServer):
    return HTMLResponse(srv.page_html, headers={
        "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                   "style-src 'self' 'unsafe-inline'"})


@pages.get("/health")
async def health(srv: UseServer):
    return {"status": "ok", "models": list(srv.models)}


def model_card(m: ServedModel) -> dict:
    return {"id": m.name, "object": "model", "created": m.created, "owned_by": "gptsmith",
            "context_length": m.model.cfg.seq_len}


@api.get("/models")
async def list_models(srv: UseServer):
    return {"object": "list", "data": [model_card(m) for m in srv.models.values()]}


@api.get("/models/{name:path}")
async def get_model(name: str, srv: UseServer):
    return model_card(srv.lookup(name))


@api.post("/chat/completions")
async def chat_completions(request: Request, srv: UseServer):
    req = _validated(ChatRequest, await body(request))
    served = srv.lookup(req.model)
    if not req.messages:
        raise APIError(400, "messages must not be empty", "messages")
    ctx = served.model.cfg.seq_len
    if len(req.messages) >= ctx:  # each message takes a token at least: no need to render
        raise APIError(400, f"This model's maximum context length is {ctx} tokens; the "
                       f"conversation has {len(req.messages)} messages.", "messages",
                       "context_length_exceeded")
    messages = [_request_message(m, i) for i, m in enumerate(req.messages)]
    problem = check_conversation(messages, for_generation=True)
    if problem:
        raise APIError(400, problem, "messages")
    # rendering a long conversation takes a while: off the event loop, which serves everyone
    prompt = await asyncio.to_thread(prompt_ids, served.tokenizer, messages)
    return await respond(request, served, req, [prompt], "chat")


@api.post("/completions")
async def completions(request: Request, srv: UseServer):
    req = _validated(CompletionRequest, await body(request))
    served = srv.lookup(req.model)
    texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not texts or len(texts) * req.n > MAX_N:
        raise APIError(400, f"give 1 to {MAX_N} prompts x n in all", "prompt")
    tok = served.tokenizer
    prompts = [tok.encode_document(t) for t in texts]
    return await respond(request, served, req, prompts, "text")


async def respond(request: Request, served: ServedModel, req: _Common,
                  prompts: list[list[int]], kind: Literal["chat", "text"]):
    """Run the request: one JSON answer, or server-sent events with ``stream``."""
    tok = served.tokenizer
    stop_ids = tok.stop_ids if kind == "chat" else \
        tuple(dict.fromkeys((*tok.bos_ids, *tok.stop_ids)))
    rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
    head = {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": served.name, "system_fingerprint": None}
    gen = Generation(served, request, prompts, req, stop_ids)
    if not req.stream:
        async for _ in gen.pieces():
            pass
        return {**head, "choices": [_choice(i, c, kind) for i, c in enumerate(gen.choices)],
                "usage": gen.usage()}
    head["object"] += ".chunk" if kind == "chat" else ""
    return StreamingResponse(_events(gen, head, kind, req), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _logprobs(entries: list[dict] | None, kind: str) -> dict | None:
    """Tokens' log-probs in the shape of the endpoint: chat's ``{"content": [...]}``, or the
    completions API's parallel lists (offsets into the completion's text)."""
    if entries is None:
        return None
    if kind == "chat":
        return {"content": entries, "refusal": None}
    offsets, at = [], 0
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {"tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]}
                             for e in entries],
            "text_offset": offsets}


def _choice(i: int, c: Choice, kind: str) -> dict:
    """A finished choice as the whole answer lists it."""
    logprobs = _logprobs(c.logprobs, kind)
    if kind == "chat":
        return {"index": i, "message": {"role": "assistant", "content": c.text},
                "logprobs": logprobs, "finish_reason": c.finish}
    return {"index": i, "text": c.text, "logprobs": logprobs, "finish_reason": c.finish}


def _chunk(i: int, piece: str | None, kind: str, finish: str | None = None,
           logprobs: list[dict] | None = None) -> dict:
    """One choice's new text (or, with ``piece`` None, its end) as a stream chunk lists it."""
    if kind == "chat":
        delta = {} if piece is None else {"content": piece}
        return {"index": i, "delta": delta, "logprobs": _logprobs(logprobs, kind),
                "finish_reason": finish}
    return {"index": i, "text": piece or "", "logprobs": _logprobs(logprobs, kind),
            "finish_reason": finish}


async def _events(gen: Generation, head: dict, kind: str, req: _Common) -> AsyncIterator[str]:
    """The server-sent events of a streamed answer: (the role,) text pieces, each choice's
    finish, (the usage,) ``[DONE]``; an error after the start is sent as an event."""
    pieces = gen.pieces()
    try:
        if kind == "chat":
            yield _sse({**head, "choices": [
                {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None} for i in range(len(gen.choices))]})
        async for i, piece, logprobs in pieces:
            if piece or logprobs:
                yield _sse({**head, "choices": [_chunk(i, piece, kind, logprobs=logprobs)]})
        for i, c in enumerate(gen.choices):
            yield _sse({**head, "choices": [_chunk(i, None, kind, c.finish)]})
        if (req.stream_options or {}).get("include_usage"):
            yield _sse({**head, "choices": [], "usage": gen.usage()})
        yield _sse("[DONE]")
    except APIError as e:
        yield _sse({"error": {"message": e.message, "type": e.type, "code": e.code}})
    finally:
        await pieces.aclose()


def create_app(models: dict[str, ServedModel], api_key: str | None = None,
               max_body: int = 1_000_000, body_timeout: float = 30.0) -> FastAPI:
    """The HTTP app over ``models``: the chat page and the ``/v1`` API (behind ``api_key``
    when one is given; bodies up to ``max_body`` bytes, arriving within ``body_timeout``
    seconds)."""
    app = FastAPI(title="gptsmith", docs_url="/docs", redoc_url=None)
    app.state.models = models
    app.state.server = Server(models, api_key, max_body, PAGE.read_text(), body_timeout)
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    app.include_router(pages)
    app.include_router(api)
    return app


def serve(specs: list[str], host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, max_batch: int = 16, device: str = "auto",
          grace: float = 5.0, body_timeout: float = 30.0, threads: int = 0) -> None:
    """Serve until SIGTERM or SIGINT: replies under way get ``grace`` seconds to finish,
    then are cut, whatever state the server is in. A request body must arrive within
    ``body_timeout`` seconds. ``threads``: CPU threads for decoding (0: one core fewer than
    PyTorch's choice, left to the HTTP event loop)."""
    import torch
    import uvicorn

    from gptsmith.device import pick_device, set_threads

    dev = pick_device(device)
    if threads == 0 and dev.type == "cpu":
        # the event loop that streams the tokens needs a core too: on 2 cores under 16
        # streaming clients, 1 decoding thread served 1.45x the tokens/s of 2 (README)
        threads = max(1, torch.get_num_threads() - 1)
    set_threads(threads)
    models = load_served(specs, max_batch, str(dev))
    app = create_app(models, api_key, body_timeout=body_timeout)
    where = f"http://{host}:{port}"
    print(f"serving {', '.join(models)} at {where} (chat page: {where}/ , API: {where}/v1)"
          + (" with an API key" if api_key else ""), flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=grace)
    state: Server = app.state.server

    class Uvicorn(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if not state.stopping.is_set():
                state.begin_shutdown(grace)
            super().handle_exit(sig, frame)

    try:
        Uvicorn(config).run()
    finally:
        state.close()
