"""The studio's database: a thin layer over the DB-API for SQLite (default) and PostgreSQL.

A URL picks the database: a path or ``sqlite:///studio.db`` (``sqlite:////abs/path.db``), or
``postgresql://user:password@host/dbname`` (needs ``pip install 'gptsmith[postgres]'``).
Queries are written once with ``?`` placeholders and run on either.

SQLite runs in WAL mode (readers never block the writer), with foreign keys on, a busy
timeout, and ``synchronous=FULL``: every commit is fsynced before it returns, so a submission
an annotator was told is saved survives a power cut, not only a killed process (``NORMAL``
in WAL mode may lose the last commits on power loss). Annotators write at human speed, so
one fsync per commit costs nothing that matters. Writes take the write lock at once
(``BEGIN IMMEDIATE``), so two writers never deadlock upgrading a read lock.

The schema is an ordered list of migrations; ``schema_version`` holds how many have run, and
the missing ones are applied at start inside one transaction.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from gptsmith.errors import GptsmithError

# Each migration is a list of statements; {pk} and {float} are filled in per database.
MIGRATIONS: list[list[str]] = [
    [  # 1: projects, items, annotators, assignments, answers
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE projects (id {pk}, name TEXT NOT NULL UNIQUE, "
        "kind TEXT NOT NULL CHECK (kind IN ('demonstrate', 'rank')), model TEXT, k INTEGER, "
        "created {float} NOT NULL)",
        "CREATE TABLE items (id {pk}, "
        "project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE, "
        "position INTEGER NOT NULL, prompt TEXT NOT NULL, responses TEXT, "
        "UNIQUE (project_id, position))",
        "CREATE TABLE annotators (id {pk}, name TEXT NOT NULL UNIQUE, "
        "token_hash TEXT NOT NULL UNIQUE, created {float} NOT NULL)",
        "CREATE TABLE assignments (id {pk}, "
        "item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE, "
        "annotator_id INTEGER NOT NULL REFERENCES annotators(id) ON DELETE CASCADE, "
        "UNIQUE (item_id, annotator_id))",
        "CREATE INDEX assignments_by_annotator ON assignments (annotator_id)",
        "CREATE TABLE answers (id {pk}, "
        "assignment_id INTEGER NOT NULL UNIQUE REFERENCES assignments(id) ON DELETE CASCADE, "
        "submission_id TEXT NOT NULL UNIQUE, response TEXT, ranking TEXT, "
        "unacceptable INTEGER NOT NULL DEFAULT 0, comment TEXT NOT NULL DEFAULT '', "
        "created {float} NOT NULL)",
    ],
    [  # 2: drafts saved while typing; per-project instructions shown to annotators
        "CREATE TABLE drafts (assignment_id INTEGER PRIMARY KEY "
        "REFERENCES assignments(id) ON DELETE CASCADE, body TEXT NOT NULL, "
        "updated {float} NOT NULL)",
        "ALTER TABLE projects ADD COLUMN instructions TEXT NOT NULL DEFAULT ''",
    ],
]
DIALECT = {"sqlite": {"pk": "INTEGER PRIMARY KEY AUTOINCREMENT", "float": "REAL"},
           "postgres": {"pk": "BIGSERIAL PRIMARY KEY", "float": "DOUBLE PRECISION"}}


def redacted(url: str) -> str:
    """``url`` without the password (``mysql://user:pw@host/db`` -> ``mysql://…@host/db``)."""
    return re.sub(r"//[^@/]*@", "//…@", url)


class Tx:
    """One transaction: queries with ``?`` placeholders, rows as dicts. Every ``?`` is a
    placeholder (on PostgreSQL it becomes ``%s``): pass values as parameters, never inline."""

    def __init__(self, conn, kind: str):
        self.conn, self.kind = conn, kind

    def run(self, sql: str, params: tuple | list = ()):
        if self.kind == "postgres":
            sql = sql.replace("%", "%%").replace("?", "%s")
        cur = self.conn.cursor()
        try:
            cur.execute(sql, tuple(params))
        except UnicodeEncodeError:  # a lone surrogate that got past the checks at the edge
            raise GptsmithError("text that is not valid Unicode (a lone surrogate) cannot be "
                                "stored") from None
        return cur

    def all(self, sql: str, params: tuple | list = ()) -> list[dict]:
        cur = self.run(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def one(self, sql: str, params: tuple | list = ()) -> dict | None:
        rows = self.all(sql, params)
        return rows[0] if rows else None

    def value(self, sql: str, params: tuple | list = ()):
        row = self.run(sql, params).fetchone()
        return row[0] if row else None

    def insert(self, sql: str, params: tuple | list = ()) -> int:
        """Run an INSERT and return the new row's id."""
        return self.run(sql + " RETURNING id", params).fetchone()[0]

    @property
    def for_update(self) -> str:
        """Row lock suffix for a SELECT: PostgreSQL needs it; SQLite's writer already holds
        the database lock (BEGIN IMMEDIATE)."""
        return " FOR UPDATE" if self.kind == "postgres" else ""


class Database:
    """Connections (one per thread), transactions, migrations."""

    def __init__(self, url: str | Path, migrate: bool = True, upto: int | None = None):
        url = str(url)
        if url.startswith(("postgresql://", "postgres://")):
            self.kind, self.target = "postgres", url
            try:
                import psycopg
            except ImportError:
                raise GptsmithError(
                    f"--db {url.split('@')[-1]}: PostgreSQL needs psycopg 3; install it with "
                    "pip install 'gptsmith[postgres]' (or pip install 'psycopg[binary]')"
                ) from None
            self.integrity_error: tuple = (psycopg.IntegrityError,)
        else:
            scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+)://", url)
            if scheme and scheme[1] != "sqlite":
                raise GptsmithError(
                    f"--db {redacted(url)}: unknown database {scheme[1]!r}; the studio "
                    "keeps its data in SQLite (a path, or sqlite:///studio.db) or PostgreSQL "
                    "(postgresql://user:password@host/dbname)")
            path = url.removeprefix("sqlite:///") if url.startswith("sqlite:") else url
            if not path or path == ":memory:" or url.startswith("sqlite:") and \
                    not url.startswith("sqlite:///"):
                raise GptsmithError(f"--db {url}: give a file, e.g. sqlite:///studio.db or "
                                    "postgresql://user:password@host/dbname")
            if Path(path).is_dir():
                raise GptsmithError(f"--db {path}: a directory; give a database file, e.g. "
                                    f"{Path(path) / 'studio.db'}")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.kind, self.target = "sqlite", path
            self.integrity_error = (sqlite3.IntegrityError,)
        self.local = threading.local()
        self.lock = threading.Lock()
        self.conns: list = []
        if migrate:
            try:
                self.migrate(upto)
            except sqlite3.DatabaseError as e:  # e.g. a file that is not a database
                self.close()
                raise GptsmithError(f"--db {self.target}: cannot open it as an SQLite "
                                    f"database ({e})") from None

    def _connect(self):
        if self.kind == "postgres":
            import psycopg

            return psycopg.connect(self.target, autocommit=False)
        conn = sqlite3.connect(self.target, isolation_level=None, check_same_thread=False,
                               timeout=30)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def conn(self):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = self._connect()
            with self.lock:
                self.conns.append(conn)
        return conn

    @contextlib.contextmanager
    def transaction(self, write: bool = False) -> Iterator[Tx]:
        """A transaction on this thread's connection, committed when the block ends and
        rolled back if it raises."""
        conn = self.conn()
        if self.kind == "sqlite":
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield Tx(conn, self.kind)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def version(self) -> int:
        with self.transaction() as tx:
            if self.kind == "sqlite":
                found = tx.value("SELECT count(*) FROM sqlite_master WHERE name = ?",
                                 ("schema_version",))
            else:
                found = tx.value("SELECT count(*) FROM information_schema.tables "
                                 "WHERE table_name = ?", ("schema_version",))
            if not found:
                return 0
            return tx.value("SELECT version FROM schema_version") or 0

    def migrate(self, upto: int | None = None) -> int:
        """Apply the migrations not yet run (up to ``upto``), all in one transaction."""
        upto = len(MIGRATIONS) if upto is None else upto
        with self.transaction(write=True) as tx:
            if self.kind == "postgres":  # one migrator at a time
                tx.run("SELECT pg_advisory_xact_lock(7281)")
            tx.run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = tx.value("SELECT version FROM schema_version")
            if version is None:
                tx.run("INSERT INTO schema_version (version) VALUES (0)")
                version = 0
            if version > len(MIGRATIONS):
                raise GptsmithError(f"the database is at schema version {version}, newer than "
                                    f"this gptsmith ({len(MIGRATIONS)}); upgrade gptsmith")
            for statements in MIGRATIONS[version:upto]:
                for sql in statements:
                    tx.run(sql.format(**DIALECT[self.kind]))
            if upto > version:
                tx.run("UPDATE schema_version SET version = ?", (upto,))
            return max(version, upto)

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` ('ok' when sound); PostgreSQL: 'ok'."""
        if self.kind != "sqlite":
            return "ok"
        rows = self.conn().execute("PRAGMA integrity_check").fetchall()
        return "; ".join(r[0] for r in rows)

    def close(self) -> None:
        with self.lock:
            for conn in self.conns:
                with contextlib.suppress(Exception):
                    conn.close()
            self.conns.clear()
        self.local = threading.local()
