"""The one exception family the CLI turns into a clean message and a non-zero exit.

Anything else that escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class GptsmithError(Exception):
    """A problem the user can fix: the message names the file, line and field, and the fix."""


class InvalidSetting(GptsmithError, ValueError):
    """A setting or argument out of range: still a ValueError to library callers."""


class MissingFile(GptsmithError, FileNotFoundError):
    """A user-given path that does not exist: still a FileNotFoundError to library callers."""


def located(source: str, line: int | None, message: str) -> GptsmithError:
    """An error that points at ``source`` (and ``line`` when known)."""
    where = f"{source}:{line}" if line is not None else source
    return GptsmithError(f"{where}: {message}")


@contextmanager
def user_input(where: str) -> Iterator[None]:
    """Re-raise a ValueError from the block as the user's InvalidSetting, prefixed ``where``:
    wrap only code whose every ValueError means bad input (a validator), never real work."""
    try:
        yield
    except GptsmithError:
        raise
    except ValueError as e:
        raise InvalidSetting(f"{where}: {e}") from None
