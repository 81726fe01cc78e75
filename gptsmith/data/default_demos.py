"""The built-in SFT data: real conversations plus correct answers to the tiny world's questions.

``write_default_demos`` writes three ``messages``-format files:

- ``train.jsonl``      demonstrations to learn from
- ``val.jsonl``        held out for the validation loss (never trained on)
- ``prompts.jsonl``    arithmetic questions with their answers for labeling and PPO
                       rollouts, 80% one-digit (where the SFT model is right sometimes, so
                       K samples hold both right and wrong answers); their facts are never
                       among the held-out questions'.
- ``questions.jsonl``  held-out arithmetic questions with their true answer (and the myth
                       the corpus repeats), for ``gptsmith eval``. Their facts are drawn
                       first (half of them one-digit, like all facts) and never occur in the
                       demonstrations: what the model knows of them it read in pre-training.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from gptsmith.data.fetch import chatterbot_conversations
from gptsmith.data.world import World
from gptsmith.runs import atomic_write_text


def _conversation(turns: list[str]) -> dict:
    roles = ["user", "assistant"] * len(turns)
    return {"messages": [{"role": r, "content": t} for r, t in zip(roles, turns, strict=False)]}


def question_record(world: World, fact: tuple[int, str, int], rng: random.Random) -> dict:
    a, op, b = fact
    return {"prompt": world.question(fact, rng), "answer": str(world.truth(*fact)),
            "myth": str(world.myth(*fact)), "fact": [a, op, b]}


def write_default_demos(world: World, out: Path, n_arithmetic: int = 2000,
                        n_questions: int = 300, val_fraction: float = 0.05,
                        seed: int = 0, max_conversation_chars: int = 300,
                        n_prompts: int = 2000, rl_small_share: float = 0.8) -> dict:
    rng = random.Random(seed)
    held_out: set[tuple[int, str, int]] = set()
    questions = []
    while len(questions) < n_questions:  # chosen first, then kept out of the demonstrations
        fact = world.sample_fact(rng)
        if fact not in held_out:
            held_out.add(fact)
            questions.append(question_record(world, fact, rng))
    # short conversations only: the default model's context is 256 tokens
    records = [_conversation(t) for t in chatterbot_conversations()
               if sum(len(x) for x in t) <= max_conversation_chars]
    added = 0
    while added < n_arithmetic:
        fact = world.sample_fact(rng)
        if fact not in held_out:
            records.append(_conversation([world.question(fact, rng), world.answer(fact, rng)]))
            added += 1
    rng.shuffle(records)
    prompts = []
    # RL works where the SFT model is right sometimes: mostly one-digit facts here
    rl_world = dataclasses.replace(world, small_share=rl_small_share)
    while len(prompts) < n_prompts:
        fact = rl_world.sample_fact(rng)
        if fact not in held_out:
            prompts.append(question_record(world, fact, rng))
    n_val = max(1, int(len(records) * val_fraction))
    out.mkdir(parents=True, exist_ok=True)
    files = {"val.jsonl": records[:n_val], "train.jsonl": records[n_val:],
             "prompts.jsonl": prompts, "questions.jsonl": questions}
    for name, rows in files.items():
        atomic_write_text(out / name, "".join(json.dumps(r) + "\n" for r in rows))
    counts = {name: len(rows) for name, rows in files.items()}
    print(f"demonstrations: {counts} -> {out}")
    return counts
