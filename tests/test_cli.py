"""The command line: every command explains itself; the pipeline runs, skips and samples."""

import json
import subprocess
import sys
from pathlib import Path

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
    assert f"{tmp_path / 'nope'}: no such run directory" in capsys.readouterr().err


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
    flags = [a for a in _subparser(command)._actions if ("." in a.dest
             or a.dest in {f.name for f in __import__("dataclasses").fields(config)})
             and a.option_strings[0] in (f"--{a.dest.replace('_', '-')}",
                                         f"--no-{a.dest.replace('_', '-')}")]  # no aliases
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
    (["--temperature", "-1"], "temperature must be a finite number >= 0, got -1.0"),
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


# -- hostile input: one message naming the flag or file, exit 2, nothing written ------------------
def _subparsers(parser, path=()):
    """(command words, parser) for every command and subcommand."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subparsers(sub, (*path, name))


def test_every_flag_of_every_command_has_a_description():
    import argparse
    import re

    from gptsmith.cli import make_parser

    bare = []
    for words, parser in _subparsers(make_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):  # its commands have their own
                continue
            text = re.sub(r"\(default: [^)]*\)$", "", action.help or "").strip()
            if action.dest != "help" and not text:
                bare.append(f"{' '.join(words)} {(action.option_strings or [action.dest])[0]}")
    assert bare == []


def test_version(capsys):
    from gptsmith import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"gptsmith {__version__}"


@pytest.mark.parametrize("words, shown", [
    (["serve"], ["--port PORT  port to listen on (default: 8000)", "(default: 16)",
                 "(default: auto)", "samples at 1, as OpenAI's API does"]),
    (["studio", "serve"], ["port to listen on (default: 8100)"]),
])
def test_serve_help_shows_the_defaults(words, shown, capsys):
    with pytest.raises(SystemExit):
        main([*words, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for piece in shown:
        assert " ".join(piece.split()) in text, piece


def test_conversation_commands_share_one_sampling_default():
    from gptsmith.chat import CONVERSATION_TEMPERATURE
    from gptsmith.cli import make_parser

    parsers = dict(_subparsers(make_parser()))
    for command in ("chat", "generate", "sample"):
        args = parsers[(command,)].parse_args(["RUN"] if command != "generate" else
                                               ["--model", "R", "--input", "I", "--output", "O"])
        assert (args.temperature, args.top_k, args.top_p) == (CONVERSATION_TEMPERATURE, 0, 1.0)
    page = (Path(__file__).parents[1] / "gptsmith" / "static" / "chat.html").read_text()
    assert f'id="temperature" type="number" min="0" max="2" step="0.1" ' \
           f'value="{CONVERSATION_TEMPERATURE}"' in page
    # the others differ on purpose, and say why in their --help
    assert parsers[("eval",)].get_default("temperature") == 0.0
    assert parsers[("label",)].get_default("temperature") == 1.0


def test_yaml_numbers_read_as_a_person_means_them(tmp_path):
    import argparse

    from gptsmith.config import build, load_yaml
    from gptsmith.train.sft import SFTConfig

    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  steps: 1e3\n  weight_decay: 0\nepochs: 2\n")
    cfg = build(SFTConfig, argparse.Namespace(), load_yaml(path), str(path))
    assert (cfg.train.lr, cfg.train.steps, cfg.train.weight_decay, cfg.epochs) == \
        (0.001, 1000, 0.0, 2.0)
    assert isinstance(cfg.train.steps, int)


@pytest.mark.parametrize("yaml_text, message", [
    ("train:\n  lr: .nan\n", "'lr' must be a finite number, got nan"),
    ("train:\n  steps: 2.5\n", "'steps' must be a whole number, got 2.5"),
    ("train:\n  steps: true\n", "'steps' must be int, got True"),
    ("train: 3\n", "'train' must be a mapping of settings"),  # even with --train.* flags
])
def test_yaml_values_that_are_not_numbers_are_named(yaml_text, message, tiny_run, tmp_path,
                                                    capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    assert main(["sft", "--config", str(path), "--base", str(tiny_run), "--data", "d.jsonl",
                 "--train.batch-size", "2", "--out", str(tmp_path / "o")]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def _demos(tmp_path, n=20):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "response": "a"}) + "\n"
                            for i in range(n)))
    return path


@pytest.mark.parametrize("flags, message", [
    (["--train.batch-size", "0"], "--train.batch-size must be >= 1, got 0"),
    (["--train.steps", "-3"], "--train.steps must be >= 0, got -3"),
    (["--train.eval-every", "-1"], "--train.eval-every must be >= 0, got -1"),
    (["--train.device", "tpu"], "--train.device 'tpu': not a device; use auto, cpu, cuda or"),
    (["--train.lr", "nan"], "argument --train.lr: expected a finite number, got 'nan'"),
    (["--epochs", "0"], "--epochs must be > 0, got 0.0"),
])
def test_bad_sft_settings_name_the_flag(flags, message, tiny_run, tmp_path, capsys):
    out = tmp_path / "o"
    code = _exit_code(["sft", "--base", str(tiny_run), "--data", str(_demos(tmp_path)),
                       "--out", str(out), *flags])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def _exit_code(argv) -> int:
    """main's exit code, argparse's usage errors (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("flags, message", [
    (["--train.steps", "-1"], "--train.steps must be >= 0, got -1"),
    (["--train.steps", "0"], "--train.steps must be >= 1 (0, 'by epochs', applies only to"),
    (["--model.vocab-size", "100"], "--model.vocab-size 100: the model's vocabulary is its "
                                    "tokenizer's, 400 ids"),
    (["--model.seq-len", "100000000000"], "more than this machine's"),
    (["--model.head", "scalar"], "--model.head scalar: pretrain trains a language model"),
])
def test_pretrain_refuses_what_it_used_to_replace_or_crash_on(flags, message, data_dir,
                                                             tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["pretrain", "--data", str(data_dir), "--out", str(out), "--model.depth", "1",
                 "--no-train.progress", *flags]) == 2
    assert message in _one_line_error(capsys)
    assert not out.exists()


def test_ppo_minibatches_0_is_named_before_any_work(tiny_run, tmp_path, capsys):
    assert main(["ppo", "--policy", str(tiny_run), "--reward", str(tiny_run), "--prompts",
                 "p.jsonl", "--out", str(tmp_path / "o"), "--minibatches", "0"]) == 2
    assert "--minibatches must be >= 1, got 0" in _one_line_error(capsys)


@pytest.fixture(scope="module")
def reward_run(tiny_run, tmp_path_factory):
    """The tiny run with a scalar head: what `gptsmith rm` writes."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path_factory.mktemp("rm") / "rm"
    shutil.copytree(tiny_run, run)
    cfg = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**cfg, "head": "scalar"}))
    state = load_file(str(run / "model.safetensors"))
    state.pop("lm_head.weight", None)
    state["score.weight"], state["score.bias"] = torch.zeros(1, cfg["n_embd"]), torch.zeros(1)
    save_file(state, str(run / "model.safetensors"))
    return run


@pytest.mark.parametrize("argv", [
    ["sft", "--base", "{rm}", "--data", "{demos}"], ["rm", "--base", "{rm}", "--data", "{demos}"],
    ["dpo", "--policy", "{rm}", "--data", "{demos}"],
    ["ppo", "--policy", "{rm}", "--reward", "{rm}", "--prompts", "{demos}"],
    ["grpo", "--policy", "{rm}", "--prompts", "{demos}"],
    ["generate", "--model", "{rm}", "--input", "{demos}", "--output", "{out}"],
    ["sample", "{rm}"], ["eval", "--model", "{rm}", "--questions", "{demos}"],
    ["label", "--model", "{rm}", "--prompts", "{demos}", "--out", "{out}"], ["chat", "{rm}"],
])
def test_a_reward_model_where_a_language_model_goes_is_named(argv, reward_run, tmp_path,
                                                              capsys):
    fill = {"{rm}": str(reward_run), "{demos}": str(_demos(tmp_path)),
            "{out}": str(tmp_path / "o")}
    argv = [fill.get(a, a) for a in argv]
    if argv[0] in ("sft", "rm", "dpo", "ppo", "grpo"):
        argv += ["--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert (f"{reward_run}: holds a reward model (rm run), but a language model (base, SFT or "
            "RLHF run) is needed here") in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_ppo_names_a_language_model_given_as_its_reward(tiny_run, tmp_path, capsys):
    assert main(["ppo", "--policy", str(tiny_run), "--reward", str(tiny_run), "--prompts",
                 str(_demos(tmp_path)), "--out", str(tmp_path / "o")]) == 2
    assert f"--reward {tiny_run}: holds a language model" in _one_line_error(capsys)


def _damage(run, how):
    path = run / {"weights": "model.safetensors", "truncated": "model.safetensors",
                  "tokenizer": "tokenizer.json"}.get(how, "model.json")
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif how in ("weights", "tokenizer", "model.json"):
        path.write_bytes(b"{garbage")
    else:
        cfg = json.loads(path.read_text())
        cfg.update({"unknown key": {"colour": "blue"}, "wrong depth": {"depth": 3},
                    "wrong type": {"n_head": "four"}}[how])
        path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("how, message", [
    ("weights", "model.safetensors: not a readable safetensors file"),
    ("truncated", "model.safetensors: not a readable safetensors file"),
    ("tokenizer", "tokenizer.json: not a readable tokenizer file"),
    ("model.json", "model.json: not valid JSON"),
    ("unknown key", "model.json: unknown setting 'colour'"),
    ("wrong depth", "model.safetensors: the weights do not match"),
    ("wrong type", "model.json: 'n_head' must be int, got 'four'"),
])
@pytest.mark.parametrize("command", ["sample", "sft"])
def test_a_damaged_run_is_named_not_a_traceback(how, message, command, tiny_run, tmp_path,
                                                capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _damage(run, how)
    argv = ["sample", str(run)] if command == "sample" else \
        ["sft", "--base", str(run), "--data", str(_demos(tmp_path)), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["a file", "a directory that is not a run", "under a file"])
def test_sft_out_must_be_a_run_directory(where, tiny_run, tmp_path, capsys):
    other = tmp_path / "mine.txt"
    other.write_text("keep me")
    if where == "a file":
        out, message = other, "a file; give a directory to write the run in"
    elif where == "under a file":
        out, message = other / "run", f"{other} is a file, not a directory"
    else:
        out, message = tmp_path, "holds files that are not a gptsmith run (d.jsonl, mine.txt)"
    argv = ["sft", "--base", str(tiny_run), "--data", str(_demos(tmp_path)), "--out", str(out)]
    for extra in ([], ["--overwrite"]):  # --overwrite never deletes what is not a run
        assert main([*argv, *extra]) == 2
        assert f"--out {out}: {message}" in _one_line_error(capsys)
        assert other.read_text() == "keep me"


def test_overwrite_keeps_the_old_run_when_the_new_input_is_bad(tiny_run, tmp_path, capsys):
    out = tmp_path / "sft"
    argv = ["sft", "--base", str(tiny_run), "--out", str(out), "--val-fraction", "0",
            "--train.steps", "1", "--no-train.progress"]
    assert main([*argv, "--data", str(_demos(tmp_path))]) == 0
    before = (out / "summary.json").read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "response": "a"}\n{"prompt": "q2"}\n')
    assert main([*argv, "--data", str(bad), "--overwrite"]) == 2
    assert "bad.jsonl:2" in _one_line_error(capsys)
    assert (out / "summary.json").read_text() == before  # still the old run, whole
    assert main([*argv, "--data", str(_demos(tmp_path, 30)), "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["train_examples"] == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "d.jsonl", "sft"]


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "{run}", "--input", "{demos}", "--output", "{dir}"],
     "--output {dir}: a directory; give the path of a file to write"),
    (["generate", "--model", "{run}", "--input", "{dir}", "--output", "{out}"],
     "--input {dir}: a directory; a file is expected here"),
    (["sft", "--base", "{run}", "--data", "{dir}", "--out", "{out}"],
     "--data {dir}: a directory; a file is expected here"),
    (["label", "--model", "{run}", "--prompts", "{demos}", "--out", "{out}", "-k", "1"],
     "-k must be >= 2 (a ranking needs two replies to compare), got 1"),
    (["label", "--model", "{run}", "--prompts", "{demos}", "--out", "{out}", "-k", "0"],
     "-k must be >= 2"),
    (["tokenizer", "train", "--corpus", "{demos}", "--out", "{out}", "--max-bytes", "0"],
     "--max-bytes must be >= 1, got 0"),
    (["sample", "{run}", "--temperature", "nan"],
     "argument --temperature: expected a finite number, got 'nan'"),
    (["generate", "--model", "{run}", "--input", "{demos}", "--output", "{out}", "--top-p",
      "nan"], "argument --top-p: expected a finite number, got 'nan'"),
    (["chat", "{run}", "--temperature", "inf"],
     "argument --temperature: expected a finite number, got 'inf'"),
    (["serve", "{run}", "--port", "70000"], "--port must be between 0 and 65535, got 70000"),
    (["serve", "{run}", "--device", "tpu"], "--device 'tpu': not a device; use auto, cpu"),
])
def test_bad_paths_and_numbers_name_their_flag(argv, message, tiny_run, tmp_path, capsys):
    fill = {"{run}": str(tiny_run), "{demos}": str(_demos(tmp_path)), "{dir}": str(tmp_path),
            "{out}": str(tmp_path / "new" / "o.jsonl")}
    argv = [fill.get(a, a) for a in argv]
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert message.replace("{dir}", str(tmp_path)) in err
    assert "Traceback" not in err
    assert not (tmp_path / "new").exists()
