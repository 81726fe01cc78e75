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

from gptsmith.engine import Sampling, draw, filter_logits, left_padded
from gptsmith.model import GPT, KVCache


@dataclass
class Ticket:
    """One row's request and its way back: ``events`` gets ``(index, "token", id)`` per
    token, then ``(index, "done", reason)`` with reason ``"stop"`` (a stop id), ``"length"`` or
    ``"cancelled"``, or ``(index, "error", message)`` if decoding failed. ``index`` tells
    the rows of one request apart when they share one queue (``n`` > 1)."""

    prompt: list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    index: int = 0

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
        self._cache = KVCache(model.cfg, 0, self.ctx, None)
        self._logits: torch.Tensor | None = None
        self.steps = 0          # decoding steps run (for tests and the bench)
        self.peak_batch = 0     # most rows decoded together
        self._thread = threading.Thread(target=self._run, name="gptsmith-batcher", daemon=True)
        self._thread.start()

    def submit(self, ticket: Ticket) -> Ticket:
        """Queue a request. Its prompt plus ``max_tokens`` (at least 1) must fit the context."""
        s = ticket.sampling
        if s.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {s.max_tokens}")
        if not ticket.prompt or len(ticket.prompt) + s.max_tokens > self.ctx:
            raise ValueError(f"a prompt of {len(ticket.prompt)} tokens plus {s.max_tokens} new "
                             f"tokens does not fit the context of {self.ctx}")
        self._inbox.put(ticket)
        return ticket

    def close(self) -> None:
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
                            return
                        self._waiting.append(item)
                except queue.Empty:
                    pass
                try:
                    self._admit()
                    if self._rows:
                        self._step()
                except Exception as e:  # fail the requests in hand, keep serving new ones
                    for t in [r.ticket for r in self._rows] + list(self._waiting):
                        t._send(("error", f"{type(e).__name__}: {e}"))
                    self._rows, self._waiting, self._logits = [], deque(), None
                    self._cache = KVCache(self.model.cfg, 0, self.ctx, None)

    def _admit(self) -> None:
        """Move waiting requests (oldest first) into the batch while it has fewer than
        ``max_batch`` rows.

        The cache never needs more than ``ctx`` slots, whatever the rows' lengths and
        budgets: rows are right-aligned and the leading slots no row uses are dropped (join
        aligns to the longest row, keep cuts the smallest padding), so ``pos`` is the longest
        running row, and each row's prompt plus budget fits the context (``submit``).
        """
        new: list[Ticket] = []
        while self._waiting and len(self._rows) + len(new) < self.max_batch:
            t = self._waiting.popleft()
            if t.cancelled.is_set():
                t._send(("done", "cancelled"))
            else:
                new.append(t)
        if not new:
            return
        idx, pad = left_padded([t.prompt for t in new], self.device)
        cache = KVCache(self.model.cfg, len(new), self.ctx, pad)
        logits = self.model(idx, cache=cache)[:, -1].float()
        self._cache.join(cache)
        self._logits = logits if self._logits is None else torch.cat([self._logits, logits])
        for t in new:
            g = torch.Generator(device=self.device).manual_seed(t.sampling.seed)
            self._rows.append(_Row(t, g))

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

    def _step(self) -> None:
        """Sample one token per row, retire finished rows, run the survivors forward."""
        self.steps += 1
        self.peak_batch = max(self.peak_batch, len(self._rows))
        keep, tokens, sends = [], [], []
        for i, (row, token) in enumerate(zip(self._rows, self._choose(), strict=True)):
            t = row.ticket
            if t.cancelled.is_set():
                sends.append((t, ("done", "cancelled")))
                continue
            row.made += 1
            sends.append((t, ("token", token)))
            if token in t.sampling.stop_ids:
                sends.append((t, ("done", "stop")))
            elif row.left == 0:
                sends.append((t, ("done", "length")))
            else:
                keep.append(i)
                tokens.append(token)
        _deliver(sends)
        if len(keep) < len(self._rows):
            self._rows = [self._rows[i] for i in keep]
            self._cache.keep(keep)
            self._logits = self._logits[keep] if keep else None
        if keep:
            idx = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
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
