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
    assert capsys.readouterr().out.startswith(" ".join(["usage: gptsmith", *command]) + " ")


def test_unknown_yaml_setting_is_named(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("pretrain:\n  train:\n    stepz: 3\n")
    assert main(["pipeline", "--recipe", str(recipe)]) == 2
    assert "unknown setting 'stepz'" in capsys.readouterr().err


@pytest.mark.slow
def test_pipeline_runs_then_skips_and_sample_streams(tmp_path, tiny_pipeline_args):
    out = tmp_path / "pipe"
    cmd = [sys.executable, "-m", "gptsmith", *tiny_pipeline_args]
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

    def sample(*flags: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "gptsmith", "sample", str(out / "pretrain"), "--prompt",
             "What is 3 plus 4?", "--max-tokens", "20", *flags],
            capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    one, two = sample("--seed", "1"), sample("--seed", "1", "-n", "2")
    assert one.startswith("What is 3 plus 4?") and one.endswith("\n")
    first, second, rest = two.split("\n" + "-" * 40 + "\n")
    assert first + "\n" == one and rest == ""  # -n 2: seeds 1 then 2
    assert second.startswith("What is 3 plus 4?")


def test_sample_on_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nope")]) == 2
    assert "no model.safetensors" in capsys.readouterr().err


def _subparser(name: str):
    """The parser of `gptsmith NAME`."""
    import argparse

    from gptsmith.cli import make_parser

    commands = next(a for a in make_parser()._actions
                    if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def _training_configs():
    from gptsmith.pipeline import PipelineConfig
    from gptsmith.train.ppo import PPOConfig
    from gptsmith.train.pretrain import PretrainConfig
    from gptsmith.train.reward import RMConfig
    from gptsmith.train.sft import SFTConfig

    return {"pretrain": PretrainConfig, "sft": SFTConfig, "rm": RMConfig, "ppo": PPOConfig,
            "pipeline": PipelineConfig}


@pytest.mark.parametrize("command", ["pretrain", "sft", "rm", "ppo", "pipeline"])
def test_every_setting_flag_shows_the_default_the_command_uses(command):
    config = _training_configs()[command]()
    flags = [a for a in _subparser(command)._actions if "." in a.dest
             or a.dest in {f.name for f in __import__("dataclasses").fields(config)}]
    assert len(flags) > 20
    for action in flags:
        value = config
        for part in action.dest.split("."):
            value = getattr(value, part)
        assert action.help.endswith(f"(default: {value})"), (action.dest, action.help)


def test_help_shows_the_phase_defaults_not_the_nested_class_defaults(capsys):
    for argv, shown in ((["ppo"], "(default: 3e-05)"), (["sft"], "(default: 0)")):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        options = " ".join(capsys.readouterr().out.split("options:")[1].split())  # unwrapped
        flag = "--train.lr FLOAT" if argv == ["ppo"] else "--train.steps INT"
        assert options.split(flag, 1)[1].split(" --", 1)[0].endswith(shown), options


def _one_line_error(capsys) -> str:
    """The CLI's stderr, checked to be exactly one 'error: ...' line (no traceback)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("exc", [ValueError("boom"), FileNotFoundError("boom")])
def test_a_bug_in_a_command_is_a_traceback_not_a_clean_error(exc, monkeypatch):
    import gptsmith.cli

    def broken(args):
        raise exc

    monkeypatch.setattr(gptsmith.cli, "cmd_data_fetch", broken)
    with pytest.raises(type(exc), match="boom"):
        main(["data", "fetch"])


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1"], "temperature must be >= 0, got -1.0"),
    (["--top-p", "0"], "top_p must be in (0, 1], got 0.0"),
    (["--max-tokens", "-2"], "top_k and max_tokens must be >= 0"),
])
def test_bad_sampling_flags_are_clean_errors(flags, message, tiny_run, capsys):
    assert main(["sample", str(tiny_run), *flags]) == 2
    assert message in _one_line_error(capsys)


def test_a_prompt_longer_than_the_context_is_a_clean_error(tiny_run, capsys):
    assert main(["sample", str(tiny_run), "--prompt", "word " * 200]) == 2
    message = _one_line_error(capsys)
    assert "--prompt: its 602 tokens leave no room in the model's context of 128" in message


@pytest.mark.parametrize("flags, message", [
    (["--model.depth", "0"], "model.depth must be >= 1, got 0"),
    (["--model.rope-scaling", "cubic"], "model.rope_scaling must be"),
    (["--train.precision", "fp16"], "precision must be auto, bf16 or fp32, got 'fp16'"),
])
def test_bad_training_settings_are_clean_errors_before_any_work(flags, message, tmp_path,
                                                                 capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(tmp_path / "no-data"), "--out", str(out),
                 *flags]) == 2
    assert message in _one_line_error(capsys)
    assert not out.exists()


def test_a_bad_pipeline_setting_is_a_clean_error(tmp_path, capsys):
    assert main(["pipeline", "--out", str(tmp_path / "p"), "--pretrain.model.depth", "-1"]) == 2
    assert "pretrain.model: model.depth must be >= 1, got -1" in _one_line_error(capsys)


@pytest.mark.parametrize("missing", ["tokenizer.json", "model.json"])
def test_a_run_directory_missing_a_file_is_a_clean_error(missing, tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "partial"
    shutil.copytree(tiny_run, run)
    (run / missing).unlink()
    assert main(["sample", str(run)]) == 2
    assert f"{run}: no {missing} here" in _one_line_error(capsys)


def test_a_missing_tokenizer_for_data_prepare_is_a_clean_error(tmp_path, capsys):
    assert main(["data", "prepare", "--tokenizer", str(tmp_path / "tok.json"),
                 "--out", str(tmp_path / "data")]) == 2
    assert f"--tokenizer {tmp_path / 'tok.json'}: no such file" in _one_line_error(capsys)


def test_a_config_file_that_is_not_text_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_bytes(b"\xff\xfe\x00bad")
    assert main(["pretrain", "--config", str(bad)]) == 2
    assert f"{bad}: not valid YAML" in _one_line_error(capsys)


def test_the_leftover_check_counts_files_a_test_leaves_but_not_new_source(tmp_path, monkeypatch):
    import shutil

    from tests import leftovers as lo

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("ignored/\n")
    before = lo.untracked_files(tmp_path)
    for name in ("corpus.txt", "tests/out.jsonl", "gptsmith/new_module.py", "tests/test_new.py",
                 ".venv/lib/x.py", "runs/default/model.json", "ignored/a.txt",
                 "gptsmith/__pycache__/cli.pyc"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    after = lo.untracked_files(tmp_path)
    assert "ignored/a.txt" not in after and "corpus.txt" in after
    assert lo.leftovers(before, after) == ["corpus.txt", "tests/out.jsonl"]
    assert lo.leftovers(None, after) == [] and lo.leftovers(before, None) == []
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert lo.untracked_files(tmp_path) is None  # no git: nothing is checked


def test_sample_prints_the_prompt_and_its_greedy_completion_n_times(tiny_run, capsys):
    import torch

    from gptsmith.engine import Sampling, generate
    from gptsmith.runs import load_model

    assert main(["sample", str(tiny_run), "--prompt", "The king", "--max-tokens", "6",
                 "--temperature", "0", "-n", "2"]) == 0
    model, tok = load_model(tiny_run, "cuda" if torch.cuda.is_available() else "cpu")
    (ids,) = generate(model, [[tok.bos_id, *tok.encode("The king")]],
                      Sampling(max_tokens=6, temperature=0, stop_ids=(tok.bos_id, tok.end_id)))
    text = "The king" + tok.decode(ids, skip_special=True)
    assert capsys.readouterr().out == (text + "\n" + "-" * 40 + "\n") * 2
