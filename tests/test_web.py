"""The web chat page served at ``/``, driven in a real headless Chromium against a live server.

The tiny model is untrained, so its replies are random text: these tests look only at how the
page streams, shows and sends text, except where ``page.route`` puts in a reply of our own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import urllib.request
from pathlib import Path

import pytest

from gptsmith.serve import create_app, load_served
from tests.live import running

playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = playwright.expect

TIMEOUT_MS = 10_000


def throttled(app, delay: float = 0.01, hold: threading.Event | None = None):
    """``app`` with each piece of a streamed body held back ``delay`` seconds, so that replies
    of the tiny model take long enough to watch grow; with ``hold``, the end of each stream
    (``data: [DONE]``) is held back until ``hold`` is set: a reply that does not end by itself."""
    async def wrapped(scope, receive, send):
        async def slow_send(message):
            if message["type"] == "http.response.body" and message.get("more_body"):
                await asyncio.sleep(delay)
                while hold is not None and b"data: [DONE]" in message["body"] \
                        and scope["path"] == "/v1/chat/completions" and not hold.is_set():
                    await asyncio.sleep(0.01)
            await send(message)
        await app(scope, receive, slow_send)
    return wrapped


@pytest.fixture(scope="module")
def models(tiny_run):
    """Two names for the tiny run, as if a base and an SFT model were served side by side."""
    models = load_served([f"base={tiny_run}", f"sft={tiny_run}"])
    yield models
    for m in models.values():
        m.batcher.close()


@pytest.fixture(scope="module")
def url(models):
    with running(throttled(create_app(models))) as base:
        yield base


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def chat_requests(page) -> list[dict]:
    """The bodies of the chat requests the page sends, filled in as it sends them."""
    bodies = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data))
            if r.url.endswith("/v1/chat/completions") else None)
    return bodies


def seeded(page, seed: int = 0) -> None:
    """Add a sampling seed to the page's chat requests, so that the untrained model says the
    same on every run: text from its first token on, and no early end."""
    def add_seed(route):
        body = json.loads(route.request.post_data)
        route.continue_(post_data=json.dumps({**body, "seed": seed}))
    page.route("**/v1/chat/completions", add_seed)


def api_reply(url: str, body: dict, seed: int = 0) -> str:
    """The server's whole reply to a chat request the page sent (seeded as :func:`seeded`
    seeds it): the text the page must show."""
    data = json.dumps({**body, "stream": False, "seed": seed}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["choices"][0]["message"]["content"]


def open_chat(page, url: str, max_tokens: int = 12) -> None:
    page.goto(url)
    expect(page.locator("#model option")).not_to_have_count(0)
    page.click("summary")
    page.fill("#max-tokens", str(max_tokens))


def say(page, text: str, state: str = "done") -> None:
    """Type ``text``, press Enter, wait until the reply ends in ``state``."""
    n = page.locator(".msg.assistant").count()
    page.fill("#message", text)
    page.press("#message", "Enter")
    expect(page.locator(".msg.assistant").nth(n)).to_have_attribute("data-state", state)


def test_reply_streams_in_and_the_whole_conversation_is_sent(page, url):
    bodies = chat_requests(page)
    seeded(page)
    open_chat(page, url)
    page.evaluate("""() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const text = document.querySelector('.msg.assistant .text');
            if (text) window.__lengths.push(text.textContent.length);
        }).observe(document.getElementById('transcript'),
                   {childList: true, subtree: true, characterData: true});
    }""")
    say(page, "Hello there")
    lengths = page.evaluate("window.__lengths")
    grown = sorted(set(lengths))
    assert len(grown) >= 3, f"the reply did not arrive in pieces: {lengths}"
    assert lengths == sorted(lengths)
    assert page.locator(".msg.assistant .text").first.text_content() == \
        api_reply(url, bodies[0])
    assert page.locator(".msg.user .text").first.text_content() == "Hello there"
    assert page.input_value("#message") == ""
    assert bodies[0]["stream"] is True and bodies[0]["model"] == "sft"  # the last one given
    assert bodies[0]["messages"] == [{"role": "user", "content": "Hello there"}]
    assert bodies[0]["temperature"] == 0.7 and bodies[0]["max_tokens"] == 12

    page.fill("#system", "Be brief.")
    say(page, "And again")
    first_reply = page.locator(".msg.assistant .text").first.text_content()
    assert [m["role"] for m in bodies[1]["messages"]] == ["system", "user", "assistant", "user"]
    assert bodies[1]["messages"][2]["content"] == first_reply
    assert bodies[1]["messages"][0]["content"] == "Be brief."
    page.fill("#system", "")
    say(page, "Third")
    assert len(bodies[2]["messages"]) == 5 and bodies[2]["messages"][0]["role"] == "user"


def test_events_split_anywhere_are_put_together(page, url):
    page.goto(url)
    events = ['{"choices":[{"delta":{"content":"héllo 👋"}}]}', "[DONE]"]
    sent = "".join(f"data: {e}\r\n\r\n" if i else f"data: {e}\n\n" for i, e in enumerate(events))
    got = page.evaluate("""async (text) => {
        const bytes = new TextEncoder().encode(text), out = [];
        for (const size of [1, 2, 3, 7]) {
            const body = new ReadableStream({start(c) {
                for (let i = 0; i < bytes.length; i += size) c.enqueue(bytes.slice(i, i + size));
                c.close();
            }});
            const events = [];
            for await (const data of sseData(body)) events.push(data);
            out.push(events);
        }
        return out;
    }""", sent)
    assert got == [events] * 4


def test_html_from_the_model_or_the_user_is_shown_as_text(page, url):
    evil = "<script>window.__pwned=1</script><b>bold</b>"
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
              {"choices": [{"index": 0, "delta": {"content": evil[:20]}}]},
              {"choices": [{"index": 0, "delta": {"content": evil[20:]}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, content_type="text/event-stream", body=sse))
    open_chat(page, url)
    mine = '<img src=x onerror="window.__pwned=2"><i>hi</i>'
    say(page, mine)
    assert page.locator(".msg.assistant .text").text_content() == evil
    assert page.locator(".msg.user .text").text_content() == mine
    assert page.locator("#transcript b, #transcript script, #transcript img, "
                        "#transcript i").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"


def test_an_error_from_the_server_is_shown_and_the_message_kept(page, url):
    open_chat(page, url, max_tokens=1000)  # more than the context of 128 tokens
    page.fill("#message", "Too long")
    page.press("#message", "Enter")
    error = page.locator("#error")
    error.wait_for()
    assert "maximum context length is 128 tokens" in error.text_content()
    assert page.locator(".msg").count() == 0
    assert page.input_value("#message") == "Too long"
    page.fill("#max-tokens", "5")
    say(page, "Too long")
    assert page.locator("#error").is_hidden()


def test_model_picker_lists_the_served_models_and_shift_enter_makes_a_new_line(page, url):
    bodies = chat_requests(page)
    open_chat(page, url)
    options = page.locator("#model option").all_text_contents()
    assert options == ["base", "sft"]
    assert page.input_value("#model") == "sft"  # the last model given to serve
    page.select_option("#model", "base")
    page.fill("#message", "Hi")
    page.press("#message", "Shift+Enter")  # a new line, not sent
    page.locator("#message").press_sequentially("there")
    assert page.locator(".msg").count() == 0
    page.press("#message", "Enter")
    expect(page.locator(".msg.assistant")).to_have_attribute("data-state", "done")
    assert bodies[-1]["model"] == "base"
    assert bodies[-1]["messages"] == [{"role": "user", "content": "Hi\nthere"}]
    assert page.locator(".msg.user .text").text_content() == "Hi\nthere"
    assert page.locator(".msg.assistant .who").text_content() == "base"


def test_stop_keeps_the_partial_reply_and_reset_clears(page, models):
    bodies = chat_requests(page)
    seeded(page)
    release = threading.Event()
    with running(throttled(create_app(models), hold=release)) as url:
        try:
            open_chat(page, url, max_tokens=100)
            page.fill("#message", "Tell me a long story")
            page.press("#message", "Enter")
            reply = page.locator(".msg.assistant")
            expect(reply.locator(".text")).to_have_text(re.compile("."))
            assert page.is_enabled("#stop") and page.is_disabled("#send")
            page.click("#stop")
            expect(reply).to_have_attribute("data-state", "stopped")
        finally:
            release.set()
        assert reply.locator(".note").text_content() == "stopped"
        partial = reply.locator(".text").text_content()
        assert partial and api_reply(url, bodies[0]).startswith(partial)
        assert page.is_disabled("#stop") and page.is_enabled("#send")

        page.fill("#max-tokens", "5")
        say(page, "Go on")
        assert bodies[-1]["messages"][1] == {"role": "assistant", "content": partial}

        page.click("#reset")
        assert page.locator(".msg").count() == 0
        say(page, "Fresh start")
        assert len(bodies[-1]["messages"]) == 1


def test_api_key_is_asked_for_then_sent_and_kept(page, tiny_run):
    bodies = []
    page.on("request", lambda r: bodies.append(r.headers.get("authorization"))
            if r.url.endswith("/v1/chat/completions") else None)
    app = create_app(load_served([str(tiny_run)]), api_key="secret")
    with running(app) as url:
        page.goto(url)
        error = page.locator("#error")
        error.wait_for()
        assert "needs an API key" in error.text_content()
        assert page.locator("#key").is_visible()

        page.fill("#max-tokens", "5")
        page.fill("#key", "wrong")
        page.fill("#message", "Hello")
        page.press("#message", "Enter")
        expect(page.locator("#key")).to_be_focused()
        expect(error).to_contain_text("Incorrect or missing API key")
        assert page.locator(".msg").count() == 0
        assert page.input_value("#message") == "Hello"

        page.fill("#key", "secret")
        say(page, "Hello")
        assert bodies[-1] == "Bearer secret"
        assert page.locator("#error").is_hidden()
        assert page.locator("#model option").all_text_contents() == ["tiny"]

        page.reload()
        assert page.input_value("#key") == "secret"
        expect(page.locator("#model option")).to_have_count(1)

        page.click("summary")  # a key gone wrong after the models were listed
        page.fill("#key", "stale")
        page.fill("#message", "Hello again")
        page.press("#message", "Enter")
        expect(page.locator("#key")).to_be_focused()
        expect(error).to_contain_text("needs an API key")
        assert page.locator(".msg").count() == 0
        assert page.input_value("#message") == "Hello again"
        assert bodies[-1] == "Bearer stale"


def test_ten_turns_fit_the_context_by_dropping_the_oldest(page, url, tmp_path):
    """Issue 17 item 1: the page sent max_tokens 200 to a model of 256 tokens and was stuck
    (400) on the fourth message. Now the default reply budget is a quarter of the model's
    context, and the oldest turns leave (greyed, with a note) so that ten turns go on."""
    bodies = chat_requests(page)
    seeded(page)
    page.goto(url)
    expect(page.locator("#model option")).not_to_have_count(0)
    for i in range(10):
        say(page, f"Turn {i + 1}: tell me about the sea and the ships on it.")
        assert page.locator("#error").is_hidden()
    assert page.locator(".msg.assistant").count() == 10
    assert all(b["max_tokens"] == 128 // 4 for b in bodies)  # the tiny run's context: 128
    last = bodies[-1]["messages"]
    assert last[-1]["content"].startswith("Turn 10:") and last[0]["role"] == "user"
    assert len(last) < 19  # older turns were dropped ...
    sent = page.locator(".msg:not(.dropped)")
    assert sent.count() == len(last) + 1  # ... and are greyed out; the reply is not sent yet
    assert sent.first.locator(".text").text_content() == last[0]["content"]
    note = page.locator("#trimmed")
    expect(note).to_be_visible()
    assert "no longer sent" in note.text_content() and "128 tokens" in note.text_content()
    page.screenshot(path=str(tmp_path / "ten-turns.png"), full_page=True)
    shots = os.environ.get("GPTSMITH_SCREENSHOTS")
    if shots:  # where a person looks at it
        page.screenshot(path=str(Path(shots) / "chat-ten-turns.png"), full_page=True)
