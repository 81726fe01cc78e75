"""The studio's web application: admin and annotator pages over a JSON API.

Who is asking is known from a secret token, sent as ``Authorization: Bearer TOKEN`` (scripts)
or kept in an HttpOnly cookie set when a personal link ``/a/TOKEN`` (``/admin/TOKEN`` for the
admin) is opened; the link then redirects to a page whose URL holds no token, and no page
sends a Referer. A cookie is sent by the browser on its own, so a request that changes
anything and is authenticated by cookie must also come from our origin (``Origin`` and
``Sec-Fetch-Site``) and carry the session's CSRF token in ``X-CSRF-Token``. Pages put every
prompt and response on screen as text (``textContent``), and the CSP allows no inline script.

    GET  /a/TOKEN, /admin/TOKEN          sign in from a personal link
    GET  /                               where to go (the links, where they come from)
    GET  /queue, /item/ID, /admin        pages
    GET  /api/me, /api/queue             the annotator and their queue
    GET  /api/assignments/ID             one assignment (403 if not yours)
    PUT  /api/assignments/ID/draft       {"body": str}
    POST /api/assignments/ID/answer      {"submission_id", "response" | "ranking", "unacceptable",
                                          "comment"}
    GET  /api/admin/state                projects, progress, agreement, annotators, models
    POST /api/admin/projects|annotators|assign
    GET  /api/admin/export/ID            the project's answers as .jsonl (?combine=mean-rank:
                                         one record per item, annotators' rankings merged)
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptsmith.errors import GptsmithError
from gptsmith.studio import store
from gptsmith.studio.db import Database
from gptsmith.studio.export import export_records
from gptsmith.studio.prompts import parse_prompts, sample_responses
from gptsmith.studio.store import Refused

log = logging.getLogger("gptsmith.studio")
STATIC = Path(__file__).parent / "static"
ASSETS = {"common.js": "text/javascript", "annotate.js": "text/javascript",
          "admin.js": "text/javascript", "studio.css": "text/css"}
ANNOTATOR_COOKIE, ADMIN_COOKIE = "studio_annotator", "studio_admin"
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def csrf_secret(db: Database) -> bytes:
    """The key CSRF tokens are made with, kept in the database so they outlive a restart."""
    with db.transaction(write=True) as tx:
        tx.run("INSERT INTO settings (key, value) VALUES ('csrf_secret', ?) "
               "ON CONFLICT (key) DO NOTHING", (secrets.token_hex(32),))
        return bytes.fromhex(tx.value("SELECT value FROM settings WHERE key = 'csrf_secret'"))


@dataclass
class Studio:
    """What the routes share: the database, the models offered for sampling, the limits."""

    db: Database
    models: dict[str, str]
    secret: bytes
    max_body: int
    pages: dict[str, str] = field(default_factory=lambda: _read(("admin.html", "annotate.html",
                                                                 "index.html")))
    assets: dict[str, str] = field(default_factory=lambda: _read(ASSETS))

    def csrf_for(self, token: str) -> str:
        return hmac.new(self.secret, b"csrf:" + token.encode(), hashlib.sha256).hexdigest()

    def page(self, name: str) -> HTMLResponse:
        return HTMLResponse(self.pages[name])


def _read(names) -> dict[str, str]:
    return {name: (STATIC / name).read_text(encoding="utf-8") for name in names}


def studio(request: Request) -> Studio:
    """The app's :class:`Studio` (a dependency)."""
    return request.app.state.studio


# -- errors --------------------------------------------------------------------------------

def fail(request: Request, status: int, message: str):
    """An error as JSON for the API, as a small HTML page otherwise."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": {"message": message, "status": status}}, status,
                            headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)
    return HTMLResponse(f"<!doctype html><meta charset=utf-8><title>{status}</title>"
                        f"<p>{html.escape(message)}</p><p><a href=/>Where to go</a></p>", status)


async def refused(request: Request, e: Refused):
    return fail(request, e.status, str(e))


async def user_error(request: Request, e: GptsmithError):
    return fail(request, 400, str(e))


async def invalid_request(request: Request, e: RequestValidationError):
    """A path or query value of the wrong type (``/api/assignments/abc``): 400, naming it."""
    problems = "; ".join(f"{'/'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}"
                         for err in e.errors()[:3])
    return fail(request, 400, f"{request.method} {request.url.path}: {problems}")


async def http_error(request: Request, e: StarletteHTTPException):
    return fail(request, e.status_code, f"{request.method} {request.url.path}: {e.detail}")


async def internal_error(request: Request, e: Exception):
    log.exception("error serving %s", request.url.path)
    return fail(request, 500, "internal server error (see the server log)")


async def security_headers(request: Request, call_next):
    response = await call_next(request)
    for k, v in HEADERS.items():
        response.headers.setdefault(k, v)
    return response


# -- who is asking (dependencies) ------------------------------------------------------------

def credential(request: Request, cookie: str) -> tuple[str | None, bool]:
    """(token, sent by cookie?)"""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    return request.cookies.get(cookie), True


def check_csrf(request: Request, token: str) -> None:
    """A cookie-authenticated write must come from our own pages."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise Refused(403, f"cross-site request refused (Sec-Fetch-Site: {site})")
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise Refused(403, "cross-origin request refused")
    given = request.headers.get("x-csrf-token", "")
    if not hmac.compare_digest(given.encode(), studio(request).csrf_for(token).encode()):
        raise Refused(403, "missing or wrong CSRF token: reload the page")


async def annotator(request: Request) -> dict:
    """The signed-in annotator, with their token (401 if none, 403 for a forged write)."""
    token, by_cookie = credential(request, ANNOTATOR_COOKIE)
    who = await run_in_threadpool(store.annotator_by_token, studio(request).db, token)
    if who is None:
        raise Refused(401, "sign in with your personal link")
    if by_cookie and request.method not in ("GET", "HEAD"):
        check_csrf(request, token)
    return {**who, "token": token}


async def admin(request: Request) -> str:
    """The admin's token (401 if it is not the admin, 403 for a forged write)."""
    token, by_cookie = credential(request, ADMIN_COOKIE)
    if not await run_in_threadpool(store.is_admin, studio(request).db, token):
        raise Refused(401, "sign in with the admin link")
    if by_cookie and request.method not in ("GET", "HEAD"):
        check_csrf(request, token)
    return token


MAX_DEPTH = 16  # the deepest a real request goes is 2 (a list inside the object)


def check_json(value, depth: int = MAX_DEPTH) -> None:
    """Refuse (400) a parsed body nested deeper than ``depth`` or holding a string that is
    not valid Unicode (a lone surrogate such as ``"\\ud800"``), naming where. Walks without
    recursion, so no body can exhaust the stack."""
    todo = [(value, "", 0)]
    while todo:
        v, where, level = todo.pop()
        if level > depth:
            raise Refused(400, f"{where}: the JSON is nested deeper than {depth} levels")
        if isinstance(v, dict):
            for key, item in v.items():
                check_json_text(key, f"a key of {where or 'the body'}")
                key = key if len(key) <= 40 else key[:40] + "…"
                todo.append((item, f"{where}.{key}" if where else key, level + 1))
        elif isinstance(v, list):
            todo.extend((item, f"{where}[{i}]", level + 1) for i, item in enumerate(v))
        elif isinstance(v, str):
            check_json_text(v, where)


def check_json_text(text: str, where: str) -> None:
    """Text both databases can store: valid Unicode, no NUL (PostgreSQL refuses it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise Refused(400, f"{where}: not valid Unicode (a lone surrogate, "
                      f"{text[e.start]!r}, at character {e.start})") from None
    if "\x00" in text:
        raise Refused(400, f"{where}: holds a NUL character (\\u0000) at character "
                      f"{text.index(chr(0))}")


async def json_body(request: Request) -> dict:
    """The body as a JSON object, refused past the size limit before it is all read, and
    refused when nested too deep or holding text that is not valid Unicode or holds NUL."""
    max_body = studio(request).max_body
    size = request.headers.get("content-length", "")
    if size.isascii() and size.isdigit() and int(size) > max_body:
        raise Refused(413, f"the request body exceeds {max_body} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > max_body:
            raise Refused(413, f"the request body exceeds {max_body} bytes")
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Refused(400, "the request body is not valid JSON") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise Refused(400, f"the request body cannot be read: {e}"[:200]) from None
    except RecursionError:
        raise Refused(400, f"the request body is nested deeper than {MAX_DEPTH} levels") \
            from None
    if not isinstance(body, dict):
        raise Refused(400, "the request body must be a JSON object")
    check_json(body)
    return body


def text_field(body: dict, name: str, default: str = "") -> str:
    """``body[name]`` as a string (``default`` when absent or null); 400 for another type."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise Refused(400, f"{name}: a string, not {type(value).__name__}")
    return value


UseStudio = Annotated[Studio, Depends(studio)]
Annotator = Annotated[dict, Depends(annotator)]
AdminToken = Annotated[str, Depends(admin)]
Body = Annotated[dict, Depends(json_body)]

# -- pages ---------------------------------------------------------------------------------

pages = APIRouter()


def sign_in(request: Request, token: str, cookie: str, to: str):
    response = RedirectResponse(to, status_code=303)
    response.set_cookie(cookie, token, httponly=True, samesite="lax", path="/",
                        secure=request.url.scheme == "https")
    return response


@pages.get("/")
async def home(request: Request, s: UseStudio):
    """Where to go: the links people sign in with, and where they come from; someone signed
    in on this browser gets a link to their page."""
    who = await run_in_threadpool(store.annotator_by_token, s.db,
                                  request.cookies.get(ANNOTATOR_COOKIE))
    admin = await run_in_threadpool(store.is_admin, s.db, request.cookies.get(ADMIN_COOKIE))
    links = []
    if who:
        links.append(f'Signed in as {html.escape(who["name"])}: <a href="/queue" '
                     'id="to-queue">your queue</a>')
    if admin:
        links.append('Signed in as the admin: <a href="/admin" id="to-admin">the admin page</a>')
    signed_in = "".join(f'<p class="box">{line}</p>' for line in links)
    return HTMLResponse(s.pages["index.html"].replace("<!--signed-in-->", signed_in))


@pages.get("/health")
async def health():
    return {"status": "ok"}


@pages.get("/a/{token}")
async def annotator_link(request: Request, token: str, s: UseStudio):
    if await run_in_threadpool(store.annotator_by_token, s.db, token) is None:
        raise Refused(401, "this link is not valid; ask your admin for yours")
    return sign_in(request, token, ANNOTATOR_COOKIE, "/queue")


@pages.get("/admin/{token}")
async def admin_link(request: Request, token: str, s: UseStudio):
    if not await run_in_threadpool(store.is_admin, s.db, token):
        raise Refused(401, "this admin link is not valid")
    return sign_in(request, token, ADMIN_COOKIE, "/admin")


@pages.get("/queue")
async def queue_page(who: Annotator, s: UseStudio):
    return s.page("annotate.html")


@pages.get("/item/{aid}")
async def item_page(aid: int, who: Annotator, s: UseStudio):
    await run_in_threadpool(store.assignment, s.db, who["id"], aid)  # 403 if not theirs
    return s.page("annotate.html")


@pages.get("/admin")
async def admin_page(token: AdminToken, s: UseStudio):
    return s.page("admin.html")


@pages.get("/static/{name}")
async def asset(name: str, s: UseStudio):
    if name not in s.assets:
        raise Refused(404, "no such file")
    return PlainTextResponse(s.assets[name], media_type=ASSETS[name])


# -- the annotator's API -------------------------------------------------------------------

annotating = APIRouter(prefix="/api")


@annotating.get("/me")
async def me(who: Annotator, s: UseStudio):
    return {"name": who["name"], "csrf": s.csrf_for(who["token"])}


@annotating.get("/queue")
async def queue(who: Annotator, s: UseStudio):
    rows = await run_in_threadpool(store.queue, s.db, who["id"])
    for r in rows:
        r["done"], r["prompt"] = bool(r["done"]), r["prompt"][:120]
    return {"name": who["name"], "done": sum(r["done"] for r in rows), "total": len(rows),
            "assignments": rows}


@annotating.get("/assignments/{aid}")
async def get_assignment(aid: int, who: Annotator, s: UseStudio):
    return await run_in_threadpool(store.assignment, s.db, who["id"], aid)


@annotating.put("/assignments/{aid}/draft")
async def put_draft(aid: int, who: Annotator, body: Body, s: UseStudio):
    saved = await run_in_threadpool(store.save_draft, s.db, who["id"], aid,
                                    text_field(body, "body", None))
    return {"saved": saved}


@annotating.post("/assignments/{aid}/answer")
async def post_answer(aid: int, who: Annotator, body: Body, s: UseStudio):
    try:
        status = await run_in_threadpool(store.submit, s.db, who["id"], aid,
                                         body.get("submission_id"), body)
    except s.db.integrity_error:  # PostgreSQL: a race on a submission id
        raise Refused(409, "this submission id was used for another item") from None
    return {"status": status}


# -- the admin's API -----------------------------------------------------------------------

administering = APIRouter(prefix="/api/admin")


@administering.get("/state")
async def state(token: AdminToken, s: UseStudio):
    return {"csrf": s.csrf_for(token), "models": list(s.models),
            "projects": await run_in_threadpool(store.progress, s.db),
            "annotators": await run_in_threadpool(store.find_annotators, s.db)}


@administering.post("/projects")
async def new_project(token: AdminToken, body: Body, s: UseStudio):
    kind, model = text_field(body, "kind"), text_field(body, "model") or None
    name, instructions = text_field(body, "name"), text_field(body, "instructions")
    items = parse_prompts(text_field(body, "prompts"), "prompts")
    dropped = 0
    if kind == "rank":
        await sample_missing(s, body, items, model)
        dropped = sum(len(it["responses"]) < 2 for it in items)
        items = [it for it in items if len(it["responses"]) >= 2]
    pid = await run_in_threadpool(store.create_project, s.db, name, kind, items, model,
                                  instructions)
    return {"id": pid, "items": len(items), "dropped": dropped}


def number(body: dict, name: str, default, low, high, whole: bool = True):
    """``body[name]`` checked to be a number from ``low`` to ``high`` (a whole one if
    ``whole``); ``default`` when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not (isinstance(value, int) or isinstance(value, float) and
                                       (value.is_integer() or not whole)) \
            or not low <= value <= high:
        raise Refused(400, f"{name}: {'a whole number' if whole else 'a number'} from {low} "
                      f"to {high}, got {json.dumps(value)[:40]}")
    return int(value) if whole else float(value)


def sampling_settings(body: dict) -> tuple[int, int, float, int]:
    """(k, max_tokens, temperature, seed) of a rank project's request, checked."""
    return (number(body, "k", 4, 2, 9),  # the number keys 1..9 rank them
            number(body, "max_tokens", 64, 1, 4096),
            number(body, "temperature", 1.0, 0, 2, whole=False),
            number(body, "seed", 0, 0, 2**63 - 1))


async def sample_missing(s: Studio, body: dict, items: list[dict], model: str | None) -> None:
    """Give the prompts that came without responses k sampled from ``model``."""
    todo = [it["prompt"] for it in items if not it["responses"]]
    if not todo:
        return
    k, max_tokens, temperature, seed = sampling_settings(body)
    if model not in s.models:
        raise Refused(400, f"choose a model to sample the responses from "
                      f"({', '.join(s.models) or 'start the studio with --model'})")
    sampled = iter(await run_in_threadpool(
        sample_responses, s.models[model], todo, k, max_tokens, temperature, seed))
    for it in items:
        it["responses"] = it["responses"] or next(sampled)


@administering.post("/annotators")
async def new_annotator(request: Request, token: AdminToken, body: Body, s: UseStudio):
    name = text_field(body, "name").strip()
    aid, secret = await run_in_threadpool(store.create_annotator, s.db, name)
    return {"id": aid, "name": name, "link": f"{request.base_url}a/{secret}"}


@administering.post("/assign")
async def assign(token: AdminToken, body: Body, s: UseStudio):
    ids, per_item = body.get("annotators"), body.get("per_item", 1)
    if not isinstance(ids, list) or not ids or not all(type(i) is int for i in ids) \
            or type(per_item) is not int:
        raise Refused(400, "annotators: a list of annotator ids; per_item: a number")
    project = body.get("project")
    if type(project) not in (str, int):
        raise Refused(400, "project: a project's name or id")
    p = await run_in_threadpool(store.find_project, s.db, project)
    added = await run_in_threadpool(store.assign, s.db, p["id"], ids, per_item)
    return {"added": added}


@administering.get("/export/{pid}")
async def export(pid: int, token: AdminToken, s: UseStudio, combine: str = "none"):
    p, records, _ = await run_in_threadpool(export_records, s.db, pid, combine)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    name = f"project-{p['id']}" + ("" if combine == "none" else f"-{combine}")
    return PlainTextResponse(text, media_type="application/jsonl", headers={
        "Content-Disposition": f'attachment; filename="{name}.jsonl"'})


def create_app(db: Database, models: dict[str, str] | None = None,
               max_body: int = 2_000_000) -> FastAPI:
    """The studio over ``db``; ``models`` (name -> run directory) are offered for sampling
    the responses of new rank projects."""
    app = FastAPI(title="gptsmith studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.studio = Studio(db, dict(models or {}), csrf_secret(db), max_body)
    app.add_exception_handler(Refused, refused)
    app.add_exception_handler(GptsmithError, user_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    app.middleware("http")(security_headers)
    for router in (pages, annotating, administering):
        app.include_router(router)
    return app


def serve_studio(db_url: str, host: str = "127.0.0.1", port: int = 8100,
                 admin_token: str | None = None, models: dict[str, str] | None = None) -> None:
    import sys

    import uvicorn

    db = Database(db_url)
    where = f"http://{host}:{port}"
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host} over plain HTTP: put it behind HTTPS (a reverse "
              "proxy), or the annotators' tokens travel in clear text", file=sys.stderr)
    if admin_token:
        store.set_admin_token(db, admin_token)
    elif not store.has_admin_token(db):
        admin_token = store.set_admin_token(db)
        print(f"admin link (shown once; `gptsmith studio init --new-admin-token` makes "
              f"another): {where}/admin/{admin_token}")
    app = create_app(db, models)
    print(f"studio on {db.kind} at {where} ({db_url}); models: {', '.join(models or {}) or 'none'}",
          flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        db.close()
