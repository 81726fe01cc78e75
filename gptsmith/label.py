"""Labeling: sample K replies per prompt from a model and rank them.

The built-in labeler is a program that knows the tiny world's truth, standing in for people:
a correct answer beats a wrong one; among equals, the brief answer that ends its turn wins.
Replies it cannot tell apart are ties, and ties are not emitted: of each group of equals one
reply is kept. Its output is the ranking file a person would write
(``{"prompt", "responses", "ranking"}``, best first), so human rankings replace it unchanged.

Shown work (System 2). On a prompt that wants it (``"show_work": true``: the tiny world
marks its multi-digit questions so when it has worked solutions), a right reply that shows
its work (``evaluate.shows_work``) and ends its turn beats a right brief one, and a wrong
one that shows its work and ends its turn ties with a wrong brief one:

    right+worked (4) > right+brief (3) > right, running on (2)
                     > wrong+worked or wrong+brief, ending (1) > wrong, running on (0)

Why a bonus and not a tie among right answers: the reward model is no wiser than the
policy at arithmetic, but "right and worked beats right and brief" is a pattern it can see
without doing the sum, and it is the one RL should move the policy to (each step is a small
fact the model knows; a recalled two-digit answer often is not). Why only when right: a
bonus for steps alone would pay for decorating a wrong answer. Why only on multi-digit
questions: "2 + 2" is answered at once (System 1), and a one-digit step cannot be shown.
Prompts without the mark (the default world's, users' own) keep the ordering of before.

Conversation (prompts without an ``answer``, ``"kind": "talk"``): a reply without a number
beats one with a number (RL must not teach that every question is a sum); among equals, the
reply that ends its turn wins.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from gptsmith.chat import Reply, complete
from gptsmith.engine import Sampling
from gptsmith.evaluate import has_number, is_correct, load_questions, shows_work
from gptsmith.runs import atomic_write_text, load_model

BRIEF_TOKENS = 16  # a reply of at most this many tokens (end of turn included) is brief


def truth_score(reply: Reply, answer: str, show_work: bool = False) -> int:
    """What the truth labeler prefers: correctness first, then ending the turn briefly, or,
    where the prompt wants ``show_work``, ending it after showing work (module doc)."""
    right = is_correct(reply.text, answer)
    if show_work and reply.ended and shows_work(reply.text):
        return 4 if right else 1
    return 2 * right + int(reply.ended and reply.tokens <= BRIEF_TOKENS)


def talk_score(reply: Reply) -> int:
    """Conversation: no number first, then ending the turn."""
    return 2 * (not has_number(reply.text)) + int(reply.ended)


def record_score(reply: Reply, record: dict) -> int:
    """The labeler's score of a reply to a prompt record: ``truth_score`` against its
    ``answer`` (and ``show_work`` mark), or ``talk_score`` when it has no answer."""
    if "answer" not in record:
        return talk_score(reply)
    return truth_score(reply, record["answer"], record.get("show_work") is True)


def rank(replies: list[Reply], answer: str | dict) -> tuple[list[Reply], list[int]] | None:
    """Distinct-score representatives and their best-first ranking; None if all tie.
    ``answer``: the true answer, or the prompt record (``record_score``)."""
    best: dict[int, Reply] = {}
    for r in replies:
        best.setdefault(record_score(r, answer if isinstance(answer, dict)
                                     else {"answer": answer}), r)
    if len(best) < 2:
        return None
    responses = list(best.values())
    scores = list(best.keys())
    return responses, sorted(range(len(responses)), key=lambda i: -scores[i])


def label(model_dir: str, prompts_path: str, out: str, k: int = 4, s: Sampling | None = None,
          limit: int = 0, batch_size: int = 64) -> dict:
    """Sample ``k`` replies to each question of ``prompts_path`` and write their rankings."""
    s = s or Sampling(max_tokens=32, temperature=1.0)
    questions = load_questions(prompts_path, limit, require_answer=False)
    model, tokenizer = load_model(model_dir)
    rows, pairs, ties = [], 0, 0
    for start in tqdm(range(0, len(questions), batch_size), desc="labeling", unit="batch",
                      disable=None):
        chunk = questions[start:start + batch_size]
        convs = [q["messages"] for q in chunk for _ in range(k)]
        replies = complete(model, tokenizer, convs, replace(s, seed=s.seed + start * k))
        for i, q in enumerate(chunk):
            ranked = rank(replies[i * k:(i + 1) * k], q)
            if ranked is None:
                ties += 1
                continue
            responses, ranking = ranked
            pairs += len(ranking) * (len(ranking) - 1) // 2
            rows.append({"prompt": q["messages"][-1]["content"] if len(q["messages"]) == 1
                         else q["messages"], "responses": [r.text for r in responses],
                         "ranking": ranking, **({"answer": q["answer"]} if "answer" in q else {}),
                         "ended": [r.ended for r in responses],
                         "response_ids": [r.ids for r in responses]})
    atomic_write_text(Path(out), "".join(json.dumps(r) + "\n" for r in rows))
    stats = {"prompts": len(questions), "ranked": len(rows), "all_tied": ties, "pairs": pairs}
    print(f"labeled {stats['prompts']} prompts x {k} samples: {stats['ranked']} rankings, "
          f"{stats['pairs']} comparisons ({ties} prompts had only ties) -> {out}")
    return stats
