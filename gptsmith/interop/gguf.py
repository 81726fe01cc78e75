"""GGUF (llama.cpp's format) in and out, through the ``gguf`` package.

Reading turns a GGUF file into what a Hugging Face directory holds — a ``config.json``
dict, weights under HF Llama names, a ``tokenizer.json`` and a ``tokenizer_config.json``
dict — so one importer serves both. Two facts of llama.cpp's conversion are undone here:
tensor shapes are stored fastest dimension first, and for the ``llama`` architecture the
rows of the query and key projections are permuted (each head's two rotary halves
interleaved). Writing does the reverse, in F16 or Q8_0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gptsmith.errors import GptsmithError

# architectures whose GGUF layout we read: llama.cpp permutes Q/K rows for llama only
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
PERMUTED = {"llama"}

LAYER_NAMES = {  # GGUF per-layer tensor -> HF name inside model.layers.N
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
             "output": "lm_head"}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise GptsmithError("reading or writing GGUF needs the gguf package: "
                             "pip install 'gptsmith[interop]'") from None
    return gguf


def rotary_interleave(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's order of Q/K rows: per head, the rotary halves interleaved pairwise."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).transpose(1, 2) \
        .reshape(w.shape)


def rotary_halves(w: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of :func:`rotary_interleave`: back to rotate-half order (HF and ours)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).transpose(1, 2) \
        .reshape(w.shape)


def hf_name(name: str) -> str | None:
    """The HF name of a GGUF tensor name, None if it is not one we know."""
    stem, _, kind = name.rpartition(".")
    if stem in TOP_NAMES:
        return f"{TOP_NAMES[stem]}.{kind}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{kind}"
    return None


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_gguf(path: Path) -> tuple[dict, dict[str, torch.Tensor], str, dict]:
    """(HF config dict, HF-named fp32 weights, tokenizer.json text, tokenizer_config dict)."""
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the package raises bare ValueErrors/KeyErrors on a bad file
        raise GptsmithError(f"{path}: not a readable GGUF file ({e})") from None
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise GptsmithError(f"{path}: GGUF architecture {arch!r} is not supported "
                            f"(supported: {', '.join(ARCHITECTURES)})")
    config = _config(reader, arch, path)
    weights = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            if t.name.startswith("rope_"):  # precomputed rope factors: ours are derived
                continue
            raise GptsmithError(f"{path}: tensor {t.name!r} has no place in a {arch} model")
        try:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise GptsmithError(f"{path}: tensor {t.name} is of type {t.tensor_type.name}, "
                                "which the gguf package cannot dequantize") from None
        w = torch.from_numpy(np.array(values, dtype=np.float32))  # a writable copy
        w = w.reshape([int(d) for d in reversed(t.shape)])
        if arch in PERMUTED and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads"] if "q_proj" in name \
                else config["num_key_value_heads"]
            w = rotary_halves(w, heads)
        weights[name] = w
    config["tie_word_embeddings"] = "lm_head.weight" not in weights
    tokenizer_json, tokenizer_config = _tokenizer(reader, path)
    return config, weights, tokenizer_json, tokenizer_config


def _config(reader, arch: str, path: Path) -> dict:
    def need(key: str):
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise GptsmithError(f"{path}: GGUF metadata lacks {arch}.{key}")
        return value

    heads = int(need("attention.head_count"))
    width = int(need("embedding_length"))
    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    config = {
        "architectures": [ARCHITECTURES[arch]], "model_type": arch,
        "num_hidden_layers": int(need("block_count")), "hidden_size": width,
        "intermediate_size": int(need("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(_field(reader, f"{arch}.attention.key_length", width // heads)),
        "max_position_embeddings": int(need("context_length")),
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "vocab_size": int(_field(reader, f"{arch}.vocab_size", len(tokens))),
        "hidden_act": "silu",
    }
    scaling = _field(reader, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise GptsmithError(f"{path}: rope scaling {scaling!r} in a GGUF file is not supported")
    return config


def _tokenizer(reader, path: Path) -> tuple[str, dict]:
    """A ``tokenizers`` byte-level BPE rebuilt from the GGUF vocabulary and merges."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise GptsmithError(f"{path}: GGUF tokenizer model {kind!r} is not supported (only "
                            "byte-level BPE, 'gpt2')")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", [])]
    hf = HFTokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges,
                                ignore_merges=False))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    hf.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(tokens, types, strict=True) if kind in (3, 4)]
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])

    def token(key: str) -> str | None:
        i = _field(reader, f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    tokenizer_config = {"bos_token": token("bos"), "eos_token": token("eos"),
                        "pad_token": token("padding"), "unk_token": token("unknown"),
                        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token",
                                                     False)),
                        "chat_template": _field(reader, "tokenizer.chat_template")}
    return hf.to_str(), {k: v for k, v in tokenizer_config.items() if v is not None}


def write_gguf(path: Path, config: dict, weights: dict[str, torch.Tensor],
               tokenizer_json: str, tokenizer_config: dict, kind: str = "f16") -> None:
    """Write an HF-layout Llama model (config, weights, tokenizer) as a GGUF file."""
    gguf = _gguf()
    arch = "llama"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(tokenizer_config.get("name", "gptsmith"))
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_key_length(config["head_dim"])
    w.add_value_length(config["head_dim"])
    w.add_rope_dimension_count(config["head_dim"])
    w.add_rope_freq_base(config["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_vocab_size(config["vocab_size"])
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    w.add_file_type(file_type[kind])
    _write_tokenizer(w, tokenizer_json, tokenizer_config)
    to_gguf = {v: k for k, v in TOP_NAMES.items()}
    layer = {v: k for k, v in LAYER_NAMES.items()}
    for name, t in weights.items():
        stem, _, suffix = name.rpartition(".")
        if stem in to_gguf:
            out = f"{to_gguf[stem]}.{suffix}"
        else:
            _, _, n, *rest = stem.split(".")
            out = f"blk.{n}.{layer['.'.join(rest)]}.{suffix}"
        t = t.detach().float()
        if name.endswith("q_proj.weight"):
            t = rotary_interleave(t, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            t = rotary_interleave(t, config["num_key_value_heads"])
        array = t.numpy()
        if t.dim() == 1:  # norms stay fp32, as llama.cpp writes them
            w.add_tensor(out, array.astype(np.float32))
        elif kind == "q8_0" and array.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(out, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(out, array.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _write_tokenizer(w, tokenizer_json: str, tokenizer_config: dict) -> None:
    data = json.loads(tokenizer_json)
    model = data["model"]
    if model.get("type") != "BPE":
        raise GptsmithError("GGUF export supports byte-level BPE tokenizers only")
    pre = json.dumps(data.get("pre_tokenizer"), sort_keys=True)
    if '"individual_digits": true' not in pre or '"ByteLevel"' not in pre:
        raise GptsmithError("GGUF export needs a byte-level BPE that splits digits one by one "
                            "(gptsmith's own tokenizer, SmolLM2's); export this model with "
                            "--format hf")
    vocab = dict(model["vocab"])
    for added in data.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    tokens = [""] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    special = {a["content"] for a in data.get("added_tokens", []) if a.get("special")}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")  # digits split one by one, then GPT-2's byte-level regex
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_token_merges(merges)
    ids = {t: i for i, t in enumerate(tokens)}
    for key, add in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id),
                     ("pad_token", w.add_pad_token_id)):
        if tokenizer_config.get(key) in ids:
            add(ids[tokenizer_config[key]])
    w.add_add_bos_token(bool(tokenizer_config.get("add_bos_token", False)))
    if tokenizer_config.get("chat_template"):
        w.add_chat_template(tokenizer_config["chat_template"])
