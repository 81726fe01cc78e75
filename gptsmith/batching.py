"""Continuous batching: many independent requests decoded together by one worker thread.

Each request is one row. Between two decoding steps, finished or cancelled rows leave the
batch (their cache rows are dropped at once) and waiting requests join it (their prompts are
prefilled, then their cache rows are appended, right-aligned with the running rows). So a
request never waits for another to finish, and a client that goes away frees its place on
the next step. Every row samples with its own settings and its own seeded generator, so a
request's tokens do not depend on what else is in the batch (up to float rounding).

The worker owns the model; callers hand in a :class:`Ticket` and read tokens from it.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from dataclasses import dataclass, field

import torch

from gptsmith.engine import Sampling, draw, filter_logits, prefill
from gptsmith.model import GPT, KVCache


@dataclass
class Ticket:
    """One row's request and its way back: ``events`` gets ``(index, "token", id)`` per
    token, then ``(index, "done", reason)`` with reason ``"stop"`` (a stop id), ``"length"`` or
    ``"cancelled"``, or ``(index, "error", message)`` if decoding failed. ``index`` tells
    the rows of one request apart when they share one queue (``n`` > 1).

    With ``logprobs`` (the number of alternatives wanted, 0 to 20) each token event comes
    after ``(index, "logprob", (logprob, [(id, logprob), ...]))``: the token's log-probability
    under the model (before temperature and top-p) and the ``logprobs`` likeliest ids.
    Every ticket handed in gets exactly one ``done`` or ``error`` event."""

    prompt: list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    index: int = 0
    logprobs: int | None = None

    def cancel(self) -> None:
        """Stop generating for this row; its place in the batch is freed on the next step."""
        self.cancelled.set()

    def _send(self, event: tuple) -> None:
        _deliver([(self, event)])


@dataclass
class _Row:
    ticket: Ticket
    generator: torch.Generator
    made: int = 0  # tokens sampled so far

    @property
    def left(self) -> int:
        return self.ticket.sampling.max_tokens - self.made


class Batcher:
    """Decodes up to ``max_batch`` requests at once; ``max_batch=1`` serves them one at a
    time (the baseline that ``bench/serve_load.py`` compares against)."""

    def __init__(self, model: GPT, max_batch: int = 16):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.max_batch = model, max_batch
        self.ctx = model.cfg.seq_len
        self.device = next(model.parameters()).device
        self._inbox: queue.SimpleQueue[Ticket | None] = queue.SimpleQueue()
        self._waiting: deque[Ticket] = deque()
        self._rows: list[_Row] = []
        self._cache = self._new_cache()
        self._logits: torch.Tensor | None = None
        self._joining: list[Ticket] = []  # taken from the queue, not yet in the batch
        self.closed = False
        self.steps = 0          # decoding steps run (for tests and the bench)
        self.peak_batch = 0     # most rows decoded together
        self._thread = threading.Thread(target=self._run, name="gptsmith-batcher", daemon=True)
        self._thread.start()

    def submit(self, ticket: Ticket) -> Ticket:
        """Queue a request. Its prompt plus ``max_tokens`` (at least 1) must fit the context."""
        if self.closed:
            raise RuntimeError("the server is shutting down")
        s = ticket.sampling
        if s.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {s.max_tokens}")
        if not ticket.prompt or len(ticket.prompt) + s.max_tokens > self.ctx:
            raise ValueError(f"a prompt of {len(ticket.prompt)} tokens plus {s.max_tokens} new "
                             f"tokens does not fit the context of {self.ctx}")
        self._inbox.put(ticket)
        return ticket

    def close(self) -> None:
        """Stop the worker; requests still in hand get an error event (the server is going
        down), later ones are refused."""
        self.closed = True
        self._inbox.put(None)
        self._thread.join(timeout=10)

    # -- the worker thread --------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                block = not self._rows and not self._waiting
                try:
                    while True:
                        item = self._inbox.get(block=block)
                        block = False
                        if item is None:
                            self._fail(self._in_hand(), RuntimeError("the server is shutting "
                                                                     "down"))
                            return
                        self._waiting.append(item)
                except queue.Empty:
                    pass
                try:
                    self._admit()
                    if self._rows:
                        self._step()
                except Exception as e:  # a shared step failed: the rows it was decoding
                    self._fail([r.ticket for r in self._rows] + self._joining, e)
                    self._rows, self._joining, self._logits = [], [], None
                    self._cache = self._new_cache()

    def _new_cache(self) -> KVCache:
        """A cache that keeps room for rows to join (up to ``max_batch``, see KVCache)."""
        return KVCache(self.model.cfg, 0, self.ctx, None, capacity=self.max_batch)

    def _in_hand(self) -> list[Ticket]:
        tickets = [r.ticket for r in self._rows] + self._joining + list(self._waiting)
        while not self._inbox.empty():
            if (item := self._inbox.get()) is not None:
                tickets.append(item)
        return tickets

    @staticmethod
    def _fail(tickets: list[Ticket], e: Exception) -> None:
        _deliver([(t, ("error", f"{type(e).__name__}: {e}")) for t in tickets])

    def _admit(self) -> None:
        """Move waiting requests (oldest first) into the batch while it has fewer than
        ``max_batch`` rows.

        The cache never needs more than ``ctx`` slots, whatever the rows' lengths and
        budgets: rows are right-aligned (join aligns to the longest row), and once every
        slot is filled the leading slots no running row uses are dropped (``make_room``):
        each row's prompt plus budget fits the context (``submit``), so a running row is
        shorter than it.

        A request that cannot start (its seed, its prompt) gets an error event alone: the
        running rows and the other newcomers go on.
        """
        new: list[_Row] = []
        while self._waiting and len(self._rows) + len(new) < self.max_batch:
            t = self._waiting.popleft()
            if t.cancelled.is_set():
                t._send(("done", "cancelled"))
                continue
            self._joining.append(t)
            try:
                new.append(_Row(t, torch.Generator(device=self.device).manual_seed(
                    t.sampling.seed)))
            except Exception as e:
                self._joining.remove(t)
                self._fail([t], e)
        if not new:
            return
        try:
            cache, logits = self._prefill(new)
        except Exception:  # find the rows that fail: prefill each alone
            parts = []
            for row in new:
                try:
                    parts.append((row, *self._prefill([row])))
                except Exception as e:
                    self._joining.remove(row.ticket)
                    self._fail([row.ticket], e)
            for row, cache, logits in parts:
                self._join([row], cache, logits)
        else:
            self._join(new, cache, logits)
        self._joining = []

    def _prefill(self, rows: list[_Row]) -> tuple[KVCache, torch.Tensor]:
        return prefill(self.model, [r.ticket.prompt for r in rows], self.ctx, self.device)

    def _join(self, rows: list[_Row], cache: KVCache, logits: torch.Tensor) -> None:
        self._cache.join(cache)
        self._logits = logits if self._logits is None else torch.cat([self._logits, logits])
        self._rows += rows

    def _choose(self) -> list[int]:
        """Each row's next token: greedy rows by argmax, the rest drawn in groups that share
        their filters, each row with its own generator (as :func:`engine.stream` does)."""
        out = self._logits.argmax(-1)
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(self._rows):
            s = row.ticket.sampling
            if s.temperature > 0:
                groups.setdefault((s.top_k, s.top_p), []).append(i)
        for (top_k, top_p), rows in groups.items():
            temps = torch.tensor([self._rows[i].ticket.sampling.temperature for i in rows],
                                 device=self.device)[:, None]
            probs = filter_logits(self._logits[rows] / temps, top_k, top_p).softmax(-1)
            out[rows] = draw(probs, [self._rows[i].generator for i in rows])
        return out.tolist()

    def _logprobs(self, tokens: list[int]) -> dict[int, tuple]:
        """For the rows that asked: (the chosen token's log-probability, the top ids')."""
        asked = [i for i, r in enumerate(self._rows) if r.ticket.logprobs is not None]
        if not asked:
            return {}
        lp = torch.log_softmax(self._logits[asked], -1)
        most = max(self._rows[i].ticket.logprobs for i in asked)
        top_v, top_i = lp.topk(min(most, lp.size(-1)), -1) if most else (lp[:, :0], lp[:, :0])
        chosen = lp[torch.arange(len(asked)), torch.tensor([tokens[i] for i in asked])]
        out = {}
        for j, i in enumerate(asked):
            k = self._rows[i].ticket.logprobs
            out[i] = (chosen[j].item(), list(zip(top_i[j, :k].tolist(), top_v[j, :k].tolist(),
                                                 strict=True)))
        return out

    def _step(self) -> None:
        """Sample one token per row, retire finished rows, run the survivors forward."""
        self.steps += 1
        self.peak_batch = max(self.peak_batch, len(self._rows))
        keep, tokens, sends = [], {}, []
        chosen = self._choose()
        logprobs = self._logprobs(chosen)
        for i, (row, token) in enumerate(zip(self._rows, chosen, strict=True)):
            t = row.ticket
            if t.cancelled.is_set():
                sends.append((t, ("done", "cancelled")))
                continue
            row.made += 1
            if i in logprobs:
                sends.append((t, ("logprob", logprobs[i])))
            sends.append((t, ("token", token)))
            if token in t.sampling.stop_ids:
                sends.append((t, ("done", "stop")))
            elif row.left == 0:
                sends.append((t, ("done", "length")))
            else:
                keep.append(i)
                tokens[i] = token
        _deliver(sends)
        if len(keep) < len(self._rows):  # the last rows take the finished rows' places
            order = self._cache.remove([i for i in range(len(self._rows)) if i not in tokens])
            self._rows = [self._rows[i] for i in order]
            keep = order
        self._logits = None
        if keep:
            idx = torch.tensor([tokens[i] for i in keep], dtype=torch.long,
                               device=self.device)[:, None]
            self._cache.make_room()
            self._logits = self.model(idx, cache=self._cache)[:, -1].float()


def _deliver(sends: list[tuple[Ticket, tuple]]) -> None:
    """Hand a step's events to their tickets: one wake-up per event loop, not per token."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for ticket, event in sends:
        if ticket.loop is None:
            ticket.events.put((ticket.index, *event))
        else:
            by_loop.setdefault(ticket.loop, []).append((ticket, event))
    for loop, items in by_loop.items():
        loop.call_soon_threadsafe(_put_all, items)


def _put_all(items: list[tuple[Ticket, tuple]]) -> None:
    for ticket, event in items:
        ticket.events.put_nowait((ticket.index, *event))
