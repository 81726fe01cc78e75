"""Demonstrations for SFT: conversations read from the formats people bring.

Formats (detected per record by its fields, or forced with ``fmt``):

- ``pairs``     {"prompt": ..., "response": ...}  (or "completion")
- ``messages``  {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
- ``alpaca``    {"instruction": ..., "input": ..., "output": ...}
- ``sharegpt``  {"conversations": [{"from": "system"|"human"|"gpt", "value": ...}, ...]}

Files: ``.jsonl`` (a record a line), ``.json`` (a list of records), ``.parquet`` (a row a
record). A record that cannot be read raises an error naming file, line and field; with
``skip_bad`` it is skipped and counted instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gptsmith.chat import check_conversation
from gptsmith.errors import GptsmithError, located

FORMATS = ("pairs", "messages", "alpaca", "sharegpt")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


@dataclass
class Conversation:
    messages: list[dict]
    source: str  # "file:line"
    extra: dict = field(default_factory=dict)  # the record's other fields (kept for output)


def detect_format(record: dict) -> str | None:
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and ("response" in record or "completion" in record):
        return "pairs"
    return None


def _string(record: dict, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string"
                         + ("" if key in record else " (missing)"))
    return value


def to_messages(record: dict, fmt: str) -> list[dict]:
    """The record as a list of chat messages; ValueError names the offending field."""
    if fmt == "pairs":
        reply = "response" if "response" in record else "completion"
        return [{"role": "user", "content": _string(record, "prompt")},
                {"role": "assistant", "content": _string(record, reply)}]
    if fmt == "alpaca":
        instruction, extra = _string(record, "instruction"), record.get("input") or ""
        if not isinstance(extra, str):
            raise ValueError("field 'input' must be a string")
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        return [{"role": "user", "content": prompt},
                {"role": "assistant", "content": _string(record, "output")}]
    if fmt == "messages":
        messages = record["messages"]
        if not isinstance(messages, list):
            raise ValueError("field 'messages' must be a list")
        return messages
    if fmt == "sharegpt":
        turns = record["conversations"]
        if not isinstance(turns, list):
            raise ValueError("field 'conversations' must be a list")
        out = []
        for i, t in enumerate(turns):
            if not isinstance(t, dict) or t.get("from") not in SHAREGPT_ROLES:
                raise ValueError(f"conversations[{i}].from must be one of "
                                 f"{', '.join(sorted(SHAREGPT_ROLES))}")
            if not isinstance(t.get("value"), str):
                raise ValueError(f"conversations[{i}].value must be a string")
            out.append({"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]})
        return out
    raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def read_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line or row number, record) from a .jsonl, .json or .parquet file."""
    if not path.exists():
        raise GptsmithError(f"{path}: no such file")
    if not path.is_file():
        raise GptsmithError(f"{path}: a directory; a .jsonl, .json or .parquet file is expected")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise GptsmithError(f"{path}: reading Parquet needs pyarrow") from None
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for unreadable files
            raise located(str(path), None, f"not a readable Parquet file ({e})") from None
        for n, row in enumerate(rows, start=1):
            yield n, checked_text(row, path, n)
        return
    raw = path.read_bytes()
    if not raw.strip():
        raise located(str(path), None, "file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise located(str(path), raw.count(b"\n", 0, e.start) + 1, "invalid UTF-8") from None
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise located(str(path), e.lineno, f"not valid JSON ({e.msg})") from None
        except RecursionError:
            raise located(str(path), None, "JSON nested too deeply") from None
        if not isinstance(records, list):
            raise located(str(path), None, "a .json file must hold a list of records")
        for n, record in enumerate(records, start=1):
            yield n, checked_text(record, path, n)
        return
    for n, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise located(str(path), n, f"not valid JSON ({e.msg})") from None
            except RecursionError:
                raise located(str(path), n, "JSON nested too deeply") from None
            yield n, checked_text(record, path, n)


def lone_surrogate(value, where: str = "") -> str | None:
    """The field (dotted path) of the first string in ``value`` that is not text: a lone
    UTF-16 surrogate such as ``"\\ud800"``, which JSON allows and no tokenizer encodes."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "value"
    elif isinstance(value, dict):
        for k, v in value.items():
            found = lone_surrogate(v, f"{where}.{k}".lstrip("."))
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = lone_surrogate(v, f"{where}[{i}]")
            if found:
                return found
    return None


def checked_text(record, path: Path, n: int):
    """``record``, refused (naming file, line and field) if a string in it is not text."""
    field = lone_surrogate(record)
    if field:
        raise located(str(path), n, f"field {field!r} holds a lone surrogate (an escape such "
                      "as \\ud800 that is half a character); it is not text")
    return record


def read_demos(path: str | Path, fmt: str = "auto", skip_bad: bool = False,
               for_generation: bool = False) -> tuple[list[Conversation], int]:
    """Conversations of a file and the number of records skipped (only with ``skip_bad``).

    ``for_generation`` reads prompts: conversations that end with a user turn.
    """
    path = Path(path)
    if fmt != "auto" and fmt not in FORMATS:
        raise GptsmithError(f"--format must be auto or one of {', '.join(FORMATS)}, got {fmt!r}")
    out, skipped = [], 0
    for n, record in read_records(path):
        try:
            if not isinstance(record, dict):
                raise ValueError("record must be a JSON object")
            kind = fmt if fmt != "auto" else detect_format(record)
            if for_generation and isinstance(record.get("prompt"), str) and kind != "messages":
                kind = "prompt"  # generation reads a pair's prompt and ignores its response
            if kind is None:
                raise ValueError(
                    f"record in no known format (fields: {', '.join(sorted(record)) or 'none'}); "
                    "expected prompt/response, messages, instruction/output or conversations")
            if kind == "prompt":
                messages = [{"role": "user", "content": _string(record, "prompt")}]
            else:
                messages = to_messages(record, kind)
            problem = check_conversation(messages, for_generation)
            if problem:
                where = {"messages": "messages", "sharegpt": "conversations"}.get(kind, "prompt")
                raise ValueError(f"field {where!r}: {problem}")
        except ValueError as e:
            if skip_bad:
                skipped += 1
                continue
            raise located(str(path), n, str(e)) from None
        out.append(Conversation(messages, f"{path}:{n}", record))
    if not out:
        raise GptsmithError(f"{path}: no usable records" + (f" ({skipped} skipped)"
                                                             if skipped else ""))
    return out, skipped
