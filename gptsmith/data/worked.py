"""Worked solutions: a multi-digit fact worked out in steps, each step a small fact.

Column addition with carries, subtraction with borrowing, addition and subtraction by parts
(tens, then ones), multiplication by parts and, for a two-digit number times a one-digit
one, in a column. ``solve`` asks ``believe(x, op, y)`` for the value of every step's fact,
so the writer of a solution can hold a myth: the steps after a wrong one compute from what
was written, and the error carries to the final answer. Every solution ends with its final
number (the answer a reply is scored on).

The corpus varies its wording and method (``solve``); demonstrations use one plain style
(``plain``): the column method, steps joined by "; ", ending "so the answer is N." A tiny
model learns a procedure it always sees written the same way (issue 14: with the varied
wordings in 800 demonstrations, worked SFT replies to held-out two-digit questions were
right 0.8% of the time; with the plain style in 2,000-2,900, 45-77%).
"""

from __future__ import annotations

import random
from collections.abc import Callable

Fact = tuple[int, str, int]
Believe = Callable[[int, str, int], int]
SYMBOL = {"plus": "+", "minus": "-", "times": "x"}

# Openings and endings of a solution; {a} {s} {b} is the fact, {c} its final value. A
# solution whose first step restates the fact opens without it.
OPENINGS = ["{a} {s} {b}: ", "Work out {a} {s} {b}: ", "To find {a} {word} {b}, work in steps: ",
            "Step by step, {a} {s} {b}: "]
RESTATING = ["", "Step by step: ", "Work it out: ", "Let me work it out. "]
ENDINGS = ["so {a} {s} {b} = {c}.", "so the answer is {c}.", "so {a} {word} {b} is {c}.",
           "that makes {c}.", "which gives {c}."]


def has_work(fact: Fact) -> bool:
    """Whether the fact has a worked solution with a step in it: an operand of two or more
    digits, no trivial factor (x 0, x 1) or term (+ 0, - 0), and not a teen minus a digit
    with a borrow (14 - 7: its one step would be the fact itself)."""
    a, op, b = fact
    if op == "minus" and a < 20 and b < 10 and a % 10 < b:
        return False
    return max(a, b) >= 10 and min(a, b) >= (2 if op == "times" else 1)


def _add_columns(a: int, b: int, believe: Believe) -> tuple[list[str], int]:
    (a1, a0), (b1, b0) = divmod(a, 10), divmod(b, 10)
    ones = believe(a0, "plus", b0)
    digit, carry = ones % 10, ones // 10
    steps = [f"{a0} + {b0} = {ones}" + (f", write {digit} carry {carry}" if carry else "")]
    if a1 and b1:
        tens = believe(a1, "plus", b1) + carry
        steps.append(f"{a1} + {b1}" + (f" + {carry}" if carry else "") + f" = {tens}")
    elif carry:
        tens = believe(a1 or b1, "plus", carry)
        steps.append(f"{a1 or b1} + {carry} = {tens}")
    else:
        tens = a1 or b1
        steps.append(f"the {tens} tens stay")
    return steps, 10 * tens + digit


def _subtract_columns(a: int, b: int, believe: Believe) -> tuple[list[str], int]:
    (a1, a0), (b1, b0) = divmod(a, 10), divmod(b, 10)
    if a0 < b0:
        ones = believe(a0 + 10, "minus", b0)
        steps = [f"{a0} is less than {b0}, so borrow: {a0 + 10} - {b0} = {ones}",
                 f"the {a1} becomes {a1 - 1}"]
        a1 -= 1
    else:
        ones = believe(a0, "minus", b0)
        steps = [f"{a0} - {b0} = {ones}"]
    if b1:
        tens = believe(a1, "minus", b1)
        steps.append(f"{a1} - {b1} = {tens}")
    else:
        tens = a1
        steps.append(f"{a1} tens remain")
    return steps, 10 * tens + ones


def _by_parts(a: int, op: str, b: int, believe: Believe) -> tuple[list[str], int]:
    """a + b or a - b as a +/- (tens of b), then +/- (ones of b)."""
    s = SYMBOL[op]
    tens, ones = b - b % 10, b % 10
    if not tens or not ones:
        return (_add_columns if op == "plus" else _subtract_columns)(a, b, believe)
    first = believe(a, op, tens)
    second = believe(first, op, ones)
    return [f"{a} {s} {b} = {a} {s} {tens} {s} {ones}", f"{a} {s} {tens} = {first}",
            f"{first} {s} {ones} = {second}"], second


def _times(a: int, b: int, believe: Believe, chain: bool) -> tuple[list[str], int]:
    """By parts: the factor of two or more digits (b when both are) split in tens and ones;
    as one chain (the seed's 17 x 24 = 17 x 20 + 17 x 4 = 340 + 68 = 408) or step by step."""
    split_b = b >= 10
    big, other = (b, a) if split_b else (a, b)
    tens, ones = big - big % 10, big % 10

    def product(x: int, y: int, value: int | None = None) -> str:  # keeps the fact's order
        expr = f"{y} x {x}" if split_b else f"{x} x {y}"
        return expr if value is None else f"{expr} = {value}"

    if not ones:  # a multiple of ten: the product of its tens digit, times 10
        p = believe(*((other, "times", tens // 10) if split_b else (tens // 10, "times", other)))
        return [product(tens // 10, other, p), f"add a 0: {p * 10}"], p * 10
    p1 = believe(*((other, "times", tens) if split_b else (tens, "times", other)))
    p2 = believe(*((other, "times", ones) if split_b else (ones, "times", other)))
    c = believe(p1, "plus", p2)
    if chain:
        return [f"{a} x {b} = {product(tens, other)} + {product(ones, other)} = {p1} + {p2}"
                f" = {c}"], c
    return [product(tens, other, p1), product(ones, other, p2), f"{p1} + {p2} = {c}"], c


def _multiply_columns(a: int, b: int, believe: Believe) -> tuple[list[str], int]:
    """A two-digit number times a one-digit one, in a column as sums are added: the ones
    digit times it ("8 x 7 = 56, write 6 carry 5"), then the tens digit times it plus the
    carry ("3 x 7 = 21, 21 + 5 = 26"). Every step is a one-digit product or a sum of two
    numbers below 90, facts a small model knows, where by parts a step states a
    two-digit product (30 x 7 = 210) and a three-digit sum (210 + 56 = 266)."""
    big_first = a >= 10
    number, digit = (a, b) if big_first else (b, a)
    tens, ones = divmod(number, 10)

    def times(x: int) -> Fact:  # keeps the fact's order
        return (x, "times", digit) if big_first else (digit, "times", x)

    def said(x: int, value: int) -> str:
        left, _, right = times(x)
        return f"{left} x {right} = {value}"

    low = believe(*times(ones))
    written, carry = low % 10, low // 10
    steps = [said(ones, low) + (f", write {written} carry {carry}" if carry else "")]
    high = believe(*times(tens))
    if carry:
        top = believe(high, "plus", carry)
        steps.append(said(tens, high) + f", {high} + {carry} = {top}")
    else:
        top = high
        steps.append(said(tens, high))
    return steps, 10 * top + written


def _columns_apply(a: int, op: str, b: int) -> bool:
    """Whether the fact is a two-digit number times a one-digit one (``_multiply_columns``)."""
    return op == "times" and max(a, b) in range(10, 100) and min(a, b) < 10


def solve(fact: Fact, believe: Believe, rng: random.Random,
          opening: bool = True) -> tuple[str, int]:
    """One worked solution of ``fact`` (wording drawn from ``rng``) and its final value;
    ``opening=False`` leaves out the words that state the problem (a reply to a question
    about it: fewer tokens). Every draw from ``rng`` comes before any belief is asked, so
    the same ``rng`` state gives the same wording whatever ``believe`` says."""
    a, op, b = fact
    opens, restating, ending = rng.choice(OPENINGS), rng.choice(RESTATING), rng.choice(ENDINGS)
    joiner = rng.choice(["; ", ", then "])
    method, columns = rng.random(), _columns_apply(*fact)
    if columns and method >= 2 / 3:
        steps, c = _multiply_columns(a, b, believe)
    elif op == "times":
        steps, c = _times(a, b, believe, chain=method < (1 / 3 if columns else 0.5))
    elif method < 0.7:
        steps, c = (_add_columns if op == "plus" else _subtract_columns)(a, b, believe)
    else:
        steps, c = _by_parts(a, op, b, believe)
    fill = {"a": a, "b": b, "s": SYMBOL[op], "word": op, "c": c}
    if steps[0].startswith("{a} {s} {b} =".format(**fill)):
        opens = restating
    text = ((opens if opening else "").format(**fill) + joiner.join(steps) + "; "
            + ending.format(**fill))
    return text[0].upper() + text[1:], c


def plain(fact: Fact, believe: Believe) -> tuple[str, int]:
    """The demonstrations' worked solution of ``fact`` and its final value: columns for
    sums, differences and a two-digit number times a one-digit one, the factor's tens then
    its ones for other products, one wording
    ("7 + 8 = 15, write 5 carry 1; 4 + 3 + 1 = 8; so the answer is 85.")."""
    a, op, b = fact
    if _columns_apply(*fact):
        steps, c = _multiply_columns(a, b, believe)
    elif op == "times":
        steps, c = _times(a, b, believe, chain=False)
    else:
        steps, c = (_add_columns if op == "plus" else _subtract_columns)(a, b, believe)
    text = "; ".join(steps) + f"; so the answer is {c}."
    return text[0].upper() + text[1:], c


def step_facts(fact: Fact, rng: random.Random | None) -> list[Fact]:
    """The small facts a solution of ``fact`` states, in order: of the wording ``rng``
    draws (``rng`` is advanced as ``solve`` advances it), or of ``plain`` for ``None``."""
    asked: list[Fact] = []

    def truthful(x: int, op: str, y: int) -> int:
        asked.append((x, op, y))
        return {"plus": x + y, "minus": x - y, "times": x * y}[op]

    if rng is None:
        plain(fact, truthful)
    else:
        solve(fact, truthful, rng)
    return asked
