"""Labeling: sample K replies per prompt from a model and rank them.

The built-in labeler is a program that knows the tiny world's truth, standing in for people:
a correct answer beats a wrong one; among equals, the brief answer that ends its turn wins.
Replies it cannot tell apart are ties, and ties are not emitted: of each group of equals one
reply is kept. Its output is the ranking file a person would write
(``{"prompt", "responses", "ranking"}``, best first), so human rankings replace it unchanged.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from gptsmith.chat import Reply, complete
from gptsmith.engine import Sampling
from gptsmith.evaluate import is_correct, load_questions
from gptsmith.runs import atomic_write_text, load_model

BRIEF_TOKENS = 16  # a reply of at most this many tokens (end of turn included) is brief


def truth_score(reply: Reply, answer: str) -> int:
    """What the truth labeler prefers: correctness first, then ending the turn briefly."""
    return 2 * is_correct(reply.text, answer) + int(reply.ended and reply.tokens <= BRIEF_TOKENS)


def rank(replies: list[Reply], answer: str) -> tuple[list[Reply], list[int]] | None:
    """Distinct-score representatives and their best-first ranking; None if all tie."""
    best: dict[int, Reply] = {}
    for r in replies:
        best.setdefault(truth_score(r, answer), r)
    if len(best) < 2:
        return None
    responses = list(best.values())
    scores = list(best.keys())
    return responses, sorted(range(len(responses)), key=lambda i: -scores[i])


def label(model_dir: str, prompts_path: str, out: str, k: int = 4, s: Sampling | None = None,
          limit: int = 0, batch_size: int = 64) -> dict:
    """Sample ``k`` replies to each question of ``prompts_path`` and write their rankings."""
    s = s or Sampling(max_tokens=32, temperature=1.0)
    questions = load_questions(prompts_path, limit)
    model, tokenizer = load_model(model_dir)
    rows, pairs, ties = [], 0, 0
    for start in tqdm(range(0, len(questions), batch_size), desc="labeling", unit="batch",
                      disable=None):
        chunk = questions[start:start + batch_size]
        convs = [q["messages"] for q in chunk for _ in range(k)]
        replies = complete(model, tokenizer, convs, replace(s, seed=s.seed + start * k))
        for i, q in enumerate(chunk):
            ranked = rank(replies[i * k:(i + 1) * k], q["answer"])
            if ranked is None:
                ties += 1
                continue
            responses, ranking = ranked
            pairs += len(ranking) * (len(ranking) - 1) // 2
            rows.append({"prompt": q["messages"][-1]["content"] if len(q["messages"]) == 1
                         else q["messages"], "responses": [r.text for r in responses],
                         "ranking": ranking, "answer": q["answer"],
                         "ended": [r.ended for r in responses],
                         "response_ids": [r.ids for r in responses]})
    atomic_write_text(Path(out), "".join(json.dumps(r) + "\n" for r in rows))
    stats = {"prompts": len(questions), "ranked": len(rows), "all_tied": ties, "pairs": pairs}
    print(f"labeled {stats['prompts']} prompts x {k} samples: {stats['ranked']} rankings, "
          f"{stats['pairs']} comparisons ({ties} prompts had only ties) -> {out}")
    return stats
