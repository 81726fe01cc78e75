"""The command line: every command explains itself; the pipeline runs, skips and samples."""

import json
import subprocess
import sys

import pytest

from gptsmith.cli import main

COMMANDS = [[], ["pipeline"], ["data"], ["data", "fetch"], ["data", "prepare"], ["tokenizer"],
            ["tokenizer", "train"], ["pretrain"], ["sample"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: gptsmith" in capsys.readouterr().out


def test_unknown_yaml_setting_is_named(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("pretrain:\n  train:\n    stepz: 3\n")
    assert main(["pipeline", "--recipe", str(recipe)]) == 2
    assert "unknown setting 'stepz'" in capsys.readouterr().err


@pytest.mark.slow
def test_pipeline_runs_then_skips_and_sample_streams(tmp_path):
    from tests.conftest import tiny_texts

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
    out = tmp_path / "pipe"
    cmd = [sys.executable, "-m", "gptsmith", "pipeline", "--corpus", str(corpus),
           "--out", str(out), "--vocab-size", "320", "--val-fraction", "0.2",
           "--pretrain.model.depth", "1", "--pretrain.model.seq-len", "64",
           "--pretrain.train.steps", "12", "--pretrain.train.batch-size", "4",
           "--pretrain.train.eval-every", "6", "--pretrain.eval-tokens", "512",
           "--no-pretrain.train.progress", "--demos", str(demos), "--questions", str(questions),
           "--sft.train.steps", "6", "--sft.train.batch-size", "4", "--no-sft.train.progress",
           "--comparisons", str(comparisons), "--rl-prompts", str(questions),
           "--rm.train.steps", "4", "--rm.train.batch-size", "4", "--no-rm.train.progress",
           "--ppo.train.steps", "3", "--ppo.train.batch-size", "4", "--ppo.max-tokens", "4",
           "--ppo.eval-limit", "4", "--no-ppo.train.progress"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    for name in ("tokenizer.json", "data/meta.json", "pretrain/model.safetensors",
                 "pretrain/samples.txt", "pretrain/loss.png", "pretrain/config.yaml",
                 "sft/model.safetensors", "sft/metrics.jsonl", "rm/model.safetensors",
                 "ppo/model.safetensors", "ppo/ppo.png", "ppo/overoptimization.png",
                 "eval.json", "eval.txt"):
        assert (out / name).exists(), name
    assert "unigram baseline" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert again.stdout.count("done already, skipped") == 4  # tokenizer, data, samples, eval
    assert "already fine-tuned" in again.stdout
    assert again.stdout.count("already trained") == 3  # pretrain, rm, ppo
    assert [r["model"] for r in json.loads((out / "eval.json").read_text())] == [
        str(out / "pretrain"), str(out / "sft"), str(out / "ppo")]

    sample = subprocess.run(
        [sys.executable, "-m", "gptsmith", "sample", str(out / "pretrain"), "--prompt",
         "What is 3 plus 4?", "--max-tokens", "20", "--seed", "1"],
        capture_output=True, text=True, timeout=120)
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("What is 3 plus 4?") and len(sample.stdout) > 20


def test_sample_on_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nope")]) == 2
    assert "no model.safetensors" in capsys.readouterr().err
