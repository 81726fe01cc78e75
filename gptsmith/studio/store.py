"""What the studio keeps: projects of items, annotators, assignments, answers and drafts.

Every function is one transaction. Annotators are known by a secret token of which only the
SHA-256 is stored. An annotator reaches an assignment only if it is theirs (:class:`Refused`
403 otherwise, the same answer whether the id exists or not). A submission carries an id
made by the client: sent twice, it is stored once and both calls succeed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time

from gptsmith.errors import GptsmithError
from gptsmith.studio.agreement import agreement
from gptsmith.studio.db import Database

KINDS = ("demonstrate", "rank")
MAX_RESPONSE_CHARS = 20_000
MAX_COMMENT_CHARS = 5_000
MAX_DRAFT_CHARS = 100_000
MAX_INSTRUCTIONS_CHARS = 5_000
SUBMISSION_ID = re.compile(r"[A-Za-z0-9_-]{8,100}")
MAX_ID = 2**63 - 1  # ids are 64-bit signed integers in both databases


class Refused(GptsmithError):
    """A request the studio turns down, with the HTTP status to answer it with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(24)


# -- the admin -----------------------------------------------------------------------------

def set_admin_token(db: Database, token: str | None = None) -> str:
    """Store (the hash of) ``token``, or of a new one; returns the token."""
    token = token or new_token()
    with db.transaction(write=True) as tx:
        tx.run("INSERT INTO settings (key, value) VALUES ('admin_token_hash', ?) "
               "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (hash_token(token),))
    return token


def has_admin_token(db: Database) -> bool:
    with db.transaction() as tx:
        return tx.value("SELECT value FROM settings WHERE key = 'admin_token_hash'") is not None


def is_admin(db: Database, token: str | None) -> bool:
    with db.transaction() as tx:
        stored = tx.value("SELECT value FROM settings WHERE key = 'admin_token_hash'")
    return bool(token and stored) and hmac.compare_digest(hash_token(token), stored)


# -- projects and annotators ---------------------------------------------------------------

def create_project(db: Database, name: str, kind: str, items: list[dict],
                   model: str | None = None, instructions: str = "") -> int:
    """A project of ``items`` (``{"prompt", "responses"}``; rank items need 2+ responses)."""
    name = name.strip()
    if not name or len(name) > 100:
        raise Refused(400, "a project needs a name of 1 to 100 characters")
    if kind not in KINDS:
        raise Refused(400, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if len(instructions) > MAX_INSTRUCTIONS_CHARS:
        raise Refused(400, f"instructions: at most {MAX_INSTRUCTIONS_CHARS} characters")
    if not items:
        raise Refused(400, "a project needs at least one prompt")
    if kind == "rank" and any(len(it.get("responses") or []) < 2 for it in items):
        raise Refused(400, "every item of a rank project needs at least 2 responses")
    k = max(len(it["responses"]) for it in items) if kind == "rank" else None
    try:
        with db.transaction(write=True) as tx:
            pid = tx.insert("INSERT INTO projects (name, kind, model, k, instructions, created) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            (name, kind, model, k, instructions, time.time()))
            for pos, it in enumerate(items):
                responses = json.dumps(it["responses"]) if kind == "rank" else None
                tx.run("INSERT INTO items (project_id, position, prompt, responses) "
                       "VALUES (?, ?, ?, ?)", (pid, pos, it["prompt"], responses))
    except db.integrity_error:
        raise Refused(409, f"a project named {name!r} exists already; pick another name") \
            from None
    return pid


def find_project(db: Database, ref: str | int) -> dict:
    """A project by id or by name."""
    ref = str(ref)
    with db.transaction() as tx:
        row = tx.one("SELECT * FROM projects WHERE name = ?", (ref,))
        if row is None and ref.isascii() and ref.isdigit() and 0 < int(ref) <= MAX_ID:
            row = tx.one("SELECT * FROM projects WHERE id = ?", (int(ref),))
    if row is None:
        raise Refused(404, f"no project {ref!r}; `gptsmith studio report` lists them")
    return row


def create_annotator(db: Database, name: str) -> tuple[int, str]:
    """A new annotator and their secret token (shown once; only its hash is kept)."""
    name = name.strip()
    if not name or len(name) > 100:
        raise Refused(400, "an annotator needs a name of 1 to 100 characters")
    token = new_token()
    try:
        with db.transaction(write=True) as tx:
            aid = tx.insert("INSERT INTO annotators (name, token_hash, created) VALUES (?, ?, ?)",
                            (name, hash_token(token), time.time()))
    except db.integrity_error:
        raise Refused(409, f"an annotator named {name!r} exists already") from None
    return aid, token


def annotator_by_token(db: Database, token: str | None) -> dict | None:
    """The annotator holding ``token``, or None. The lookup is by SHA-256, so the time it
    takes tells nothing about how much of a guessed token was right."""
    if not token or len(token) > 200:
        return None
    with db.transaction() as tx:
        row = tx.one("SELECT id, name, token_hash FROM annotators WHERE token_hash = ?",
                     (hash_token(token),))
    if row is None or not hmac.compare_digest(row["token_hash"], hash_token(token)):
        return None
    return {"id": row["id"], "name": row["name"]}


def find_annotators(db: Database, names: list[str] | None = None) -> list[dict]:
    with db.transaction() as tx:
        rows = tx.all("SELECT id, name FROM annotators ORDER BY id")
    if names is None:
        return rows
    by_name = {r["name"]: r for r in rows}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise Refused(404, f"no annotator named {', '.join(map(repr, missing))}")
    return [by_name[n] for n in names]


def assign(db: Database, project_id: int, annotator_ids: list[int], per_item: int) -> int:
    """Give each item of the project to ``per_item`` of the annotators, round-robin (item i
    to annotators i·R, i·R+1, ... modulo their number). Existing assignments are kept.
    Returns how many were added."""
    ids = list(dict.fromkeys(annotator_ids))
    if not 1 <= per_item <= len(ids):
        raise Refused(400, f"each item can go to 1 to {len(ids)} of the chosen annotators, "
                      f"not {per_item}")
    added = 0
    with db.transaction(write=True) as tx:
        known = {r["id"] for r in tx.all("SELECT id FROM annotators")}
        missing = [i for i in ids if i not in known]
        if missing:
            raise Refused(404, f"no annotator with id {', '.join(map(str, missing[:10]))}")
        items = [r["id"] for r in tx.all("SELECT id FROM items WHERE project_id = ? "
                                         "ORDER BY position", (project_id,))]
        if not items:
            raise Refused(404, f"project {project_id} has no items")
        for i, item in enumerate(items):
            for j in range(per_item):
                who = ids[(i * per_item + j) % len(ids)]
                added += tx.run("INSERT INTO assignments (item_id, annotator_id) VALUES (?, ?) "
                                "ON CONFLICT (item_id, annotator_id) DO NOTHING",
                                (item, who)).rowcount
    return added


# -- annotating ----------------------------------------------------------------------------

def queue(db: Database, annotator_id: int) -> list[dict]:
    """The annotator's assignments in order, each with ``done`` (0/1)."""
    with db.transaction() as tx:
        return tx.all(
            "SELECT a.id, p.name AS project, p.kind, i.position, i.prompt, "
            "CASE WHEN ans.id IS NULL THEN 0 ELSE 1 END AS done "
            "FROM assignments a JOIN items i ON i.id = a.item_id "
            "JOIN projects p ON p.id = i.project_id "
            "LEFT JOIN answers ans ON ans.assignment_id = a.id "
            "WHERE a.annotator_id = ? ORDER BY p.id, i.position", (annotator_id,))


def _owned(tx, annotator_id: int, assignment_id: int, lock: bool = False) -> None:
    if not 0 < assignment_id <= MAX_ID:  # no such id: the same answer as another's
        raise Refused(403, "this assignment is not yours")
    row = tx.one("SELECT annotator_id FROM assignments WHERE id = ?"
                 + (tx.for_update if lock else ""), (assignment_id,))
    if row is None or row["annotator_id"] != annotator_id:
        raise Refused(403, "this assignment is not yours")


def assignment(db: Database, annotator_id: int, assignment_id: int) -> dict:
    """One of the annotator's assignments: the prompt, the responses to rank, their answer
    if given, else their draft."""
    with db.transaction() as tx:
        _owned(tx, annotator_id, assignment_id)
        row = tx.one("SELECT a.id, p.name AS project, p.kind, p.instructions, i.position, "
                     "i.prompt, i.responses FROM assignments a "
                     "JOIN items i ON i.id = a.item_id JOIN projects p ON p.id = i.project_id "
                     "WHERE a.id = ?", (assignment_id,))
        answer = tx.one("SELECT submission_id, response, ranking, unacceptable, comment, "
                        "created FROM answers WHERE assignment_id = ?", (assignment_id,))
        draft = tx.one("SELECT body, updated FROM drafts WHERE assignment_id = ?",
                       (assignment_id,))
    row["responses"] = json.loads(row["responses"]) if row["responses"] else None
    if answer:
        answer["ranking"] = json.loads(answer["ranking"]) if answer["ranking"] else None
        answer["unacceptable"] = bool(answer["unacceptable"])
    return {**row, "answer": answer, "draft": draft}


def save_draft(db: Database, annotator_id: int, assignment_id: int, body: str) -> bool:
    """Keep what the annotator has typed so far; False (and nothing kept) once answered."""
    if not isinstance(body, str) or len(body) > MAX_DRAFT_CHARS:
        raise Refused(400, f"a draft is a string of at most {MAX_DRAFT_CHARS} characters")
    with db.transaction(write=True) as tx:
        _owned(tx, annotator_id, assignment_id, lock=True)
        if tx.value("SELECT id FROM answers WHERE assignment_id = ?", (assignment_id,)):
            return False
        tx.run("INSERT INTO drafts (assignment_id, body, updated) VALUES (?, ?, ?) "
               "ON CONFLICT (assignment_id) DO UPDATE SET body = excluded.body, "
               "updated = excluded.updated", (assignment_id, body, time.time()))
    return True


def _checked_answer(kind: str, responses: list[str] | None, answer: dict) -> tuple:
    """(response, ranking JSON, unacceptable, comment) of a valid answer, else Refused 400."""
    comment = answer.get("comment")
    comment = "" if comment is None else comment  # false, 0, [] are not comments
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS:
        raise Refused(400, f"comment: a string of at most {MAX_COMMENT_CHARS} characters")
    if kind == "demonstrate":
        response = answer.get("response")
        if not isinstance(response, str) or not response.strip() \
                or len(response) > MAX_RESPONSE_CHARS:
            raise Refused(400, f"response: write the ideal reply (1 to {MAX_RESPONSE_CHARS} "
                          "characters)")
        return response.strip(), None, 0, comment
    unacceptable = answer.get("unacceptable", False)
    if not isinstance(unacceptable, bool):
        raise Refused(400, "unacceptable: true or false")
    if unacceptable:
        return None, None, 1, comment
    ranking, k = answer.get("ranking"), len(responses or [])
    if not isinstance(ranking, list) or not all(type(i) is int for i in ranking) \
            or sorted(ranking) != list(range(k)):
        raise Refused(400, f"ranking: order all {k} responses, best first (a permutation of "
                      f"0..{k - 1}), or mark them all unacceptable")
    return None, json.dumps(ranking), 0, comment


def submit(db: Database, annotator_id: int, assignment_id: int, submission_id: str,
           answer: dict) -> str:
    """Store an answer once: 'created', or 'duplicate' when this submission id was stored
    already (a retry). Another answer to an answered assignment is a 409."""
    if not isinstance(submission_id, str) or not SUBMISSION_ID.fullmatch(submission_id):
        raise Refused(400, "submission_id: 8 to 100 letters, digits, '-' or '_', made by the "
                      "client once per answer and sent again on a retry")
    with db.transaction(write=True) as tx:
        _owned(tx, annotator_id, assignment_id, lock=True)
        item = tx.one("SELECT p.kind, i.responses FROM assignments a "
                      "JOIN items i ON i.id = a.item_id JOIN projects p ON p.id = i.project_id "
                      "WHERE a.id = ?", (assignment_id,))
        previous = tx.value("SELECT submission_id FROM answers WHERE assignment_id = ?",
                            (assignment_id,))
        if previous is not None:
            if previous == submission_id:
                return "duplicate"
            raise Refused(409, "this item is answered already")
        if tx.value("SELECT id FROM answers WHERE submission_id = ?", (submission_id,)):
            raise Refused(409, "this submission id was used for another item")
        responses = json.loads(item["responses"]) if item["responses"] else None
        response, ranking, unacceptable, comment = _checked_answer(item["kind"], responses,
                                                                   answer)
        tx.run("INSERT INTO answers (assignment_id, submission_id, response, ranking, "
               "unacceptable, comment, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (assignment_id, submission_id, response, ranking, unacceptable, comment,
                time.time()))
        tx.run("DELETE FROM drafts WHERE assignment_id = ?", (assignment_id,))
    return "created"


# -- progress, agreement, export -----------------------------------------------------------

def progress(db: Database) -> list[dict]:
    """Per project: items, assignments, answers, per-annotator counts and agreement."""
    out = []
    with db.transaction() as tx:
        for p in tx.all("SELECT id, name, kind, model, k, instructions FROM projects "
                        "ORDER BY id"):
            pid = p["id"]
            p["items"] = tx.value("SELECT count(*) FROM items WHERE project_id = ?", (pid,))
            p["annotators"] = tx.all(
                "SELECT an.name, count(a.id) AS assigned, count(ans.id) AS done, "
                "coalesce(sum(ans.unacceptable), 0) AS unacceptable "
                "FROM assignments a JOIN items i ON i.id = a.item_id "
                "JOIN annotators an ON an.id = a.annotator_id "
                "LEFT JOIN answers ans ON ans.assignment_id = a.id "
                "WHERE i.project_id = ? GROUP BY an.id, an.name ORDER BY an.name", (pid,))
            p["assigned"] = sum(a["assigned"] for a in p["annotators"])
            p["done"] = sum(a["done"] for a in p["annotators"])
            rows = tx.all("SELECT i.id AS item, ans.ranking, ans.unacceptable "
                          "FROM answers ans JOIN assignments a ON a.id = ans.assignment_id "
                          "JOIN items i ON i.id = a.item_id WHERE i.project_id = ? "
                          "ORDER BY a.id", (pid,))
            per_item: dict[int, list] = {}
            for r in rows:
                per_item.setdefault(r["item"], []).append(r)
            p["items_answered_twice"] = sum(len(v) >= 2 for v in per_item.values())
            if p["kind"] == "rank":
                p["agreement"] = agreement([[json.loads(r["ranking"]) for r in v
                                             if not r["unacceptable"]]
                                            for v in per_item.values()])
            out.append(p)
    return out


def answers(db: Database, project_id: int) -> list[dict]:
    """Every answer of a project with its item and annotator, in item order."""
    with db.transaction() as tx:
        rows = tx.all(
            "SELECT i.id AS item_id, i.position, i.prompt, i.responses, an.name AS annotator, "
            "ans.response, ans.ranking, ans.unacceptable, ans.comment, ans.created "
            "FROM answers ans JOIN assignments a ON a.id = ans.assignment_id "
            "JOIN items i ON i.id = a.item_id JOIN annotators an ON an.id = a.annotator_id "
            "WHERE i.project_id = ? ORDER BY i.position, an.name", (project_id,))
    for r in rows:
        r["responses"] = json.loads(r["responses"]) if r["responses"] else None
        r["ranking"] = json.loads(r["ranking"]) if r["ranking"] else None
        r["unacceptable"] = bool(r["unacceptable"])
    return rows
