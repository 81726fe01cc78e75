"""Hostile input for every path into the command line: data files of each kind, flags,
YAML configs, run directories and model files, outputs that cannot be written.

Each case must end with exit code 2 (argparse's own usage errors are exit 2 too), exactly
one error message, no traceback, and nothing written or changed on disk. Cases run
in-process through ``gptsmith.cli.main`` against a tiny world built once in a temporary
directory (a tokenizer, token shards, an untrained language model and reward model, and a
valid file of every data kind), so that each case breaks exactly one thing.

    python checks/fuzz_cli.py            # every case
    python checks/fuzz_cli.py --short    # a fixed sample that runs in seconds (CI)
    python checks/fuzz_cli.py -k yaml    # the cases whose name holds 'yaml'
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# What every malformed value of a setting looks like on the command line, by type.
BAD_FLOAT = ["nan", "inf", "-inf", "1e999", "abc", ""]
BAD_INT = ["abc", "1.5", "", "1e3"]
TRAINERS = ["pretrain", "sft", "rm", "ppo", "dpo", "grpo"]


@dataclass
class Case:
    """One malformed invocation. ``argv(w)`` may write the bad file it needs under
    ``w.case_dir`` before returning the arguments; the disk is compared after that."""

    name: str
    argv: Callable[[World], list[str]]
    exit_code: int = 2


@dataclass
class Outcome:
    name: str
    argv: list[str]
    exit_code: int | None
    stderr: str
    traceback: str = ""
    written: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def problems(self, expected: int) -> list[str]:
        out = []
        if self.traceback:
            out.append("traceback: " + self.traceback.strip().splitlines()[-1])
        elif "Traceback (most recent call last)" in self.stderr:
            out.append("traceback printed")
        if self.exit_code != expected:
            out.append(f"exit code {self.exit_code}, expected {expected}")
        messages = [ln for ln in self.stderr.splitlines() if "error: " in ln]
        if not self.traceback and len(messages) != 1:
            out.append(f"{len(messages)} error messages")
        if self.written:
            out.append("wrote " + ", ".join(self.written[:4]))
        return out


# -- the tiny world every case breaks one thing of -------------------------------------------
class World:
    """Valid inputs of every kind, under ``root``: each case copies what it breaks."""

    def __init__(self, root: Path):
        import torch

        from gptsmith.data.corpus import Document
        from gptsmith.data.shards import prepare_shards
        from gptsmith.data.world import World as TinyWorld
        from gptsmith.model import GPT, GPTConfig
        from gptsmith.runs import save_model
        from gptsmith.tokenizer import train_tokenizer

        self.root = root
        rng = random.Random(0)
        tiny = TinyWorld()
        texts = [tiny.paragraph(rng) for _ in range(300)]
        self.corpus = self._write("corpus.txt", "\n\n".join(texts))
        tok = train_tokenizer(texts, vocab_size=320, show_progress=False)
        self.tokenizer = root / "tok" / "tokenizer.json"
        self.tokenizer.parent.mkdir()
        tok.save(self.tokenizer)
        self.data = root / "data"
        with contextlib.redirect_stdout(io.StringIO()):
            prepare_shards([Document(t, f"d{i}") for i, t in enumerate(texts)], tok, self.data,
                           val_fraction=0.1)
        torch.manual_seed(0)
        self.lm = root / "lm"
        self.lm.mkdir()
        save_model(self.lm, GPT(GPTConfig(vocab_size=tok.vocab_size, depth=1, seq_len=64)))
        tok.save(self.lm / "tokenizer.json")
        self.rm = root / "rm"
        self.rm.mkdir()
        save_model(self.rm, GPT(GPTConfig(vocab_size=tok.vocab_size, depth=1, seq_len=64,
                                          head="scalar")))
        tok.save(self.rm / "tokenizer.json")
        self.demos = self._jsonl("demos.jsonl", [
            {"prompt": f"What is {i} plus 2?", "response": f"It is {i + 2}."} for i in range(40)])
        self.comparisons = self._jsonl("cmp.jsonl", [
            {"prompt": f"What is {i} plus 2?", "chosen": f"It is {i + 2}.",
             "rejected": f"It is {i + 3}."} for i in range(30)])
        self.questions = self._jsonl("questions.jsonl", [
            {"prompt": f"What is {i} plus 3?", "answer": str(i + 3)} for i in range(8)])
        self.out = root / "out"  # every case's outputs go under here; none may appear
        self.case_dir = root / "case"

    def _write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def _jsonl(self, name: str, records: list) -> Path:
        return self._write(name, "".join(json.dumps(r) + "\n" for r in records))

    def file(self, name: str, content: str | bytes) -> Path:
        """A file of this case (under case_dir) holding ``content``."""
        path = self.case_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    def run_copy(self, kind: str = "lm", name: str = "run") -> Path:
        """A copy of the language-model (or reward-model) run to break."""
        path = self.case_dir / name
        shutil.copytree(self.lm if kind == "lm" else self.rm, path)
        return path

    def minimal(self, command: str) -> list[str]:
        """Arguments that make ``command`` valid (and quick) apart from what a case adds."""
        o = str(self.out / command)
        quiet = ["--no-train.progress", "--train.steps", "2", "--train.batch-size", "2"]
        return {
            "pretrain": ["pretrain", "--data", str(self.data), "--out", o,
                         "--model.depth", "1", "--model.seq-len", "32", *quiet],
            "sft": ["sft", "--base", str(self.lm), "--data", str(self.demos), "--out", o,
                    *quiet],
            "rm": ["rm", "--base", str(self.lm), "--data", str(self.comparisons), "--out", o,
                   *quiet],
            "ppo": ["ppo", "--policy", str(self.lm), "--reward", str(self.rm), "--prompts",
                    str(self.questions), "--out", o, "--max-tokens", "2", "--minibatches", "1",
                    *quiet],
            "dpo": ["dpo", "--policy", str(self.lm), "--data", str(self.comparisons),
                    "--out", o, *quiet],
            "grpo": ["grpo", "--policy", str(self.lm), "--prompts", str(self.questions),
                     "--out", o, "--group-size", "2", "--max-tokens", "2", *quiet],
            "generate": ["generate", "--model", str(self.lm), "--input", str(self.questions),
                         "--output", o + ".jsonl", "--max-tokens", "2"],
            "sample": ["sample", str(self.lm), "--max-tokens", "2"],
            "eval": ["eval", "--model", str(self.lm), "--questions", str(self.questions),
                     "--max-tokens", "2", "--out", o + ".json"],
            "label": ["label", "--model", str(self.lm), "--prompts", str(self.questions),
                      "--out", o + ".jsonl", "--max-tokens", "2"],
            "tokenizer": ["tokenizer", "train", "--corpus", str(self.corpus), "--out",
                          o + "/tokenizer.json", "--vocab-size", "300"],
            "prepare": ["data", "prepare", "--corpus", str(self.corpus), "--tokenizer",
                        str(self.tokenizer), "--out", o],
            "demos": ["data", "demos", "--out", o, "--arithmetic", "10"],
            "export": ["export", str(self.lm), "--out", o],
        }[command]


# -- the cases --------------------------------------------------------------------------------
def _with(command: str, *extra: str) -> Callable[[World], list[str]]:
    return lambda w: [*w.minimal(command), *extra]


def _replacing(command: str, flag: str, value: Callable[[World], str]):
    """``command``'s minimal arguments with ``flag``'s value replaced by ``value(w)``."""
    def argv(w: World) -> list[str]:
        args = w.minimal(command)
        v = value(w)
        if flag in args:
            args[args.index(flag) + 1] = v
            return args
        return [*args, flag, v]
    return argv


def setting_cases() -> list[Case]:
    """Every numeric setting of every trainer, given values that are not numbers at all
    (nan, inf, words), plus the out-of-range values the issue found and their kin."""
    from gptsmith.cli import make_parser

    sub = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    cases = []
    for command in TRAINERS:
        for action in sub.choices[command]._actions:
            if action.type is float:
                bad = BAD_FLOAT
            elif action.type is int:
                bad = BAD_INT
            else:
                continue
            flag = action.option_strings[0]
            for value in bad:
                cases.append(Case(f"{command} {flag} {value!r}",
                                  _replacing(command, flag, lambda w, v=value: v)))
    out_of_range = {
        "--train.steps": ["-1", "-100"], "--train.batch-size": ["0", "-4"],
        "--train.grad-accum": ["0"], "--train.eval-every": ["-1"],
        "--train.checkpoint-every": ["0", "-1"], "--train.log-every": ["0"],
        "--train.lr": ["0", "-0.1"], "--train.warmup-steps": ["-1"],
        "--train.min-lr-ratio": ["-0.5", "2"], "--train.beta1": ["1", "-0.1"],
        "--train.beta2": ["1.5"], "--train.weight-decay": ["-1"], "--train.grad-clip": ["-1"],
        "--train.threads": ["-2"], "--train.device": ["tpu", "cuda:x", "", "cuda:99"],
        "--train.precision": ["fp16", ""],
    }
    for command in TRAINERS:
        for flag, values in out_of_range.items():
            for value in values:
                if command in ("ppo", "grpo") and value == "cuda:99":
                    continue
                cases.append(Case(f"{command} {flag} {value}",
                                  _replacing(command, flag, lambda w, v=value: v)))
    specific = [
        ("pretrain", "--model.vocab-size", "100"), ("pretrain", "--model.seq-len", "0"),
        ("pretrain", "--model.seq-len", "100000000000"), ("pretrain", "--model.depth", "-3"),
        ("pretrain", "--model.n-embd", "100000000"), ("pretrain", "--model.n-head", "-1"),
        ("pretrain", "--model.head", "scalar"), ("pretrain", "--eval-tokens", "0"),
        ("pretrain", "--model.norm-eps", "0"), ("pretrain", "--model.rope-theta", "-1"),
        ("sft", "--val-fraction", "1.5"), ("sft", "--val-fraction", "-0.1"),
        ("sft", "--epochs", "-1"), ("sft", "--epochs", "0"), ("sft", "--format", "xml"),
        ("sft", "--lora.rank", "-1"), ("sft", "--lora.dropout", "1"),
        ("rm", "--val-fraction", "2"),
        ("rm", "--epochs", "-2"),
        ("ppo", "--minibatches", "0"), ("ppo", "--minibatches", "99"),
        ("ppo", "--temperature", "0"), ("ppo", "--max-tokens", "0"),
        ("ppo", "--ppo-epochs", "0"), ("ppo", "--clip", "-1"), ("ppo", "--gamma", "2"),
        ("ppo", "--lam", "-1"), ("ppo", "--kl-coef", "-1"), ("ppo", "--kl-horizon", "0"),
        ("ppo", "--eval-limit", "-1"), ("ppo", "--train.grad-accum", "2"),
        ("dpo", "--beta", "0"), ("dpo", "--loss", "hinge"), ("dpo", "--label-smoothing", "0.5"),
        ("grpo", "--group-size", "1"), ("grpo", "--temperature", "0"),
        ("grpo", "--advantage", "magic"), ("grpo", "--minibatches", "0"),
        ("grpo", "--reward", "nosuchmodule:fn"), ("grpo", "--reward", "truth@abc"),
    ]
    for command, flag, value in specific:
        cases.append(Case(f"{command} {flag} {value}",
                          _replacing(command, flag, lambda w, v=value: v)))
    for command in ("sft", "rm", "dpo", "ppo"):
        cases.append(Case(f"{command} --lora.targets nothing",
                          _with(command, "--lora.rank", "2", "--lora.targets", "nothing")))
    return cases


def sampling_cases() -> list[Case]:
    """Every command that samples, given temperatures, top-p and top-k that mean nothing."""
    cases = []
    bad = {"--temperature": ["nan", "inf", "-1", "-inf"], "--top-p": ["nan", "0", "1.5", "-1"],
           "--top-k": ["-1", "x"], "--max-tokens": ["-1", "x"], "--seed": ["x"]}
    for command in ("generate", "sample", "eval", "label"):
        for flag, values in bad.items():
            for value in values:
                cases.append(Case(f"{command} {flag} {value}",
                                  _replacing(command, flag, lambda w, v=value: v)))
    for command in ("ppo", "grpo"):
        cases.append(Case(f"{command} --temperature nan", _with(command, "--temperature", "nan")))
    cases.append(Case("chat --temperature nan",
                      lambda w: ["chat", str(w.lm), "--temperature", "nan"]))
    cases.append(Case("chat --top-p 0", lambda w: ["chat", str(w.lm), "--top-p", "0"]))
    other = [
        ("label", "-k", "0"), ("label", "-k", "1"), ("label", "-k", "-3"),
        ("label", "--limit", "-1"), ("eval", "--limit", "-1"), ("eval", "--samples", "-1"),
        ("eval", "--show", "-1"), ("generate", "--batch-size", "-1"), ("sample", "-n", "0"),
        ("sample", "-n", "-1"), ("tokenizer", "--vocab-size", "100"),
        ("tokenizer", "--vocab-size", "-1"), ("tokenizer", "--max-bytes", "0"),
        ("tokenizer", "--max-bytes", "-5"), ("prepare", "--val-fraction", "1.5"),
        ("prepare", "--val-fraction", "nan"), ("demos", "--arithmetic", "-1"),
    ]
    for command, flag, value in other:
        cases.append(Case(f"{command} {flag} {value}",
                          _replacing(command, flag, lambda w, v=value: v)))
    cases += [
        Case("serve --port -1", lambda w: ["serve", str(w.lm), "--port", "-1"]),
        Case("serve --port 70000", lambda w: ["serve", str(w.lm), "--port", "70000"]),
        Case("serve --max-batch 0", lambda w: ["serve", str(w.lm), "--max-batch", "0"]),
        Case("serve --threads -1", lambda w: ["serve", str(w.lm), "--threads=-1"]),
        Case("serve --device tpu", lambda w: ["serve", str(w.lm), "--device", "tpu"]),
        Case("serve a missing run", lambda w: ["serve", str(w.root / "nope")]),
        Case("serve a reward model", lambda w: ["serve", str(w.rm)]),
        Case("import --seq-len -1", lambda w: ["import", str(w.lm), "--out",
                                               str(w.out / "imp"), "--seq-len", "-1"]),
        Case("import a missing source", lambda w: ["import", str(w.root / "nope"), "--out",
                                                   str(w.out / "imp")]),
    ]
    return cases


def yaml_cases() -> list[Case]:
    """--config files that are not what they should be."""
    bad = {
        "not-a-mapping": "- 1\n- 2\n", "scalar": "42\n", "invalid": "train: [1, 2\n",
        "unknown-key": "stepz: 3\n", "unknown-nested": "train:\n  stepz: 3\n",
        "nested-not-mapping": "train: 3\n", "wrong-type": "train:\n  steps: many\n",
        "bool-for-int": "train:\n  steps: true\n", "nan": "train:\n  lr: .nan\n",
        "inf": "train:\n  lr: .inf\n", "negative-warmup": "train:\n  warmup_steps: -5\n",
        "zero-accum": "train:\n  grad_accum: 0\n", "list-for-str": "out: [a, b]\n",
        "null-value": "train:\n  steps: null\n", "string-nan": "train:\n  lr: nan\n",
        "string-word": "train:\n  lr: fast\n", "huge-int": "train:\n  steps: 1e999\n",
        "fraction-for-int": "train:\n  warmup_steps: 2.5\n",
        "zero-eval-tokens-or-epochs": "eval_tokens: 0\nepochs: 0\n",
        "device": "train:\n  device: tpu\n", "tabs": "train:\n\tsteps: 3\n",
        "duplicate-anchor": "a: &x 1\nb: *y\n",
    }
    cases = []
    for command in ("pretrain", "sft"):
        for name, text in bad.items():
            cases.append(Case(f"{command} --config {name}", lambda w, n=name, t=text, c=command:
                              [*w.minimal(c), "--config", str(w.file(f"{n}.yaml", t))]))
        cases.append(Case(f"{command} --config binary", lambda w, c=command:
                          [*w.minimal(c), "--config", str(w.file("b.yaml", b"\xff\xfe\x00"))]))
        cases.append(Case(f"{command} --config missing", lambda w, c=command:
                          [*w.minimal(c), "--config", str(w.case_dir / "none.yaml")]))
        cases.append(Case(f"{command} --config a directory", lambda w, c=command:
                          [*w.minimal(c), "--config", str(w.root)]))
    cases.append(Case("pipeline --recipe unknown", lambda w: [
        "pipeline", "--out", str(w.out / "pipe"), "--recipe", "nosuchrecipe"]))
    cases.append(Case("pipeline --recipe bad key", lambda w: [
        "pipeline", "--out", str(w.out / "pipe"), "--recipe",
        str(w.file("p.yaml", "pretrain:\n  train:\n    stepz: 1\n"))]))
    return cases


# Malformed contents of a JSON-lines data file.
BAD_JSONL = {
    "empty": "", "blank": "\n\n  \n", "binary": b"\x00\xff\xfe\x80garbage",
    "not-json": "this is not json\n", "truncated": '{"prompt": "What is',
    "array": "[1, 2, 3]\n", "number": "42\n", "string": '"hello"\n', "null": "null\n",
    "no-fields": "{}\n", "nested-deep": "[" * 100000 + "]" * 100000 + "\n",
    "bad-utf8-line2": b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff"}\n',
    "prompt-number": '{"prompt": 5, "response": "x"}\n',
    "surrogate": '{"prompt": "\\ud800 hi", "response": "x", "answer": "1", '
                 '"chosen": "a", "rejected": "b"}\n',
}


def data_cases() -> list[Case]:
    """Every data file a command reads, malformed in each way, and files of the wrong kind."""
    targets = [("sft", "--data", "x.jsonl"), ("sft", "--val-data", "x.jsonl"),
               ("rm", "--data", "x.jsonl"), ("dpo", "--data", "x.jsonl"),
               ("ppo", "--prompts", "x.jsonl"), ("grpo", "--prompts", "x.jsonl"),
               ("eval", "--questions", "x.jsonl"), ("label", "--prompts", "x.jsonl"),
               ("generate", "--input", "x.jsonl")]
    cases = []
    for command, flag, name in targets:
        for kind, content in BAD_JSONL.items():
            cases.append(Case(f"{command} {flag} {kind}", _replacing(
                command, flag, lambda w, c=content, n=name: str(w.file(n, c)))))
        cases.append(Case(f"{command} {flag} a directory",
                          _replacing(command, flag, lambda w: str(w.root))))
        cases.append(Case(f"{command} {flag} missing",
                          _replacing(command, flag, lambda w: str(w.case_dir / "no.jsonl"))))
        cases.append(Case(f"{command} {flag} a .json that is not a list", _replacing(
            command, flag, lambda w: str(w.file("x.json", '{"prompt": "a"}')))))
        cases.append(Case(f"{command} {flag} a corrupt .parquet", _replacing(
            command, flag, lambda w: str(w.file("x.parquet", b"PAR1 not really")))))
        cases.append(Case(f"{command} {flag} safetensors", _replacing(
            command, flag, lambda w: str(w.lm / "model.safetensors"))))
    for command in ("sft", "rm", "dpo"):
        cases.append(Case(f"{command} two records only", _replacing(command, "--data", lambda w:
                          str(w.file("two.jsonl", "".join(
                              json.dumps({"prompt": f"q{i}", "response": "a", "chosen": "a",
                                          "rejected": "b"}) + "\n" for i in range(2)))))))
    cases += [
        _data_case("rm ranking not a permutation", "rm", "--data", "r.jsonl",
                   '{"prompt": "q", "responses": ["a", "b"], "ranking": [0, 0]}\n'),
        _data_case("rm chosen not a string", "rm", "--data", "r.jsonl",
                   '{"prompt": "q", "chosen": 3, "rejected": "b"}\n'),
        _data_case("sft messages wrong role", "sft", "--data", "m.jsonl",
                   '{"messages": [{"role": "wizard", "content": "hi"}]}\n'),
        _data_case("sft messages not a list", "sft", "--data", "m.jsonl",
                   '{"messages": "hi"}\n'),
        _data_case("eval answer neither a string nor a whole number", "eval", "--questions",
                   "q.jsonl", '{"prompt": "q", "answer": 3.5}\n'),
        _data_case("sft demo longer than the context", "sft", "--data", "long.jsonl",
                   json.dumps({"prompt": "word " * 400, "response": "a"}) + "\n"),
    ]
    corpora = {"empty": "", "binary": b"\xff\xfe\x00\x80", "empty-dir": None,
               "jsonl-no-text": '{"body": "x"}\n', "jsonl-not-json": "nope\n",
               "parquet": b"PAR1 nope"}
    for command in ("tokenizer", "prepare"):
        for kind, content in corpora.items():
            suffix = {"jsonl-no-text": ".jsonl", "jsonl-not-json": ".jsonl",
                      "parquet": ".parquet"}.get(kind, ".txt")

            def corpus(w, c=content, s=suffix):
                if c is None:
                    d = w.case_dir / "emptydir"
                    d.mkdir(parents=True)
                    return str(d)
                return str(w.file("corpus" + s, c))
            cases.append(Case(f"{command} --corpus {kind}", _replacing(command, "--corpus",
                                                                       corpus)))
        cases.append(Case(f"{command} --corpus missing", _replacing(
            command, "--corpus", lambda w: str(w.case_dir / "nope.txt"))))
    cases += [
        Case("prepare --tokenizer corrupt", _replacing("prepare", "--tokenizer", lambda w: str(
            w.file("tokenizer.json", b"{not json")))),
        Case("prepare --tokenizer a model file", _replacing("prepare", "--tokenizer",
             lambda w: str(w.lm / "model.json"))),
        Case("prepare --tokenizer a directory without one", _replacing(
            "prepare", "--tokenizer", lambda w: str(w.file("x/readme.txt", "hi").parent))),
        Case("demos --world corrupt", lambda w: [
            *w.minimal("demos"), "--world", str(w.file("world.json", "{not json"))]),
        Case("pretrain --data a file", _replacing("pretrain", "--data",
                                                  lambda w: str(w.corpus))),
        Case("pretrain --data a run", _replacing("pretrain", "--data", lambda w: str(w.lm))),
        Case("pretrain --data missing", _replacing("pretrain", "--data",
                                                   lambda w: str(w.root / "nope"))),
        Case("pretrain --data meta.json corrupt", _replacing("pretrain", "--data",
             lambda w: _broken_data(w, "meta.json", b"{nope"))),
        Case("pretrain --data meta.json wrong", _replacing("pretrain", "--data",
             lambda w: _broken_data(w, "meta.json", b'{"dtype": "uint16"}'))),
        Case("pretrain --data shard missing", _replacing("pretrain", "--data",
             lambda w: _broken_data(w, None, b""))),
        Case("pretrain --data tokenizer corrupt", _replacing("pretrain", "--data",
             lambda w: _broken_data(w, "tokenizer.json", b"garbage"))),
    ]
    cases.append(Case("demos --world wrong fields", lambda w: [
        *w.minimal("demos"), "--world", str(w.file("world.json", '{"colour": 3}'))]))
    return cases


def _data_case(name: str, command: str, flag: str, file: str, content: str) -> Case:
    return Case(name, _replacing(command, flag, lambda w: str(w.file(file, content))))


def _broken_data(w: World, name: str | None, content: bytes) -> str:
    """A copy of the data directory with ``name`` replaced by ``content`` (None: its first
    shard deleted)."""
    d = w.case_dir / "data"
    shutil.copytree(w.data, d)
    if name is None:
        shard = json.loads((d / "meta.json").read_text())["train"]["shards"][0]["file"]
        (d / shard).unlink()
    else:
        (d / name).write_bytes(content)
    return str(d)


# Ways to break a run directory: (name, file, new content; None deletes it).
BROKEN_RUN = [
    ("safetensors garbage", "model.safetensors", b"garbage bytes, not safetensors"),
    ("safetensors empty", "model.safetensors", b""),
    ("safetensors truncated", "model.safetensors", "truncate"),
    ("safetensors missing", "model.safetensors", None),
    ("tokenizer garbage", "tokenizer.json", b"{garbage"),
    ("tokenizer empty", "tokenizer.json", b""),
    ("tokenizer not a tokenizer", "tokenizer.json", b'{"version": "1.0"}'),
    ("tokenizer a list", "tokenizer.json", b"[]"),
    ("tokenizer config garbage", "tokenizer_config.json", b"{garbage"),
    ("tokenizer config a list", "tokenizer_config.json", b"[1]"),
    ("model.json garbage", "model.json", b"{garbage"),
    ("model.json a list", "model.json", b"[1, 2]"),
    ("model.json unknown key", "model.json", "key"),
    ("model.json wrong depth", "model.json", "depth"),
    ("model.json wrong vocab", "model.json", "vocab"),
    ("model.json bad value", "model.json", "value"),
    ("model.json missing", "model.json", None),
]


def _break_run(w: World, how: str, kind: str = "lm") -> str:
    name, file, content = next(b for b in BROKEN_RUN if b[0] == how)
    run = w.run_copy(kind)
    path = run / file
    if content is None:
        path.unlink()
    elif content == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif file == "model.json" and isinstance(content, str):
        cfg = json.loads(path.read_text())
        if content == "key":
            cfg["colour"] = "blue"
        elif content == "depth":
            cfg["depth"] += 1
        elif content == "vocab":
            cfg["vocab_size"] += 7
        else:
            cfg["n_head"] = "four"
        path.write_text(json.dumps(cfg))
    else:
        path.write_bytes(content)
    return str(run)


def run_cases() -> list[Case]:
    """Every command that reads a run directory, given broken ones and the wrong kind."""
    readers = [("sft", "--base"), ("rm", "--base"), ("ppo", "--policy"), ("ppo", "--reward"),
               ("dpo", "--policy"), ("grpo", "--policy"), ("generate", "--model"),
               ("eval", "--model"), ("label", "--model"), ("sample", None),
               ("export", None), ("chat", None)]
    cases = []
    for command, flag in readers:
        kind = "rm" if flag == "--reward" else "lm"
        for how, _, _ in BROKEN_RUN:
            cases.append(Case(f"{command} {flag or 'RUN'} {how}",
                              _run_argv(command, flag, lambda w, h=how, k=kind: _break_run(
                                  w, h, k))))
        wrong = "lm" if kind == "rm" else "rm"
        if command != "export":  # export takes either kind
            cases.append(Case(f"{command} {flag or 'RUN'} a {wrong.upper()} run", _run_argv(
                command, flag, lambda w, k=wrong: str(w.lm if k == "lm" else w.rm))))
        cases.append(Case(f"{command} {flag or 'RUN'} a file", _run_argv(
            command, flag, lambda w: str(w.demos))))
        cases.append(Case(f"{command} {flag or 'RUN'} a data directory", _run_argv(
            command, flag, lambda w: str(w.data))))
    return cases


def _run_argv(command: str, flag: str | None, run: Callable[[World], str]):
    def argv(w: World) -> list[str]:
        if command == "chat":
            return ["chat", run(w)]
        if flag is None:
            args = w.minimal(command)
            args[1] = run(w)
            return args
        return _replacing(command, flag, run)(w)
    return argv


def output_cases() -> list[Case]:
    """Outputs that cannot be what they should: a file where a directory goes, a directory
    where a file goes, a directory that holds something else."""
    def existing_file(w):
        return str(w.file("already.txt", "keep me\n"))

    def foreign_dir(w):
        d = w.case_dir / "photos"
        d.mkdir(parents=True)
        (d / "holiday.jpg").write_bytes(b"\xff\xd8 not yours")
        return str(d)

    cases = []
    for command in TRAINERS:
        cases.append(Case(f"{command} --out an existing file",
                          _replacing(command, "--out", existing_file)))
        cases.append(Case(f"{command} --out a directory that is not a run",
                          _replacing(command, "--out", foreign_dir)))
        cases.append(Case(f"{command} --out under a file",
                          _replacing(command, "--out", lambda w: existing_file(w) + "/run")))
    for command, flag in (("generate", "--output"), ("label", "--out"), ("eval", "--out"),
                          ("tokenizer", "--out")):
        cases.append(Case(f"{command} {flag} a directory",
                          _replacing(command, flag, lambda w: str(w.root))))
        cases.append(Case(f"{command} {flag} under a file",
                          _replacing(command, flag, lambda w: existing_file(w) + "/x.jsonl")))
    for command in ("prepare", "demos", "export"):
        cases.append(Case(f"{command} --out an existing file",
                          _replacing(command, "--out", existing_file)))
        cases.append(Case(f"{command} --out under a file",
                          _replacing(command, "--out", lambda w: existing_file(w) + "/d")))
    cases.append(Case("export --format gguf --out a directory", lambda w: [
        "export", str(w.lm), "--format", "gguf", "--out", str(w.root)]))
    return cases


GROUPS = {"settings": setting_cases, "sampling": sampling_cases, "yaml": yaml_cases,
          "data": data_cases, "runs": run_cases, "outputs": output_cases}


def all_cases() -> list[Case]:
    cases = [c for make in GROUPS.values() for c in make()]
    names = [c.name for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"duplicate case names: {sorted(dupes)}"
    return cases


def short_sample(n: int = 100, least: int = 10) -> list[Case]:
    """A fixed sample for CI: the same cases every run, about ``n``, at least ``least`` of
    every group (settings, sampling, yaml, data, runs, outputs)."""
    rng = random.Random(18)
    groups = [make() for make in GROUPS.values()]
    total = sum(len(g) for g in groups)
    return [c for g in groups
            for c in rng.sample(g, min(len(g), max(least, round(n * len(g) / total))))]


# -- running them -----------------------------------------------------------------------------
def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def run_case(case: Case, w: World) -> Outcome:
    from gptsmith.cli import main

    if w.case_dir.exists():
        shutil.rmtree(w.case_dir)
    w.case_dir.mkdir()
    if w.out.exists():
        shutil.rmtree(w.out)
    argv = case.argv(w)
    before = _snapshot(w.root)
    err, out = io.StringIO(), io.StringIO()
    code, tb = None, ""
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: usage error (2)
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - a traceback is what this check looks for
            tb = traceback.format_exc()
    seconds = time.perf_counter() - start
    after = _snapshot(w.root)
    written = sorted(k for k in after if before.get(k) != after[k])
    written += sorted(f"{k} (deleted)" for k in before if k not in after)
    return Outcome(case.name, argv, code, err.getvalue(), tb, written, seconds)


def run(cases: list[Case], verbose: bool = False) -> dict:
    """Run ``cases`` in a fresh tiny world; returns figures and the failures."""
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory(prefix="gptsmith-fuzz-") as tmp:
        w = World(Path(tmp))
        failures, tracebacks, partial = [], 0, 0
        start = time.perf_counter()
        for case in cases:
            outcome = run_case(case, w)
            problems = outcome.problems(case.exit_code)
            tracebacks += bool(outcome.traceback or "Traceback (most" in outcome.stderr)
            partial += bool(outcome.written)
            if problems:
                failures.append((outcome, problems))
            if verbose:
                status = "FAIL " + "; ".join(problems) if problems else "ok"
                last = outcome.stderr.strip().splitlines()[-1:] or [""]
                print(f"[{outcome.seconds:5.2f}s] {case.name}: {status}\n    {last[0][:200]}")
        return {"cases": len(cases), "failures": failures, "tracebacks": tracebacks,
                "partial_outputs": partial, "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="a fixed sample for CI")
    p.add_argument("-k", default="", help="only cases whose name contains this")
    p.add_argument("-v", "--verbose", action="store_true", help="every case and its message")
    args = p.parse_args(argv)
    cases = short_sample() if args.short else all_cases()
    cases = [c for c in cases if args.k in c.name]
    figures = run(cases, args.verbose)
    for outcome, problems in figures["failures"]:
        print(f"FAIL {outcome.name}: {'; '.join(problems)}\n  argv: {outcome.argv}\n  "
              + (outcome.traceback.strip().splitlines()[-1] if outcome.traceback
                 else outcome.stderr.strip()[-300:]))
    print(f"{figures['cases']} cases, {len(figures['failures'])} failing, "
          f"{figures['tracebacks']} tracebacks, {figures['partial_outputs']} partial outputs, "
          f"{figures['seconds']}s")
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
