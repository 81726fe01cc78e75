"""Shared fixtures: a tiny tokenizer, a tiny corpus and its shards, a tiny model. Offline."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

# as gptsmith/__init__.py does, and before torch loads: OpenMP threads sleep while they wait
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from gptsmith.data.corpus import Document
from gptsmith.data.shards import prepare_shards
from gptsmith.data.world import World
from gptsmith.model import GPT, GPTConfig
from gptsmith.tokenizer import Tokenizer, train_tokenizer
from tests.leftovers import leftovers, untracked_files

# torch.compile on a CPU builds C++ kernels: its tests need a compiler (this project's
# machines have g++; elsewhere they are skipped, and the error without one is tested)
needs_cxx = pytest.mark.skipif(shutil.which(os.environ.get("CXX") or "g++") is None,
                               reason="torch.compile on a CPU needs a C++ compiler")

PROSE = (
    "Now is the winter of our discontent made glorious summer by this sun of York; "
    "and all the clouds that lour'd upon our house in the deep bosom of the ocean buried. "
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him. "
)


def tiny_texts(n: int = 300) -> list[str]:
    rng = random.Random(0)
    world = World()
    texts = []
    for i in range(n):
        texts.append(world.paragraph(rng) if i % 2 else PROSE[rng.randint(0, 80):])
    return texts


@pytest.fixture(scope="session", autouse=True)
def no_leftovers_in_the_working_tree():
    """Fail the session if its tests left new untracked files in the repository (every
    test writes under tmp dirs only); skipped where git is unavailable."""
    before = untracked_files()
    yield
    left = leftovers(before, untracked_files())
    if left:
        pytest.fail(f"the tests left files in the working tree: {', '.join(left)}; "
                    "write them under tmp_path instead", pytrace=False)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Tokenizer:
    tok = train_tokenizer(tiny_texts(), vocab_size=400, show_progress=False)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(path)
    return Tokenizer.load(path)


@pytest.fixture(scope="session")
def data_dir(tokenizer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "shards"
    docs = [Document(t, f"doc{i}") for i, t in enumerate(tiny_texts(600))]
    prepare_shards(docs, tokenizer, out, val_fraction=0.1)
    return out


@pytest.fixture
def tiny_model(tokenizer) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, depth=2, seq_len=64)).eval()


@pytest.fixture(scope="session")
def tiny_run(tokenizer, tmp_path_factory) -> Path:
    """A run directory holding an untrained tiny model: enough for every command that loads."""
    from gptsmith.runs import save_model

    run = tmp_path_factory.mktemp("run") / "tiny"
    run.mkdir()
    torch.manual_seed(0)
    save_model(run, GPT(GPTConfig(vocab_size=tokenizer.vocab_size, depth=1, seq_len=128)))
    tokenizer.save(run / "tokenizer.json")
    return run


@pytest.fixture
def tiny_pipeline_args(tmp_path: Path) -> list[str]:
    """`gptsmith pipeline` arguments for a run of seconds: a tiny corpus, model and data
    (demonstrations, questions, comparisons) written under the test's ``tmp_path``; out:
    tmp_path/pipe. A fixture, so it cannot be pointed at the working tree."""
    import json

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(tiny_texts(400)))
    demos, questions = tmp_path / "demos.jsonl", tmp_path / "questions.jsonl"
    demos.write_text("".join(json.dumps({"prompt": f"What is {i} plus 2?",
                                         "response": f"It is {i + 2}."}) + "\n"
                             for i in range(60)))
    questions.write_text("".join(json.dumps({"prompt": f"What is {i} plus 3?",
                                             "answer": str(i + 3)}) + "\n" for i in range(8)))
    comparisons = tmp_path / "cmp.jsonl"
    comparisons.write_text("".join(json.dumps({"prompt": f"What is {i} plus 2?",
                                               "chosen": f"It is {i + 2}.",
                                               "rejected": f"It is {i + 3}."}) + "\n"
                                   for i in range(30)))
    return ["pipeline", "--corpus", str(corpus), "--out", str(tmp_path / "pipe"),
            "--vocab-size", "320", "--val-fraction", "0.2",
            "--pretrain.model.depth", "1", "--pretrain.model.seq-len", "64",
            "--pretrain.train.steps", "12", "--pretrain.train.batch-size", "4",
            "--pretrain.train.eval-every", "6", "--pretrain.eval-tokens", "512",
            "--no-pretrain.train.progress", "--demos", str(demos), "--questions", str(questions),
            "--sft.train.steps", "6", "--sft.train.batch-size", "4", "--no-sft.train.progress",
            "--comparisons", str(comparisons), "--rl-prompts", str(questions),
            "--rm.train.steps", "4", "--rm.train.batch-size", "4", "--no-rm.train.progress",
            "--ppo.train.steps", "3", "--ppo.train.batch-size", "4", "--ppo.max-tokens", "4",
            "--ppo.eval-limit", "4", "--no-ppo.train.progress", "--rl", "ppo"]


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package: .ci/run installs it
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """A real headless Chromium driven by Playwright (never a downloaded browser)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
