"""Batch inference for scripts: a .jsonl of prompts in, the same records plus ``response`` out.

Each input line has ``prompt`` (a string: one user turn) or ``messages`` (a conversation
ending with a user turn). The output is written whole or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from gptsmith.chat import complete, prompt_ids
from gptsmith.data.demos import read_demos
from gptsmith.engine import Sampling
from gptsmith.errors import GptsmithError
from gptsmith.runs import atomic_write_text, load_model


def generate_file(run_dir: str, input_path: str, output_path: str, s: Sampling,
                  batch_size: int = 0, skip_bad: bool = False, compile: bool = False) -> int:
    """Answer every prompt of ``input_path`` into ``output_path``; returns the count."""
    convs, skipped = read_demos(input_path, "auto", skip_bad, for_generation=True)
    model, tokenizer = load_model(run_dir)
    kept = []
    for c in convs:
        n = len(prompt_ids(tokenizer, c.messages))
        if n < model.cfg.seq_len:
            kept.append(c)
        elif skip_bad:
            skipped += 1
        else:
            field = "prompt" if "prompt" in c.extra else "messages"
            raise GptsmithError(f"{c.source}: field {field!r} renders to {n} tokens, which "
                                f"leaves no room to answer in a context of {model.cfg.seq_len}")
    convs = kept
    replies = complete(model, tokenizer, [c.messages for c in convs], s, batch_size, compile)
    lines = [json.dumps({**c.extra, "response": r.text, "finished": r.ended},
                        ensure_ascii=False) + "\n" for c, r in zip(convs, replies, strict=True)]
    atomic_write_text(Path(output_path), "".join(lines))
    note = f" ({skipped} skipped)" if skipped else ""
    print(f"{len(lines)} responses -> {output_path}{note}")
    return len(lines)
