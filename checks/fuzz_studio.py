"""Hostile input for the studio's web application: ids, bodies, field types, nesting,
encodings, auth tokens and paths, against a real studio app over a real SQLite database.

Every case must be answered below 500, with no traceback in the reply or in the server's
log, an API error as JSON with a message, and, when refused (4xx), nothing stored: every
row of every table as it was. At the end every stored row must still make sense (rankings
are permutations, names are text). Fixed cases cover each class of input; Hypothesis then
sends generated bodies to every write route.

    python checks/fuzz_studio.py               # every fixed case + 400 generated, test client
    python checks/fuzz_studio.py --server      # the same over HTTP to a real uvicorn server
    python checks/fuzz_studio.py --short       # what CI runs (tests/test_hostile_studio.py)
    python checks/fuzz_studio.py -k ids -v     # the cases whose name holds 'ids', each shown
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import logging
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gptsmith.studio import store  # noqa: E402
from gptsmith.studio.app import create_app  # noqa: E402
from gptsmith.studio.db import Database  # noqa: E402

MAX_BODY = 200_000
TABLES = ("settings", "projects", "items", "annotators", "assignments", "answers", "drafts")
BIG_IDS = ["9223372036854775808", "18446744073709551616", "-9223372036854775809",
           "1" * 400, "1" * 5000, "0", "-1", "abc", "1.5", "1e3", "0x10", "1_000",
           "%20", "%00", "%C2%B2", "%D9%A1%D9%A2", "%ED%A0%80", "%FF"]
DEEP = b"[" * 100_000 + b"]" * 100_000
BAD_BODIES = {
    "empty": b"", "null": b"null", "list": b"[]", "number": b"1", "string": b'"s"',
    "truncated": b'{"body": "x', "invalid utf-8": b'{"body": "\xff\xfe"}',
    "deep list": DEEP, "deep object": b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
    "deep value": b'{"body": ' + DEEP + b"}", "17 levels": b'{"body": "x", "y": '
    + b"[" * 17 + b"]" * 17 + b"}", "NaN": b'{"body": NaN, "comment": NaN}',
    "Infinity": b'{"body": Infinity, "ranking": [Infinity]}', "1e999": b'{"k": 1e999}',
    "5000 digits": b'{"body": "x", "k": ' + b"9" * 5000 + b"}",
    "lone surrogate": b'{"body": "\\ud800 hi", "comment": "\\udfff"}',
    "surrogate key": b'{"\\ud800": "x", "body": "x"}',
    "reversed pair": b'{"body": "\\udc00\\ud800"}', "NUL": b'{"body": "a\\u0000b"}',
    "utf-16": '{"body": 5}'.encode("utf-16"), "BOM only": b"\xef\xbb\xbf",
    "oversize": b'{"body": "' + b"x" * (MAX_BODY + 10) + b'"}',
    "duplicate keys": b'{"body": 1, "body": [], "name": {}, "name": []}',
}
WRONG_VALUES = [None, True, False, 0, -1, 2**63, 2**64, -(2**63) - 1, 1.5, float("nan"),
                float("inf"), "", " ", "x" * 6000, "\x00", [], {}, [None], ["\ud800"],
                {"$gt": ""}, [[[[1]]]]]


@dataclass
class Case:
    """One request. ``who`` signs it (a name of the studio's tokens, or None); ``refused``:
    it must get a 4xx (else any status below 500 will do)."""

    name: str
    method: str
    path: str
    body: bytes | None = None
    who: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    refused: bool = True


# -- the studio under test -------------------------------------------------------------------

class Studio:
    """A studio app over a fresh SQLite database with two projects and two annotators;
    requests go through the ASGI test client, or over HTTP to a real server (``server``)."""

    def __init__(self, tmp: Path, server: bool = False):
        self.db = Database(tmp / "studio.db")
        db = self.db
        self.demos = store.create_project(db, "demos", "demonstrate",
                                          [{"prompt": f"Say hi {i}", "responses": None}
                                           for i in range(3)])
        self.ranks = store.create_project(db, "ranks", "rank",
                                          [{"prompt": f"{i} plus 1?", "responses": ["1", "2", "3"]}
                                           for i in range(3)])
        (self.alice_id, alice), (self.bob_id, bob) = (store.create_annotator(db, n)
                                                      for n in ("alice", "bob"))
        for p in (self.demos, self.ranks):
            store.assign(db, p, [self.alice_id, self.bob_id], 2)
        self.tokens = {"alice": alice, "bob": bob, "admin": store.set_admin_token(db)}
        queue = store.queue(db, self.alice_id)
        self.demo = next(a["id"] for a in queue if a["kind"] == "demonstrate")
        self.rank = next(a["id"] for a in queue if a["kind"] == "rank")
        self.bobs = store.queue(db, self.bob_id)[0]["id"]
        self.app = create_app(db, max_body=MAX_BODY)
        self.server = server
        self.errors = ErrorLog()
        self.statuses: collections.Counter = collections.Counter()
        self._stack = contextlib.ExitStack()
        if server:
            from tests.live import running

            self.url = self._stack.enter_context(running(self.app))
        else:
            from fastapi.testclient import TestClient

            self.client = self._stack.enter_context(
                TestClient(self.app, raise_server_exceptions=False))
        for name in ("", "uvicorn"):  # uvicorn's loggers do not propagate to the root
            logging.getLogger(name).addHandler(self.errors)

    def close(self) -> None:
        for name in ("", "uvicorn"):
            logging.getLogger(name).removeHandler(self.errors)
        self._stack.close()
        self.db.close()

    def send(self, case: Case) -> tuple[int, str, dict[str, str]]:
        headers = dict(case.headers)
        if case.who:
            headers.setdefault("Authorization", f"Bearer {self.tokens[case.who]}")
        if case.body is not None:
            headers.setdefault("Content-Type", "application/json")
        if self.server:
            return http_request(self.url, case.method, case.path, case.body, headers)
        r = self.client.request(case.method, case.path, content=case.body, headers={
            k: v.encode("latin-1", "replace") for k, v in headers.items()})
        return r.status_code, r.text, {k.lower(): v for k, v in r.headers.items()}

    def stored(self) -> dict[str, list]:
        with self.db.transaction() as tx:
            return {t: tx.all(f"SELECT * FROM {t} ORDER BY 1") for t in TABLES}


def http_request(url: str, method: str, path: str, body: bytes | None,
                 headers: dict[str, str]) -> tuple[int, str, dict[str, str]]:
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(url).netloc, timeout=60)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v.encode("latin-1", "replace"))
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace"), {k.lower(): v for k, v in
                                                               r.getheaders()}
    finally:
        conn.close()


class ErrorLog(logging.Handler):
    """Every ERROR logged while a case runs (the app logs a 500's traceback; uvicorn logs an
    exception that escaped the app)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def problems_of(s: Studio, case: Case) -> list[str]:
    """What is wrong with how the studio answered ``case`` (empty: nothing)."""
    before, logged = s.stored(), len(s.errors.records)
    try:
        status, text, headers = s.send(case)
    except Exception as e:  # noqa: BLE001 - the transport broke: the server hung up
        return [f"no reply ({type(e).__name__}: {e})"]
    s.statuses[status] += 1
    out = []
    if status >= 500:
        out.append(f"status {status}")
    elif case.refused and status < 400:
        out.append(f"accepted with {status}")
    if "Traceback" in text:
        out.append("a traceback in the reply")
    for record in s.errors.records[logged:]:
        out.append(f"logged: {record.getMessage()[:120]}"
                   + (f" ({record.exc_info[1]!r})"[:200] if record.exc_info else ""))
    if status >= 400 and urllib.parse.unquote(case.path).startswith("/api/"):
        try:
            message = json.loads(text)["error"]["message"]
            assert isinstance(message, str) and message
        except Exception:  # noqa: BLE001
            out.append(f"an API error without a JSON message: {text[:120]!r}")
    if status >= 400 and s.stored() != before:
        out.append("refused, yet the database changed")
    if status == 401 and "www-authenticate" not in headers and "/api/" in case.path:
        out.append("401 without WWW-Authenticate")
    return out


def nonsense_stored(s: Studio) -> list[str]:
    """Rows no valid request could have made."""
    rows, out = s.stored(), []
    for table, name in (("projects", "name"), ("annotators", "name")):
        for r in rows[table]:
            if not isinstance(r[name], str) or not 1 <= len(r[name]) <= 100 \
                    or "\x00" in r[name]:
                out.append(f"{table}.{name} {r[name]!r}")
    items = {r["id"]: r for r in rows["items"]}
    kinds = {r["id"]: r["kind"] for r in rows["projects"]}
    assignments = {r["id"]: r for r in rows["assignments"]}
    for a in rows["answers"]:
        item = items[assignments[a["assignment_id"]]["item_id"]]
        if kinds[item["project_id"]] == "rank" and not a["unacceptable"]:
            k = len(json.loads(item["responses"]))
            if sorted(json.loads(a["ranking"])) != list(range(k)):
                out.append(f"answer {a['id']}: ranking {a['ranking']} of {k} responses")
        elif kinds[item["project_id"]] == "demonstrate" and not (a["response"] or "").strip():
            out.append(f"answer {a['id']}: an empty demonstration")
    for p in rows["projects"]:
        if len(p["instructions"]) > store.MAX_INSTRUCTIONS_CHARS:
            out.append(f"project {p['id']}: instructions of {len(p['instructions'])} chars")
    return out


# -- the fixed cases ---------------------------------------------------------------------------

def body(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def fixed_cases(s: Studio) -> list[Case]:
    cases: list[Case] = []
    sub = "abcdefghij-fuzz"  # answered once, a retry with it is a "duplicate": never answer
    # ids in every route that takes one
    for raw in BIG_IDS:
        cases += [
            Case(f"ids: GET assignment {raw[:20]}", "GET", f"/api/assignments/{raw}", None,
                 "alice"),
            Case(f"ids: PUT draft {raw[:20]}", "PUT", f"/api/assignments/{raw}/draft",
                 body({"body": "x"}), "alice"),
            Case(f"ids: POST answer {raw[:20]}", "POST", f"/api/assignments/{raw}/answer",
                 body({"submission_id": sub, "response": "x"}), "alice"),
            Case(f"ids: item page {raw[:20]}", "GET", f"/item/{raw}", None, "alice"),
            Case(f"ids: export {raw[:20]}", "GET", f"/api/admin/export/{raw}", None, "admin")]
    for value in WRONG_VALUES[:9]:
        cases.append(Case(f"ids: assign to annotator {value!r:.20}", "POST", "/api/admin/assign",
                          body({"project": "demos", "annotators": [s.alice_id, value],
                                "per_item": 1}), "admin"))
        cases.append(Case(f"ids: assign project {value!r:.20}", "POST", "/api/admin/assign",
                          body({"project": value, "annotators": [s.alice_id]}), "admin"))
    cases.append(Case("ids: assign to a missing annotator", "POST", "/api/admin/assign",
                      body({"project": "demos", "annotators": [s.alice_id, 999]}), "admin"))
    cases.append(Case("ids: another's assignment", "POST", f"/api/assignments/{s.bobs}/answer",
                      body({"submission_id": sub, "response": "x"}), "alice"))
    # malformed bodies on every write route
    writes = [("PUT", f"/api/assignments/{s.demo}/draft", "alice"),
              ("POST", f"/api/assignments/{s.demo}/answer", "alice"),
              ("POST", f"/api/assignments/{s.rank}/answer", "alice"),
              ("POST", "/api/admin/projects", "admin"),
              ("POST", "/api/admin/annotators", "admin"),
              ("POST", "/api/admin/assign", "admin")]
    for what, data in BAD_BODIES.items():
        for method, path, who in writes:
            cases.append(Case(f"bodies: {what} to {method} {path}", method, path, data, who))
    # each field of each route given a value of the wrong type or range
    fields = [
        ("PUT", f"/api/assignments/{s.demo}/draft", "alice", {"body": "x"}, ["body"]),
        ("POST", f"/api/assignments/{s.demo}/answer", "alice",
         {"submission_id": sub, "response": "x"}, ["submission_id", "response", "comment"]),
        ("POST", f"/api/assignments/{s.rank}/answer", "alice",
         {"submission_id": sub, "ranking": [0, 1, 2]},
         ["submission_id", "ranking", "unacceptable", "comment"]),
        ("POST", "/api/admin/projects", "admin",
         {"name": "new", "kind": "rank", "model": "none", "prompts": '{"prompt": "q"}'},
         ["name", "kind", "prompts", "model", "k", "max_tokens", "temperature", "seed",
          "instructions"]),
        ("POST", "/api/admin/annotators", "admin", {"name": "carol"}, ["name"]),
        ("POST", "/api/admin/assign", "admin",
         {"project": "ranks", "annotators": [s.alice_id], "per_item": 1},
         ["project", "annotators", "per_item"]),
    ]
    valid = {"comment": ("", " ", None), "unacceptable": (False, None, True), "per_item": (None,),
             "body": ("", " ", "x" * 6000), "response": ("x" * 6000,)}
    for method, path, who, good, names in fields:
        for name in names:
            for value in WRONG_VALUES:
                if any(value is v or value == v and type(value) is type(v)
                       for v in valid.get(name, ())):
                    continue  # a value this field takes
                cases.append(Case(f"types: {path} {name}={value!r:.24}", method, path,
                                  body({**good, name: value}), who))
    for ranking in ([True, False, 2], [0, 1], [0, 1, 1], [0, 1, 2, 3], [2, 1, -0.0],
                    [0, 1, 2.0], ["0", "1", "2"], [0, 1, 2**64]):
        cases.append(Case(f"types: ranking {ranking}", "POST", f"/api/assignments/{s.rank}/answer",
                          body({"submission_id": sub, "ranking": ranking}), "alice"))
    for prompts in ('{"prompt": "\\ud800"}', '{"prompt": "a\\u0000b"}', "[" * 50_000,
                    '{"prompt": "' + "x" * 30_000 + '"}', '{"prompt": 5}', "{}",
                    '{"prompt": "q", "responses": ["a", "a"]}', '{"prompt": "q", "responses": 7}',
                    '{"prompt": ' + "9" * 5000 + "}"):
        cases.append(Case(f"types: prompts {prompts[:30]!r}", "POST", "/api/admin/projects",
                          body({"name": "p2", "kind": "demonstrate", "prompts": prompts}),
                          "admin"))
    cases.append(Case("types: instructions too long", "POST", "/api/admin/projects",
                      body({"name": "p3", "kind": "demonstrate", "prompts": '{"prompt": "q"}',
                            "instructions": "x" * 50_000}), "admin"))
    # auth: tokens, cookies, CSRF, origins
    draft = f"/api/assignments/{s.demo}/draft"
    for name, headers in [
            ("no token", {}), ("empty bearer", {"Authorization": "Bearer "}),
            ("bearer of spaces", {"Authorization": "Bearer      "}),
            ("long token", {"Authorization": "Bearer " + "a" * 10_000}),
            ("latin-1 token", {"Authorization": "Bearer \xe9\xff"}),
            ("control chars", {"Authorization": "Bearer a\tb"}),
            ("basic auth", {"Authorization": "Basic YWxpY2U6eA=="}),
            ("admin's token", {"Authorization": f"Bearer {s.tokens['admin']}"}),
            ("cookie without CSRF", {"Cookie": f"studio_annotator={s.tokens['alice']}"}),
            ("cookie, wrong CSRF", {"Cookie": f"studio_annotator={s.tokens['alice']}",
                                    "X-CSRF-Token": "\xe9" * 64}),
            ("cookie, cross-site", {"Cookie": f"studio_annotator={s.tokens['alice']}",
                                    "Sec-Fetch-Site": "cross-site"}),
            ("cookie, other origin", {"Cookie": f"studio_annotator={s.tokens['alice']}",
                                      "Origin": "http://evil.example"}),
            ("odd cookie", {"Cookie": "studio_annotator=\"\\\\\"; studio_annotator=;;=x"})]:
        cases.append(Case(f"auth: {name} on a draft", "PUT", draft, body({"body": "x"}), None,
                          headers))
        if name != "admin's token":
            cases.append(Case(f"auth: {name} on the admin API", "POST",
                              "/api/admin/annotators", body({"name": f"eve-{len(cases)}"}),
                              None, headers))
    cases.append(Case("auth: annotator on the admin API", "GET", "/api/admin/state", None,
                      "alice"))
    for token in ("x", "%00", "%ED%A0%80", "a" * 5000, "%2e%2e", "..%2F..%2Fetc"):
        cases.append(Case(f"auth: link /a/{token[:20]}", "GET", f"/a/{token}"))
        cases.append(Case(f"auth: link /admin/{token[:20]}", "GET", f"/admin/{token}"))
    # encodings, paths and query strings
    for path in ("/static/..%2Fapp.py", "/static/%00", "/static/app.py", "/static/",
                 "/%ED%A0%80", "/api/assignments/", "/api//admin/state",
                 f"/api/admin/export/{s.ranks}?combine=%ED%A0%80",
                 f"/api/admin/export/{s.ranks}?combine=" + "x" * 5000,
                 f"/api/admin/export/{s.ranks}?combine=none&combine=borda"):
        cases.append(Case(f"paths: GET {path[:50]}", "GET", path, None, "admin"))
    for method in ("DELETE", "PATCH", "OPTIONS"):
        cases.append(Case(f"paths: {method} an assignment", method,
                          f"/api/assignments/{s.demo}", None, "alice"))
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                  "application/json; charset=utf-16"):
        cases.append(Case(f"encodings: {ctype} body=a=1", "PUT", draft, b"body=a&x=1", "alice",
                          {"Content-Type": ctype}))
    cases.append(Case("encodings: gzip said, not sent", "PUT", draft, body({"body": 1}),
                      "alice", {"Content-Encoding": "gzip"}))
    return cases


# -- generated bodies (Hypothesis) -----------------------------------------------------------

def generated(s: Studio, examples: int) -> list[str]:
    """Send ``examples`` generated bodies to the write routes; the failures, shrunk."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    odd_text = st.sampled_from(["\ud800", "\udfff", "\x00", "\u202e", "\ufeff", "a" * 6000,
                                "<script>", "'; DROP TABLE answers; --", "%s %d ?"])
    text = st.one_of(st.text(max_size=20), odd_text, st.text(max_size=5).map(
        lambda t: t + "\ud83d"))
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                       st.floats(allow_nan=True, allow_infinity=True), text)
    value = st.recursive(scalar, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)), max_leaves=12)
    ranking = st.one_of(st.permutations([0, 1, 2]), st.lists(st.integers(-2, 4), max_size=5),
                        value)
    def either(plausible):  # a value the field takes half the time, so answers get stored
        return st.one_of(plausible, value)

    name = st.text(min_size=1, max_size=12)
    routes = {
        ("PUT", f"/api/assignments/{s.demo}/draft", "alice"): {"body": either(text)},
        ("POST", f"/api/assignments/{s.rank}/answer", "alice"): {
            "submission_id": either(st.text("abcdef0123", min_size=8, max_size=12)),
            "ranking": ranking, "unacceptable": either(st.booleans()),
            "comment": either(text)},
        ("POST", "/api/admin/projects", "admin"): {
            "name": either(name), "kind": either(st.sampled_from(["rank", "demonstrate"])),
            "prompts": either(st.sampled_from(['{"prompt": "q"}', '{"prompt": "q", '
                                               '"responses": ["a", "b"]}'])),
            "model": value, "k": either(st.integers(1, 10)),
            "max_tokens": either(st.integers(0, 5000)),
            "temperature": either(st.floats(-1, 3)), "seed": value,
            "instructions": either(text)},
        ("POST", "/api/admin/annotators", "admin"): {"name": either(name)},
        ("POST", "/api/admin/assign", "admin"): {
            "project": either(st.sampled_from(["demos", "ranks", s.ranks])),
            "annotators": either(st.lists(st.sampled_from([s.alice_id, s.bob_id, 99]),
                                          max_size=3)),
            "per_item": either(st.integers(0, 3))},
    }
    request = st.sampled_from(sorted(routes)).flatmap(lambda route: st.tuples(
        st.just(route), st.fixed_dictionaries({}, optional=routes[route]),
        st.dictionaries(text, value, max_size=2)))
    failures: list[str] = []

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(request)
    def one(req):
        (method, path, who), fields, extra = req
        data = json.dumps({**extra, **fields}, allow_nan=True).encode("utf-8", "surrogatepass")
        problems = problems_of(s, Case("generated", method, path, data, who, refused=False))
        assert not problems, f"{method} {path} {data[:300]!r}: {'; '.join(problems)}"

    try:
        one()
    except AssertionError as e:
        failures.append(str(e).splitlines()[0])
    return failures


# -- running -----------------------------------------------------------------------------------

@contextlib.contextmanager
def studio(server: bool = False) -> Iterator[Studio]:
    with tempfile.TemporaryDirectory(prefix="gptsmith-fuzz-studio-") as tmp:
        s = Studio(Path(tmp), server)
        try:
            yield s
        finally:
            s.close()


def run(short: bool = False, server: bool = False, examples: int | None = None, only: str = "",
        verbose: bool = False) -> dict:
    """Fixed cases and generated ones against a fresh studio; figures and failures."""
    start = time.perf_counter()
    with studio(server) as s:
        cases = [c for c in fixed_cases(s) if only in c.name]
        if short:  # a quarter, spread over every class of input
            cases = cases[::4]
        failures, status_5xx = [], 0
        for case in cases:
            problems = problems_of(s, case)
            status_5xx += any(p.startswith("status 5") for p in problems)
            if problems:
                failures.append(f"{case.name}: {'; '.join(problems)}")
            if verbose:
                print(f"{'FAIL' if problems else 'ok  '} {case.name}"
                      + (f": {'; '.join(problems)}" if problems else ""))
        n = (30 if short else 400) if examples is None else examples
        if n and only in "generated":  # -k gen: the generated ones only
            failures += [f"generated: {f}" for f in generated(s, n)]
        failures += [f"stored nonsense: {f}" for f in nonsense_stored(s)]
        statuses = dict(sorted(s.statuses.items()))
    return {"cases": len(cases), "generated": n if only in "generated" else 0, "failures": failures,
            "5xx": status_5xx, "statuses": statuses,
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="a quarter of the fixed cases and 30 "
                   "generated ones (CI)")
    p.add_argument("--server", action="store_true", help="over HTTP to a real uvicorn server")
    p.add_argument("--examples", type=int, help="generated bodies (default: 400; --short 30)")
    p.add_argument("-k", default="", help="only the cases whose name holds this (generated "
                   "ones are named 'generated')")
    p.add_argument("-v", "--verbose", action="store_true", help="print every case")
    args = p.parse_args(argv)
    figures = run(args.short, args.server, args.examples, args.k, args.verbose)
    for f in figures["failures"]:
        print(f"FAIL {f}")
    print(f"{figures['cases']} fixed cases + {figures['generated']} generated "
          f"({'real server' if args.server else 'test client'}): "
          f"{len(figures['failures'])} failing, {figures['5xx']} 5xx, {figures['seconds']}s; "
          f"statuses {figures['statuses']}")
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
