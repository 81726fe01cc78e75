"""Files a test run leaves in the working tree: every test must write under tmp dirs only.

The conftest compares the untracked files before and after the session. Other people may
be adding source files to the tree meanwhile, so a new source file in a source directory
is not counted; anything else new (at the root, data files anywhere) is.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Never counted, even where .gitignore does not list them: tools and run outputs.
IGNORED_DIRS = {".venv", "runs", ".pytest_cache", ".ruff_cache", ".hypothesis", "__pycache__",
                ".mypy_cache", ".git"}
SOURCE_DIRS = {"gptsmith", "tests", "bench"}
SOURCE_SUFFIXES = {".py", ".js", ".css", ".html", ".md", ".yaml", ".yml", ".toml"}


def untracked_files(root: Path = REPO) -> set[str] | None:
    """Paths (relative to ``root``) of untracked, not ignored files; None where git or the
    repository is unavailable (then nothing is checked)."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run([git, "ls-files", "--others", "--exclude-standard", "-z"],
                              cwd=root, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return {p for p in done.stdout.split("\0") if p}


def counted(path: str) -> bool:
    """Whether a new untracked ``path`` is a test's leftover rather than tooling or new source
    someone is writing."""
    parts = Path(path).parts
    if IGNORED_DIRS & set(parts) or any(p.endswith(".egg-info") for p in parts):
        return False
    return not (len(parts) > 1 and parts[0] in SOURCE_DIRS
                and Path(path).suffix in SOURCE_SUFFIXES)


def leftovers(before: set[str] | None, after: set[str] | None) -> list[str]:
    """The files that became untracked between the two listings, tooling and new source
    left out; none when either listing is unavailable."""
    if before is None or after is None:
        return []
    return sorted(p for p in after - before if counted(p))
