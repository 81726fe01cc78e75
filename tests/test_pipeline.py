"""The pipeline: --from redoes a phase and the ones after it, recipes, pipeline.json, the
summary table and report.html."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import yaml

from gptsmith.cli import main, make_parser
from gptsmith.data.world import World
from gptsmith.errors import GptsmithError
from gptsmith.pipeline import (
    FILLED,
    PHASES,
    RECIPES,
    PipelineConfig,
    PipelineRun,
    _demos_settings,
    _without_moved,
    _world_settings,
    config_from_args,
)
from gptsmith.plots import plot_eval
from gptsmith.report import summary_rows, summary_table, write_report
from gptsmith.train.loop import config_differences

SHIPPED = sorted(p.stem for p in RECIPES.glob("*.yaml"))


def config(*argv: str) -> PipelineConfig:
    """The config exactly as `gptsmith pipeline ARGV` builds it."""
    return config_from_args(make_parser().parse_args(["pipeline", *argv]))


def flat_keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out |= flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


def assert_self_contained(html: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<script" not in html.lower() and "<link" not in html.lower()


def test_an_unknown_from_phase_is_refused_with_the_phases(tmp_path, capsys):
    assert main(["pipeline", "--out", str(tmp_path / "p"), "--from", "sftt"]) == 2
    err = capsys.readouterr().err
    assert "'sftt'" in err and ", ".join(PHASES) in err
    assert not (tmp_path / "p").exists()


def test_cpu_and_gpu_recipes_are_shipped():
    assert {"cpu", "gpu"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_builds_a_valid_config(name):
    cfg = config("--recipe", name)
    cfg.pretrain.model.resolved()  # raises if the model's shape is inconsistent
    for phase in (cfg.pretrain, cfg.sft, cfg.rm, cfg.ppo):
        assert phase.train.precision in ("auto", "bf16", "fp32")
    assert config("--recipe", str(RECIPES / f"{name}.yaml")) == cfg  # by path, the same


def test_the_cpu_recipe_is_the_defaults_with_every_setting_written_out():
    assert config("--recipe", "cpu") == config() == PipelineConfig()
    listed = flat_keys(yaml.safe_load((RECIPES / "cpu.yaml").read_text()))
    assert listed == flat_keys(dataclasses.asdict(PipelineConfig())) - set(FILLED)


def test_world_settings_are_flags_checked_before_any_work(tmp_path, capsys):
    cfg = config("--world.worked-share", "0.5")
    assert (cfg.world.max_operand, cfg.world.worked_share, cfg.ppo.max_tokens) == (99, 0.5, 64)
    assert main(["pipeline", "--out", str(tmp_path / "p"), "--world.wrong-share", "1.5"]) == 2
    assert "--world.wrong-share" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_a_setting_only_the_demonstrations_read_leaves_the_corpus_phases_done():
    """Corpus fields are the tokenizer's and data's settings, the rest the demos phase's;
    neither records anything for the default world (runs made before stay done)."""
    assert _world_settings(World(), corpus=True) == _world_settings(World(), False) == {}
    more_demos = World(demo_arithmetic=8000, question_small_share=0.2)
    assert _world_settings(more_demos, corpus=True) == {}
    assert _world_settings(more_demos, corpus=False)["world"] == {
        "chat_prompt_share": 0.0, "rl_small_share": 0.8, "question_small_share": 0.2,
        "demo_arithmetic": 8000, "demo_worked_share": -1.0, "prompt_variety": 0.0}
    system2 = config().world  # the default world is the System 2 world
    assert set(_world_settings(system2, corpus=True)["world"]).isdisjoint(World.DEMO_FIELDS)
    # recorded before the demonstration fields moved to the demos phase: still the same
    old = {"corpus": "default", "world": {**dataclasses.asdict(system2), "demo_arithmetic": 1}}
    assert _without_moved("data", old) == {"corpus": "default",
                                           **_world_settings(system2, corpus=True)}
    assert _without_moved("tokenizer", {"world": {"chat_prompt_share": 0.2, **{
        k: v for k, v in dataclasses.asdict(World()).items()
        if k not in World.DEMO_FIELDS}}}) == {}
    # the demos phase's own record is kept as it is: a finished run stays done
    for recipe in ("cpu", "smollm2-system2"):
        demos = _demos_settings(config("--recipe", recipe))
        assert demos and _without_moved("demos", demos) == demos
        # recorded before prompt_variety existed: it ran as prompt_variety 0 does (the
        # System 2 world has asked in other wordings since: its demonstrations are redone)
        before = {"world": {k: v for k, v in demos["world"].items() if k != "prompt_variety"}}
        assert config_differences(before, demos) == {
            "cpu": ["world.prompt_variety: 0.0 -> 0.3"], "smollm2-system2": []}[recipe]
    # on an imported model no corpus phase runs: the demos phase records the operands too
    smol = config("--recipe", "smollm2-system2")
    assert _demos_settings(smol)["world"]["max_operand"] == 99
    assert _demos_settings(config("--recipe", "smollm2")) == {}  # runs made before: done
    assert "max_operand" not in _demos_settings(config())["world"]


def test_a_facts_run_made_before_conversational_rl_prompts_redoes_its_demos(tmp_path):
    """Runs of the facts world (the default then) recorded no world settings; with a fifth of
    the RL prompts conversation now, their demos phase is refused by name and value."""
    cfg = config("--recipe", "facts")
    assert cfg.world.chat_prompt_share == 0.2 and World().chat_prompt_share == 0.0
    run = PipelineRun(cfg, tmp_path, {"phases": {"demos": {"settings": {}}}})
    with pytest.raises(GptsmithError, match=r"phase demos was done with other settings "
                       r"\(world.chat_prompt_share: 0.0 -> 0.2\); .* --from demos"):
        run.phase("demos", True, lambda: {}, _demos_settings(cfg))
    run.book["phases"]["demos"]["settings"] = _demos_settings(cfg)  # made since: kept
    run.phase("demos", True, lambda: pytest.fail("redone"), _demos_settings(cfg))


def test_a_default_run_of_the_old_world_stops_at_its_tokenizer_naming_the_change(tmp_path):
    """A runs/default made when the facts world was the default recorded no world settings;
    the System 2 world's tokenizer phase refuses it by name and value and asks for --from."""
    cfg = config()
    settings = {"corpus": "default", "vocab_size": 2048, **_world_settings(cfg.world, True)}
    run = PipelineRun(cfg, tmp_path, {"phases": {"tokenizer": {"settings": {
        "corpus": "default", "vocab_size": 2048}}}})
    with pytest.raises(GptsmithError, match=r"phase tokenizer was done with other settings "
                       r"\(.*world.max_operand: 20 -> 99.*\); .* --from tokenizer"):
        run.phase("tokenizer", True, lambda: {}, settings)
    facts = config("--recipe", "facts")  # the same run under --recipe facts: still done
    run.phase("tokenizer", True, lambda: pytest.fail("redone"),
              {"corpus": "default", "vocab_size": 2048, **_world_settings(facts.world, True)})


def test_the_gpu_recipe_is_larger_with_bf16_and_its_own_directory():
    gpu, cpu = config("--recipe", "gpu"), PipelineConfig()
    assert gpu.pretrain.model.depth >= 3 * cpu.pretrain.model.depth
    assert gpu.pretrain.train.steps > cpu.pretrain.train.steps
    assert gpu.pretrain.train.precision == "bf16" and gpu.pretrain.train.compile
    assert gpu.out != cpu.out


def test_flags_override_a_recipe():
    assert config("--recipe", "gpu", "--pretrain.model.depth", "6").pretrain.model.depth == 6


def test_an_unknown_recipe_name_lists_the_shipped_ones(capsys):
    assert main(["pipeline", "--recipe", "tpu"]) == 2
    assert f"shipped: {', '.join(SHIPPED)}" in capsys.readouterr().err


def test_a_setting_the_pipeline_fills_in_is_refused(tmp_path, capsys):
    assert main(["pipeline", "--out", str(tmp_path / "p"), "--sft.out", "elsewhere"]) == 2
    assert "sft.out is set by the pipeline itself" in capsys.readouterr().err


def test_report_escapes_model_output_and_embeds_its_plots(tmp_path):
    answers = {"models": ["pretrain", "sft"],
               "questions": [{"prompt": "What is <b>2</b> plus 2?", "answer": "4", "replies": [
                   {"text": "<script>alert(1)</script>", "ended": False, "right": False},
                   {"text": "It is 4.", "ended": True, "right": True}]}],
               "open": [{"prompt": "Hi & bye", "replies": [
                   {"text": '<img src="https://example.com/x.png">', "ended": True},
                   {"text": "ok", "ended": True}]}]}
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    plot_eval({"pretrain": {"accuracy": 0.1, "end_rate": 0.0},
               "sft": {"accuracy": 0.3, "end_rate": 1.0}}, tmp_path / "eval.png")
    records = {"sft": {"seconds": 1.5, "peak_rss_mb": 300, "peak_memory": "phase",
                       "numbers": {"val_loss": 1.25, "train_examples": 10}}}
    html = write_report(tmp_path, summary_rows(records, ["sft"], {"sft"})).read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "What is &lt;b&gt;2&lt;/b&gt; plus 2?" in html and "Hi &amp; bye" in html
    assert_self_contained(html)
    assert html.count('src="data:image/png;base64,') == 1
    assert "val loss 1.250" in html


def test_summary_table_marks_a_whole_process_peak_and_missing_numbers():
    records = {"tokenizer": {"seconds": 2.0, "peak_rss_mb": 400, "peak_memory": "process",
                             "numbers": {"vocab_size": 2048, "bytes_per_token": 2.5,
                                         "corpus_bytes": 15_000_000}},
               "rm": {"seconds": 8.0, "peak_rss_mb": 900, "peak_memory": "phase",
                      "numbers": {}}}
    table = summary_table(summary_rows(records, ["tokenizer", "data", "rm"], {"rm"}))
    lines = table.splitlines()
    assert lines[1].split() == ["phase", "status", "time", "peak", "memory", "data", "headline"]
    assert lines[2].split()[:5] == ["tokenizer", "skipped", "2.0s", "400", "MB*"]
    assert "15.0M bytes of text" in lines[2] and "2,048 ids" in lines[2]
    assert lines[3].split() == ["data", "skipped", "-", "-"]
    assert lines[4].split() == ["rm", "ran", "8.0s", "900", "MB"]
    assert "total 10.0s" in table and "cannot reset the peak per phase" in table


def test_the_total_counts_phases_run_side_by_side_once():
    records = {"sft": {"seconds": 80.0}, "ppo": {"seconds": 190.0},
               "rft": {"seconds": 160.0, "beside": "ppo"},
               "dpo": {"seconds": 200.0, "beside": "ppo"}, "eval": {"seconds": 20.0}}
    table = summary_table(summary_rows(records, list(records), set(records)))
    assert "total 300.0s (5.0 min); side by side, counted once: rft beside ppo, dpo beside ppo" \
        in table  # 80 + 190 + (200 - 190) + 20
    records["dpo"]["seconds"] = 100.0
    assert "total 290.0s" in summary_table(summary_rows(records, list(records), set()))


def _pipeline(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "gptsmith", *args], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def _table(stdout: str) -> list[list[str]]:
    """The summary table's rows: phase, status, time, the rest."""
    lines = stdout[stdout.index("== summary"):].splitlines()[2:]
    return [ln.split(maxsplit=3) for ln in lines if ln.split()[0] in PHASES]


@pytest.mark.slow
def test_pipeline_reports_skips_when_done_and_redoes_from_a_phase(tmp_path, tiny_pipeline_args):
    args = tiny_pipeline_args
    out = tmp_path / "pipe"
    first = _pipeline(args)
    phases = ["tokenizer", "data", "pretrain", "samples", "sft", "rm", "ppo", "eval"]
    rows = _table(first.stdout)
    assert [r[0] for r in rows] == phases and {r[1] for r in rows} == {"ran"}
    book = json.loads((out / "pipeline.json").read_text())["phases"]
    assert list(book) == phases
    assert all(r["peak_rss_mb"] > 0 and r["seconds"] >= 0 for r in book.values())
    assert "val_bpb" in book["pretrain"]["numbers"] and "kl" in book["ppo"]["numbers"]
    html = (out / "report.html").read_text()
    assert_self_contained(html)
    assert html.count('src="data:image/png;base64,') == 6  # pretrain, SFT, RM, PPO x2, eval
    assert "What is 0 plus 3?" in html and "Hello, how are you?" in html

    again = _pipeline(args)  # everything done: skipped, trainers not even called
    assert again.stdout.count("done already, skipped") == len(phases)
    assert "already trained" not in again.stdout and "already fine-tuned" not in again.stdout
    assert [r[1:] for r in _table(again.stdout)] == [["skipped", *r[2:]] for r in rows]

    kept = (out / "pretrain" / "model.safetensors").stat().st_mtime_ns
    redone = {n: (out / n / "model.safetensors").stat().st_mtime_ns for n in ("sft", "rm", "ppo")}
    redo = _pipeline([*args, "--from", "sft"])
    assert [r[:2] for r in _table(redo.stdout)] == [
        [p, "skipped" if p in ("tokenizer", "data", "pretrain", "samples") else "ran"]
        for p in phases]
    assert (out / "pretrain" / "model.safetensors").stat().st_mtime_ns == kept
    for name, mtime in redone.items():
        assert (out / name / "model.safetensors").stat().st_mtime_ns != mtime, name

    changed = subprocess.run([sys.executable, "-m", "gptsmith", *args, "--sft.train.lr", "0.01"],
                             capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2  # a done phase is not silently kept under other settings
    assert "phase sft was done with other settings (train.lr: 0.001 -> 0.01)" in changed.stderr
    assert "--from sft" in changed.stderr


@pytest.mark.slow
def test_a_pipeline_killed_in_any_phase_completes_when_rerun(tmp_path, tiny_pipeline_args):
    """SIGKILL in turn at the end of a phase not yet recorded, and mid-training in every
    trainer; each rerun goes further, and the last one finishes the whole pipeline."""
    args = tiny_pipeline_args
    kills = ["phase-end:tokenizer", "phase-end:data", "pretrain/after-step:5",
             "phase-end:samples", "sft/after-step:3", "rm/after-step:2", "ppo/after-step:2",
             "phase-end:eval"]
    for point in kills:
        run = subprocess.run([sys.executable, "-m", "gptsmith", *args], capture_output=True,
                             text=True, timeout=300, env={**os.environ, "GPTSMITH_FAULT": point})
        assert run.returncode == -signal.SIGKILL, (point, run.stderr[-2000:])
    done = _pipeline(args)
    rows = _table(done.stdout)
    assert [r[0] for r in rows] == ["tokenizer", "data", "pretrain", "samples", "sft", "rm",
                                    "ppo", "eval"]
    # each rerun redid the phase killed before its record, or resumed the one killed
    # mid-training; this last one redoes the evaluation killed before its record
    assert [r[1] for r in rows] == ["skipped"] * 7 + ["ran"]
    assert all(r[2] != "-" for r in rows)  # every phase has its numbers
    assert (tmp_path / "pipe" / "report.html").exists()


@pytest.mark.slow
def test_the_smollm2_recipe_runs_on_an_imported_model(tokenizer, tmp_path, capsys):
    """The recipe cut down (a tiny random Llama in SmolLM2's place, a few steps): import
    instead of pre-training, then SFT, reward model and PPO all with LoRA, and the eval."""
    from gptsmith.cli import main
    from tests.test_interop import hf_tokenizer_dir, tiny_hf_model

    hf = tmp_path / "hf"
    tiny_hf_model("llama", hf_tokenizer_dir(tokenizer, hf, "chatml")).save_pretrained(hf)
    demos, questions, cmp = tmp_path / "d.jsonl", tmp_path / "q.jsonl", tmp_path / "c.jsonl"
    demos.write_text("".join(json.dumps({"prompt": f"What is {i} plus 2?",
                                         "response": f"It is {i + 2}."}) + "\n"
                             for i in range(40)))
    questions.write_text("".join(json.dumps({"prompt": f"What is {i} plus 3?",
                                             "answer": str(i + 3)}) + "\n" for i in range(8)))
    cmp.write_text("".join(json.dumps({"prompt": f"What is {i} plus 2?", "chosen": f"{i + 2}",
                                       "rejected": f"{i + 3}"}) + "\n" for i in range(30)))
    out = tmp_path / "pipe"
    assert main(["pipeline", "--recipe", "smollm2", "--base", str(hf), "--out", str(out),
                 "--demos", str(demos), "--questions", str(questions), "--comparisons",
                 str(cmp), "--rl-prompts", str(questions), "--sft.train.steps", "4",
                 "--sft.train.batch-size", "4", "--rm.train.steps", "3",
                 "--ppo.train.steps", "2", "--ppo.train.batch-size", "4",
                 "--ppo.eval-limit", "4", "--eval-limit", "4", "--eval-samples", "1",
                 "--no-sft.train.progress", "--no-rm.train.progress",
                 "--no-ppo.train.progress"]) == 0
    book = json.loads((out / "pipeline.json").read_text())
    assert list(book["phases"]) == ["pretrain", "samples", "sft", "rm", "ppo", "eval"]
    assert book["phases"]["pretrain"]["settings"]["import"] == str(hf)
    for phase in ("sft", "rm", "ppo"):
        adapter = json.loads((out / phase / "adapter_config.json").read_text())
        assert adapter["r"] == 16 and len(adapter["target_modules"]) == 7
    assert [m["model"] for m in json.loads((out / "eval.json").read_text())] == [
        str(out / "pretrain"), str(out / "sft"), str(out / "ppo")]
    assert (out / "report.html").stat().st_size > 10_000


TINY_RL = ["--grpo.train.steps", "2", "--grpo.train.batch-size", "2", "--grpo.group-size", "2",
           "--grpo.max-tokens", "4", "--grpo.eval-limit", "4", "--no-grpo.train.progress",
           "--rft.train.steps", "2", "--rft.train.batch-size", "2", "--rft.group-size", "2",
           "--rft.max-tokens", "4", "--rft.eval-limit", "4", "--no-rft.train.progress",
           "--dpo.train.steps", "3", "--dpo.train.batch-size", "4", "--no-dpo.train.progress"]


@pytest.mark.slow
def test_rl_all_compares_the_methods_and_a_moved_pipeline_is_still_done(tmp_path,
                                                                          tiny_pipeline_args):
    """--rl all runs PPO, GRPO, RFT and DPO from the same SFT model, side by side in eval and the
    report; the pipeline directory copied elsewhere is recognised as done there."""
    args = [*tiny_pipeline_args, "--rl", "all", *TINY_RL]
    out = tmp_path / "pipe"
    first = _pipeline(args)
    phases = ["tokenizer", "data", "pretrain", "samples", "sft", "rm", "ppo", "grpo", "rft",
              "dpo", "eval"]
    assert [r[0] for r in _table(first.stdout)] == phases
    assert "has no conversational prompts" in first.stdout  # RFT's talk KL: nothing to hold
    models = [row["model"] for row in json.loads((out / "eval.json").read_text())]
    assert [m.rsplit("/", 1)[-1] for m in models] == ["pretrain", "sft", "ppo", "grpo", "rft",
                                                      "dpo"]
    html = (out / "report.html").read_text()
    assert_self_contained(html)
    for text in ("What happened", "GRPO moved greedy accuracy", "RFT moved greedy accuracy",
                 "DPO moved greedy accuracy", "grpo/grpo.png", "rft/rft.png", "dpo/loss.png",
                 "What next", "gptsmith chat"):
        assert text in html, text
    assert "{out}" not in html and str(out / "sft") in html  # the paths that really ran

    moved = tmp_path / "elsewhere" / "pipe"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    again = _pipeline([*args[:args.index("--out")], "--out", str(moved),
                       *args[args.index("--out") + 2:]])
    assert again.stdout.count("done already, skipped") == len(phases), again.stdout
    (moved / "report.html").unlink()
    rebuilt = subprocess.run([sys.executable, "-m", "gptsmith", "report", str(moved)],
                             capture_output=True, text=True, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "GRPO moved greedy accuracy" in (moved / "report.html").read_text()


@pytest.mark.slow
def test_rl_methods_run_side_by_side_and_a_failed_one_resumes(tmp_path, tiny_pipeline_args,
                                                             monkeypatch, capsys):
    """With a core for each, GRPO runs in the pipeline's process and RFT beside it in its own,
    its output in rft.log and its own time and memory recorded; RFT killed there stops the
    pipeline with a message naming its log, and the rerun resumes it and skips GRPO."""
    from gptsmith import side_by_side

    monkeypatch.setattr(side_by_side, "cores", lambda: 2)
    args = [*tiny_pipeline_args, "--rl", "grpo,rft", *TINY_RL,
            "--rft.train.steps", "3", "--rft.train.checkpoint-every", "1"]
    out = tmp_path / "pipe"
    monkeypatch.setenv("GPTSMITH_FAULT", "rft/after-step:2")
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "== rft: started beside grpo in a process of its own (1 thread each)" in captured.out
    assert "exit code -9" in captured.err and str(out / "rft.log") in captured.err
    assert "RFT: policy" in (out / "rft.log").read_text()
    book = json.loads((out / "pipeline.json").read_text())["phases"]
    assert "grpo" in book and "rft" not in book and not (out / ".rft.side.yaml").exists()

    monkeypatch.delenv("GPTSMITH_FAULT")
    assert main(args) == 0  # RFT alone now: in this process, from its last checkpoint
    captured = capsys.readouterr().out
    assert "== grpo: done already, skipped" in captured
    assert f"resuming {out / 'rft'} from step 1" in captured
    assert [m["model"].rsplit("/", 1)[-1] for m in json.loads(
        (out / "eval.json").read_text())] == ["pretrain", "sft", "grpo", "rft"]
    assert main(args) == 0 and capsys.readouterr().out.count("done already, skipped") == 8

    # both redone side by side: RFT's record is its own process's time and memory
    assert main([*args, "--from", "grpo"]) == 0
    captured = capsys.readouterr().out
    assert "== rft: started beside grpo" in captured and "done in" in (out / "rft.log").read_text()
    rft_record = json.loads((out / "pipeline.json").read_text())["phases"]["rft"]
    assert rft_record["peak_memory"] == "phase" and rft_record["peak_rss_mb"] > 100
    assert 0 < rft_record["seconds"] < 300 and rft_record["numbers"]["rollouts"] == 4
    assert rft_record["beside"] == "grpo"
    assert "side by side, counted once: rft beside grpo" in captured


def test_rl_from_the_base_model_runs_no_sft(tmp_path, tiny_pipeline_args, capsys):
    """--rl-from base: RFT starts from the base model and no SFT runs; eval and the report
    compare RL with the base model. PPO, which learns from the SFT model's ranked replies,
    is refused before anything runs."""
    out = tmp_path / "pipe"
    assert main([*tiny_pipeline_args, "--rl-from", "base"]) == 2  # the fixture's --rl ppo
    assert "--rl-from base with --rl ppo" in capsys.readouterr().err
    assert not out.exists()

    assert main([*tiny_pipeline_args, *TINY_RL, "--rl", "rft", "--rl-from", "base"]) == 0
    assert "== sft: not run (--rl-from base" in capsys.readouterr().out
    assert list(json.loads((out / "pipeline.json").read_text())["phases"]) == [
        "tokenizer", "data", "pretrain", "samples", "rft", "eval"]
    assert not (out / "sft").exists()
    assert yaml.safe_load((out / "rft" / "config.yaml").read_text())["policy"] == \
        str(out / "pretrain")
    assert [m["model"] for m in json.loads((out / "eval.json").read_text())] == [
        str(out / "pretrain"), str(out / "rft")]
    html = (out / "report.html").read_text()
    assert "RFT (from the base model, no SFT) moved greedy accuracy" in html
    assert f"gptsmith eval --model {out / 'pretrain'} --model {out / 'rft'}" in html


def test_the_smollm2_rl_recipe_asks_the_questions_of_smollm2_system2():
    """RL alone and SFT then RL on SmolLM2 are measured on the same held-out questions."""
    rl, system2 = config("--recipe", "smollm2-rl"), config("--recipe", "smollm2-system2")
    assert (rl.rl, rl.rl_from, rl.base, rl.rft.sft_batch) == ("rft", "base", "smollm2", 0)
    assert rl.world == system2.world


def test_report_of_a_directory_without_a_pipeline_is_refused(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no pipeline.json" in capsys.readouterr().err


def test_rl_names_the_methods_it_accepts(tmp_path, capsys):
    assert main(["pipeline", "--out", str(tmp_path / "p"), "--rl", "ppo,sac"]) == 2
    assert "give ppo, grpo, rft, dpo" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # refused before anything ran


def test_the_reports_findings_follow_the_numbers():
    from gptsmith.report import story

    def row(greedy, sampled, end=1.0, talk=0.0):
        return {"accuracy": greedy, "sampled_accuracy": sampled, "end_rate": end,
                "talk_number_rate": talk}

    records = {
        "pretrain": {"numbers": {"val_bpb": 1.1, "unigram_bpb": 2.7}},
        "rm": {"numbers": {"val_accuracy": 0.75}},
        "ppo": {"numbers": {"kl": 2.5}},
        "eval": {"numbers": {"open_prompts": 8, "models": {
            "pretrain": row(0.05, 0.03, end=0.0), "sft": row(0.22, 0.12, talk=0.125),
            "ppo": row(0.20, 0.25, talk=0.5), "dpo": row(0.30, 0.14)}}}}
    text = "\n".join(story(records))
    assert "the base model uses context" in text
    assert "SFT taught the chat format: replies that end their turn went from 0% (base) to " \
           "100% (SFT)" in text
    assert "PPO moved greedy accuracy from 22% to 20% (down 2 points) and sampled accuracy " \
           "from 12% to 25% (up 13 points), 2.50 nats of KL" in text
    assert "DPO moved greedy accuracy from 22% to 30% (up 8 points)" in text
    # a change under 2 points in tenths: "from 22% to 22% (up 0 points)" would hide it
    small = {"eval": {"numbers": {"models": {
        "sft": row(0.22, 0.12), "rft": row(0.2233, 0.1167), "grpo": row(0.2267, 0.135)}}}}
    moved = "\n".join(story(small))
    assert "RFT moved greedy accuracy from 22.0% to 22.3% (up 0.3 points) and sampled " \
           "accuracy from 12.0% to 11.7% (down 0.3 points)" in moved
    assert "GRPO moved greedy accuracy from 22.0% to 22.7% (up 0.7 points) and sampled " \
           "accuracy from 12.0% to 13.5% (up 1.5 points)" in moved
    assert "PPO raised the sampled answers more than the greedy one" in text
    assert "DPO raised" not in text  # its greedy gain is the larger
    assert "base 0%, SFT 12%, PPO 50%, DPO 0%. The RL prompts are all arithmetic" in text
    assert "the best model still gets 70% of held-out questions wrong" in text
    # where eval recorded how many conversation replies end, and the demos phase's world
    # holds conversation among the RL prompts, the findings say so
    for name, end in (("sft", 0.95), ("ppo", 0.7)):
        records["eval"]["numbers"]["models"][name]["talk_end_rate"] = end
    records["demos"] = {"settings": {"world": {"chat_prompt_share": 0.2}}}
    text = "\n".join(story(records))
    assert "PPO 50%, DPO 0%; share that end their turn: SFT 95%, PPO 70%. 20% of the RL " \
           "prompts are conversation" in text
    # and how varied the conversation is: a model answering everything alike, or looping
    for name, distinct, looping in (("sft", 0.5, 0.0), ("ppo", 0.05, 0.25)):
        records["eval"]["numbers"]["models"][name].update(talk_distinct=distinct,
                                                          talk_loop_rate=looping)
    text = "\n".join(story(records))
    assert "SFT 95%, PPO 70%; different replies: SFT 50%, PPO 5%; replies caught in a loop " \
           "(a three-word phrase three times): SFT 0%, PPO 25%. 20% of the RL" in text
    records["pretrain"]["numbers"]["val_bpb"] = 3.0
    assert "has not learned to use context" in "\n".join(story(records))


def test_report_rebuilds_the_plots_from_the_metrics(tmp_path, capsys):
    run = tmp_path / "sft"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 3 - s / 10, **({"val_loss": 2.5} if s == 8 else {})})
        + "\n" for s in range(1, 9)))
    (tmp_path / "pipeline.json").write_text(json.dumps({"phases": {"sft": {
        "seconds": 1.0, "peak_rss_mb": 100, "peak_memory": "phase",
        "settings": {"out": "{out}/sft"}, "numbers": {"val_loss": 2.5}}}}))
    assert main(["report", str(tmp_path)]) == 0
    assert (run / "loss.png").exists()
    html = (tmp_path / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 1 and str(run) in html
