"""Pre-training corpora: the built-in default, or the user's own files.

Accepted: a ``.txt`` file, a directory of them (searched recursively), ``.jsonl`` with a
``text`` field, ``.parquet`` with a ``text`` column (needs pyarrow). Any problem raises an
error naming the file and line (or row) before anything is written.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gptsmith.data.world import World
from gptsmith.errors import GptsmithError, located

DEFAULT = "default"


@dataclass
class Document:
    text: str
    source: str  # "file:line", "file:row N", or "shakespeare/hamlet"


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise located(str(path), line, f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at offset "
                      f"{e.start}); convert the file to UTF-8") from None


def _read_txt(path: Path) -> Iterator[Document]:
    raw = path.read_bytes()
    if not raw.strip():
        raise located(str(path), None, "file is empty")
    yield Document(_decode(raw, path).replace("\r\n", "\n"), str(path))


def _read_jsonl(path: Path, field: str) -> Iterator[Document]:
    raw = path.read_bytes()
    if not raw.strip():
        raise located(str(path), None, "file is empty")
    for n, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise located(str(path), n, "invalid UTF-8; convert the file to UTF-8") from None
        except json.JSONDecodeError as e:
            raise located(str(path), n, f"not valid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise located(str(path), n, "JSON nested too deeply") from None
        if not isinstance(record, dict) or field not in record:
            raise located(str(path), n, f"record has no {field!r} field")
        if not isinstance(record[field], str):
            kind = type(record[field]).__name__
            raise located(str(path), n, f"field {field!r} must be a string, got {kind}")
        try:
            record[field].encode("utf-8")
        except UnicodeEncodeError:
            raise located(str(path), n, f"field {field!r} holds a lone surrogate (half a "
                          "character); it is not text") from None
        if record[field]:
            yield Document(record[field], f"{path}:{n}")


def _read_parquet(path: Path, field: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise GptsmithError(
            f"{path}: reading Parquet needs pyarrow: pip install 'gptsmith[parquet]'"
        ) from None
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise located(str(path), None, f"not a readable Parquet file ({e})") from None
    if field not in table.schema_arrow.names:
        raise located(str(path), None, f"no {field!r} column (columns: {table.schema_arrow.names})")
    row = 0
    for batch in table.iter_batches(columns=[field]):
        for value in batch.column(0).to_pylist():
            row += 1
            if value is None:
                raise located(str(path), row, f"row {row}: {field!r} is null")
            if not isinstance(value, str):
                raise located(str(path), row, f"row {row}: {field!r} must be a string")
            if value:
                yield Document(value, f"{path}:row {row}")
    if row == 0:
        raise located(str(path), None, "file has no rows")


def read_corpus(spec: str, field: str = "text", world: World | None = None) -> Iterator[Document]:
    """Documents of a corpus: ``default`` (the tiny ``world``, the default one if None) or a
    path (.txt, directory, .jsonl, .parquet)."""
    if spec == DEFAULT:
        yield from default_corpus(world)
        return
    path = Path(spec)
    if not path.exists():
        raise GptsmithError(f"{path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl", ".parquet"))
        if not files:
            raise GptsmithError(f"{path}: directory holds no .txt, .jsonl or .parquet files")
    else:
        files = [path]
    count = 0
    for f in files:
        if f.suffix == ".jsonl":
            docs = _read_jsonl(f, field)
        elif f.suffix == ".parquet":
            docs = _read_parquet(f, field)
        elif f.suffix == ".txt" or path.is_file():
            docs = _read_txt(f)
        for doc in docs:
            count += 1
            yield doc
    if count == 0:
        raise GptsmithError(f"{path}: corpus holds no text")


def default_corpus(world: World | None = None) -> list[Document]:
    """The tiny world: Shakespeare's works in passages, mixed with arithmetic prose.

    ``world.arithmetic_share`` is the share of the corpus's bytes that is arithmetic prose.
    Passages
    (about 2 KB, cut at blank lines) and arithmetic documents are shuffled together so every
    stretch of the token stream holds both.
    """
    from gptsmith.data.fetch import shakespeare_texts

    world = world or World()
    docs = []
    for name, text in shakespeare_texts():
        passage, size = [], 0
        for block in text.split("\n\n"):
            passage.append(block)
            size += len(block) + 2
            if size >= 2000:
                docs.append(Document("\n\n".join(passage).strip(), f"shakespeare/{name}"))
                passage, size = [], 0
        if passage:
            docs.append(Document("\n\n".join(passage).strip(), f"shakespeare/{name}"))
    literature = sum(len(d.text) for d in docs)
    share = world.arithmetic_share
    n_bytes = int(literature * share / (1 - share))
    docs += [Document(t, "world") for t in world.documents(n_bytes)]
    random.Random(world.seed).shuffle(docs)
    return [d for d in docs if d.text]
