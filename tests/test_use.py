"""Talking to a model: the terminal chat (through a pseudo-terminal), batch generation, eval."""

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from gptsmith.chat import complete, stream_reply
from gptsmith.cli import main
from gptsmith.engine import Sampling
from gptsmith.evaluate import is_correct
from gptsmith.runs import load_model
from tests.conftest import needs_cxx


class Terminal:
    """A command running on a pseudo-terminal, read until an expected text appears."""

    def __init__(self, *args):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave,
                                     env={**os.environ, "TERM": "dumb"})
        os.close(slave)
        self.seen = ""

    def expect(self, text, timeout=60):
        end = time.time() + timeout
        while text not in self.seen:
            assert time.time() < end, f"waited for {text!r}; got {self.seen[-500:]!r}"
            if select.select([self.master], [], [], 0.5)[0]:
                try:
                    self.seen += os.read(self.master, 4096).decode("utf-8", "replace")
                except OSError:  # the program ended
                    break
        assert text in self.seen, self.seen[-500:]
        start = self.seen.index(text) + len(text)
        before, self.seen = self.seen[:start], self.seen[start:]
        return before

    def send(self, line):
        os.write(self.master, (line + "\n").encode())


def expected_chat_line(run, messages: list[dict], max_tokens: int) -> str:
    """What the terminal chat prints for its next greedy reply to ``messages``."""
    model, tokenizer = load_model(run)
    pieces: list[str] = []
    reply = stream_reply(model, tokenizer, messages,
                         Sampling(max_tokens=max_tokens, temperature=0), pieces.append)
    return "assistant> " + "".join(pieces) + ("\n" if reply.ended else " [no end of turn]\n")


def test_chat_in_a_terminal(tiny_run):
    term = Terminal(sys.executable, "-m", "gptsmith", "chat", str(tiny_run), "--max-tokens", "8",
                    "--temperature", "0")
    term.expect("you> ")
    term.send("What is 2 plus 2?")
    reply = term.expect("you> ").replace("\r\n", "\n")
    first = [{"role": "user", "content": "What is 2 plus 2?"}]
    assert reply == "What is 2 plus 2?\n" + expected_chat_line(tiny_run, first, 8) + "you> "
    term.send("/system Answer briefly.")
    assert "(system prompt set; conversation reset)" in term.expect("you> ")
    term.send("And 3 plus 3?")
    second = [{"role": "system", "content": "Answer briefly."},
              {"role": "user", "content": "And 3 plus 3?"}]  # the reset forgot the first turn
    assert expected_chat_line(tiny_run, second, 8) in term.expect("you> ").replace("\r\n", "\n")
    term.send("/reset")
    assert "(conversation reset)" in term.expect("you> ")
    term.send("/quit")
    assert term.proc.wait(timeout=30) == 0


def test_generate_answers_every_line_and_keeps_fields(tiny_run, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "Hello", "id": 1}) + "\n" + json.dumps(
        {"messages": [{"role": "user", "content": "Hi"}], "id": 2}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(tiny_run), "--input", str(src), "--output", str(out),
                 "--max-tokens", "5", "--temperature", "0"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    model, tokenizer = load_model(tiny_run)
    replies = complete(model, tokenizer, [[{"role": "user", "content": "Hello"}],
                                          [{"role": "user", "content": "Hi"}]],
                       Sampling(max_tokens=5, temperature=0))
    assert rows == [{"prompt": "Hello", "id": 1, "response": replies[0].text,
                     "finished": replies[0].ended},
                    {"messages": [{"role": "user", "content": "Hi"}], "id": 2,
                     "response": replies[1].text, "finished": replies[1].ended}]


@pytest.mark.slow
@needs_cxx
def test_generate_compile_writes_what_the_default_steps_do(tiny_run, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                           ("Hello", "What is 2 plus 3?", "Hi")))
    outs = []
    for flags in ([], ["--compile"]):
        out = tmp_path / f"out{len(flags)}.jsonl"
        assert main(["generate", "--model", str(tiny_run), "--input", str(src), "--output",
                     str(out), "--max-tokens", "12", "--seed", "3", *flags]) == 0
        outs.append(out.read_text())
    assert outs[0] == outs[1] and outs[0].count("response") == 3


@pytest.mark.slow
def test_generate_compile_without_a_compiler_says_so(tiny_run, tmp_path):
    """No working C++ compiler: exit 2 with an error that names the fix, not inductor's
    traceback, and no output file."""
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"prompt": "Hello"}) + "\n")
    env = {**os.environ, "CXX": "/nonexistent/g++", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "c")}
    r = subprocess.run([sys.executable, "-m", "gptsmith", "generate", "--model", str(tiny_run),
                        "--input", str(src), "--output", str(out), "--compile"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "InvalidCxxCompiler" in r.stderr and "without --compile" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_generate_names_a_prompt_too_long(tiny_run, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": "x " * 300}) + "\n")
    rc = main(["generate", "--model", str(tiny_run), "--input", str(src),
               "--output", str(tmp_path / "o.jsonl")])
    assert rc == 2 and "in.jsonl:2: field 'prompt' renders to" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_eval_scores_models_side_by_side(tiny_run, tmp_path, capsys):
    """Questions whose answer (or myth) is the model's own greedy reply, or one it never
    gives: the scores are known exactly."""
    model, tokenizer = load_model(tiny_run)
    convs = [[{"role": "user", "content": f"What is {i} plus 1?"}] for i in range(6)]
    greedy = complete(model, tokenizer, convs, Sampling(max_tokens=6, temperature=0))
    never = "an answer no model gives"
    answers = [r.text if i < 3 else never for i, r in enumerate(greedy)]  # right: half
    myths = [r.text if i == 5 else never for i, r in enumerate(greedy)]  # the myth: one
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"prompt": c[0]["content"], "answer": a, "myth": m}) + "\n"
                         for c, a, m in zip(convs, answers, myths, strict=True)))
    out = tmp_path / "scores.json"
    assert main(["eval", "--model", str(tiny_run), "--model", str(tiny_run), "--questions",
                 str(q), "--max-tokens", "6", "--show", "2", "--samples", "2",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("Q: What is") == 2 and text.count("[right]") == 4  # 2 shown, 2 models
    sampled = complete(model, tokenizer, [c for c in convs for _ in range(2)],
                       Sampling(max_tokens=6, temperature=1.0))
    score = {"model": str(tiny_run), "accuracy": 0.5, "myth_rate": round(1 / 6, 4),
             "end_rate": round(sum(r.ended for r in greedy) / 6, 4),
             "mean_tokens": round(sum(r.tokens for r in greedy) / 6, 4),
             "sampled_accuracy": round(sum(is_correct(r.text, answers[i // 2])
                                           for i, r in enumerate(sampled)) / 12, 4),
             "sampled_myth_rate": round(sum(is_correct(r.text, myths[i // 2])
                                            for i, r in enumerate(sampled)) / 12, 4),
             "work_rate": 0.0, "by_kind": {"one-digit": 0.5}}
    score["sampled_by_kind"] = {"one-digit": score["sampled_accuracy"]}
    assert json.loads(out.read_text()) == [score, score]


def test_exact_answers():
    assert is_correct("7", "7") and is_correct("It is 7.", "7")
    assert is_correct("3 plus 4 is 7.", "7")
    assert not is_correct("It is 8.", "7") and not is_correct("seven", "7")
    assert not is_correct("7 or 8", "7")
    assert is_correct("Paris.", "paris") and not is_correct("Lyon", "Paris")
