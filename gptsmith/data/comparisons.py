"""Comparison data for the reward model: which of two (or K) replies to a prompt is better.

Formats, detected per record:

- plain       {"prompt": str, "chosen": str, "rejected": str}
- messages    {"prompt": str?, "chosen": [messages], "rejected": [messages]}: both lists
              start with the same turns and end with the compared assistant reply
- hh          {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}: the two
              transcripts share the dialogue up to the last "\\n\\nAssistant:"
- ranking     {"prompt": str or [messages], "responses": [str, ...], "ranking": [i0, i1, ...]}
              best first: K ranked replies give K·(K−1)/2 comparisons. Optional, as the
              labeler writes them: "ended" [bool, ...] (whether each reply closed its turn;
              default all true) and "response_ids" [[int, ...], ...] (the sampled ids of
              each reply, without <|end|>), so the reward model sees what the policy made;
              "ties" [[i, j], ...] (replies ranked equal, e.g. by annotators split evenly
              in a merged studio export: no pair is made of them)

Every record becomes one ``PromptGroup``: a prompt conversation, its distinct replies and
the (better, worse) index pairs among them. The reward model trains on whole groups, so a
prompt with many pairs is not over-weighted (InstructGPT).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from gptsmith.chat import check_conversation
from gptsmith.data.demos import read_records
from gptsmith.errors import GptsmithError, located


@dataclass
class PromptGroup:
    prompt: list[dict]            # messages ending with the user turn
    replies: list[str]            # distinct replies
    pairs: list[tuple[int, int]]  # (better, worse) indices into replies
    source: str
    ended: list[bool] = field(default_factory=list)  # per reply; empty: all ended
    reply_ids: list[list[int]] | None = None  # per reply, as sampled (None: text only)

    def __post_init__(self):
        self.ended = self.ended or [True] * len(self.replies)


def _per_reply(rec: dict, name: str, n: int, valid) -> list | None:
    """Optional field ``name``: a list of ``n`` values each passing ``valid``."""
    value = rec.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n or not all(valid(v) for v in value):
        raise ValueError(f"field {name!r} must be a list of {n} values, one per response "
                         f"({'true/false' if name == 'ended' else 'lists of token ids'})")
    return value


def ranking_pairs(ranking: list[int]) -> list[tuple[int, int]]:
    """All (better, worse) pairs of a best-first ranking: K·(K−1)/2 of them."""
    return [(a, b) for a, b in combinations(ranking, 2)]


def _without_ties(pairs: list[tuple[int, int]], ties, k: int) -> list[tuple[int, int]]:
    """``pairs`` less those the optional field ``ties`` (pairs of reply indices) says are
    equal."""
    if not isinstance(ties, list) or not all(
            isinstance(t, list) and len(t) == 2 and all(type(i) is int and 0 <= i < k for i in t)
            and t[0] != t[1] for t in ties):
        raise ValueError(f"field 'ties' must be a list of pairs [i, j] of two different reply "
                         f"indices from 0 to {k - 1}, got {json.dumps(ties)[:80]}")
    equal = {frozenset(t) for t in ties}
    kept = [p for p in pairs if frozenset(p) not in equal]
    if not kept:
        raise ValueError("field 'ties' ties every pair of replies: nothing to compare")
    return kept


def _prompt_messages(value, field: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        problem = check_conversation(value, for_generation=True)
        if problem:
            raise ValueError(f"field {field!r}: {problem}")
        return value
    raise ValueError(f"field {field!r} must be a string or a list of messages")


_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh(transcript: str, field: str) -> tuple[list[dict], str]:
    """An HH-RLHF transcript as (prompt messages, final assistant reply)."""
    if not isinstance(transcript, str):
        raise ValueError(f"field {field!r} must be a string")
    parts = _TURN.split(transcript)
    if len(parts) < 5 or parts[-2] != "Assistant":
        raise ValueError(f"field {field!r} has no final '\\n\\nAssistant:' turn after a "
                         "'\\n\\nHuman:' turn")
    roles = {"Human": "user", "Assistant": "assistant"}
    messages = [{"role": roles[r], "content": t.strip()} for r, t in zip(parts[1:-2:2],
                                                                         parts[2:-2:2],
                                                                         strict=True)]
    problem = check_conversation(messages, for_generation=True)
    if problem:
        raise ValueError(f"field {field!r}: {problem}")
    return messages, parts[-1].strip()


def _check_unicode(rec: dict) -> None:
    """JSON may escape a lone surrogate (``"\\ud800"``), which no tokenizer can encode."""
    for name in ("prompt", "responses", "chosen", "rejected"):
        try:
            json.dumps(rec.get(name), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"field {name!r} is not valid Unicode (a lone surrogate such as "
                             "\\ud800)") from None


def to_group(rec: dict, source: str) -> PromptGroup:
    """One record of any comparison format as a prompt group; ValueError names the field."""
    if not isinstance(rec, dict):
        raise ValueError("record must be a JSON object")
    _check_unicode(rec)
    if "responses" in rec or "ranking" in rec:
        prompt = _prompt_messages(rec.get("prompt"), "prompt")
        responses, ranking = rec.get("responses"), rec.get("ranking")
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise ValueError("field 'responses' must be a list of strings")
        if len(responses) < 2:
            raise ValueError("field 'responses' needs at least 2 replies to compare")
        if (not isinstance(ranking, list) or not all(type(i) is int for i in ranking)
                or sorted(ranking) != list(range(len(responses)))):  # true/false are not ints
            raise ValueError(f"field 'ranking' must be a permutation of 0..{len(responses) - 1} "
                             f"(best first), got {ranking!r}")
        if len(set(responses)) < len(responses):
            raise ValueError("field 'responses' holds the same reply twice; a reply cannot "
                             "be ranked against itself")
        pairs = ranking_pairs(ranking)
        if rec.get("ties") is not None:
            pairs = _without_ties(pairs, rec["ties"], len(responses))
        ended = _per_reply(rec, "ended", len(responses), lambda v: isinstance(v, bool))
        ids = _per_reply(rec, "response_ids", len(responses), lambda v: isinstance(v, list) and
                         all(isinstance(t, int) and not isinstance(t, bool) for t in v))
        return PromptGroup(prompt, list(responses), pairs, source, ended or [], ids)
    if "chosen" not in rec or "rejected" not in rec:
        raise ValueError("record in no known comparison format (fields: "
                         f"{', '.join(sorted(rec)) or 'none'}); expected chosen/rejected or "
                         "responses/ranking")
    chosen, rejected = rec["chosen"], rec["rejected"]
    if isinstance(chosen, list) and isinstance(rejected, list):
        for name, msgs in (("chosen", chosen), ("rejected", rejected)):
            problem = check_conversation(msgs)
            if problem:
                raise ValueError(f"field {name!r}: {problem}")
        if chosen[:-1] != rejected[:-1]:
            raise ValueError("fields 'chosen' and 'rejected' must share every turn but the last")
        prompt, chosen, rejected = chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]
    elif "prompt" in rec:
        prompt = _prompt_messages(rec["prompt"], "prompt")
        for name in ("chosen", "rejected"):
            if not isinstance(rec[name], str):
                raise ValueError(f"field {name!r} must be a string or a list of messages")
    else:
        prompt, chosen = parse_hh(chosen, "chosen")
        other, rejected = parse_hh(rejected, "rejected")
        if other != prompt:
            raise ValueError("fields 'chosen' and 'rejected' must share the dialogue up to "
                             "the last '\\n\\nAssistant:'")
    if chosen == rejected:
        raise ValueError("fields 'chosen' and 'rejected' are identical: nothing to compare")
    return PromptGroup(prompt, [chosen, rejected], [(0, 1)], source)


def read_comparisons(path: str | Path, skip_bad: bool = False) -> tuple[list[PromptGroup], int]:
    """Prompt groups of a comparison file and how many records were skipped (``skip_bad``)."""
    path = Path(path)
    groups, skipped = [], 0
    for n, rec in read_records(path):
        try:
            groups.append(to_group(rec, f"{path}:{n}"))
        except ValueError as e:
            if not skip_bad:
                raise located(str(path), n, str(e)) from None
            skipped += 1
    if not groups:
        raise GptsmithError(f"{path}: no usable comparisons ({skipped} skipped)")
    return groups, skipped
