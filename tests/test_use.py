"""Talking to a model: the terminal chat (through a pseudo-terminal), batch generation, eval."""

import json
import os
import pty
import select
import subprocess
import sys
import time

from gptsmith.cli import main
from gptsmith.evaluate import is_correct


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


def test_chat_in_a_terminal(tiny_run):
    term = Terminal(sys.executable, "-m", "gptsmith", "chat", str(tiny_run), "--max-tokens", "8",
                    "--temperature", "0")
    term.expect("you> ")
    term.send("What is 2 plus 2?")
    reply = term.expect("you> ")
    assert "assistant> " in reply
    term.send("/system Answer briefly.")
    assert "system prompt set" in term.expect("you> ")
    term.send("And 3 plus 3?")
    assert "assistant> " in term.expect("you> ")
    term.send("/reset")
    assert "conversation reset" in term.expect("you> ")
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
    assert [r["id"] for r in rows] == [1, 2]
    assert all(isinstance(r["response"], str) and "finished" in r for r in rows)


def test_generate_names_a_prompt_too_long(tiny_run, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": "x " * 300}) + "\n")
    rc = main(["generate", "--model", str(tiny_run), "--input", str(src),
               "--output", str(tmp_path / "o.jsonl")])
    assert rc == 2 and "in.jsonl:2: field 'prompt' renders to" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_eval_scores_models_side_by_side(tiny_run, tmp_path, capsys):
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"prompt": f"What is {i} plus 1?", "answer": str(i + 1),
                                     "myth": str(i + 2)}) + "\n" for i in range(6)))
    out = tmp_path / "scores.json"
    assert main(["eval", "--model", str(tiny_run), "--model", str(tiny_run), "--questions",
                 str(q), "--max-tokens", "6", "--show", "2", "--samples", "2",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and text.count("Q: What is") == 2
    scores = json.loads(out.read_text())
    assert len(scores) == 2 and scores[0] == scores[1]
    assert 0 <= scores[0]["accuracy"] <= 1 and scores[0]["mean_tokens"] <= 6
    assert 0 <= scores[0]["sampled_accuracy"] <= 1 and scores[0]["sampled_myth_rate"] is not None


def test_exact_answers():
    assert is_correct("7", "7") and is_correct("It is 7.", "7")
    assert is_correct("3 plus 4 is 7.", "7")
    assert not is_correct("It is 8.", "7") and not is_correct("seven", "7")
    assert not is_correct("7 or 8", "7")
    assert is_correct("Paris.", "paris") and not is_correct("Lyon", "Paris")
