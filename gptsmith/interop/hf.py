"""The Hugging Face Llama layout: config fields and weight names, both directions.

Our parameter names are Hugging Face's without the ``model.`` prefix (``layers.0.self_attn
.q_proj.weight`` is HF's ``model.layers.0.self_attn.q_proj.weight``); an untied ``lm_head``
keeps its name; RoPE uses the same rotate-half convention, so the weights carry over as
they are. The model itself knows nothing of this mapping.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gptsmith.errors import GptsmithError
from gptsmith.model import GPTConfig

PREFIX = "model."


def hf_config(cfg: GPTConfig) -> dict:
    """The ``config.json`` fields of a language model of shape ``cfg``: LlamaForCausalLM, or
    Qwen2ForCausalLM when the query/key/value projections have biases."""
    c = cfg.resolved()
    if c.head != "lm":
        raise ValueError(f"only a language-model head maps to a causal LM, not {c.head!r}")
    arch, kind = ("Qwen2ForCausalLM", "qwen2") if c.qkv_bias else ("LlamaForCausalLM", "llama")
    out = {
        "architectures": [arch], "model_type": kind,
        "vocab_size": c.vocab_size, "hidden_size": c.n_embd, "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": c.depth, "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim,
        "max_position_embeddings": c.seq_len, "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta, "tie_word_embeddings": c.tie_embeddings,
        "hidden_act": "silu",
    }
    if c.qkv_bias and c.head_dim * c.n_head != c.n_embd:
        raise ValueError("a model with q/k/v biases exports as Qwen2, which needs head_dim = "
                         "n_embd / n_head")
    if not c.qkv_bias:
        out.update(attention_bias=False, mlp_bias=False)
    if c.rope_scaling:
        out["rope_scaling"] = {"rope_type": c.rope_scaling, "factor": c.rope_factor}
        if c.rope_scaling == "llama3":
            out["rope_scaling"].update(
                low_freq_factor=c.rope_low_freq_factor, high_freq_factor=c.rope_high_freq_factor,
                original_max_position_embeddings=c.rope_original_context)
    return out


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


# -- reading a Hugging Face directory ---------------------------------------------------

SUPPORTED = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
             "Qwen2ForCausalLM": "qwen2"}


def gpt_config(hf: dict, where: str, seq_len: int = 0) -> GPTConfig:
    """Our config of an HF Llama-family ``config.json`` (``seq_len`` > 0 caps the context);
    an architecture or feature we cannot run exactly is an error that names it."""
    arch = (hf.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED:
        raise GptsmithError(f"{where}: architecture {arch} is not supported (supported: "
                            f"{', '.join(SUPPORTED)})")
    if hf.get("hidden_act", "silu") != "silu":
        raise GptsmithError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported")
    if hf.get("mlp_bias") or (arch != "Qwen2ForCausalLM" and hf.get("attention_bias")):
        raise GptsmithError(f"{where}: biases on the attention output or MLP are not supported")
    rope = dict(hf.get("rope_scaling") or {})
    params = hf.get("rope_parameters") or {}  # transformers 5 puts theta and scaling here
    if params.get("rope_type", "default") != "default":
        rope = {**params, **rope}
    kind = rope.get("rope_type", rope.get("type", ""))
    if kind not in ("", "default", "linear", "llama3"):
        raise GptsmithError(f"{where}: rope scaling {kind!r} is not supported "
                            "(supported: linear, llama3)")
    try:
        heads = int(hf["num_attention_heads"])
        context = int(hf.get("max_position_embeddings", 2048))
        window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
        if window:
            context = min(context, int(window))  # within the window, full attention is exact
        return GPTConfig(
            vocab_size=int(hf["vocab_size"]), depth=int(hf["num_hidden_layers"]),
            seq_len=min(context, seq_len) if seq_len else context,
            n_embd=int(hf["hidden_size"]), n_head=heads,
            n_kv_head=int(hf.get("num_key_value_heads") or heads),
            mlp_hidden=int(hf["intermediate_size"]),
            head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
            rope_theta=float(hf.get("rope_theta", params.get("rope_theta", 10000.0))),
            rope_scaling="" if kind in ("", "default") else kind,
            rope_factor=float(rope.get("factor", 1.0)),
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_context=int(rope.get("original_max_position_embeddings", 0)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            qkv_bias=arch == "Qwen2ForCausalLM",
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        ).resolved()
    except (KeyError, TypeError, ValueError) as e:
        raise GptsmithError(f"{where}: config.json field {e} is missing or not valid") from None


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every weight of an HF directory: ``model.safetensors``, or the shards its
    ``model.safetensors.index.json`` lists."""
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").exists():
        shards = ["model.safetensors"]
    else:
        raise GptsmithError(f"{directory}: no model.safetensors (or sharded index) here")
    state = {}
    for name in shards:
        try:
            state.update(load_file(str(directory / name)))
        except Exception as e:  # safetensors raises its own error types on a bad file
            raise GptsmithError(f"{directory / name}: not a readable safetensors file "
                                f"({e})") from None
    return state


def read_tokenizer_config(directory: Path) -> dict:
    """``tokenizer_config.json`` with its special tokens as plain strings, and the chat
    template from ``chat_template.jinja`` where newer checkpoints keep it."""
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if isinstance(config.get(key), dict):
            config[key] = config[key].get("content")
    jinja = directory / "chat_template.jinja"
    if jinja.exists():
        config["chat_template"] = jinja.read_text()
    generation = directory / "generation_config.json"
    if generation.exists():
        eos = json.loads(generation.read_text()).get("eos_token_id")
        config["eos_token_ids"] = eos if isinstance(eos, list) else [eos] if eos is not None \
            else []
    return config


def read_hf_dir(directory: Path) -> tuple[dict, dict[str, torch.Tensor], str, dict]:
    """(config.json, HF-named weights, tokenizer.json text, tokenizer_config) of a directory."""
    config_path = directory / "config.json"
    if not config_path.exists():
        raise GptsmithError(f"{directory}: no config.json here; expected a Hugging Face model "
                            "directory (config.json, *.safetensors, tokenizer.json)")
    if not (directory / "tokenizer.json").exists():
        raise GptsmithError(f"{directory}: no tokenizer.json here (a fast tokenizer is needed)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise GptsmithError(f"{config_path}: not valid JSON ({e})") from None
    gpt_config(config, str(config_path))  # refuse an unsupported model before reading weights
    return config, read_safetensors(directory), (directory / "tokenizer.json").read_text(), \
        read_tokenizer_config(directory)
