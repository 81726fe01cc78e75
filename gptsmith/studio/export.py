"""A project's answers as training data, in the formats `gptsmith sft` and `gptsmith rm` read.

- demonstrate: ``{"prompt", "response"}`` per answer (the ``pairs`` SFT format).
- rank: ``{"prompt", "responses", "ranking"}`` per answer, best first (the K-wise ranking
  format). Each annotator's ranking of an item is its own record, so an item ranked by two
  people counts twice, as two labelers' votes. Answers marked "all unacceptable" say
  nothing about which response is better and are left out (counted in the summary).

Both carry ``annotator``, ``item_id`` and ``comment`` too; the readers ignore extra fields.
"""

from __future__ import annotations

import json
from pathlib import Path

from gptsmith.runs import atomic_write_text
from gptsmith.studio.db import Database
from gptsmith.studio.store import answers, find_project


def export_records(db: Database, project: str | int) -> tuple[dict, list[dict], int]:
    """(project, records, answers left out as all unacceptable)."""
    p = find_project(db, project)
    records, left_out = [], 0
    for a in answers(db, p["id"]):
        meta = {"annotator": a["annotator"], "item_id": a["item_id"], "comment": a["comment"]}
        if p["kind"] == "demonstrate":
            records.append({"prompt": a["prompt"], "response": a["response"], **meta})
        elif a["unacceptable"]:
            left_out += 1
        else:
            records.append({"prompt": a["prompt"], "responses": a["responses"],
                            "ranking": a["ranking"], **meta})
    return p, records, left_out


def export(db: Database, project: str | int, out: str | Path) -> str:
    """Write the project's answers to ``out`` (.jsonl, atomically); returns a summary line."""
    p, records, left_out = export_records(db, project)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    what = "demonstrations (for gptsmith sft)" if p["kind"] == "demonstrate" \
        else "rankings (for gptsmith rm)"
    extra = f"; {left_out} marked all unacceptable left out" if left_out else ""
    return f"{out}: {len(records)} {what} from project {p['name']!r}{extra}"
