"""`gptsmith studio`: the database, the JSON API over real HTTP, security and reliability.

Database tests run on SQLite, and also on PostgreSQL when GPTSMITH_TEST_POSTGRES holds a URL
of a database they may wipe (e.g. postgresql://studio:studio@127.0.0.1/studio_test).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest

from gptsmith.cli import main
from gptsmith.data.comparisons import read_comparisons
from gptsmith.data.demos import read_demos
from gptsmith.studio import store
from gptsmith.studio.agreement import agreement, kendall_tau, pairwise_agreement
from gptsmith.studio.app import create_app
from gptsmith.studio.db import Database
from gptsmith.studio.prompts import sample_responses
from tests.live import free_port, running

POSTGRES = os.environ.get("GPTSMITH_TEST_POSTGRES")
EVIL = '<script>window.__pwned=1</script><b>bold</b> & "quotes"'


def wipe_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:
    if request.param == "postgres":
        if not POSTGRES:
            pytest.skip("set GPTSMITH_TEST_POSTGRES=postgresql://... to run on PostgreSQL")
        wipe_postgres(POSTGRES)
        return POSTGRES
    return f"sqlite:///{tmp_path / 'studio.db'}"


@pytest.fixture
def db(db_url):
    db = Database(db_url)
    yield db
    db.close()


def call(base: str, method: str, path: str, body=None, token: str | None = None,
         headers: dict | None = None) -> tuple[int, str, dict]:
    """(status, body text, headers) of one real HTTP request."""
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc, timeout=60)
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        h["Content-Type"] = "application/json"
    try:
        conn.request(method, path, data, h)
        r = conn.getresponse()
        return r.status, r.read().decode(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def ok(status_body_headers) -> dict:
    status, body, _ = status_body_headers
    assert status == 200, body
    return json.loads(body)


def setup_two_annotators(db: Database) -> dict:
    """A demonstrate and a rank project shared by alice and bob; returns tokens and ids."""
    d = store.create_project(db, "demos", "demonstrate",
                             [{"prompt": f"Say hello {i}", "responses": None} for i in range(3)]
                             + [{"prompt": EVIL, "responses": None}])
    r = store.create_project(db, "ranks", "rank",
                             [{"prompt": f"What is {i} plus 1?",
                               "responses": [str(i + 1), str(i + 2), EVIL]} for i in range(3)])
    (alice, ta), (bob, tb) = (store.create_annotator(db, n) for n in ("alice", "bob"))
    for p in (d, r):
        store.assign(db, p, [alice, bob], per_item=2)
    return {"admin": store.set_admin_token(db), "alice": ta, "bob": tb,
            "alice_id": alice, "bob_id": bob, "demos": d, "ranks": r}


@pytest.fixture
def studio(db):
    s = setup_two_annotators(db)
    with running(create_app(db)) as url:
        yield {**s, "url": url, "db": db}


def queue_of(studio, who: str) -> list[dict]:
    return ok(call(studio["url"], "GET", "/api/queue", token=studio[who]))["assignments"]


# -- agreement, migrations -----------------------------------------------------------------

def test_agreement_against_hand_computed_examples():
    assert pairwise_agreement([0, 1, 2], [0, 1, 2]) == 1.0
    assert kendall_tau([2, 0, 1], [2, 0, 1]) == 1.0
    assert pairwise_agreement([0, 1, 2, 3], [3, 2, 1, 0]) == 0.0
    assert kendall_tau([0, 1, 2, 3], [3, 2, 1, 0]) == -1.0
    # (0,1) swapped; (0,2) and (1,2) the same: 2 of 3 pairs, tau (2 - 1) / 3
    assert pairwise_agreement([0, 1, 2], [1, 0, 2]) == pytest.approx(2 / 3)
    assert kendall_tau([0, 1, 2], [1, 0, 2]) == pytest.approx(1 / 3)
    # 4 responses, one adjacent swap: 5 of 6 pairs agree, tau 4/6
    assert kendall_tau([2, 0, 3, 1], [2, 3, 0, 1]) == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        pairwise_agreement([0, 1], [0, 2])
    # items: identical (tau 1), reversed (tau -1), three annotators on one item, one alone
    got = agreement([[[0, 1, 2], [0, 1, 2]], [[0, 1], [1, 0]],
                     [[0, 1, 2], [1, 0, 2], [0, 1, 2]], [[1, 0]]])
    taus = [1, -1, 1 / 3, 1, 1 / 3]
    assert got["shared_items"] == 3 and got["annotator_pairs"] == 5
    assert got["kendall_tau"] == pytest.approx(sum(taus) / 5)
    assert got["agreement"] == pytest.approx(sum((t + 1) / 2 for t in taus) / 5)
    assert agreement([[[0, 1]]])["kendall_tau"] is None


def test_a_version_1_database_is_upgraded_with_its_data(db_url):
    old = Database(db_url, upto=1)
    assert old.version() == 1
    with old.transaction(write=True) as tx:
        pid = tx.insert("INSERT INTO projects (name, kind, created) VALUES ('old', "
                        "'demonstrate', 1.0)")
        item = tx.insert("INSERT INTO items (project_id, position, prompt) VALUES (?, 0, ?)",
                         (pid, "Hi?"))
        ann = tx.insert("INSERT INTO annotators (name, token_hash, created) VALUES (?, ?, 1.0)",
                        ("ann", store.hash_token("secret-token")))
        aid = tx.insert("INSERT INTO assignments (item_id, annotator_id) VALUES (?, ?)",
                        (item, ann))
    old.close()

    db = Database(db_url)
    assert db.version() == 2 and db.migrate() == 2  # a second start changes nothing
    assert store.find_project(db, "old")["instructions"] == ""
    assert store.annotator_by_token(db, "secret-token")["id"] == ann
    assert store.save_draft(db, ann, aid, "half a rep")
    assert store.assignment(db, ann, aid)["draft"]["body"] == "half a rep"
    assert store.submit(db, ann, aid, "sub-00000001", {"response": "Hello!"}) == "created"
    assert store.assignment(db, ann, aid)["draft"] is None
    assert db.integrity_check() == "ok"
    db.close()


def test_sqlite_settings_and_bad_urls(tmp_path):
    from gptsmith.errors import GptsmithError

    db = Database(tmp_path / "s.db")
    conn = db.conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db.close()
    for url in (":memory:", "sqlite://relative.db"):
        with pytest.raises(GptsmithError, match="give a file"):
            Database(url)


def test_unknown_database_urls_directories_and_other_files_are_refused(tmp_path, monkeypatch,
                                                                        capsys):
    """Issue 18: --db mysql://... made an SQLite file under a directory named 'mysql:'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a database, " * 20)
    for url, words in (("mysql://user:secret@host/db", "unknown database 'mysql'"),
                       ("mongodb+srv://h/db", "unknown database 'mongodb+srv'"),
                       ("sqlite:relative.db", "give a file"),
                       (str(tmp_path), "a directory"),
                       ("notes.txt", "cannot open it as an SQLite database")):
        assert main(["studio", "init", "--db", url]) == 2
        err = capsys.readouterr().err
        assert words in err and "secret" not in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert main(["studio", "init", "--db", "sqlite:///ok.db"]) == 0


# -- the whole loop over the API -----------------------------------------------------------

def test_annotators_answer_over_http_and_the_export_feeds_sft_and_rm_readers(
        studio, tmp_path, capsys):
    url = studio["url"]
    for who in ("alice", "bob"):
        q = ok(call(url, "GET", "/api/queue", token=studio[who]))
        assert (q["name"], q["done"], q["total"]) == (who, 0, 7)
        for a in q["assignments"]:
            item = ok(call(url, "GET", f"/api/assignments/{a['id']}", token=studio[who]))
            sub = uuid.uuid4().hex
            if item["kind"] == "demonstrate":
                answer = {"response": f"{who} says: {item['prompt']}"}
            elif item["position"] == 2 and who == "bob":
                answer = {"unacceptable": True, "comment": "all wrong"}
            else:  # alice: best first; bob: the first two swapped
                answer = {"ranking": [0, 1, 2] if who == "alice" else [1, 0, 2]}
            body = {"submission_id": sub, **answer}
            path = f"/api/assignments/{a['id']}/answer"
            assert ok(call(url, "POST", path, body, studio[who])) == {"status": "created"}
            assert ok(call(url, "POST", path, body, studio[who])) == {"status": "duplicate"}
            status, text, _ = call(url, "POST", path, {**body, "submission_id": "another-1"},
                                   studio[who])
            assert status == 409 and "answered already" in text
        q = ok(call(url, "GET", "/api/queue", token=studio[who]))
        assert q["done"] == q["total"] == 7
        mine = ok(call(url, "GET", f"/api/assignments/{q['assignments'][0]['id']}",
                       token=studio[who]))
        assert mine["answer"]["response"].startswith(f"{who} says")

    state = ok(call(url, "GET", "/api/admin/state", token=studio["admin"]))
    demos, ranks = state["projects"]
    assert (demos["done"], demos["assigned"], demos["items_answered_twice"]) == (8, 8, 4)
    assert [(a["name"], a["done"], a["unacceptable"]) for a in ranks["annotators"]] == \
        [("alice", 3, 0), ("bob", 3, 1)]
    # two shared items ranked by both: one pair of three swapped in each
    assert ranks["agreement"] == {"shared_items": 2, "annotator_pairs": 2,
                                  "agreement": pytest.approx(2 / 3),
                                  "kendall_tau": pytest.approx(1 / 3)}

    db_url = f"sqlite:///{studio['db'].target}" if studio["db"].kind == "sqlite" \
        else studio["db"].target
    for project, out in (("demos", tmp_path / "demos.jsonl"), ("ranks", tmp_path / "r.jsonl")):
        assert main(["studio", "export", "--db", db_url, "--project", project,
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 demonstrations" in printed and "5 rankings" in printed
    assert "1 marked all unacceptable left out" in printed
    convs, _ = read_demos(tmp_path / "demos.jsonl")
    assert len(convs) == 8 and convs[-1].messages[0]["content"] == EVIL
    groups, _ = read_comparisons(tmp_path / "r.jsonl")
    assert len(groups) == 5 and all(len(g.pairs) == 3 for g in groups)
    assert main(["studio", "export", "--db", db_url, "--project", "ranks", "--combine",
                 "mean-rank", "--out", str(tmp_path / "merged.jsonl")]) == 0
    assert "merged by mean-rank" in capsys.readouterr().out
    merged = (tmp_path / "merged.jsonl").read_text().splitlines()
    assert all(json.loads(line)["combined"] == "mean-rank" for line in merged)
    assert main(["studio", "report", "--db", db_url]) == 0
    assert "Kendall's tau 0.333" in capsys.readouterr().out


def test_several_annotators_per_item_export_merged_and_split_by_prompt(db, tmp_path):
    """Issue 17: an item ranked by three people is three records; rm's held-out split must
    keep them (and any copy of the prompt) on one side, or the held-out score is inflated.
    The export can also merge them: one record per item, by mean rank, ties said."""
    from gptsmith.data.shards import split_held_out
    from gptsmith.studio.export import export, export_records
    from gptsmith.train.reward import group_key

    items = [{"prompt": f"What is {i % 30} plus 1?", "responses": ["a", "b", "c"]}
             for i in range(40)]  # 10 prompts appear twice, as two items
    pid = store.create_project(db, "ranks", "rank", items)
    people = [store.create_annotator(db, n)[0] for n in ("ann", "bob", "cid")]
    store.assign(db, pid, people, per_item=3)
    votes = {0: ([0, 1, 2], [1, 0, 2], [0, 2, 1]),  # mean ranks 4/3, 2, 8/3: 0 > 1 > 2
             1: ([0, 1, 2], [1, 0, 2], None),  # 0 and 1 tie; both beat 2; cid: unacceptable
             2: ([0, 1, 2], [2, 1, 0], None)}  # everything ties: nothing to learn
    for who in people:
        for a in store.queue(db, who):
            given = votes.get(a["position"], ([2, 1, 0],) * 3)[people.index(who)]
            answer = {"ranking": given} if given else {"unacceptable": True}
            store.submit(db, who, a["id"], uuid.uuid4().hex, answer)

    assert "118 rankings" in export(db, "ranks", tmp_path / "all.jsonl")
    groups, _ = read_comparisons(tmp_path / "all.jsonl")
    kept, held = split_held_out(groups, group_key, 0.3)  # exactly what `gptsmith rm` does
    assert len(kept) > 30 and len(held) > 15
    assert not {g.prompt[0]["content"] for g in kept} & {g.prompt[0]["content"] for g in held}

    message = export(db, pid, tmp_path / "merged.jsonl", combine="mean-rank")
    assert "39 items' rankings merged by mean-rank" in message
    assert "2 marked all unacceptable left out" in message and "2 of items" in message
    merged = [json.loads(line) for line in (tmp_path / "merged.jsonl").read_text().splitlines()]
    first, second = merged[0], merged[1]
    assert (first["ranking"], first["mean_rank"], first["annotators"], first["combined"]) == \
        ([0, 1, 2], [1.3333, 2.0, 2.6667], ["ann", "bob", "cid"], "mean-rank")
    assert "ties" not in first and (second["ranking"], second["ties"]) == ([0, 1, 2], [[0, 1]])
    assert second["item_id"] != merged[2]["item_id"] and len({r["item_id"] for r in merged}) == 39
    groups, _ = read_comparisons(tmp_path / "merged.jsonl")
    assert groups[0].pairs == [(0, 1), (0, 2), (1, 2)] and groups[1].pairs == [(0, 2), (1, 2)]
    kept, held = split_held_out(groups, group_key, 0.3)
    assert not {g.prompt[0]["content"] for g in kept} & {g.prompt[0]["content"] for g in held}
    with pytest.raises(store.Refused, match="combine: one of none, mean-rank"):
        export_records(db, pid, "borda!")

    admin = store.set_admin_token(db)
    with running(create_app(db)) as url:
        status, text, headers = call(url, "GET", f"/api/admin/export/{pid}?combine=mean-rank",
                                     token=admin)
        assert status == 200 and [json.loads(line) for line in text.splitlines()] == merged
        assert f"project-{pid}-mean-rank.jsonl" in headers["content-disposition"]
        status, text, _ = call(url, "GET", f"/api/admin/export/{pid}?combine=nope", token=admin)
        assert status == 400 and "combine" in text


def test_sampling_settings_out_of_range_are_refused(tmp_path, tiny_run, capsys):
    (tmp_path / "p.jsonl").write_text('{"prompt": "q"}\n')
    for flags, words in ((["-k", "12"], "-k 12: 2 to 9"), (["--seed", str(2**64)], "--seed")):
        assert main(["studio", "project", "--db", str(tmp_path / "s.db"), "--name", "r",
                     "--kind", "rank", "--prompts", str(tmp_path / "p.jsonl"),
                     "--model", str(tiny_run), *flags]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err


def test_admin_creates_a_rank_project_sampled_from_a_model(db, tiny_run):
    admin = store.set_admin_token(db)
    prompts = "".join(json.dumps({"prompt": f"What is {i} plus 2?"}) + "\n" for i in range(2))
    prompts += json.dumps({"prompt": "Given", "responses": ["x", "y"]}) + "\n"
    with running(create_app(db, {"tiny": str(tiny_run)})) as url:
        state = ok(call(url, "GET", "/api/admin/state", token=admin))
        assert state["models"] == ["tiny"]
        status, text, _ = call(url, "POST", "/api/admin/projects",
                               {"name": "r", "kind": "rank", "prompts": prompts}, admin)
        assert status == 400 and "choose a model" in text
        made = ok(call(url, "POST", "/api/admin/projects",
                       {"name": "r", "kind": "rank", "prompts": prompts, "model": "tiny",
                        "k": 3, "max_tokens": 8}, admin))
        assert (made["items"], made["dropped"]) == (3, 0)
        status, text, _ = call(url, "POST", "/api/admin/projects",
                               {"name": "bad", "kind": "demonstrate", "prompts": "{}\n"}, admin)
        assert status == 400 and "prompts:1:" in text and "prompt" in text
    with db.transaction() as tx:
        rows = tx.all("SELECT prompt, responses FROM items ORDER BY position")
    sampled = [json.loads(r["responses"]) for r in rows]
    questions = [f"What is {i} plus 2?" for i in range(2)]
    assert sampled == sample_responses(tiny_run, questions, 3, 8, 1.0, 0) + [["x", "y"]]
    assert all(len(set(s)) == len(s) == 3 for s in sampled[:-1])


# -- security ------------------------------------------------------------------------------

def test_a_wrong_or_missing_token_gets_401_and_sees_nothing(studio):
    url = studio["url"]
    aid = queue_of(studio, "alice")[0]["id"]
    for token in (None, "wrong-token", studio["alice"][:-1], "x" * 500):
        for path in ("/api/queue", f"/api/assignments/{aid}", "/api/me", "/queue",
                     f"/item/{aid}", "/api/admin/state", "/admin"):
            status, body, headers = call(url, "GET", path, token=token)
            assert status == 401, (path, token, body)
            assert "hello" not in body.lower() and "plus" not in body and "alice" not in body
        status, body, _ = call(url, "POST", f"/api/assignments/{aid}/answer",
                               {"submission_id": "abcdefgh", "response": "x"}, token)
        assert status == 401
    for path in ("/a/wrong-token", f"/a/{studio['alice']}x", "/admin/wrong"):
        status, body, headers = call(url, "GET", path)
        assert status == 401 and "set-cookie" not in headers
    # an annotator is not the admin, nor the admin an annotator
    assert call(url, "GET", "/api/admin/state", token=studio["alice"])[0] == 401
    assert call(url, "GET", "/api/queue", token=studio["admin"])[0] == 401
    with studio["db"].transaction() as tx:
        stored = [r["token_hash"] for r in tx.all("SELECT token_hash FROM annotators")]
        settings = tx.all("SELECT value FROM settings")
    assert studio["alice"] not in stored and store.hash_token(studio["alice"]) in stored
    assert all(studio["admin"] not in s["value"] for s in settings)


def test_an_annotator_cannot_read_or_change_anothers_items(studio):
    url, db = studio["url"], studio["db"]
    alice = {a["position"]: a["id"] for a in queue_of(studio, "alice") if a["kind"] == "rank"}
    bobs = {a["id"] for a in queue_of(studio, "bob")}
    theirs = alice[0]
    assert theirs not in bobs
    with db.transaction() as tx:
        missing = tx.value("SELECT max(id) FROM assignments") + 1
    for aid in (theirs, missing):
        for method, path, body in (
                ("GET", f"/api/assignments/{aid}", None),
                ("GET", f"/item/{aid}", None),
                ("PUT", f"/api/assignments/{aid}/draft", {"body": "mine now"}),
                ("POST", f"/api/assignments/{aid}/answer",
                 {"submission_id": uuid.uuid4().hex, "ranking": [2, 1, 0]})):
            status, text, _ = call(url, method, path, body, studio["bob"])
            assert status == 403, (method, path, text)
            assert "What is" not in text and "not yours" in text
    assert store.answers(db, studio["ranks"]) == []
    with db.transaction() as tx:
        assert tx.value("SELECT count(*) FROM drafts") == 0
    # and alice can
    ok(call(url, "PUT", f"/api/assignments/{theirs}/draft", {"body": "[1]"}, studio["alice"]))
    assert ok(call(url, "GET", f"/api/assignments/{theirs}", token=studio["alice"]))[
        "draft"]["body"] == "[1]"


def signed_in(url: str, token: str) -> str:
    """The cookie a personal link sets."""
    status, _, headers = call(url, "GET", f"/a/{token}")
    assert status == 303 and headers["location"] == "/queue"
    cookie = headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    return cookie.split(";")[0]


def test_cookie_posts_need_the_csrf_token_and_our_origin(studio):
    url = studio["url"]
    cookie = signed_in(url, studio["alice"])
    status, body, headers = call(url, "GET", "/queue", headers={"Cookie": cookie})
    assert status == 200 and headers["referrer-policy"] == "no-referrer"
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    csrf = ok(call(url, "GET", "/api/me", headers={"Cookie": cookie}))["csrf"]
    aid = queue_of(studio, "alice")[0]["id"]
    path = f"/api/assignments/{aid}/answer"

    def post(**headers):
        return call(url, "POST", path, {"submission_id": uuid.uuid4().hex, "response": "hi"},
                    headers={"Cookie": cookie, **headers})

    assert post()[0] == 403  # a form from anywhere: no token
    assert post(**{"X-CSRF-Token": "0" * 64})[0] == 403
    assert post(**{"X-CSRF-Token": csrf, "Origin": "https://evil.example"})[0] == 403
    assert post(**{"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"})[0] == 403
    assert post(Origin="https://evil.example", **{"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert call(url, "PUT", f"/api/assignments/{aid}/draft", {"body": "x"},
                headers={"Cookie": cookie})[0] == 403
    assert store.answers(studio["db"], studio["demos"]) == []
    status, body, _ = post(**{"X-CSRF-Token": csrf, "Origin": url,
                              "Sec-Fetch-Site": "same-origin"})
    assert status == 200, body
    # the admin's cookie is held to the same rule
    status, _, headers = call(url, "GET", f"/admin/{studio['admin']}")
    admin_cookie = headers["set-cookie"].split(";")[0]
    assert call(url, "POST", "/api/admin/annotators", {"name": "mallory"},
                headers={"Cookie": admin_cookie})[0] == 403
    assert [a["name"] for a in store.find_annotators(studio["db"])] == ["alice", "bob"]


def test_bad_answers_are_refused_with_the_reason(studio):
    url = studio["url"]
    q = queue_of(studio, "alice")
    demo = next(a["id"] for a in q if a["kind"] == "demonstrate")
    rank = next(a["id"] for a in q if a["kind"] == "rank")
    for aid, body, words in (
            (demo, {"response": "   "}, "ideal reply"),
            (rank, {"ranking": [0, 1]}, "permutation"),
            (rank, {"ranking": [0, 1, 1]}, "permutation"),
            (rank, {"ranking": [0, 1, 2], "unacceptable": "yes"}, "true or false"),
            (rank, {"ranking": [0, 1, 2], "comment": 5}, "comment")):
        status, text, _ = call(url, "POST", f"/api/assignments/{aid}/answer",
                               {"submission_id": uuid.uuid4().hex, **body}, studio["alice"])
        assert status == 400 and words in text, text
    status, text, _ = call(url, "POST", f"/api/assignments/{demo}/answer",
                           {"submission_id": "short", "response": "x"}, studio["alice"])
    assert status == 400 and "submission_id" in text
    status, _, _ = call(url, "POST", f"/api/assignments/{demo}/answer",
                        {"submission_id": "abcdefghij", "response": "x" * 3_000_000},
                        studio["alice"])
    assert status == 413
    status, text, _ = call(url, "POST", f"/api/assignments/{demo}/answer", None, studio["alice"],
                           {"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in text


def stored(db: Database) -> dict[str, list]:
    """Every row of every table: what a refused request must leave as it was."""
    tables = ("settings", "projects", "items", "annotators", "assignments", "answers", "drafts")
    with db.transaction() as tx:
        return {t: tx.all(f"SELECT * FROM {t} ORDER BY 1") for t in tables}


def raw(base: str, method: str, path: str, data: bytes, token: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc, timeout=60)
    try:
        conn.request(method, path, data, {"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def test_huge_ids_deep_json_lone_surrogates_and_unknown_annotators_get_4xx(studio):
    """Issue 18: each of these was a 500 with a traceback in the server log."""
    url, alice, admin = studio["url"], studio["alice"], studio["admin"]
    demo = next(a["id"] for a in queue_of(studio, "alice") if a["kind"] == "demonstrate")
    answer = {"submission_id": uuid.uuid4().hex, "response": "fine"}
    before = stored(studio["db"])
    cases = []
    for big in (2**63, 2**64, 2**70, -(2**63) - 1, 10**400):
        cases += [(alice, "GET", f"/api/assignments/{big}", None, 403),
                  (alice, "PUT", f"/api/assignments/{big}/draft", {"body": "x"}, 403),
                  (alice, "POST", f"/api/assignments/{big}/answer", answer, 403),
                  (alice, "GET", f"/item/{big}", None, 403),
                  (admin, "GET", f"/api/admin/export/{big}", None, 404),
                  (admin, "POST", "/api/admin/assign",
                   {"project": "demos", "annotators": [big], "per_item": 1}, 404),
                  (admin, "POST", "/api/admin/assign",
                   {"project": str(big), "annotators": [studio["alice_id"]]}, 404)]
    cases += [
        (alice, "GET", "/api/assignments/abc", None, 400),
        (admin, "GET", "/api/admin/export/1.5", None, 400),
        (admin, "GET", "/api/admin/export/%C2%B2", None, 400),
        (admin, "POST", "/api/admin/assign",  # "²" is a digit to str.isdigit, not to int()
         {"project": "²", "annotators": [studio["alice_id"]]}, 404),
        (admin, "POST", "/api/admin/assign",  # a foreign-key error before
         {"project": "demos", "annotators": [studio["alice_id"], 999], "per_item": 2}, 404),
        (alice, "POST", f"/api/assignments/{demo}/answer", {**answer, "comment": "\ud800"}, 400),
        (alice, "POST", f"/api/assignments/{demo}/answer",
         {**answer, "response": "a \udfff b"}, 400),
        (alice, "PUT", f"/api/assignments/{demo}/draft", {"body": "\ud800 hi"}, 400),
        (alice, "PUT", f"/api/assignments/{demo}/draft", {"body": "x", "\ud800": 1}, 400),
        (admin, "POST", "/api/admin/annotators", {"name": "eve\ud800"}, 400),
        (admin, "POST", "/api/admin/annotators", {"name": {"a": 1}}, 400),
        (admin, "POST", "/api/admin/projects",
         {"name": "p", "kind": "demonstrate", "prompts": '{"prompt": "\\ud800"}'}, 400),
        (admin, "POST", "/api/admin/projects", {"name": "p", "kind": "rank", "model": "m",
                                                "prompts": '{"prompt": "q"}', "seed": 2**64},
         400),
        # found by checks/fuzz_studio.py: a comment of false was stored as no comment; NUL
        # (which PostgreSQL cannot store), 5000-digit numbers, endless instructions
        (alice, "POST", f"/api/assignments/{demo}/answer", {**answer, "comment": False}, 400),
        (alice, "PUT", f"/api/assignments/{demo}/draft", {"body": "a\x00b"}, 400),
        (admin, "POST", "/api/admin/projects",
         {"name": "p", "kind": "demonstrate", "prompts": '{"prompt": "a\\u0000b"}'}, 400),
        (admin, "POST", "/api/admin/projects",
         {"name": "p", "kind": "demonstrate", "prompts": '{"prompt": ' + "9" * 5000 + "}"}, 400),
        (admin, "POST", "/api/admin/projects", {"name": "p", "kind": "demonstrate",
                                                "prompts": '{"prompt": "q"}',
                                                "instructions": "x" * 6000}, 400),
    ]
    for token, method, path, body, status in cases:
        got, text, _ = call(url, method, path, body, token)
        assert got == status, (method, path, body, got, text)
        assert json.loads(text)["error"]["message"] if path.startswith("/api/") else text
    deep = b"[" * 100_000 + b"]" * 100_000
    for data in (deep, b'{"body": ' + deep + b"}", b'{"body": "x", "y": ' + b"[" * 40 + b"]" * 40
                 + b"}", b'{"comment": "\\ud800", "submission_id": "abcdefghij"}',
                 b'{"body": "x", "n": ' + b"9" * 5000 + b"}"):
        for method, path in (("PUT", f"/api/assignments/{demo}/draft"),
                             ("POST", f"/api/assignments/{demo}/answer")):
            status, text = raw(url, method, path, data, alice)
            assert status == 400, (path, data[:60], status, text)
    status, text = raw(url, "POST", "/api/admin/annotators", b'{"name": ' + deep + b"}", admin)
    assert status == 400 and "nested" in text
    assert stored(studio["db"]) == before  # nothing partial stored


# -- reliability ---------------------------------------------------------------------------

def test_20_concurrent_annotators_lose_nothing_and_duplicate_nothing(db, capsys):
    """20 annotators submit as fast as they can for 3 s, a quarter of them sent twice (a
    retry after a lost answer); every acknowledged submission is in the database, once."""
    n, per, seconds = 20, 150, 3.0
    people = [store.create_annotator(db, f"ann{i}") for i in range(n)]
    pid = store.create_project(db, "load", "demonstrate",
                               [{"prompt": f"p{i}", "responses": None} for i in range(n * per)])
    store.assign(db, pid, [a for a, _ in people], per_item=1)
    acked, stats, lock = set(), {"sent": 0, "retries": 0, "errors": 0}, threading.Lock()

    def annotate(token: str, url: str, deadline: float, rng: random.Random):
        ids = [a["id"] for a in ok(call(url, "GET", "/api/queue", token=token))["assignments"]]
        for aid in ids:
            if time.monotonic() > deadline:
                return
            sub = uuid.uuid4().hex
            body = {"submission_id": sub, "response": f"answer {aid}"}
            tries = 2 if rng.random() < 0.25 else 1
            for t in range(tries):
                status, text, _ = call(url, "POST", f"/api/assignments/{aid}/answer", body, token)
                with lock:
                    stats["sent"] += 1
                    stats["retries"] += t
                    if status != 200 or json.loads(text)["status"] != ("duplicate" if t else
                                                                       "created"):
                        stats["errors"] += 1
                    else:
                        acked.add((aid, sub))

    with running(create_app(db)) as url:
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=annotate, args=(t, url, deadline, random.Random(i)))
                   for i, (_, t) in enumerate(people)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    with db.transaction() as tx:
        rows = {(r["assignment_id"], r["submission_id"])
                for r in tx.all("SELECT assignment_id, submission_id FROM answers")}
        count = tx.value("SELECT count(*) FROM answers")
        dupes = tx.value("SELECT count(*) FROM (SELECT assignment_id FROM answers "
                         "GROUP BY assignment_id HAVING count(*) > 1) d")
    with capsys.disabled():
        print(f"\n[{db.kind}] {n} annotators, {seconds:.0f} s: {stats['sent']} posts "
              f"({stats['retries']} retries), {len(acked)} acknowledged, {count} in the "
              f"database, {dupes} duplicates, {stats['errors']} errors")
    assert stats["errors"] == 0 and dupes == 0
    assert count == len(acked) == len(rows) and rows == acked
    assert len(acked) >= n  # everybody got something in
    assert db.integrity_check() == "ok"


def start_server(db_path: Path, port: int, admin: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptsmith", "studio", "serve", "--db", f"sqlite:///{db_path}",
         "--port", str(port), "--admin-token", admin],
        cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if call(f"http://127.0.0.1:{port}", "GET", "/health")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the studio did not start: {proc.stdout.read().decode()}")


def test_killing_the_server_mid_write_loses_at_most_the_requests_in_flight(tmp_path, capsys):
    path, n = tmp_path / "kill.db", 4
    db = Database(path)
    people = [store.create_annotator(db, f"ann{i}") for i in range(n)]
    pid = store.create_project(db, "load", "demonstrate",
                               [{"prompt": f"p{i}", "responses": None} for i in range(2000)])
    store.assign(db, pid, [a for a, _ in people], per_item=1)
    queues = {t: [a["id"] for a in store.queue(db, a)] for a, t in people}
    db.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(path, port, "admin-secret")
    acked, in_flight, lock = set(), [0], threading.Lock()
    first = threading.Event()

    def annotate(token: str):
        for aid in queues[token]:
            sub = uuid.uuid4().hex
            try:
                status, _, _ = call(url, "POST", f"/api/assignments/{aid}/answer",
                                    {"submission_id": sub, "response": f"answer {aid}"}, token)
            except OSError:  # the server died with this request in flight
                with lock:
                    in_flight[0] += 1
                return
            assert status == 200
            with lock:
                acked.add((aid, sub))
            first.set()

    threads = [threading.Thread(target=annotate, args=(t,)) for _, t in people]
    try:
        for t in threads:
            t.start()
        assert first.wait(30)
        time.sleep(1.0)
        proc.kill()  # SIGKILL: no cleanup, mid-write
        proc.wait()
        for t in threads:
            t.join()
    finally:
        proc.kill()
    db = Database(path)
    assert db.integrity_check() == "ok"
    with db.transaction() as tx:
        rows = {(r["assignment_id"], r["submission_id"])
                for r in tx.all("SELECT assignment_id, submission_id FROM answers")}
    with capsys.disabled():
        print(f"\n[kill] {len(acked)} acknowledged before SIGKILL, {len(rows)} in the "
              f"database after, {in_flight[0]} requests in flight, integrity "
              f"{db.integrity_check()}")
    assert acked <= rows  # nothing acknowledged is lost
    assert len(rows - acked) <= in_flight[0] <= n  # at most the in-flight ones differ
    db.close()
    proc = start_server(path, port, "admin-secret")  # and it comes back
    try:
        token = people[0][1]
        q = ok(call(url, "GET", "/api/queue", token=token))
        assert q["done"] == sum(1 for aid, _ in rows if aid in queues[token])
        todo = next(a["id"] for a in q["assignments"] if not a["done"])
        ok(call(url, "POST", f"/api/assignments/{todo}/answer",
                {"submission_id": uuid.uuid4().hex, "response": "after"}, token))
    finally:
        proc.kill()
        proc.wait()
