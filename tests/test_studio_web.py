"""The studio's pages in a real headless Chromium against a live server: an admin builds
projects, two annotators work through their queues with the keyboard only, and what they
wrote trains `gptsmith sft` and `gptsmith rm`."""

from __future__ import annotations

import json
import re

import pytest

from gptsmith.cli import main
from gptsmith.studio import store
from gptsmith.studio.app import create_app
from gptsmith.studio.db import Database
from tests.live import running

playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = playwright.expect

EVIL = '<script>window.__pwned=1</script><b>bold</b><img src=x onerror="window.__pwned=2">'
TRAIN = ["--train.steps", "2", "--train.batch-size", "2", "--train.eval-every", "2",
         "--train.warmup-steps", "1", "--train.precision", "fp32", "--no-train.progress"]


def new_page(browser):
    page = browser.new_context().new_page()
    page.set_default_timeout(15_000)
    return page


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def admin_builds_projects(page, url: str, admin: str) -> dict[str, str]:
    """Create a demonstrate and a rank project, two annotators, and assign every item to
    both; returns the annotators' personal links."""
    page.goto(f"{url}/admin/{admin}")
    expect(page).to_have_url(f"{url}/admin")
    page.fill("#p-name", "demos")
    page.fill("#p-prompts", jsonl([{"prompt": "Say hello."}, {"prompt": EVIL}]))
    page.press("#p-name", "Enter")
    expect(page.locator("tr[data-project=demos]")).to_have_count(1)
    page.fill("#p-name", "ranks")
    page.select_option("#p-kind", "rank")
    page.fill("#p-prompts", jsonl([{"prompt": "What is 2 plus 2?"}, {"prompt": "Hi!"}]))
    page.select_option("#p-model", "tiny")
    page.fill("#p-k", "3")
    page.fill("#p-max-tokens", "8")
    page.press("#p-name", "Enter")
    expect(page.locator("tr[data-project=ranks] td").nth(2)).to_have_text("2")
    links = {}
    for name in ("alice", "bob"):
        page.fill("#a-name", name)
        page.press("#a-name", "Enter")
        expect(page.locator("#link-name")).to_have_text(name)
        links[name] = page.input_value("#link")
    expect(page.locator("#s-annotators input")).to_have_count(2)  # the tables reloaded
    for project in ("demos", "ranks"):
        page.select_option("#s-project", project)
        for box in page.locator("#s-annotators input").all():
            box.check()
        page.fill("#s-per-item", "2")
        page.press("#s-per-item", "Enter")
        expect(page.locator(f"tr[data-project={project}] td").nth(3)).to_have_text("0 of 4")
    return links


def submit_and_wait(page) -> None:
    before = page.url
    page.keyboard.press("Control+Enter")
    page.wait_for_url(lambda u: u != before)


def rank_with_keys(page, keys: list[str], order: str) -> None:
    expect(page.locator("#responses li")).to_have_count(3)
    for key in keys:
        page.keyboard.press(key)
    expect(page.locator("#order")).to_have_text(order)
    submit_and_wait(page)


@pytest.mark.slow
def test_two_annotators_with_the_keyboard_make_data_that_sft_and_rm_train_on(
        browser, tiny_run, tmp_path):
    path = tmp_path / "studio.db"
    db = Database(path)
    admin = store.set_admin_token(db)
    with running(create_app(db, {"tiny": str(tiny_run)})) as url:
        links = admin_builds_projects(new_page(browser), url, admin)

        for name in ("alice", "bob"):
            page = new_page(browser)
            page.goto(links[name])
            expect(page).to_have_url(f"{url}/queue")  # the token is gone from the address
            expect(page.locator("#progress")).to_have_text("0 of 4 done")
            expect(page.locator("#who")).to_have_text(name)
            page.keyboard.press("Enter")  # the first item to do has the focus
            expect(page).to_have_url(re.compile(r"/item/\d+$"))

            # a demonstration, with reloads mid-typing: kept in the browser and on the server
            expect(page.locator("#response")).to_be_focused()
            page.keyboard.type("Hello, I am ")
            page.reload()
            expect(page.locator("#response")).to_have_value("Hello, I am ")
            page.keyboard.type(name)
            expect(page.locator("#status")).to_have_text("draft saved")
            page.evaluate("localStorage.clear()")
            page.reload()
            expect(page.locator("#response")).to_have_value(f"Hello, I am {name}")
            page.keyboard.type(".")
            submit_and_wait(page)

            # HTML in a prompt is text
            expect(page.locator("#prompt")).to_have_text(EVIL)
            assert page.locator("#prompt b, #prompt script, #prompt img").count() == 0
            page.keyboard.type("<i>plain</i> text")
            submit_and_wait(page)
            expect(page.locator("#progress")).to_have_text("2 of 4 done")

            # rankings by number keys; Backspace undoes; U marks all unacceptable
            rank_with_keys(page, ["3", "Backspace", "2", "1"],
                           "response 2 > response 1 > response 3")
            if name == "alice":
                rank_with_keys(page, ["1", "3"], "response 1 > response 3 > response 2")
            else:
                expect(page.locator("#responses li")).to_have_count(3)
                page.keyboard.press("u")
                expect(page.locator("#order")).to_have_text("all unacceptable")
                page.keyboard.press("c")
                page.keyboard.type("all off topic")
                submit_and_wait(page)
            expect(page).to_have_url(f"{url}/queue")
            expect(page.locator("#queue-summary")).to_have_text("All 4 done. Thank you!")
            assert page.evaluate("typeof window.__pwned") == "undefined"
            page.click("#queue li a")  # one's own past answer
            expect(page.locator("#answer")).to_have_text(f"Hello, I am {name}.")
            page.context.close()

        admin_page = new_page(browser)
        admin_page.goto(f"{url}/admin/{admin}")
        row = admin_page.locator("tr[data-project=ranks] td")
        expect(row.nth(3)).to_have_text("4 of 4")
        expect(row.nth(4)).to_have_text("alice: 2/2, bob: 2/2 (1 unacceptable)")
        expect(row.nth(5)).to_have_text("pairwise 1.00, Kendall's tau 1.00 (1 shared items)")

    db_url = f"sqlite:///{path}"
    demos, ranks = tmp_path / "demos.jsonl", tmp_path / "ranks.jsonl"
    for project, out in (("demos", demos), ("ranks", ranks)):
        assert main(["studio", "export", "--db", db_url, "--project", project,
                     "--out", str(out)]) == 0
    written = [json.loads(line) for line in demos.read_text().splitlines()]
    assert {r["response"] for r in written} == {"Hello, I am alice.", "Hello, I am bob.",
                                                "<i>plain</i> text"}
    assert [r["ranking"] for r in map(json.loads, ranks.read_text().splitlines())] == \
        [[1, 0, 2], [1, 0, 2], [0, 2, 1]]
    assert main(["sft", "--base", str(tiny_run), "--data", str(demos), "--val-data", str(demos),
                 "--out", str(tmp_path / "sft"), *TRAIN]) == 0
    assert main(["rm", "--base", str(tmp_path / "sft"), "--data", str(ranks),
                 "--val-data", str(ranks), "--out", str(tmp_path / "rm"), *TRAIN]) == 0
    for run, data in (("sft", demos), ("rm", ranks)):  # trained 2 steps on what was exported
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        assert summary["steps"] == 2 and str(data) in json.dumps(summary["config"])
    db.close()


def test_responses_with_html_show_as_text_and_a_bad_link_shows_nothing(browser, tmp_path):
    db = Database(tmp_path / "studio.db")
    pid = store.create_project(db, "r", "rank", [{"prompt": "<b>Pick</b>",
                                                  "responses": [EVIL, "<u>two</u>"]}])
    aid, token = store.create_annotator(db, "ann")
    store.assign(db, pid, [aid], 1)
    with running(create_app(db)) as url:
        page = new_page(browser)
        response = page.goto(f"{url}/a/not-a-token")
        assert response.status == 401 and "Pick" not in page.content()
        page.goto(f"{url}/a/{token}")
        expect(page.locator("#progress")).to_have_text("0 of 1 done")
        page.keyboard.press("Enter")
        expect(page.locator("#responses .text")).to_have_text([EVIL, "<u>two</u>"])
        expect(page.locator("#prompt")).to_have_text("<b>Pick</b>")
        assert page.locator("#item-view b, #item-view u, #item-view img, "
                            "#item-view script").count() == 0
        page.keyboard.press("2")  # the last one is implied
        expect(page.locator("#order")).to_have_text("response 2 > response 1")
        page.keyboard.press("Control+Enter")
        expect(page.locator("#queue-summary")).to_have_text("All 1 done. Thank you!")
        assert page.evaluate("typeof window.__pwned") == "undefined"
    assert store.answers(db, pid)[0]["ranking"] == [1, 0]
    db.close()


def effective_colors(page, selector: str) -> tuple[str, str]:
    """(text colour, the first non-transparent background behind it) of an element."""
    return tuple(page.evaluate("""(sel) => {
        const el = document.querySelector(sel);
        let bg = "rgba(0, 0, 0, 0)";
        for (let e = el; e && bg === "rgba(0, 0, 0, 0)"; e = e.parentElement)
            bg = getComputedStyle(e).backgroundColor;
        return [getComputedStyle(el).color, bg];
    }""", selector))


def test_the_pages_say_where_to_go_and_what_is_ranked_where(browser, tmp_path):
    """Issue 17: / was a bare 404; the Submit keycaps were white on white; the done queue
    said "Enter opens it" with nothing to open; a rank showed as "#1 of 3" beside the
    response's own number."""
    db = Database(tmp_path / "studio.db")
    pid = store.create_project(db, "r", "rank", [{"prompt": "2 plus 3?",
                                                  "responses": ["5", "6", "7"]}])
    aid, token = store.create_annotator(db, "ann")
    store.assign(db, pid, [aid], 1)
    admin = store.set_admin_token(db)
    with running(create_app(db)) as url:
        page = new_page(browser)
        response = page.goto(f"{url}/")
        assert response.status == 200
        expect(page.locator("body")).to_contain_text("gptsmith studio init")
        expect(page.locator("body")).to_contain_text("personal link")
        assert page.locator("#to-queue, #to-admin").count() == 0
        page.goto(f"{url}/admin/{admin}")
        page.goto(f"{url}/a/{token}")
        page.goto(f"{url}/")  # signed in: a link to each page
        expect(page.locator("#to-queue")).to_have_attribute("href", "/queue")
        expect(page.locator("#to-admin")).to_have_attribute("href", "/admin")
        expect(page.locator("body")).to_contain_text("Signed in as ann")

        page.goto(f"{url}/queue")
        expect(page.locator("#queue-hint-todo")).to_be_visible()
        page.keyboard.press("Enter")
        expect(page.locator("#responses li")).to_have_count(3)
        for key in ("2", "3"):
            page.keyboard.press(key)
        places = page.locator("#responses .place")
        expect(places).to_have_text(["· ranked 3rd of 3 (worst)", "· ranked 1st of 3 (best)",
                                     "· ranked 2nd of 3"])
        expect(page.locator("#responses .label").nth(1)).to_have_text(
            "Response 2 · ranked 1st of 3 (best)")
        expect(page.locator("#order")).to_have_text("response 2 > response 3 > response 1")
        for n in (1, 2):
            color, background = effective_colors(page, f"#submit kbd:nth-of-type({n})")
            assert color != background, (color, background)
        page.keyboard.press("Control+Enter")
        expect(page.locator("#queue-summary")).to_have_text("All 1 done. Thank you!")
        expect(page.locator("#queue-hint-done")).to_be_visible()
        assert "Enter" not in page.inner_text("#queue-view")  # what shows, not hidden text
        page.click("#queue li a")
        expect(page.locator("#answer")).to_have_text(
            "Best first: response 2 > response 3 > response 1")
        expect(page.locator("#rank-hint")).to_be_hidden()
        response = page.goto(f"{url}/no/such/page")
        assert response.status == 404
        expect(page.locator("a[href='/']")).to_have_text("Where to go")
        page.screenshot(path=str(tmp_path / "404.png"))
    db.close()


def test_an_annotator_typed_while_the_tables_reload_is_added(browser, tmp_path):
    """The page showed a new annotator's link, then reloaded its tables with the Add button
    disabled, so Enter on the next name did nothing (this way the keyboard test above once
    failed CI: the link stayed alice's). Here each reload's answer is held until both
    names are added, and the stale one (alice only) arrives last: it must not undo bob."""
    db = Database(tmp_path / "studio.db")
    admin = store.set_admin_token(db)
    with running(create_app(db)) as url:
        page = new_page(browser)
        page.goto(f"{url}/admin/{admin}")
        expect(page).to_have_url(f"{url}/admin")
        held = []
        page.route("**/api/admin/state", lambda route: held.append((route, route.fetch())))
        for name in ("alice", "bob"):
            page.fill("#a-name", name)
            page.press("#a-name", "Enter")
            expect(page.locator("#link-name")).to_have_text(name)
        assert [a["name"] for a in store.find_annotators(db)] == ["alice", "bob"]
        for _ in range(100):  # bob's reload is asked for just after his link shows
            if len(held) == 2:
                break
            page.wait_for_timeout(50)
        assert len(held) == 2
        for route, answer in reversed(held):  # the newer reload first, the stale one last
            route.fulfill(response=answer)
        page.wait_for_timeout(300)  # time for the stale answer to be (wrongly) drawn
        expect(page.locator("#s-annotators")).to_contain_text("bob")
