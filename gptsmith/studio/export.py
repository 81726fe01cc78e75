"""A project's answers as training data, in the formats `gptsmith sft` and `gptsmith rm` read.

- demonstrate: ``{"prompt", "response"}`` per answer (the ``pairs`` SFT format).
- rank: ``{"prompt", "responses", "ranking"}`` per answer, best first (the K-wise ranking
  format). Each annotator's ranking of an item is its own record, so an item ranked by two
  people counts twice, as two labelers' votes. Answers marked "all unacceptable" say
  nothing about which response is better and are left out (counted in the summary).
- rank, ``combine="mean-rank"``: one record per item, the annotators' rankings merged by
  mean rank (for complete rankings the same order as a Borda count). Responses whose mean
  ranks are equal (annotators split evenly) are listed in ``"ties"``, and the reader makes
  no pair of them; an item whose responses all tie is left out. The record says how it was
  made: ``"combined": "mean-rank"``, ``"annotators"`` and ``"mean_rank"`` (1 = best).

Both carry ``annotator`` (or ``annotators``), ``item_id`` and ``comment`` too; the readers
ignore extra fields. The readers hold out data by prompt (``gptsmith rm``'s split is keyed
by the prompt's text), so the records of one item never sit on both sides of the split.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

from gptsmith.runs import atomic_write_text
from gptsmith.studio.db import Database
from gptsmith.studio.store import Refused, answers, find_project

COMBINE = ("none", "mean-rank")


def mean_rank(rankings: list[list[int]]) -> tuple[list[int], list[float], list[list[int]]]:
    """(merged order best first, mean rank of each response with 1 = best, tied pairs) of
    complete best-first rankings of the same responses."""
    k, n = len(rankings[0]), len(rankings)
    totals = [0] * k  # sums of 0-based places: compared exactly, no float ties missed
    for ranking in rankings:
        for place, i in enumerate(ranking):
            totals[i] += place
    order = sorted(range(k), key=lambda i: (totals[i], i))
    ties = [sorted((a, b)) for a, b in combinations(order, 2) if totals[a] == totals[b]]
    return order, [round(t / n + 1, 4) for t in totals], ties


def export_records(db: Database, project: str | int,
                   combine: str = "none") -> tuple[dict, list[dict], dict[str, int]]:
    """(project, records, answers left out: {"marked all unacceptable": n, "of items whose
    responses the merged rankings leave all tied": m})."""
    if combine not in COMBINE:
        raise Refused(400, f"combine: one of {', '.join(COMBINE)}, got {combine!r}")
    p = find_project(db, project)
    records, unacceptable, tied = [], 0, 0
    per_item: dict[int, list[dict]] = {}
    for a in answers(db, p["id"]):
        meta = {"annotator": a["annotator"], "item_id": a["item_id"], "comment": a["comment"]}
        if p["kind"] == "demonstrate":
            records.append({"prompt": a["prompt"], "response": a["response"], **meta})
        elif a["unacceptable"]:
            unacceptable += 1
        elif combine == "none":
            records.append({"prompt": a["prompt"], "responses": a["responses"],
                            "ranking": a["ranking"], **meta})
        else:
            per_item.setdefault(a["item_id"], []).append(a)
    for item_id, given in per_item.items():
        order, means, ties = mean_rank([a["ranking"] for a in given])
        if len(ties) == len(order) * (len(order) - 1) // 2:
            tied += len(given)
            continue
        records.append({"prompt": given[0]["prompt"], "responses": given[0]["responses"],
                        "ranking": order, **({"ties": ties} if ties else {}),
                        "combined": combine, "annotators": [a["annotator"] for a in given],
                        "mean_rank": means, "item_id": item_id,
                        "comment": "\n".join(f"{a['annotator']}: {a['comment']}"
                                             for a in given if a["comment"])})
    return p, records, {"marked all unacceptable": unacceptable,
                        "of items the merged rankings leave all tied": tied}


def export(db: Database, project: str | int, out: str | Path, combine: str = "none") -> str:
    """Write the project's answers to ``out`` (.jsonl, atomically); returns a summary line."""
    p, records, left_out = export_records(db, project, combine)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    what = "demonstrations (for gptsmith sft)" if p["kind"] == "demonstrate" \
        else "rankings (for gptsmith rm)"
    if p["kind"] == "rank" and combine != "none":
        what = f"items' rankings merged by {combine} (for gptsmith rm)"
    extra = "".join(f"; {n} {why} left out" for why, n in left_out.items() if n)
    return f"{out}: {len(records)} {what} from project {p['name']!r}{extra}"
