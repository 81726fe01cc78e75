"""The studio under hostile input (issue 18): the short form of checks/fuzz_studio.py, and
proof that the check sees what it looks for."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from gptsmith.studio import store

spec = importlib.util.spec_from_file_location(
    "fuzz_studio", Path(__file__).resolve().parents[1] / "checks" / "fuzz_studio.py")
fuzz = importlib.util.module_from_spec(spec)
sys.modules["fuzz_studio"] = fuzz
spec.loader.exec_module(fuzz)


def test_short_fuzz_gets_no_5xx_no_traceback_and_stores_nothing_refused():
    figures = fuzz.run(short=True)  # about 8 s on a quiet 2-core machine
    assert figures["failures"] == [] and figures["5xx"] == 0
    assert figures["cases"] + figures["generated"] >= 80


def test_the_fuzz_sees_a_500_and_a_refusal_that_stored_something(monkeypatch):
    def half_done(db, annotator_id, assignment_id, body):
        with db.transaction(write=True) as tx:  # committed before the refusal
            tx.run("INSERT INTO drafts (assignment_id, body, updated) VALUES (?, ?, 0)",
                   (assignment_id, "half"))
        raise store.Refused(400, "refused after writing")

    with fuzz.studio() as s:
        draft = fuzz.Case("draft", "PUT", f"/api/assignments/{s.demo}/draft",
                          json.dumps({"body": "x"}).encode(), "alice")
        monkeypatch.setattr(store, "save_draft", half_done)
        assert fuzz.problems_of(s, draft) == ["refused, yet the database changed"]
        monkeypatch.setattr(store, "save_draft", lambda *a: 1 / 0)
        problems = fuzz.problems_of(s, draft)
        assert problems[0] == "status 500" and "ZeroDivisionError" in problems[1]


@pytest.mark.slow
def test_full_fuzz_over_a_real_server():
    figures = fuzz.run(server=True, examples=200)
    assert figures["failures"] == [] and figures["cases"] >= 700
