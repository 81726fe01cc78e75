"""Evaluation on questions with known answers: accuracy, end of turn, length; side by side.

A questions file is ``.jsonl`` with ``prompt`` (or ``messages``) and ``answer`` per line,
optionally ``myth`` (the wrong answer the pre-training corpus repeats). An answer is
*exactly right* when its last number equals a numeric ``answer`` (so "7", "It is 7." and
"3 plus 4 is 7." all count), or, for other answers, when it equals ``answer`` ignoring case,
surrounding space and final punctuation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from gptsmith.chat import Reply, complete
from gptsmith.data.demos import read_records
from gptsmith.engine import Sampling
from gptsmith.errors import located
from gptsmith.runs import load_model

NUMBER = re.compile(r"-?\d+")


def final_answer(text: str, numeric: bool) -> str:
    if numeric:
        numbers = NUMBER.findall(text)
        return numbers[-1] if numbers else ""
    return text.strip().rstrip(".!").strip().lower()


def is_correct(response: str, answer: str) -> bool:
    numeric = bool(re.fullmatch(r"-?\d+", answer.strip()))
    return final_answer(response, numeric) == final_answer(answer, numeric)


def load_questions(path: str | Path, limit: int = 0, require_answer: bool = True) -> list[dict]:
    """Records with ``messages`` (built from ``prompt`` when needed) and ``answer``."""
    out = []
    for n, rec in read_records(Path(path)):
        if not isinstance(rec, dict):
            raise located(str(path), n, "record must be a JSON object")
        if (require_answer or "answer" in rec) and not isinstance(rec.get("answer"), str):
            raise located(str(path), n, "field 'answer' must be a string")
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
    accuracy: float
    myth_rate: float | None
    end_rate: float
    mean_tokens: float
    replies: list[Reply] = field(repr=False, default_factory=list)

    def row(self) -> dict:
        return {"model": self.model, "accuracy": round(self.accuracy, 4),
                "myth_rate": None if self.myth_rate is None else round(self.myth_rate, 4),
                "end_rate": round(self.end_rate, 4), "mean_tokens": round(self.mean_tokens, 2)}


def score_model(run_dir: str, questions: list[dict], s: Sampling) -> ModelScore:
    model, tokenizer = load_model(run_dir)
    replies = complete(model, tokenizer, [q["messages"] for q in questions], s)
    n = len(questions)
    with_myth = [(q, r) for q, r in zip(questions, replies, strict=True) if "myth" in q]
    return ModelScore(
        model=run_dir,
        accuracy=sum(is_correct(r.text, q["answer"]) for q, r in zip(questions, replies,
                                                                     strict=True)) / n,
        myth_rate=(sum(is_correct(r.text, q["myth"]) for q, r in with_myth) / len(with_myth)
                   if with_myth else None),
        end_rate=sum(r.ended for r in replies) / n,
        mean_tokens=sum(r.tokens for r in replies) / n,
        replies=replies,
    )


def report(scores: list[ModelScore], questions: list[dict], show: int = 5) -> str:
    """A table of the scores, then the first ``show`` questions answered by every model."""
    lines = [f"{'model':<40} {'accuracy':>9} {'myth':>6} {'ends turn':>10} {'tokens':>7}"]
    for s in scores:
        myth = "-" if s.myth_rate is None else f"{s.myth_rate:.1%}"
        lines.append(f"{s.model:<40} {s.accuracy:>9.1%} {myth:>6} {s.end_rate:>10.1%} "
                     f"{s.mean_tokens:>7.1f}")
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
