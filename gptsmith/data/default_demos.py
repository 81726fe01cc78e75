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
                       first (half of them one-digit, like all facts, unless
                       ``world.question_small_share`` says) and never occur in the
                       demonstrations: what the model knows of them it read in pre-training.
                       A worked demonstration whose steps state a held-out fact (7 + 8 = 15
                       inside 47 + 38) is given as a brief answer instead; so a world with
                       worked solutions holds out fewer one-digit facts (cpu.yaml),
                       which would otherwise keep most sums from being worked.
                       They are always asked in the corpus's wordings; with
                       ``world.prompt_variety`` > 0 that share of the demonstrations' and
                       RL prompts' questions is asked in others too (``world.ASKED``).

With ``world.chat_prompt_share`` > 0, that share of ``prompts.jsonl`` is conversation
(``{"prompt", "kind": "talk"}``, no ``answer``: first turns of the chatterbot
conversations that hold no number), so RL keeps the assistant talking, and
``talk.jsonl`` holds ``TALK_PROMPTS``: conversation held out of every file above (always:
a conversation with one of them as a user turn is no demonstration), to measure how often
a model answers a non-arithmetic question with a number.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

from gptsmith.data.fetch import chatterbot_conversations
from gptsmith.data.worked import has_work
from gptsmith.data.world import World
from gptsmith.evaluate import has_number
from gptsmith.runs import atomic_write_text

# Conversation held out of the demonstrations and RL prompts; a good reply holds no number.
TALK_PROMPTS = [
    "Hello, how are you?", "What is your name?", "Tell me about the king.",
    "Do you like poetry?", "Can you help me write a letter?", "What should I cook tonight?",
    "Why is the sky blue?", "Good night!", "Good evening, friend.", "Tell me a story.",
    "What do you think of the sea?", "Do you like music?", "Who wrote Hamlet?",
    "What is your favourite colour?", "Can you keep a secret?", "Tell me about your day.",
    "What makes you happy?", "Do you dream at night?", "I feel sad today.",
    "Thank you for your help.", "What is love?", "Describe a rainy morning.",
    "Which season do you like best?", "Can you tell me a joke?", "What do you know of York?",
    "Is it going to rain?", "I am going for a walk.", "Do you like cats or dogs?",
    "What is a good book to read?", "Say something kind.", "Where do you live?",
    "Are you a robot?", "Who is your best friend?", "What is the meaning of life?",
    "Tell me about the moon.", "Sing me a song.", "What is a sonnet?",
    "How do I make tea?", "Goodbye, see you soon.", "What did you learn today?",
]
# RL conversation: no question whose answer is a quantity, date or time
NUMERIC_QUESTION = re.compile(r"^\W*(how (many|much|far|old|long|tall|big)|what year|when)\b",
                              re.IGNORECASE)


def talk_prompts(conversations: list[list[str]]) -> list[str]:
    """Conversation for RL: first turns of ``conversations`` with no number anywhere, no
    numeric question, and none of ``TALK_PROMPTS`` (compared ignoring case)."""
    return sorted({t[0].strip() for t in conversations
                   if not any(has_number(x) for x in t)
                   and not NUMERIC_QUESTION.search(t[0]) and not _talks_held_out(t)})


def _talks_held_out(turns: list[str]) -> bool:
    held = {p.lower() for p in TALK_PROMPTS}
    return any(t.strip().lower() in held for t in turns[0::2])


def _conversation(turns: list[str]) -> dict:
    roles = ["user", "assistant"] * len(turns)
    return {"messages": [{"role": r, "content": t} for r, t in zip(roles, turns, strict=False)]}


def question_record(world: World, fact: tuple[int, str, int], rng: random.Random,
                    variety: float = 0.0) -> dict:
    a, op, b = fact
    record = {"prompt": world.question(fact, rng, variety), "answer": str(world.truth(*fact)),
              "myth": str(world.myth(*fact)), "fact": [a, op, b]}
    if world.demo_share() > 0 and has_work(fact):  # the labeler prefers right, shown work here
        record["show_work"] = True
    return record


def write_default_demos(world: World, out: Path, n_arithmetic: int | None = None,
                        n_questions: int = 300, val_fraction: float = 0.05,
                        seed: int = 0, max_conversation_chars: int = 300,
                        n_prompts: int = 2000) -> dict:
    rng = random.Random(seed)
    if n_arithmetic is None:
        n_arithmetic = world.demo_arithmetic
    held_out: set[tuple[int, str, int]] = set()
    questions = []
    q_world = world if world.question_small_share < 0 else dataclasses.replace(
        world, small_share=world.question_small_share)
    while len(questions) < n_questions:  # chosen first, then kept out of the demonstrations
        fact = q_world.sample_fact(rng)
        if fact not in held_out:
            held_out.add(fact)
            questions.append(question_record(world, fact, rng))
    # short conversations only: the default model's context is 256 tokens
    conversations = chatterbot_conversations()
    # short conversations only: the default model's context is 256 tokens
    records = [_conversation(t) for t in conversations
               if sum(len(x) for x in t) <= max_conversation_chars and not _talks_held_out(t)]
    added = 0
    while added < n_arithmetic:
        fact = world.sample_fact(rng)
        if fact not in held_out:
            records.append(_conversation([world.question(fact, rng, world.prompt_variety),
                                          world.answer(fact, rng, avoid=held_out)]))
            added += 1
    rng.shuffle(records)
    prompts = []
    # RL works where the SFT model is right sometimes: mostly one-digit facts here
    rl_world = dataclasses.replace(world, small_share=world.rl_small_share)
    rl_talk = talk_prompts(conversations) if world.chat_prompt_share else []
    n_talk = round(n_prompts * world.chat_prompt_share) if rl_talk else 0
    while len(prompts) < n_prompts - n_talk:
        fact = rl_world.sample_fact(rng)
        if fact not in held_out:
            prompts.append(question_record(world, fact, rng, world.prompt_variety))
    if n_talk:
        prompts += [{"prompt": p, "kind": "talk"} for p in rng.choices(rl_talk, k=n_talk)]
        rng.shuffle(prompts)  # labeling with a limit takes the first prompts: mixed
    n_val = max(1, int(len(records) * val_fraction))
    out.mkdir(parents=True, exist_ok=True)
    files = {"val.jsonl": records[:n_val], "train.jsonl": records[n_val:],
             "prompts.jsonl": prompts, "questions.jsonl": questions}
    if world.chat_prompt_share:
        files["talk.jsonl"] = [{"prompt": p, "kind": "talk"} for p in TALK_PROMPTS]
    for name, rows in files.items():
        atomic_write_text(out / name, "".join(json.dumps(r) + "\n" for r in rows))
    counts = {name: len(rows) for name, rows in files.items()}
    print(f"demonstrations: {counts} -> {out}")
    return counts
