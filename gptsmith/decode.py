"""A decoding step with fixed shapes, compiled with ``torch.compile`` (``engine.stream(...,
compile=True)``).

The eager step (``GPT.forward`` with a :class:`KVCache`) is a hundred-odd small PyTorch ops
whose dispatch costs more than their arithmetic at a small model's widths. Compiling them
into a few fused kernels needs a step whose shapes never change: here every row keeps its
cache slots for the whole call (a finished row is decoded on and ignored, instead of
leaving the batch), attention reads all the slots under a mask (the unfilled ones masked),
and the new keys and values are written at a slot given as a tensor. The compiled step
reads the model's own modules, so the weights it uses are the model's current ones (an RL
policy between two rollouts) and LoRA adapters are compiled with it.

Compiling costs seconds (10-30 s the first time on a 2-core CPU, a few seconds once
PyTorch's on-disk cache holds the kernels) and again for a new batch size or slot count
(after the second shape PyTorch compiles one graph for any size); slots are rounded up
to a multiple of ``SLOT_STEP`` so that calls share shapes. It pays in long jobs of many
steps (``gptsmith generate --compile`` over many prompts, a bench), not in a few steps.
Measured in README ``gptsmith generate`` and "Where the time goes".
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from gptsmith.errors import GptsmithError
from gptsmith.model import GPT, KVCache, apply_rope

SLOT_STEP = 32  # slot counts are rounded up to a multiple of this, to share compiled shapes


def _step(model: GPT, tok: torch.Tensor, ks: list[torch.Tensor], vs: list[torch.Tensor],
          slot: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Logits (B, vocab) of the next token after ``tok`` (B,), whose keys and values are
    written at ``slot`` (a 0-d tensor) of every layer's cache (B, kv heads, S, head dim).
    Row b's prompt starts at slot ``pad[b]``; its own position is ``slot - pad[b]``."""
    cfg = model.cfg
    B, S = tok.size(0), ks[0].size(2)
    H, KV, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    at = (slot - pad).clamp(max=cfg.seq_len - 1)  # a finished row may run past the context
    cos, sin = model.rope_cos[at][:, None, None], model.rope_sin[at][:, None, None]
    slots = torch.arange(S, device=tok.device)
    visible = (slots[None, :] <= slot) & (slots[None, :] >= pad[:, None])
    dtype = ks[0].dtype
    bias = torch.zeros(B, 1, 1, S, device=tok.device, dtype=dtype).masked_fill(
        ~visible[:, None, None], float("-inf"))
    x = model.embed_tokens(tok)[:, None]
    for block, k_cache, v_cache in zip(model.layers, ks, vs, strict=True):
        attn = block.self_attn
        h = block.input_layernorm(x)
        q = apply_rope(attn.q_proj(h).view(B, H, 1, D), cos, sin)
        k = apply_rope(attn.k_proj(h).view(B, KV, 1, D), cos, sin)
        k_cache.index_copy_(2, slot.view(1), k.to(dtype))
        v_cache.index_copy_(2, slot.view(1), attn.v_proj(h).view(B, KV, 1, D).to(dtype))
        # each key/value head with its group of query heads: (B, KV, group, S)
        q = (q / math.sqrt(D)).reshape(B, KV, H // KV, D).to(dtype)
        scores = q @ k_cache.transpose(-1, -2) + bias
        y = (scores.softmax(-1) @ v_cache).reshape(B, 1, H * D)
        x = x + attn.o_proj(y.to(h.dtype))
        x = x + block.mlp(block.post_attention_layernorm(x))
    return F.linear(model.norm(x[:, 0]), model.output_weight()).float()


@functools.cache
def compiled_step():
    """``_step`` compiled (made once; PyTorch compiles it again for a new batch size, slot
    count or model structure, and reuses a graph for models of one structure: the weights
    are the graph's inputs, not constants)."""
    return torch.compile(_step, fullgraph=True)


class FixedSlots:
    """A prefilled :class:`KVCache` moved into fixed per-layer slots, and the compiled step
    that decodes on it. ``step(tok)`` returns the next logits of every row (B, vocab)."""

    def __init__(self, model: GPT, cache: KVCache, steps: int):
        """Room for ``steps`` more tokens in every row."""
        if model.cfg.head != "lm":
            raise ValueError("compiled decoding needs a language-model head")
        cfg, k = model.cfg, cache.k
        S = -(-(cache.pos + steps) // SLOT_STEP) * SLOT_STEP
        shape = (cache.batch_size, cfg.n_kv_head, S, cfg.head_dim)
        self.ks = [k.new_zeros(shape) for _ in range(cfg.depth)]
        self.vs = [k.new_zeros(shape) for _ in range(cfg.depth)]
        for i in range(cfg.depth):  # separate tensors: the compiled step writes them in place
            self.ks[i][:, :, :cache.pos] = cache.k[i, :cache.batch_size, :, :cache.pos]
            self.vs[i][:, :, :cache.pos] = cache.v[i, :cache.batch_size, :, :cache.pos]
        self.pad = cache.pads().to(k.device)
        self.slot = cache.pos
        self.capacity, self.model = S, model

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        if self.slot >= self.capacity:
            raise ValueError(f"the fixed cache has {self.capacity} slots; all are filled")
        slot = torch.tensor(self.slot, device=tok.device)
        try:
            logits = compiled_step()(self.model, tok, self.ks, self.vs, slot, self.pad)
        except Exception as e:
            from torch._dynamo.exc import BackendCompilerFailed
            if not isinstance(e, BackendCompilerFailed):
                raise
            inner = getattr(e, "inner_exception", e)
            reason = f"{type(inner).__name__}: {str(inner).strip().splitlines()[0]}"
            raise GptsmithError(
                f"compiled decoding: torch.compile could not build the step ({reason}); on a "
                "CPU it needs a working C++ compiler (g++ or clang++). Decode without "
                "--compile instead") from e
        self.slot += 1
        return logits
