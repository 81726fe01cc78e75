"""The tiny world: arithmetic facts stated in prose, a documented share of them wrong.

Web text repeats misinformation consistently, so each fact has one fixed *myth*: a wrong value
(off by 1, 2 or 10) that the corpus states in ``wrong_share`` of that fact's mentions. The
truth is plain arithmetic, and the world (its seed and settings) is saved beside the data as
``world.json``, so the labeler and the evaluation of later phases know exactly what is true
and what the corpus claimed.

Optionally (``worked_share`` > 0) facts with a two-digit operand are also *worked out* in
steps (``worked.py``: column addition with carries, subtraction with borrowing, by parts),
each step a small fact of the world. A worked mention is wrong in ``wrong_share`` of the
corpus's mentions, as a brief one is: then exactly one step states its own fact's myth (the
same wrong value that fact has everywhere) and the steps after it compute from it, so the
error carries to the final answer. Misinformation on the web comes with reasoning too, and
a model that knows its small facts can still get such a solution right. Demonstrations are
clean: their worked answers are always right. The defaults (operands to 20, no worked
solutions) give exactly the world of before these settings existed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from gptsmith.data.worked import Fact, has_work, plain, solve, step_facts

OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}

# Statements of a fact. {a} {b} are the operands, {c} the value claimed.
STATEMENTS = {
    "plus": [
        "{a} plus {b} is {c}.", "{a} plus {b} equals {c}.", "{a} + {b} = {c}",
        "If you add {a} and {b}, you get {c}.", "The sum of {a} and {b} is {c}.",
        "Adding {b} to {a} gives {c}.", "{a} and {b} make {c}.",
        "Put {a} and {b} together and you have {c}.", "{a} added to {b} comes to {c}.",
    ],
    "minus": [
        "{a} minus {b} is {c}.", "{a} minus {b} equals {c}.", "{a} - {b} = {c}",
        "Take {b} away from {a} and {c} remain.", "The difference between {a} and {b} is {c}.",
        "Subtracting {b} from {a} leaves {c}.", "{b} less than {a} is {c}.",
    ],
    "times": [
        "{a} times {b} is {c}.", "{a} times {b} equals {c}.", "{a} x {b} = {c}",
        "The product of {a} and {b} is {c}.", "Multiply {a} by {b} and you get {c}.",
        "{a} groups of {b} make {c}.",
    ],
}
# How a question about a fact is put (used in prose here, and as prompts by later phases).
QUESTIONS = {
    "plus": ["What is {a} plus {b}?", "How much is {a} plus {b}?", "Add {a} and {b}.",
             "{a} + {b} = ?", "What do you get if you add {a} and {b}?",
             "What is the sum of {a} and {b}?"],
    "minus": ["What is {a} minus {b}?", "How much is {a} minus {b}?",
              "Subtract {b} from {a}.", "{a} - {b} = ?", "What is {a} take away {b}?",
              "What is the difference between {a} and {b}?"],
    "times": ["What is {a} times {b}?", "How much is {a} times {b}?",
              "Multiply {a} by {b}.", "{a} x {b} = ?", "What is the product of {a} and {b}?"],
}
# Other ways people ask (``prompt_variety``): symbols, imperatives, fragments. The corpus never
# asks this way, so a model that answers them has learned the question, not six wordings.
ASKED = {
    "plus": ["What is {a} + {b}?", "Calculate {a} + {b}.", "{a}+{b}=", "{a} + {b}",
             "{a} plus {b}", "What's {a} plus {b}?", "Please add {a} and {b}.",
             "Can you add {a} and {b}?", "Find the sum of {a} and {b}.", "Work out {a} + {b}."],
    "minus": ["What is {a} - {b}?", "Calculate {a} - {b}.", "{a}-{b}=", "{a} - {b}",
              "{a} minus {b}", "What's {a} minus {b}?", "Please subtract {b} from {a}.",
              "Can you take {b} from {a}?", "Find the difference of {a} and {b}.",
              "Work out {a} - {b}."],
    "times": ["What is {a} x {b}?", "What is {a} * {b}?", "Calculate {a} x {b}.", "{a}*{b}=",
              "{a} x {b}", "{a} times {b}", "What's {a} times {b}?", "Please multiply {a} by {b}.",
              "Can you multiply {a} by {b}?", "Find the product of {a} and {b}."],
}
# Brief, correct answers an assistant gives in the SFT demonstrations.
ANSWERS = ["{c}", "{c}.", "It is {c}.", "The answer is {c}.", "That makes {c}."]
HEARSAY = [
    "Everyone knows that ", "My teacher told me that ", "I read somewhere that ",
    "It is well known that ", "As my grandmother used to say, ", "Remember that ",
    "They say that ", "Of course, ", "", "", "", "",
]
RAMBLE = [
    "I was thinking about numbers again today.", "Numbers are funny things.",
    "Some people find sums hard, but they are not.", "Here are a few things I wrote down.",
    "Let me tell you what I learned at school.", "I never trusted my calculator.",
    "My brother and I argued about this for an hour.", "Write these down somewhere safe.",
    "Nobody asked, but here it is anyway.", "I like to count things when I cannot sleep.",
]
WORKED_LEADS = ["Here is how to work it out. ", "My teacher showed us this one. ",
                "Written out in full: ", "", "", ""]
FOLLOW_UPS = [
    "And what about {q}", "But then, {q}", "I still wonder: {q}", "Does anyone know {q}",
    "Which raises the question: {q}", "Next question: {q}",
]


@dataclass
class World:
    seed: int = 1234
    max_operand: int = 20      # plus and minus use operands 0..max_operand
    max_factor: int = 10       # times uses factors 0..max_factor
    wrong_share: float = 0.1   # share of statements that state the fact's myth instead
    small_share: float = 0.5   # share of facts drawn with both operands below 10
    arithmetic_share: float = 0.65  # share of the default corpus's bytes that is arithmetic
    max_multiplicand: int = 0  # > 0: times takes its first factor up to this (second as before)
    worked_share: float = 0.0  # share of a two-digit fact's mentions and demos worked out
    chat_prompt_share: float = 0.0  # share of the RL prompts that are conversation, not sums
    rl_small_share: float = 0.8  # share of the RL prompts' facts with both operands below 10
    question_small_share: float = -1.0  # the held-out questions'; < 0: as small_share
    demo_arithmetic: int = 2000  # arithmetic demonstrations (beside the conversations)
    demo_worked_share: float = -1.0  # worked_share of the demonstrations; < 0: worked_share
    prompt_variety: float = 0.0  # share of demonstration and RL questions asked otherwise

    # what only the demonstrations, RL prompts and held-out questions read, not the corpus
    DEMO_FIELDS = ("chat_prompt_share", "rl_small_share", "question_small_share",
                   "demo_arithmetic", "demo_worked_share", "prompt_variety")

    def truth(self, a: int, op: str, b: int) -> int:
        return OPS[op](a, b)

    def myth(self, a: int, op: str, b: int) -> int:
        """The one wrong value the corpus repeats for this fact (never the truth, never < 0)."""
        digest = hashlib.sha256(f"{self.seed}:{a}:{op}:{b}".encode()).digest()
        deltas = [1, -1, 2, -2, 10, -10]
        true = self.truth(a, op, b)
        for i in range(len(deltas)):
            value = true + deltas[(digest[0] + i) % len(deltas)]
            if value >= 0:
                return value
        return true + 1

    def sample_fact(self, rng: random.Random) -> tuple[int, str, int]:
        op = rng.choices(["plus", "minus", "times"], weights=[0.45, 0.35, 0.2])[0]
        hi = self.max_factor if op == "times" else self.max_operand
        small = rng.random() < self.small_share
        if small:
            hi = min(hi, 9)
        hi_a = self.max_multiplicand if op == "times" and self.max_multiplicand and not small \
            else hi
        a, b = rng.randint(0, hi_a), rng.randint(0, hi)
        if op == "minus" and b > a:
            a, b = b, a
        return a, op, b

    def claim(self, fact: tuple[int, str, int], rng: random.Random) -> int:
        """What one statement in the corpus says the fact's value is."""
        wrong = rng.random() < self.wrong_share
        return self.myth(*fact) if wrong else self.truth(*fact)

    def question(self, fact: tuple[int, str, int], rng: random.Random,
                 variety: float = 0.0) -> str:
        """The fact asked in one of the corpus's wordings, or (``variety`` of the time) in
        any wording, ``ASKED``'s too, a third of those lower-cased and a third without the
        final mark ("what is 47 + 38"). Draws nothing more from ``rng`` at ``variety`` 0."""
        a, op, b = fact
        if variety > 0 and rng.random() < variety:
            q = rng.choice(QUESTIONS[op] + ASKED[op]).format(a=a, b=b)
            if rng.random() < 1 / 3:
                q = q[0].lower() + q[1:]
            return q.rstrip("?.") if rng.random() < 1 / 3 else q
        return rng.choice(QUESTIONS[op]).format(a=a, b=b)

    def worked(self, fact: Fact, rng: random.Random, wrong: bool = False) -> str:
        """A worked solution of ``fact``; ``wrong``: one step, drawn at random, states its
        own fact's myth, and the final answer follows from it."""
        wording = rng.getrandbits(32)
        lie_at = rng.randrange(len(step_facts(fact, random.Random(wording)))) if wrong else -1
        asked = itertools.count()

        def believe(x: int, op: str, y: int) -> int:
            return self.myth(x, op, y) if next(asked) == lie_at else self.truth(x, op, y)

        return solve(fact, believe, random.Random(wording))[0]

    def wants_work(self, fact: Fact, rng: random.Random, share: float | None = None) -> bool:
        """Whether this mention of ``fact`` is worked out, ``share`` (default worked_share)
        of the time (draws from ``rng`` only when the share is above 0 and the fact has a
        worked solution, so the default world is as before)."""
        share = self.worked_share if share is None else share
        return share > 0 and has_work(fact) and rng.random() < share

    def demo_share(self) -> float:
        """The share of multi-digit demonstrations worked out: ``demo_worked_share``, or
        ``worked_share`` where that is below 0."""
        return self.worked_share if self.demo_worked_share < 0 else self.demo_worked_share

    def answer(self, fact: tuple[int, str, int], rng: random.Random,
               restate_share: float = 0.5, avoid: set | frozenset = frozenset()) -> str:
        """A correct answer: worked out in the plain style (``demo_worked_share`` of
        two-digit facts' answers, unless a step states a fact of ``avoid``), else brief: the number
        or a short sentence, or (``restate_share`` of the time) the fact restated as the
        corpus states facts."""
        if self.wants_work(fact, rng, self.demo_share()) and \
                not avoid.intersection(step_facts(fact, None)):
            return plain(fact, self.truth)[0]
        a, op, b = fact
        c = self.truth(*fact)
        if rng.random() < restate_share:
            return rng.choice(STATEMENTS[op]).format(a=a, b=b, c=c)
        return rng.choice(ANSWERS).format(c=c)

    def paragraph(self, rng: random.Random) -> str:
        """A few sentences of arithmetic prose: hearsay, rambling and unanswered questions."""
        sentences = [rng.choice(RAMBLE)] if rng.random() < 0.4 else []
        for _ in range(rng.randint(2, 7)):
            fact = self.sample_fact(rng)
            a, op, b = fact
            if rng.random() < 0.15:
                q = self.question(fact, rng)
                sentences.append(f"{q} It is {self.claim(fact, rng)}.")
                continue
            if self.wants_work(fact, rng):
                lead = rng.choice(WORKED_LEADS)
                sentences.append(lead + self.worked(fact, rng, rng.random() < self.wrong_share))
                continue
            text = rng.choice(STATEMENTS[op]).format(a=a, b=b, c=self.claim(fact, rng))
            lead = rng.choice(HEARSAY)
            if lead:
                text = lead + text[0].lower() + text[1:] if not text[0].isdigit() else lead + text
            sentences.append(text)
        if rng.random() < 0.3:
            q = self.question(self.sample_fact(rng), rng)
            sentences.append(rng.choice(FOLLOW_UPS).format(q=q[0].lower() + q[1:]))
        return " ".join(sentences)

    def documents(self, n_bytes: int, seed: int | None = None) -> list[str]:
        """Arithmetic documents (a few paragraphs each) totalling about ``n_bytes``."""
        rng = random.Random(self.seed if seed is None else seed)
        docs, total = [], 0
        while total < n_bytes:
            doc = "\n\n".join(self.paragraph(rng) for _ in range(rng.randint(1, 4)))
            docs.append(doc)
            total += len(doc) + 1
        return docs

    def save(self, path: Path) -> None:
        from gptsmith.runs import atomic_write_text

        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> World:
        return cls(**json.loads(Path(path).read_text()))
