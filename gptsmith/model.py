"""The GPT: a Llama-style decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention).

Parameter names follow the Hugging Face Llama layout (``layers.N.self_attn.q_proj`` ...) and
RoPE uses the same rotate-half convention, so weights map one to one in both directions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    """The only place a model's shape is described. ``depth`` is the one knob; fields left
    at 0 are derived from it by ``resolved()`` (width 48·depth, one head per layer of depth,
    two query heads per key/value head, SwiGLU hidden ≈ 8/3·width)."""

    vocab_size: int = field(default=2048, metadata={
        "help": "ids in the vocabulary (pretrain: always the tokenizer's)"})
    depth: int = field(default=4, metadata={"help": "transformer blocks; sets the defaults "
                                                    "of the fields left at 0"})
    seq_len: int = field(default=256, metadata={"help": "context length in tokens"})
    n_embd: int = field(default=0, metadata={"help": "width; 0: 48 x depth"})
    n_head: int = field(default=0, metadata={"help": "query heads; 0: derived from the width"})
    n_kv_head: int = field(default=0, metadata={"help": "key/value heads (GQA); 0: n_head/2"})
    mlp_hidden: int = field(default=0, metadata={"help": "SwiGLU hidden size; 0: ~8/3 width"})
    head_dim: int = field(default=0, metadata={
        "help": "0: n_embd / n_head (imported models may differ)"})
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base frequency"})
    rope_scaling: str = field(default="", metadata={
        "help": "'' | linear | llama3 (Llama 3.1+ long-context RoPE)"})
    rope_factor: float = field(default=1.0, metadata={"help": "RoPE scaling factor"})
    rope_low_freq_factor: float = field(default=1.0, metadata={"help": "llama3 RoPE scaling"})
    rope_high_freq_factor: float = field(default=4.0, metadata={"help": "llama3 RoPE scaling"})
    rope_original_context: int = field(default=0, metadata={
        "help": "llama3 RoPE scaling: the context the model was trained with"})
    norm_eps: float = field(default=1e-5, metadata={"help": "RMSNorm epsilon"})
    qkv_bias: bool = field(default=False, metadata={
        "help": "biases on the query/key/value projections (Qwen2)"})
    tie_embeddings: bool = field(default=True, metadata={
        "help": "the output matrix is the embedding matrix"})
    head: str = field(default="lm", metadata={
        "help": "lm: next-token logits; scalar: one value per position (reward, value)"})

    def resolved(self) -> GPTConfig:
        """This config with every derived field filled in, validated."""
        c = dataclasses.replace(self)
        if c.depth < 1:
            raise ValueError(f"model.depth must be >= 1, got {c.depth}")
        c.n_embd = c.n_embd or 48 * c.depth
        c.n_head = c.n_head or (c.depth if c.n_embd == 48 * c.depth else max(1, c.n_embd // 64))
        c.n_kv_head = c.n_kv_head or (c.n_head // 2 if c.n_head % 2 == 0 else c.n_head)
        c.mlp_hidden = c.mlp_hidden or 32 * math.ceil(8 * c.n_embd / 3 / 32)
        if not c.head_dim and c.n_embd % c.n_head:
            raise ValueError(f"model.n_embd={c.n_embd} is not divisible by model.n_head="
                             f"{c.n_head}; set model.n_head to a divisor of n_embd")
        c.head_dim = c.head_dim or c.n_embd // c.n_head
        if c.head_dim % 2:
            raise ValueError(f"model.head_dim={c.head_dim} must be even (RoPE rotates pairs)")
        if c.rope_scaling not in ("", "linear", "llama3"):
            raise ValueError(f"model.rope_scaling must be '', 'linear' or 'llama3', got "
                             f"{c.rope_scaling!r}")
        if c.n_head % c.n_kv_head:
            raise ValueError(f"model.n_head={c.n_head} is not a multiple of "
                             f"model.n_kv_head={c.n_kv_head}")
        if c.head not in ("lm", "scalar"):
            raise ValueError(f"model.head must be 'lm' or 'scalar', got {c.head!r}")
        return c

    def to_dict(self) -> dict:
        return asdict(self)

    def num_params(self) -> int:
        """Parameters of a model of this (resolved) shape, counted without building it."""
        e, h, kv, d = self.n_embd, self.n_head, self.n_kv_head, self.head_dim
        attention = e * h * d * 2 + e * kv * d * 2 + (self.qkv_bias and (h + 2 * kv) * d)
        block = attention + 3 * e * self.mlp_hidden + 2 * e
        head = e + 1 if self.head == "scalar" else (0 if self.tie_embeddings else
                                                    e * self.vocab_size)
        return self.vocab_size * e + self.depth * block + e + head

    def training_bytes(self) -> int:
        """A floor on the memory training needs: fp32 weights, gradients and AdamW's two
        moments (16 bytes a parameter), and the RoPE tables (built in float64)."""
        return 16 * self.num_params() + self.seq_len * self.head_dim * (8 * 2 + 4 * 2)


def rope_frequencies(cfg: GPTConfig) -> torch.Tensor:
    """The rotation frequency of each pair of dimensions, with the config's scaling: linear
    divides them all by the factor; llama3 divides only the long wavelengths (beyond the
    original context / low_freq_factor), keeps the short ones (below original context /
    high_freq_factor) and blends in between."""
    half = cfg.head_dim // 2
    freq = 1.0 / (cfg.rope_theta ** (torch.arange(half, dtype=torch.float64) / half))
    if cfg.rope_scaling == "linear":
        return freq / cfg.rope_factor
    if cfg.rope_scaling == "llama3":
        context, lo, hi = cfg.rope_original_context, cfg.rope_low_freq_factor, \
            cfg.rope_high_freq_factor
        wavelength = 2 * math.pi / freq
        smooth = ((context / wavelength - lo) / (hi - lo)).clamp(0, 1)
        return (1 - smooth) * freq / cfg.rope_factor + smooth * freq
    return freq


def rope_tables(cfg: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for every position, (seq_len, head_dim), halves duplicated (rotate-half)."""
    inv_freq = rope_frequencies(cfg)
    angles = torch.outer(torch.arange(cfg.seq_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class KVCache:
    """Keys and values of every layer for a batch being decoded, filled left to right.

    ``pad`` holds each row's number of left-padding slots: prompts of different lengths are
    left-aligned to a common end so that every row decodes its next token at the same slot.
    A row's own position is its slot minus its padding, so the model's context limits each
    row's length (``pos - pad``), not the number of slots: ``max_len`` may exceed it.
    """

    def __init__(self, cfg: GPTConfig, batch_size: int, max_len: int, pad: torch.Tensor | None,
                 capacity: int = 0):
        """``capacity``: the most rows the batch will hold (the server's batch size). When
        the tensors are remade they keep room for a quarter more rows than they hold (at
        least one, at most ``capacity``), so a row joining later is usually copied into
        that room instead of every row into new tensors."""
        self.cfg, self.batch_size, self.max_len = cfg, batch_size, max_len
        self.capacity = capacity
        self._set_pad(pad if pad is not None and bool(pad.any()) else None)
        self.pos = 0
        # (depth, rows, kv heads, max_len, head dim): the first batch_size rows are the batch
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def _set_pad(self, pad: torch.Tensor | None) -> None:
        """Keep ``pad`` and its minimum as a number, so that the forward's context check
        costs no device round trip."""
        self.pad = pad
        self.min_pad = int(pad.min()) if pad is not None and len(pad) else 0

    def longest(self, new: int = 0) -> int:
        """The longest row's length once ``new`` more slots are filled (what RoPE must reach)."""
        return self.pos + new - self.min_pad

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"the KV cache has {self.max_len} slots; {end} are needed (make "
                             "it longer, or drop finished rows with keep)")
        if self.k is None:
            shape = (self.cfg.depth, self.batch_size, self.cfg.n_kv_head, self.max_len,
                     self.cfg.head_dim)
            self.k = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.v = torch.empty(shape, dtype=v.dtype, device=v.device)
        B = self.batch_size
        self.k[layer, :B, :, self.pos:end] = k
        self.v[layer, :B, :, self.pos:end] = v
        return self.k[layer, :B, :, :end], self.v[layer, :B, :, :end]

    # Continuous batching (the server): rows leave a running batch and new ones join it.

    def pads(self) -> torch.Tensor:
        if self.pad is not None:
            return self.pad
        return torch.zeros(self.batch_size, dtype=torch.long,
                           device=self.k.device if self.k is not None else None)

    def _rebuild(self, parts: list[tuple[KVCache, torch.Tensor, int]], length: int) -> None:
        """Rows ``rows`` of each cache, shifted right by ``shift`` slots, into fresh tensors
        of ``length`` filled slots (zeros where a row has no keys: masked, never NaN)."""
        if length > self.max_len:
            raise ValueError(f"the KV cache has {self.max_len} slots; {length} are needed")
        first = parts[0][0].k
        rows = sum(len(r) for _, r, _ in parts)
        room = min(self.capacity, rows + 1 + rows // 4)
        shape = (self.cfg.depth, max(rows, room), self.cfg.n_kv_head, self.max_len,
                 self.cfg.head_dim)
        # slots from ``length`` on are written before they are read: only the padding is zeroed
        k, v = first.new_empty(shape), first.new_empty(shape)
        pads, at = [], 0
        for cache, r, shift in parts:
            src_from = max(0, -shift)
            k[:, at:at + len(r), :, :shift + src_from] = 0
            v[:, at:at + len(r), :, :shift + src_from] = 0
            k[:, at:at + len(r), :, shift + src_from:shift + cache.pos] = \
                cache.k[:, r, :, src_from:cache.pos]
            v[:, at:at + len(r), :, shift + src_from:shift + cache.pos] = \
                cache.v[:, r, :, src_from:cache.pos]
            pads.append(cache.pads()[r] + shift)
            at += len(r)
        self.k, self.v, self.pos, self.batch_size = k, v, length, rows
        self._set_pad(torch.cat(pads))

    def _empty(self) -> None:
        self.k = self.v = None
        self.pos, self.batch_size = 0, 0
        self._set_pad(None)

    def keep(self, rows: list[int]) -> None:
        """Only ``rows`` stay, in that order; leading slots no kept row uses are dropped."""
        if not rows:
            return self._empty()
        index = torch.tensor(rows, dtype=torch.long, device=self.k.device)
        cut = int(self.pads()[index].min())
        self._rebuild([(self, index, -cut)], self.pos - cut)

    def remove(self, gone: list[int]) -> list[int]:
        """Drop the rows ``gone``: the last rows move into their places, so only as many
        rows are copied as leave (``keep`` copies them all). Returns the new order: entry i
        is the index, before, of the row now at i. The slots stay where they are (see
        ``make_room``)."""
        n, dropped = self.batch_size, set(gone)
        stay = n - len(dropped)
        if stay == 0:
            self._empty()
            return []
        holes = [i for i in sorted(dropped) if i < stay]
        movers = [i for i in range(stay, n) if i not in dropped]
        order = list(range(stay))
        for hole, mover in zip(holes, movers, strict=True):
            order[hole] = mover
        if holes and self.k is not None:
            dst = torch.tensor(holes, device=self.k.device)
            src = torch.tensor(movers, device=self.k.device)
            self.k[:, dst, :, :self.pos] = self.k[:, src, :, :self.pos]
            self.v[:, dst, :, :self.pos] = self.v[:, src, :, :self.pos]
        self.batch_size = stay
        if self.pad is not None:
            self._set_pad(self.pad[torch.tensor(order, device=self.pad.device)])
        return order

    def make_room(self) -> None:
        """When every slot is filled, drop the leading slots no row uses (rows that left by
        ``remove`` leave their padding behind)."""
        if self.pos >= self.max_len and self.batch_size:
            self.keep(list(range(self.batch_size)))

    def join(self, other: KVCache) -> None:
        """Append ``other``'s rows; both are right-aligned at the longer one's position, so
        every row decodes its next token at the same slot. Where this cache is the longer
        and has room for the rows, only theirs are copied."""
        theirs = torch.arange(other.batch_size, device=other.k.device)
        if self.k is None:
            self._rebuild([(other, theirs, 0)], other.pos)
            return
        at, m = self.batch_size, other.batch_size
        if other.pos <= self.pos and self.k.size(1) >= at + m:
            shift = self.pos - other.pos
            for mine, their in ((self.k, other.k), (self.v, other.v)):
                mine[:, at:at + m, :, :shift] = 0
                mine[:, at:at + m, :, shift:self.pos] = their[:, :m, :, :other.pos]
            pads = torch.cat([self.pads(), other.pads().to(self.k.device) + shift])
            self.batch_size += m
            self._set_pad(pads if bool(pads.any()) else None)
            return
        length = max(self.pos, other.pos)
        mine = torch.arange(self.batch_size, device=self.k.device)
        self._rebuild([(self, mine, length - self.pos), (other, theirs, length - other.pos)],
                      length)


def document_attention(documents: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor):
    """RoPE tables (B, 1, T, head_dim) and the attention mask (B, 1, T, T) of rows packed
    with several documents: positions restart at each document, and a position sees the
    earlier positions of its own document only."""
    B, T = documents.shape
    index = torch.arange(T, device=documents.device)
    starts = torch.ones_like(documents, dtype=torch.bool)
    starts[:, 1:] = documents[:, 1:] != documents[:, :-1]
    at = index - torch.where(starts, index, 0).cummax(dim=1).values  # position in its document
    same = documents[:, :, None] == documents[:, None, :]
    mask = same & (index[None, :] <= index[:, None])
    return rope_cos[at][:, None], rope_sin[at][:, None], mask[:, None]


def rows_at(t: torch.Tensor, at: torch.Tensor, dim: int) -> torch.Tensor:
    """``t``'s entries at indices ``at`` (B, R) along ``dim`` (batch is dim 0, or absent)."""
    if t.dim() == 2:  # (T, ...) shared by every row
        return t[at]
    shape = list(t.shape)
    shape[0], shape[dim] = at.size(0), at.size(1)
    index = at.view(at.size(0), *[1] * (dim - 1), at.size(1), *[1] * (t.dim() - dim - 1))
    return t.expand(at.size(0), *t.shape[1:]).gather(dim, index.expand(shape))


def queries_only(at: torch.Tensor, x, cos, sin, mask, causal: bool, keys: int):
    """The inputs of attention for the query positions ``at`` (B, R) of x's T only: their
    hidden states, RoPE rows and mask rows (a causal mask made explicit: key j <= query i,
    where the T queries are the last T of ``keys`` slots)."""
    offset = keys - x.size(1)
    x = rows_at(x, at, 1)
    cos, sin = rows_at(cos, at, 2), rows_at(sin, at, 2)
    if cos.dim() == 3:  # (B, R, hd) from a shared table
        cos, sin = cos[:, None], sin[:, None]
    if mask is not None:
        mask = rows_at(mask, at, 2) if mask.dim() == 4 else mask[at][:, None]
    elif causal:
        slots = torch.arange(keys, device=at.device)
        mask = (slots[None, None, :] <= (at + offset)[:, :, None])[:, None]
    return x, cos, sin, mask, False


# In bf16 on a CPU, causal attention over a whole batch runs as two batched products and a
# softmax (``grouped_causal_attention``), not PyTorch's flash kernel, while its B·heads·T²
# scores number at most this many (32 MiB a layer, kept for the backward pass).
GROUPED_ATTENTION_MAX_SCORES = 1 << 24


def grouped_causal_attention(q, k, v):
    """Causal attention as Q·Kᵀ, a softmax and P·V, each key/value head shared by its group
    of query heads (no copies of K and V); q is scaled before its product, not the T² scores.
    In bf16 on a CPU the softmax's own kernel computes in fp32 (its output equals fp32's,
    rounded). Forward and backward together took 0.3-0.5x the time of PyTorch's CPU flash
    kernel (whose backward is the slow part) at 128-512 positions, 0.85-0.9x at 1,024-2,048,
    but its T² scores are kept for the backward pass (README "Attention in bf16 on a CPU")."""
    B, H, T, D = q.shape
    KV = k.size(1)
    q = (q / math.sqrt(D)).reshape(B, KV, H // KV * T, D)
    scores = (q @ k.transpose(-1, -2)).view(B, KV, -1, T, T)
    future = torch.full((T, T), float("-inf"), device=q.device, dtype=scores.dtype).triu(1)
    p = torch.softmax(scores + future, -1)
    return (p.view(B, KV, -1, T) @ v).view(B, H, T, D)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_head * hd, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None, mask, causal: bool,
                queries: torch.Tensor | None = None):
        """Attention of every position over the ones before it; with ``queries`` (B, R)
        only those positions ask (keys and values still come from all T)."""
        B, T, _ = x.shape
        cfg, hd = self.cfg, self.cfg.head_dim
        k = self.k_proj(x).view(B, T, cfg.n_kv_head, hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, cfg.n_kv_head, hd).transpose(1, 2)
        k = apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        if queries is not None:
            x, cos, sin, mask, causal = queries_only(queries, x, cos, sin, mask, causal,
                                                     k.size(2))
        R = x.size(1)
        q = apply_rope(self.q_proj(x).view(B, R, cfg.n_head, hd).transpose(1, 2), cos, sin)
        dtype, fp32 = q.dtype, R == 1 and q.device.type == "cpu" and q.dtype == torch.bfloat16
        if fp32:  # one query a row (a decoding step, a last position read): PyTorch's CPU
            # kernel took 3-5x longer in bf16 than in fp32 here (README "Where the time goes")
            q, k, v = q.float(), k.float(), v.float()
        if (q.device.type == "cpu" and q.dtype == torch.bfloat16 and causal and mask is None
                and cache is None and queries is None
                and B * cfg.n_head * T * T <= GROUPED_ATTENTION_MAX_SCORES):
            y = grouped_causal_attention(q, k, v)
        else:
            with torch.autocast("cpu", enabled=False) if fp32 else contextlib.nullcontext():
                y = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, is_causal=causal,
                    enable_gqa=cfg.n_kv_head != cfg.n_head)
        return self.o_proj(y.to(dtype).transpose(1, 2).reshape(B, R, cfg.n_head * hd))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache, mask, causal, queries=None):
        """With ``queries`` (B, R), the outputs at those positions only (B, R, width)."""
        h = self.self_attn(self.input_layernorm(x), cos, sin, cache, mask, causal, queries)
        x = (x if queries is None else rows_at(x, queries, 1)) + h
        return x + self.mlp(self.post_attention_layernorm(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg = cfg.resolved()
        # under torch.device("meta") (from_state_dict, read_weights): shapes only, and no
        # arithmetic, as the first op on that device imports torch._dynamo (a second at start)
        skeleton = torch.empty(0).is_meta
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd, _weight=torch.empty(
            cfg.vocab_size, cfg.n_embd) if skeleton else None)  # given a weight: no init
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.norm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        if cfg.head == "scalar":
            self.score = nn.Linear(cfg.n_embd, 1, bias=True)
        elif not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if skeleton:
            return
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @classmethod
    def from_state_dict(cls, cfg: GPTConfig, state: dict[str, torch.Tensor]) -> GPT:
        """A model holding ``state`` as its parameters (in their dtype), built without first
        initialising random weights: on the meta device, then assigned. Raises on a missing,
        unexpected or wrongly shaped weight (``load_state_dict``'s messages)."""
        with torch.device("meta"):
            model = cls(cfg)
        model.load_state_dict(state, assign=True)
        cos, sin = rope_tables(model.cfg)
        model.register_buffer("rope_cos", cos, persistent=False)
        model.register_buffer("rope_sin", sin, persistent=False)
        return model

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) weights; residual output projections scaled by 1/sqrt(2·depth)."""
        for name, p in self.named_parameters():
            if p.dim() < 2:
                nn.init.ones_(p) if "norm" in name else nn.init.zeros_(p)
            else:
                std = 0.02
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    std /= math.sqrt(2 * self.cfg.depth)
                nn.init.normal_(p, mean=0.0, std=std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def output_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.cfg.tie_embeddings else self.lm_head.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, reduction: str = "mean",
                positions: torch.Tensor | None = None, documents: torch.Tensor | None = None):
        """Logits (B, T, vocab), or per-position scalars (B, T) with a scalar head.

        With ``targets`` the cross-entropy is returned instead (-1 targets are ignored);
        ``reduction="none"`` gives it per position. With ``cache`` the positions continue
        where the cache stands and the cache advances by T. ``positions`` (B, R) keeps only
        those positions' outputs: the last block runs its queries, attention and MLP there
        only, and a reply's logits cost R, not T, projections onto the vocabulary (what
        PPO, GRPO, reward scoring and prefill need).
        ``documents`` (B, T) packs several sequences in a row: each run of equal ids is one
        sequence, attending only to itself and with positions from 0, exactly as if it had a
        row of its own (ids must differ between the runs of a row).
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        longest = cache.longest(T) if cache is not None else T  # a padded row starts later
        if longest > self.cfg.seq_len:
            raise ValueError(
                f"sequence of {longest} tokens exceeds the model context of {self.cfg.seq_len}"
            )
        if documents is not None and cache is not None:
            raise ValueError("packed documents cannot be decoded with a KV cache")
        slots = torch.arange(start, start + T, device=idx.device)
        mask, causal = None, cache is None or (start == 0 and T > 1)
        if cache is not None and cache.pad is not None:
            pad = cache.pad.to(idx.device)
            at = (slots[None, :] - pad[:, None]).clamp(min=0)  # each row's own position (B, T)
            cos, sin = self.rope_cos[at][:, None], self.rope_sin[at][:, None]
            keys = torch.arange(start + T, device=idx.device)
            visible = (keys[None, None, :] <= slots[None, :, None]) & (
                keys[None, None, :] >= pad[:, None, None]
            )
            # padding slots see themselves only, so no softmax row is empty (no NaN)
            visible |= keys[None, None, :] == slots[None, :, None]
            mask, causal = visible[:, None], False
        elif documents is not None:
            cos, sin, mask = document_attention(documents, self.rope_cos, self.rope_sin)
            causal = False
        else:
            cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
            if cache is not None and start > 0 and T > 1:
                keys = torch.arange(start + T, device=idx.device)
                mask, causal = keys[None, :] <= slots[:, None], False
        x = self.embed_tokens(idx)
        *body, last = self.layers
        for block in body:
            x = block(x, cos, sin, cache, mask, causal)
        # the last block needs every position's keys and values but only the kept
        # positions' queries and MLP: a reply of R tokens after a prompt costs R there
        x = last(x, cos, sin, cache, mask, causal, positions)
        if positions is not None:
            B, T = positions.shape
        x = self.norm(x)
        if cache is not None:
            cache.pos += idx.size(1)
        if self.cfg.head == "scalar":
            return self.score(x).squeeze(-1).float()
        if targets is None:
            return F.linear(x, self.output_weight())
        # only positions with a target go through the head: SFT learns ~15% of its positions,
        # and the vocabulary projection and its fp32 logits dominate a large vocabulary's cost
        keep = targets >= 0
        logits = F.linear(x[keep], self.output_weight())
        losses = F.cross_entropy(logits.float(), targets[keep], reduction="none")
        if reduction == "none":
            return torch.zeros(B, T, device=losses.device).masked_scatter(keep, losses)
        if reduction == "sum":
            return losses.sum()
        return losses.sum() / keep.sum().clamp(min=1)
