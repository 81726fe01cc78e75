"""The Hugging Face Llama layout: config fields and weight names, both directions.

Our parameter names are Hugging Face's without the ``model.`` prefix (``layers.0.self_attn
.q_proj.weight`` is HF's ``model.layers.0.self_attn.q_proj.weight``); an untied ``lm_head``
keeps its name; RoPE uses the same rotate-half convention, so the weights carry over as
they are. The model itself knows nothing of this mapping.
"""

from __future__ import annotations

import torch

from gptsmith.model import GPTConfig

PREFIX = "model."


def llama_config(cfg: GPTConfig) -> dict:
    """The ``LlamaConfig`` fields (``config.json``) of a language model of shape ``cfg``."""
    c = cfg.resolved()
    if c.head != "lm":
        raise ValueError(f"only a language-model head maps to LlamaForCausalLM, not {c.head!r}")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": c.vocab_size, "hidden_size": c.n_embd, "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": c.depth, "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim,
        "max_position_embeddings": c.seq_len, "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta, "tie_word_embeddings": c.tie_embeddings,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
    }


def to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under Hugging Face Llama names (the scalar head is ours alone)."""
    if any(k.startswith("score.") for k in state):
        raise ValueError("a scalar-head model has no LlamaForCausalLM layout")
    return {k if k == "lm_head.weight" else PREFIX + k: v for k, v in state.items()}


def from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face Llama state dict under our names; rotary caches are dropped."""
    out = {}
    for k, v in state.items():
        if k.endswith("rotary_emb.inv_freq"):
            continue
        out[k.removeprefix(PREFIX) if k.startswith(PREFIX) else k] = v
    return out
