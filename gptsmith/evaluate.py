"""Evaluation on questions with known answers: accuracy, end of turn, length; side by side.

A questions file is ``.jsonl`` with ``prompt`` (or ``messages``) and ``answer`` (a string or
a whole number) per line, optionally ``myth`` (the wrong answer the pre-training corpus
repeats). An answer is *exactly right* when its last number equals a numeric ``answer`` (so
"7", "It is 7." and "3 plus 4 is 7." all count), or, for other answers, when it equals
``answer`` ignoring case, surrounding space and final punctuation. Worked replies ("7 + 8 =
15, write 5 carry 1; 4 + 3 + 1 = 8; so the answer is 85.") give their answer last, so the
last number is the one scored, as for brief ones. A reply *shows work* when it states a
calculation whose result is not its final answer (an intermediate step); restating the
question's own fact ("47 + 38 = 85.") is not work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from gptsmith.chat import Reply, complete
from gptsmith.data.demos import read_records
from gptsmith.engine import Sampling
from gptsmith.errors import located
from gptsmith.runs import load_model

NUMBER = re.compile(r"-?\d+")


def has_number(text: str) -> bool:
    """Whether ``text`` holds a digit: how conversation is told from an arithmetic answer
    (the labeler's preference, the report's "answered with a number")."""
    return bool(re.search(r"\d", text))


def loops(text: str, n: int = 3, times: int = 3) -> bool:
    """Whether some phrase of ``n`` words comes ``times`` times or more in ``text``: a reply
    caught in a loop ("I am not a lot of the lot of the lot of the lot ..."), which RL's
    drift on conversation produces and the number test does not see."""
    words = re.findall(r"\w+", text.lower())
    seen: dict[tuple, int] = {}
    for i in range(len(words) - n + 1):
        key = tuple(words[i:i + n])
        seen[key] = seen.get(key, 0) + 1
        if seen[key] >= times:
            return True
    return False


def final_answer(text: str, numeric: bool) -> str:
    if numeric:
        numbers = NUMBER.findall(text)
        return numbers[-1] if numbers else ""
    return text.strip().rstrip(".!").strip().lower()


# a calculation: numbers joined by operators, then its result ("7 + 8 = 15", "4 plus 3 is 7")
CALCULATION = re.compile(r"\d+(?:\s*(?:[-+x×*]|plus|minus|times)\s*\d+)+"
                         r"\s*(?:=|is|makes|gives)\s*(-?\d+)")


def shows_work(text: str) -> bool:
    """Whether the reply states an intermediate step: a calculation whose result is not
    the reply's final number."""
    final = final_answer(text, numeric=True)
    return any(m.group(1) != final for m in CALCULATION.finditer(text))


def work_rate(replies: list[Reply]) -> float:
    """Share of replies that show their work (``shows_work``)."""
    return sum(shows_work(r.text) for r in replies) / max(1, len(replies))


def question_kind(q: dict) -> str:
    """``one-digit``, ``two-digit`` (an operand of 10 or more) or ``two-digit times``: from
    the record's ``fact`` ([a, op, b], what the built-in questions carry), else from the
    numbers in the question (then sums, differences and products are not told apart)."""
    if isinstance(q.get("fact"), list) and len(q["fact"]) == 3:
        a, op, b = q["fact"]
        numbers = [a, b]
    else:
        op, numbers = "", [int(n) for n in NUMBER.findall(q["messages"][-1]["content"])]
    if all(abs(n) < 10 for n in numbers):
        return "one-digit"
    return "two-digit times" if op == "times" else "two-digit"


def is_correct(response: str, answer: str) -> bool:
    numeric = bool(re.fullmatch(r"-?\d+", answer.strip()))
    return final_answer(response, numeric) == final_answer(answer, numeric)


def load_questions(path: str | Path, limit: int = 0, require_answer: bool = True) -> list[dict]:
    """Records with ``messages`` (built from ``prompt`` when needed) and ``answer``."""
    out = []
    for n, rec in read_records(Path(path)):
        if not isinstance(rec, dict):
            raise located(str(path), n, "record must be a JSON object")
        answer = rec.get("answer")
        if type(answer) is int:  # {"answer": 85} means "85" (not True, not 85.0)
            rec = {**rec, "answer": str(answer)}
        elif (require_answer or "answer" in rec) and not isinstance(answer, str):
            raise located(str(path), n, "field 'answer' must be a string or a whole number")
        if isinstance(rec.get("prompt"), str):
            rec = {**rec, "messages": [{"role": "user", "content": rec["prompt"]}]}
        elif not isinstance(rec.get("messages"), list):
            raise located(str(path), n, "record needs a 'prompt' string or a 'messages' list")
        out.append(rec)
        if limit and len(out) >= limit:
            break
    return out


@dataclass
class ModelScore:
    model: str
    accuracy: float            # greedy (or as sampled by the given settings)
    myth_rate: float | None    # share of replies stating the corpus's myth
    end_rate: float
    mean_tokens: float
    sampled_accuracy: float | None = None  # mean over ``samples`` replies at temperature 1
    sampled_myth_rate: float | None = None
    work_rate: float = 0.0     # share of (greedy) replies that show their work
    by_kind: dict[str, float] = field(default_factory=dict)  # accuracy per question_kind
    sampled_by_kind: dict[str, float] = field(default_factory=dict)
    replies: list[Reply] = field(repr=False, default_factory=list)

    def row(self) -> dict:
        def rounded(v):
            if isinstance(v, dict):
                return {k: rounded(x) for k, x in v.items()}
            return round(v, 4) if isinstance(v, float) else v
        return {k: rounded(v) for k, v in vars(self).items() if k != "replies"}


def _by_kind(questions: list[dict], replies: list[Reply], k: int) -> dict[str, float]:
    """Accuracy per ``question_kind`` (k replies a question)."""
    right: dict[str, list[bool]] = {}
    for i, r in enumerate(replies):
        q = questions[i // k]
        right.setdefault(question_kind(q), []).append(is_correct(r.text, q["answer"]))
    return {kind: sum(v) / len(v) for kind, v in sorted(right.items())}


def _rates(questions: list[dict], replies: list[Reply], k: int) -> tuple[float, float | None]:
    """Share of replies exactly right, and of those stating the myth (k replies a question)."""
    pairs = [(questions[i // k], r) for i, r in enumerate(replies)]
    right = sum(is_correct(r.text, q["answer"]) for q, r in pairs) / len(pairs)
    mythical = [(q, r) for q, r in pairs if "myth" in q]
    myth = (sum(is_correct(r.text, q["myth"]) for q, r in mythical) / len(mythical)
            if mythical else None)
    return right, myth


def score_model(run_dir: str, questions: list[dict], s: Sampling,
                samples: int = 0) -> ModelScore:
    """Scores of one model; with ``samples``, also the accuracy of that many replies per
    question sampled at temperature 1 (what a chat user meets, not only the greedy mode)."""
    model, tokenizer = load_model(run_dir)
    convs = [q["messages"] for q in questions]
    replies = complete(model, tokenizer, convs, s)
    accuracy, myth = _rates(questions, replies, 1)
    score = ModelScore(run_dir, accuracy, myth, sum(r.ended for r in replies) / len(replies),
                       sum(r.tokens for r in replies) / len(replies), replies=replies,
                       work_rate=work_rate(replies), by_kind=_by_kind(questions, replies, 1))
    if samples:
        sampled = complete(model, tokenizer, [c for c in convs for _ in range(samples)],
                           replace(s, temperature=1.0, top_k=0, top_p=1.0))
        score.sampled_accuracy, score.sampled_myth_rate = _rates(questions, sampled, samples)
        score.sampled_by_kind = _by_kind(questions, sampled, samples)
    return score


def report(scores: list[ModelScore], questions: list[dict], show: int = 5) -> str:
    """A table of the scores, then the first ``show`` questions answered by every model."""
    def pct(x):
        return "-" if x is None else f"{x:.1%}"

    lines = [f"{'model':<34} {'accuracy':>9} {'myth':>6} {'sampled':>8} {'myth':>6} "
             f"{'ends turn':>10} {'tokens':>7}"]
    for s in scores:
        lines.append(f"{s.model:<34} {s.accuracy:>9.1%} {pct(s.myth_rate):>6} "
                     f"{pct(s.sampled_accuracy):>8} {pct(s.sampled_myth_rate):>6} "
                     f"{s.end_rate:>10.1%} {s.mean_tokens:>7.1f}")
    if len(scores[0].by_kind) > 1 or any(s.work_rate for s in scores):
        lines.append("")
        lines.append("accuracy by kind of question (greedy / sampled), and share of greedy "
                     "replies that show their work:")
        for s in scores:
            kinds = "   ".join(f"{kind} {x:.1%} / {pct(s.sampled_by_kind.get(kind))}"
                               for kind, x in s.by_kind.items())
            lines.append(f"  {Path(s.model).name:<10} {kinds}   shows work {s.work_rate:.1%}")
    for q_index, q in enumerate(questions[:show]):
        lines.append("")
        lines.append(f"Q: {q['messages'][-1]['content']}   (true answer: {q['answer']})")
        for s in scores:
            r = s.replies[q_index]
            mark = "right" if is_correct(r.text, q["answer"]) else "wrong"
            text = r.text.replace("\n", " ")
            text = text if len(text) <= 120 else text[:117] + "..."
            end = "" if r.ended else " [no end of turn]"
            lines.append(f"  {Path(s.model).name:<10} [{mark}] {text}{end}")
    return "\n".join(lines)
