"""The engine: batched sampling with a KV cache, used by everything that generates.

Prompts of different lengths are left-padded to a common end and decoded together; each row
has its own random generator (seed + row) and its own token budget, so row i of a batch
samples exactly what that prompt alone would sample with seed + i.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from gptsmith.decode import FixedSlots
from gptsmith.model import GPT, GPTConfig, KVCache

SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1  # what torch.Generator.manual_seed takes


@dataclass
class Sampling:
    max_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0            # 0 = off
    top_p: float = 1.0        # 1 = off
    seed: int = 0
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_tokens < 0:
            raise ValueError("top_k and max_tokens must be >= 0")
        if not SEED_MIN <= self.seed <= SEED_MAX:
            raise ValueError(f"seed must be a 64-bit integer ({SEED_MIN} to {SEED_MAX}), "
                             f"got {self.seed}")


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) what falls outside the top-k ids and the top-p probability mass."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop an id when the mass before it already reaches top_p (the first always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def draw(probs: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
    """One id per row of ``probs`` (B, V), row i drawn with generator i by inverting the
    cumulative distribution at a uniform number: one small call per row instead of one
    ``multinomial`` per row (which costs ~70 us each on a CPU)."""
    u = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in gens])
    cdf = probs.float().cumsum(-1)
    ids = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
    return ids.clamp(max=probs.size(-1) - 1)


def _next_tokens(logits: torch.Tensor, s: Sampling,
                 gens: list[torch.Generator | None]) -> torch.Tensor:
    """Each row's next id: drawn with its generator, or the argmax where it has none (every
    row when greedy)."""
    if s.temperature == 0:
        return logits.argmax(-1)
    if None in gens:  # greedy rows beside sampled ones (rare: no per-step list otherwise)
        ids = logits.argmax(-1)
        drawn = [j for j, g in enumerate(gens) if g is not None]
        if drawn:
            ids[drawn] = _next_tokens(logits[drawn], s, [gens[j] for j in drawn])
        return ids
    return draw(filter_logits(logits / s.temperature, s.top_k, s.top_p).softmax(-1), gens)


def left_padded(prompts: Sequence[Sequence[int]],
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts right-aligned in one (B, longest) batch, and each row's padding count (what
    :class:`KVCache` takes), so that every row decodes its next token at the same slot."""
    longest = max(len(p) for p in prompts)
    pad = torch.tensor([longest - len(p) for p in prompts], device=device)
    idx = torch.zeros(len(prompts), longest, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        idx[i, longest - len(p):] = torch.tensor(p, dtype=torch.long)
    return idx, pad


def prefill(model: GPT, prompts: Sequence[Sequence[int]], slots: int,
            device: torch.device) -> tuple[KVCache, torch.Tensor]:
    """A cache of ``slots`` holding the prompts' keys and values, and the logits (B, vocab)
    of each prompt's last position: the only ones sampled from, so the only ones projected
    onto the vocabulary. A prompt that occurs several times (GRPO's and RFT's group of
    replies to one prompt) is run once and its cache row copied."""
    keys = [tuple(p) for p in prompts]
    row = {k: i for i, k in enumerate(dict.fromkeys(keys))}  # each distinct prompt's row
    idx, pad = left_padded(list(row), device)
    cache = KVCache(model.cfg, len(row), slots, pad)
    last = torch.full((len(row), 1), idx.size(1) - 1, device=device)
    logits = model(idx, cache=cache, positions=last)[:, -1].float()
    if len(row) < len(prompts):
        rows = [row[k] for k in keys]
        cache.keep(rows)
        logits = logits[rows]
    return cache, logits


KV_BUDGET = 256 << 20  # bytes of keys and values a batch chosen by batch_rows may hold
MAX_ROWS = 256


def batch_rows(cfg: GPTConfig, slots: int, budget: int = KV_BUDGET) -> int:
    """How many rows to decode together: as many as keep a cache of ``slots`` fp32 slots
    within ``budget`` bytes, at most ``MAX_ROWS``. A small model decodes many rows in about
    the time of few (each step is more dispatch than arithmetic): the default run's
    labeler, 1,000 prompts x 4 replies, took 9 s in batches of 256 rows against 18 s in
    batches of 32 (2 threads, AMD EPYC Zen 4). SmolLM2-135M gets about 50 rows a batch."""
    per_row = 2 * cfg.depth * cfg.n_kv_head * cfg.head_dim * max(1, slots) * 4
    return max(1, min(MAX_ROWS, budget // per_row))


def budgets(prompts: Sequence[Sequence[int]], max_tokens: int, ctx: int) -> list[int]:
    """Each row's own number of new tokens: ``max_tokens``, or what its prompt leaves of the
    context (a long prompt ends early without cutting the other rows short)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    if longest >= ctx:
        raise ValueError(f"prompt of {longest} tokens leaves no room in a context of {ctx}")
    return [min(max_tokens, ctx - len(p)) for p in prompts]


@torch.no_grad()
def stream(model: GPT, prompts: Sequence[Sequence[int]], s: Sampling,
           greedy: Sequence[int] = (), compile: bool = False) -> Iterator[list[int | None]]:
    """Yield, per decoding step, each row's new token (None once the row has stopped).

    Row i stops after emitting a stop id (which is yielded) or after ``min(max_tokens,
    context - len(prompt i))`` tokens. Stopped rows leave the batch (their cache rows are
    dropped, the last rows moved into their places), so the others go on as they would
    alone. The rows listed in ``greedy`` take the likeliest token whatever
    ``s.temperature`` (RFT's greedy baseline, decoded beside the replies it samples).
    With ``compile`` the steps run compiled over fixed cache slots (:mod:`gptsmith.decode`):
    stopped rows stay in the batch, decoded on and ignored; the tokens are the eager
    steps' up to float rounding.
    """
    left = budgets(prompts, s.max_tokens, model.cfg.seq_len)
    if max(left) == 0:
        return
    device = next(model.parameters()).device
    greedy = set(greedy)
    gens = [None if i in greedy else torch.Generator(device=device).manual_seed(s.seed + i)
            for i in range(len(prompts))]
    # prompt + budget slots hold every row: when they are all filled, make_room drops the
    # leading padding no running row needs (a running row is shorter than its prompt + budget)
    slots = max(len(p) + n for p, n in zip(prompts, left, strict=True))
    cache, logits = prefill(model, prompts, slots, device)
    fixed = last = None
    if compile:  # the cache, copied into the fixed slots, is not kept twice
        fixed, cache = FixedSlots(model, cache, max(left)), None
        # every row is decoded: a stopped row on its last token, its output ignored
        last = torch.zeros(len(prompts), dtype=torch.long, device=device)
    stops = torch.tensor(list(s.stop_ids), device=device, dtype=torch.long)
    rows = list(range(len(prompts)))  # the running rows, as indices into prompts
    while True:
        tok = _next_tokens(logits, s, [gens[i] for i in rows])
        out: list[int | None] = [None] * len(prompts)
        stopped = torch.isin(tok, stops).tolist() if len(stops) else [False] * len(rows)
        keep = []
        for j, (i, t) in enumerate(zip(rows, tok.tolist(), strict=True)):
            out[i] = t
            left[i] -= 1
            if left[i] > 0 and not stopped[j]:
                keep.append(j)
        yield out
        if not keep:
            return
        if len(keep) < len(rows):
            if fixed is None:  # the last rows take the stopped rows' places
                kept = set(keep)
                keep = cache.remove([j for j in range(len(rows)) if j not in kept])
            rows = [rows[j] for j in keep]
            tok = tok[keep]
        if fixed is None:
            cache.make_room()
            logits = model(tok[:, None], cache=cache)[:, -1].float()
        elif len(rows) == len(prompts):
            logits = fixed.step(tok)
        else:
            last[rows] = tok
            logits = fixed.step(last)[rows]


def generate(model: GPT, prompts: Sequence[Sequence[int]], s: Sampling,
             greedy: Sequence[int] = (), compile: bool = False) -> list[list[int]]:
    """Each prompt's new tokens (a stop id, when reached, is the last); the rows in
    ``greedy`` decoded greedily; ``compile``: see :func:`stream`."""
    outs: list[list[int]] = [[] for _ in prompts]
    for step in stream(model, prompts, s, greedy, compile):
        for row, t in zip(outs, step, strict=True):
            if t is not None:
                row.append(t)
    return outs
