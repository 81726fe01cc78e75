"""Prompts for a project, and the K responses of a rank project, sampled ahead of time.

A prompts file is ``.jsonl``, one object a line with a ``prompt`` string. In a rank project
a line may also carry its own ``responses`` (a list of strings, e.g. written by
``gptsmith generate``); the others get K replies sampled with the engine from a chosen model.
"""

from __future__ import annotations

import json
from pathlib import Path

from gptsmith.errors import GptsmithError, located

MAX_PROMPT_CHARS = 20_000


def parse_prompts(text: str, source: str) -> list[dict]:
    """``[{"prompt": str, "responses": [str] | None}]`` from .jsonl text; errors name the
    line and the field."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            json.dumps(rec, ensure_ascii=False).encode("utf-8")
        except json.JSONDecodeError as e:
            raise located(source, n, f"not valid JSON ({e.msg})") from None
        except RecursionError:
            raise located(source, n, "the JSON is nested too deeply") from None
        except UnicodeEncodeError:
            raise located(source, n, "not valid Unicode (a lone surrogate such as "
                          "\\ud800)") from None
        except ValueError as e:  # e.g. an integer of more than 4300 digits
            raise located(source, n, f"cannot be read ({e})"[:200]) from None
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) \
                or not rec["prompt"].strip():
            raise located(source, n, 'each line needs a non-empty "prompt" string, e.g. '
                          '{"prompt": "What is 3 plus 4?"}')
        if len(rec["prompt"]) > MAX_PROMPT_CHARS:
            raise located(source, n, f"the prompt is longer than {MAX_PROMPT_CHARS} characters")
        responses = rec.get("responses")
        if responses is not None and (not isinstance(responses, list) or len(responses) < 2
                                      or not all(isinstance(r, str) for r in responses)
                                      or len(set(responses)) < len(responses)):
            raise located(source, n, 'field "responses" must list at least 2 different strings')
        if any("\x00" in t for t in [rec["prompt"], *(responses or [])]):
            raise located(source, n, "holds a NUL character (\\u0000), which is not text")
        out.append({"prompt": rec["prompt"], "responses": responses})
    if not out:
        raise GptsmithError(f"{source}: no prompts found")
    return out


def read_prompts(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise GptsmithError(f"{path}: no such prompts file")
    return parse_prompts(path.read_text(encoding="utf-8"), str(path))


def sample_responses(run_dir: str | Path, prompts: list[str], k: int, max_tokens: int = 64,
                     temperature: float = 1.0, seed: int = 0, rounds: int = 4) -> list[list[str]]:
    """Up to ``k`` different replies per prompt from the model in ``run_dir``.

    Identical replies cannot be ranked against each other, so a prompt short of ``k``
    different replies is sampled again (new seeds), up to ``rounds`` times in all.
    """
    from gptsmith.chat import complete, prompt_ids
    from gptsmith.engine import Sampling
    from gptsmith.runs import load_model

    if not 2 <= k <= 9:
        raise GptsmithError(f"-k {k}: 2 to 9 responses (annotators rank them with keys 1-9)")
    if not 0 <= seed < 2**63:
        raise GptsmithError(f"--seed {seed}: a whole number from 0 to 2^63-1")
    model, tokenizer = load_model(run_dir, "cpu")
    ctx = model.cfg.seq_len
    for i, p in enumerate(prompts):
        n = len(prompt_ids(tokenizer, [{"role": "user", "content": p}]))
        if n >= ctx:
            raise GptsmithError(f"prompt {i + 1} has {n} tokens, more than the context of "
                                f"{ctx} of {run_dir}; shorten it")
    groups: list[list[str]] = [[] for _ in prompts]
    for r in range(rounds):
        short = [i for i, g in enumerate(groups) if len(g) < k]
        if not short:
            break
        convs = [[{"role": "user", "content": prompts[i]}] for i in short for _ in range(k)]
        s = Sampling(max_tokens=max_tokens, temperature=temperature,
                     seed=(seed + r * len(prompts) * k) % 2**63)
        replies = complete(model, tokenizer, convs, s)
        for j, reply in enumerate(replies):
            group = groups[short[j // k]]
            text = reply.text.strip()
            if len(group) < k and text not in group:
                group.append(text)
    return groups
