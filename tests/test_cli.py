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
    from tests.conftest import tiny_pipeline_args

    out = tmp_path / "pipe"
    cmd = [sys.executable, "-m", "gptsmith", *tiny_pipeline_args(tmp_path)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    for name in ("tokenizer.json", "data/meta.json", "pretrain/model.safetensors",
                 "pretrain/samples.txt", "pretrain/loss.png", "pretrain/config.yaml",
                 "sft/model.safetensors", "sft/metrics.jsonl", "rm/model.safetensors",
                 "ppo/model.safetensors", "ppo/ppo.png", "ppo/overoptimization.png",
                 "eval.json", "eval.txt", "eval.png", "answers.json", "pipeline.json",
                 "report.html"):
        assert (out / name).exists(), name
    assert "unigram baseline" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    # tokenizer, data, pretrain, samples, sft, rm, ppo, eval (no demos or label: own data)
    assert again.stdout.count("done already, skipped") == 8
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
