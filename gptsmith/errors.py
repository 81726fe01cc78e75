"""The one exception the CLI turns into a clean message and a non-zero exit."""


class GptsmithError(Exception):
    """A problem the user can fix: the message names the file, line and field, and the fix."""


def located(source: str, line: int | None, message: str) -> GptsmithError:
    """An error that points at ``source`` (and ``line`` when known)."""
    where = f"{source}:{line}" if line is not None else source
    return GptsmithError(f"{where}: {message}")
