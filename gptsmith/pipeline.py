"""All phases in order, each in its own directory under one pipeline directory.

A finished phase is skipped, an interrupted one resumes from its checkpoint, and
``--from PHASE`` deletes the outputs of that phase and of every later one, then redoes them.
``pipeline.json`` records, per phase, the settings it ran with (a finished phase whose
settings changed is refused, not silently kept), its time, its peak memory and its numbers,
so that a run in which everything is skipped still prints the whole summary table. At the
end: that table, and ``report.html`` (see ``gptsmith/report.py``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptsmith.chat import Reply, complete
from gptsmith.config import build, load_yaml
from gptsmith.data.build import prepare_data, train_tokenizer_from
from gptsmith.data.corpus import DEFAULT
from gptsmith.data.default_demos import TALK_PROMPTS, write_default_demos
from gptsmith.data.world import World
from gptsmith.engine import Sampling, generate
from gptsmith.errors import GptsmithError
from gptsmith.evaluate import (
    has_number,
    is_correct,
    load_questions,
    loops,
    question_kind,
    report,
    score_model,
)
from gptsmith.label import label
from gptsmith.plots import plot_eval
from gptsmith.report import NAMES, summary_rows, summary_table, write_report
from gptsmith.runs import atomic_write_text, load_model, write_config
from gptsmith.side_by_side import SideRun, threads_each, with_threads, write_settings
from gptsmith.train.dpo import DPOConfig, dpo
from gptsmith.train.grpo import GRPOConfig, grpo
from gptsmith.train.loop import config_differences, fault
from gptsmith.train.ppo import PPOConfig, ppo
from gptsmith.train.pretrain import PretrainConfig, pretrain
from gptsmith.train.reward import RMConfig, train_reward_model
from gptsmith.train.rft import RFTConfig, rft
from gptsmith.train.sft import SFTConfig, sft

PHASES = ("tokenizer", "data", "pretrain", "samples", "demos", "sft", "label", "rm", "ppo",
          "grpo", "rft", "dpo", "eval")
RL_METHODS = ("ppo", "grpo", "rft", "dpo")
# What each phase writes, relative to the pipeline directory: what --from deletes.
OUTPUTS = {
    "tokenizer": ["tokenizer.json"], "data": ["data"], "pretrain": ["pretrain"],
    "samples": ["pretrain/samples.txt"], "demos": ["sft_data"], "sft": ["sft"],
    "label": ["rankings.jsonl"], "rm": ["rm"], "ppo": ["ppo"], "grpo": ["grpo"], "rft": ["rft"],
    "dpo": ["dpo"],
    "eval": ["eval.txt", "eval.json", "eval.png", "answers.json"],
}
# Settings the pipeline fills in itself, and the pipeline flag to use instead.
FILLED = {
    "pretrain.data": "--corpus", "pretrain.out": "--out",
    "pretrain.model.vocab_size": "--vocab-size", "sft.base": "--out", "sft.data": "--demos",
    "sft.out": "--out", "rm.base": "--out", "rm.data": "--comparisons", "rm.out": "--out",
    "ppo.policy": "--out", "ppo.reward": "--out", "ppo.prompts": "--rl-prompts",
    "ppo.out": "--out", "grpo.policy": "--out", "grpo.prompts": "--rl-prompts",
    "grpo.out": "--out", "rft.policy": "--out", "rft.prompts": "--rl-prompts",
    "rft.out": "--out", "rft.sft_data": "--demos", "dpo.policy": "--out",
    "dpo.data": "--comparisons", "dpo.out": "--out",
}
RECIPES = Path(__file__).parent / "recipes"
SAMPLE_PROMPTS = ["ROMEO.\n", "The king said", "What is 3 plus 4?", "12 + 5 ="]
SHOWN_QUESTIONS = 6  # held-out questions shown side by side in eval.txt and report.html
TWO_DIGIT_SHOWN = 5  # held-out two-digit questions shown beside the seed's 17 x 24
SEED_QUESTION = ("What is 17 times 24?", "408")  # System 1 vs System 2, as the seed puts it


def _cpu_grpo() -> GRPOConfig:
    """As many replies per iteration as PPO's rollouts (4 prompts x 8), as many iterations;
    worked replies run 30-60 tokens, and a gentle step keeps the steps (README, "System 2")."""
    cfg = GRPOConfig(max_tokens=64, temperature=0.7, epochs=2, minibatches=2, beta=0.04)
    cfg.train = dataclasses.replace(cfg.train, batch_size=4, lr=1e-5)
    return cfg


def _cpu_ppo() -> PPOConfig:
    """Worked replies run 30-60 tokens; rollouts at 0.7 hold more right ones, and a gentle step
    (lr 1e-5, β 0.1) keeps the steps (README, "System 2")."""
    cfg = PPOConfig(max_tokens=64, temperature=0.7, ppo_epochs=2, minibatches=2, kl_coef=0.1)
    cfg.train = dataclasses.replace(cfg.train, lr=1e-5)
    return cfg


def _cpu_rft() -> RFTConfig:
    """200 iterations of 16 prompts x 8 replies sampled at 0.7, each group's best right reply
    learned beside 32 SFT demonstrations, and a KL penalty to the SFT model on replies to 8
    conversational prompts (the two keep the conversation: README "System 2")."""
    cfg = RFTConfig(max_tokens=64, temperature=0.7, sft_batch=32, talk_batch=8, talk_kl=1.0)
    cfg.train = dataclasses.replace(cfg.train, steps=200)
    return cfg


def _cpu_sft() -> SFTConfig:
    return SFTConfig(epochs=1.5)  # a procedure takes more passes than a fact


def _cpu_dpo() -> DPOConfig:
    """A larger step than for a big model: lr 1e-5 barely moves this one in its 35 steps."""
    cfg = DPOConfig()
    cfg.train = dataclasses.replace(cfg.train, lr=1e-4)
    return cfg


def _cpu_world() -> World:
    """The System 2 world (README, "The built-in default"): sums and differences to 99,
    products of a number to 99 by a digit, a share of the multi-digit facts worked out in
    steps, demonstrations that work them out, a fifth of the RL prompts conversation (with
    sums only, PPO taught the assistant that every question is a sum). ``World()`` keeps the
    world of before (operands to 20, nothing worked out): what world files written before
    these settings mean."""
    return World(max_operand=99, max_factor=9, max_multiplicand=99, worked_share=0.4,
                 arithmetic_share=0.75, chat_prompt_share=0.2, rl_small_share=0.4,
                 question_small_share=0.2, demo_arithmetic=8000, demo_worked_share=1.0,
                 prompt_variety=0.3)


def _cpu_pretrain() -> PretrainConfig:
    cfg = PretrainConfig()
    cfg.train = dataclasses.replace(cfg.train, steps=500, batch_size=16, lr=3e-3,
                                    warmup_steps=30, optimizer="muon", eval_every=250,
                                    checkpoint_every=50)
    return cfg


@dataclass
class PipelineConfig:
    """The defaults are the ``cpu`` recipe (gptsmith/recipes/cpu.yaml): a 2-core CPU."""

    out: str = field(default="runs/default", metadata={"help": "pipeline directory"})
    base: str = field(default="", metadata={
        "help": "'' pre-trains the base model; else import it (HF dir, .gguf or smollm2) and "
                "skip tokenizer, data and pretrain"})
    base_seq_len: int = field(default=2048, metadata={"help": "context cap of an imported base"})
    corpus: str = field(default="default", metadata={"help": "'default' or a corpus path"})
    vocab_size: int = field(default=2048, metadata={"help": "tokenizer vocabulary size"})
    val_fraction: float = field(default=0.02, metadata={"help": "share held out"})
    demos: str = field(default="default", metadata={
        "help": "'default' (built-in) or a demonstrations file for SFT"})
    questions: str = field(default="", metadata={
        "help": "known-answer questions for eval (default: the built-in held-out set)"})
    eval_limit: int = field(default=0, metadata={"help": "questions evaluated (0 = all)"})
    eval_samples: int = field(default=4, metadata={
        "help": "replies per question also sampled at temperature 1 in the evaluation"})
    comparisons: str = field(default="", metadata={
        "help": "comparisons/rankings for the RM (default: label SFT samples by the truth)"})
    rl_prompts: str = field(default="", metadata={
        "help": "RL prompts (default: the built-in questions, a fifth of them conversation)"})
    label_prompts: int = field(default=1000, metadata={"help": "prompts the labeler ranks"})
    label_k: int = field(default=4, metadata={"help": "replies sampled per labeled prompt"})
    label_max_tokens: int = field(default=64, metadata={
        "help": "longest reply the labeler samples (worked solutions run 30-60 tokens)"})
    eval_max_tokens: int = field(default=64, metadata={
        "help": "longest reply eval generates (worked solutions run 30-60 tokens)"})
    nproc: int = field(default=1, metadata={
        "help": "processes per training phase on this machine (torchrun; one per GPU); 1: "
                "each phase in this process"})
    rl: str = field(default="ppo,rft", metadata={
        "help": "the RL phases: ppo (RM + PPO), grpo (truth reward, no RM), rft "
                "(rejection-sampling fine-tuning, truth reward), dpo (on the rankings, no "
                "RM), a comma-separated list, or all: each from the same SFT "
                "model, side by side in eval and the report"})
    rl_from: str = field(default="sft", metadata={
        "help": "what RL starts from: sft (the SFT model), or base (the base model, pre-trained "
                "or imported, with no SFT run: RL alone, for the truth-rewarded grpo and rft)"})
    side_by_side: bool = field(default=True, metadata={
        "help": "run the RL methods (each from the SFT model) side by side, a process each, "
                "where the CPU has a core for each; else one after another"})
    world: World = field(default_factory=_cpu_world)  # the built-in corpus's tiny world
    pretrain: PretrainConfig = field(default_factory=_cpu_pretrain)
    sft: SFTConfig = field(default_factory=_cpu_sft)
    rm: RMConfig = field(default_factory=RMConfig)
    ppo: PPOConfig = field(default_factory=_cpu_ppo)
    grpo: GRPOConfig = field(default_factory=_cpu_grpo)
    rft: RFTConfig = field(default_factory=_cpu_rft)
    dpo: DPOConfig = field(default_factory=_cpu_dpo)


def load_recipe(name_or_path: str) -> tuple[dict, str]:
    """A recipe's settings and where they came from: a shipped one by name (``cpu``,
    ``gpu``), else a YAML file."""
    if "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml")):
        path = RECIPES / f"{name_or_path}.yaml"
        if not path.exists():
            shipped = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
            raise GptsmithError(f"--recipe {name_or_path!r}: no shipped recipe of that name "
                                f"(shipped: {shipped}); or give the path of a YAML file")
        return load_yaml(path), f"recipe {name_or_path} ({path})"
    return load_yaml(name_or_path), name_or_path


def config_from_args(args) -> PipelineConfig:
    """The pipeline's config as the CLI builds it: defaults < ``--recipe`` < flags."""
    values, where = load_recipe(args.recipe) if args.recipe else (None, "pipeline")
    return build(PipelineConfig, args, values, where=where)


def _check_filled(cfg: PipelineConfig) -> None:
    defaults = dataclasses.asdict(PipelineConfig())
    given = dataclasses.asdict(cfg)
    for key, flag in FILLED.items():
        a, b = defaults, given
        for part in key.split("."):
            a, b = a[part], b[part]
        if a != b:
            raise GptsmithError(f"{key} is set by the pipeline itself (got {b!r}); "
                                f"use {flag} instead")


# -- measuring a phase ---------------------------------------------------------------------
def reset_peak_memory() -> bool:
    """Start a new peak-RSS measurement; False where the kernel cannot reset it."""
    gc.collect()  # what earlier phases left behind is not this phase's
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux)
        return True
    except OSError:
        return False


def peak_memory_mb() -> float:
    """Peak resident memory of this process since the last reset (VmHWM), or since it
    started where that is unavailable (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
        if found:
            return int(found.group(1)) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def load_records(root: Path) -> dict:
    path = root / "pipeline.json"
    return json.loads(path.read_text()) if path.exists() else {"phases": {}}


def save_records(root: Path, book: dict) -> None:
    atomic_write_text(root / "pipeline.json", json.dumps(book, indent=2) + "\n")


def _finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").exists() and (run_dir / "model.safetensors").exists()


def _without_config(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "config"}


def forget_from(root: Path, book: dict, first: str, keep: set[Path]) -> None:
    """Delete the outputs and records of phase ``first`` and of every later phase (never a
    file in ``keep``: the user's own inputs)."""
    later = PHASES[PHASES.index(first):]
    removed = []
    for name in later:
        for rel in OUTPUTS[name]:
            path = root / rel
            if path.resolve() in keep or not (path.exists() or path.is_symlink()):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(rel)
    for name in later:  # after the files: a crash in between leaves records of nothing
        book["phases"].pop(name, None)
    save_records(root, book)
    print(f"== --from {first}: redoing {', '.join(later)}; removed "
          f"{', '.join(removed) or 'nothing'}")


def portable(value, root: Path):
    """``value`` (settings) with every path inside the pipeline directory written relative to
    it, as ``{out}/sft``: pipeline.json then still describes a directory that was moved or
    copied elsewhere, and its finished phases are recognised as done there."""
    if isinstance(value, dict):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, root) for v in value]
    if isinstance(value, str):
        prefix = str(root)
        if value == prefix:
            return "{out}"
        if value.startswith(prefix.rstrip("/") + "/"):
            return "{out}/" + value[len(prefix.rstrip("/")) + 1:]
    return value


# -- the pipeline --------------------------------------------------------------------------
@dataclass
class PipelineRun:
    """One run of the pipeline: its settings and directory, the records of pipeline.json,
    and the phases seen and run so far (for the summary table)."""

    cfg: PipelineConfig
    root: Path
    book: dict
    seen: list[str] = field(default_factory=list)
    ran: set[str] = field(default_factory=set)

    def phase(self, name: str, done: bool, fn, settings: dict | None = None,
              derived: bool = False, measured: dict | None = None) -> None:
        """Skip ``name`` when done with the same settings, else run ``fn`` (which returns
        the phase's numbers) and record its time, peak memory and numbers (``measured``:
        those of the process that did the work, once ``fn`` returns). A ``derived`` phase
        (eval: it only reads what earlier phases made) is redone when its settings change
        instead of being refused."""
        self.seen.append(name)
        settings = self._as_recorded(settings or {})
        if self._skip(name, done, settings, derived):
            print(f"== {name}: done already, skipped")
            return
        print(f"== {name}")
        self.book["phases"][name] = {**_measured(name, fn, settings), **(measured or {})}
        save_records(self.root, self.book)
        self.ran.add(name)

    def _as_recorded(self, settings: dict) -> dict:
        """Settings as pipeline.json records them: JSON values, paths relative to the root."""
        return portable(json.loads(json.dumps(settings)), self.root)

    def _skip(self, name: str, done: bool, settings: dict, derived: bool = False) -> bool:
        """Whether a done phase can be kept: refused when it ran with other settings (a
        derived one is redone), redone when it was made but never recorded."""
        old = self.book["phases"].get(name)
        if done and old is not None:
            recorded = _without_moved(name, portable(old.get("settings", {}), self.root))
            if "world" in settings and "world" not in recorded:  # the default world's values
                recorded = {**recorded, "world": _default_world(settings["world"])}
            changed = config_differences(recorded, settings)
            if changed and derived:
                print(f"== {name}: its inputs changed, redoing it")
                return False
            if changed:
                raise GptsmithError(
                    f"{self.root}: phase {name} was done with other settings "
                    f"({'; '.join(changed)}); rerun with the same settings, or add --from "
                    f"{name} to redo it and every phase after it")
        if done and old is None:  # made, then interrupted before it was recorded
            print(f"== {name}: output found but not recorded: redoing it (same settings, "
                  "same result)")
            return False
        return done

    def trainer(self, name: str, cfg, train_fn, extra: dict | None = None,
                threads: int = 0) -> None:
        """A training phase: done when its run directory holds a finished run that
        pipeline.json recorded (without that record the trainer itself checks the settings).
        ``threads`` > 0: on that many threads (the settings recorded are ``cfg``'s)."""
        settings = dataclasses.asdict(cfg)  # before train_fn fills in derived fields
        nproc = self.cfg.nproc

        def train() -> dict:
            if nproc != 1:
                return torchrun(name, cfg, nproc)
            if not threads:
                return train_fn(cfg)
            before = torch.get_num_threads()
            try:
                return train_fn(with_threads(cfg, threads))
            finally:
                torch.set_num_threads(before)

        self.phase(name, self.trainer_done(name, cfg),
                   lambda: {**_without_config(train()), **(extra or {})}, settings)

    def trainer_done(self, name: str, cfg) -> bool:
        return _finished(Path(cfg.out)) and name in self.book["phases"]

    def trainers(self, jobs: list[tuple]) -> None:
        """Training phases that need nothing from one another, each ``(name, cfg, train_fn,
        extra)``: one after another, or side by side where ``side_by_side`` allows it
        (``side_by_side.py``), the first in this process and the others in their own."""
        for name, cfg, _, _ in jobs:  # a changed finished phase is refused before any starts
            self._skip(name, self.trainer_done(name, cfg),
                       self._as_recorded(dataclasses.asdict(cfg)))
        todo = [job for job in jobs if not self.trainer_done(job[0], job[1])]
        threads = 0 if self.cfg.nproc != 1 else threads_each(
            [job[1] for job in todo], self.cfg.side_by_side)
        if not threads:
            for job in jobs:
                self.trainer(*job)
            return
        first, side = todo[0][0], {}
        try:
            for name, cfg, _, _ in todo[1:]:
                side[name] = SideRun(name, cfg, threads, self.root, beside=first)
                print(f"== {name}: started beside {first} in a process of its own ({threads} "
                      f"thread{'s' * (threads > 1)} each); its output: {side[name].log}")
            for name, cfg, train_fn, extra in jobs:
                if name in side:
                    self.phase(name, False, lambda s=side[name], e=extra: {
                        **_without_config(s.wait()), **(e or {})},
                        dataclasses.asdict(cfg), measured=side[name].measured)
                else:
                    self.trainer(name, cfg, train_fn, extra, threads=threads)
        finally:
            for run in side.values():
                run.stop()


def torchrun(command: str, cfg, nproc: int) -> dict:
    """Run the training command ``command`` with settings ``cfg`` on ``nproc`` processes of
    this machine, started by PyTorch's torchrun; its summary. A failed rank stops them all
    (torchrun says which); running the pipeline again resumes from the last checkpoint."""
    out = Path(cfg.out)
    settings = write_settings(cfg, out.parent / f".{out.name}.torchrun.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(nproc), "-m", "gptsmith", command, "--config", str(settings)]
    try:
        done = subprocess.run(cmd)
    finally:
        settings.unlink(missing_ok=True)
    if done.returncode != 0:
        raise GptsmithError(f"{command} on {nproc} processes failed (exit code "
                            f"{done.returncode}; torchrun's report is above); run the pipeline "
                            "again to resume it from its last checkpoint")
    return json.loads((out / "summary.json").read_text())


def _measured(name: str, fn, settings: dict) -> dict:
    """Run phase ``name``'s ``fn``: its record (time, peak memory, settings, numbers)."""
    whole_phase = reset_peak_memory()
    start = time.perf_counter()
    os.environ["GPTSMITH_PHASE"] = name  # for the crash tests' fault hook
    try:
        numbers = fn() or {}
    except GptsmithError as e:  # a phase's "start over with --overwrite" is --from here
        raise GptsmithError(str(e).replace("--overwrite", f"--from {name}")) from None
    finally:
        os.environ.pop("GPTSMITH_PHASE", None)
    fault("phase-end", name)  # done, not yet recorded
    record = {"seconds": round(time.perf_counter() - start, 1),
              "peak_rss_mb": round(peak_memory_mb()),
              "peak_memory": "phase" if whole_phase else "process",
              "settings": settings, "numbers": numbers}
    if torch.cuda.is_available():
        record["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return record


def run_pipeline(cfg: PipelineConfig, redo_from: str | None = None) -> dict:
    """Run (or skip) every phase, print the summary table, write report.html; the records
    of the phases of this configuration, as in pipeline.json."""
    if redo_from is not None and redo_from not in PHASES:
        raise GptsmithError(f"--from {redo_from!r}: no such phase; the phases, in order: "
                            f"{', '.join(PHASES)}")
    _check_filled(cfg)
    check_rl_from(cfg)  # refused before any phase runs
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    given = dataclasses.asdict(cfg)  # before the phases fill in their paths
    run = PipelineRun(cfg, root, load_records(root))
    if redo_from is not None:
        inputs = (cfg.corpus, cfg.demos, cfg.questions, cfg.comparisons, cfg.rl_prompts)
        forget_from(root, run.book, redo_from, {Path(p).resolve() for p in inputs if p})
    base_model_phases(run)
    sft_phases(run)
    sft_run = [root / "sft"] if cfg.rl_from == "sft" else []
    runs = [root / "pretrain", *sft_run, *rlhf_phases(run)]
    eval_phase(run, runs)
    write_config(root, given)  # what the pipeline directory now holds was made with
    rows = summary_rows(run.book["phases"], run.seen, run.ran)
    print(summary_table(rows))
    write_report(root, rows, run.book["phases"])
    print(f"report: {root / 'report.html'}")
    return {name: run.book["phases"].get(name) for name in run.seen}


def base_model_phases(run: PipelineRun) -> None:
    """tokenizer, data, pretrain and samples: the base model, and its samples printed; with
    ``base`` the base model is imported instead (in the pretrain phase's place)."""
    cfg, root = run.cfg, run.root
    if cfg.base:
        from gptsmith.interop.convert import import_model

        out = root / "pretrain"
        run.phase("pretrain", (out / "model.safetensors").exists(),
                  lambda: import_model(cfg.base, str(out), seq_len=cfg.base_seq_len,
                                       overwrite=True),
                  {"import": cfg.base, "seq_len": cfg.base_seq_len})
        _samples_phase(run)
        return
    tok, data = root / "tokenizer.json", root / "data"
    # a corpus world other than the default is part of both phases' settings (runs made
    # before the world had settings recorded none, and stay done); what only the
    # demonstrations read is the demos phase's
    world = _world_settings(cfg.world, corpus=True) if cfg.corpus == DEFAULT else {}
    run.phase("tokenizer", tok.exists(),
              lambda: train_tokenizer_from(cfg.corpus, cfg.vocab_size, tok, world=cfg.world),
              {"corpus": cfg.corpus, "vocab_size": cfg.vocab_size, **world})
    run.phase("data", (data / "meta.json").exists(),
              lambda: _data_numbers(prepare_data(cfg.corpus, tok, data, cfg.val_fraction,
                                                 overwrite=True, world=cfg.world)),
              {"corpus": cfg.corpus, "val_fraction": cfg.val_fraction, **world})
    cfg.pretrain.data, cfg.pretrain.out = str(data), str(root / "pretrain")
    run.trainer("pretrain", cfg.pretrain, pretrain)
    _samples_phase(run)


def _world_settings(world: World, corpus: bool) -> dict:
    """``{"world": fields}``: the fields of ``world`` the corpus reads (``corpus``) or only
    the demonstrations read, where any differs from the default world's (else ``{}``: runs
    recorded before the world had settings stay done)."""
    return _unless_default({k: v for k, v in dataclasses.asdict(world).items()
                            if (k in World.DEMO_FIELDS) != corpus})


def _demos_settings(cfg: PipelineConfig) -> dict:
    """The world fields the demos phase records: those only the demonstrations read, or
    every field where no corpus phase records the others (an imported base: its demos are
    still the tiny world's, operands and all)."""
    if cfg.base:
        return _unless_default(dataclasses.asdict(cfg.world))
    return _world_settings(cfg.world, corpus=False)


def _default_world(fields: dict) -> dict:
    """The values ``World()`` has for these fields: what a record without them stands for."""
    return {k: v for k, v in dataclasses.asdict(World()).items() if k in fields}


def _unless_default(fields: dict) -> dict:
    """``{"world": fields}``, or ``{}`` where the default world has these values."""
    return {"world": fields} if fields != _default_world(fields) else {}


def _without_moved(phase: str, settings: dict) -> dict:
    """Recorded settings as recorded now: the world fields only the demonstrations read were
    once recorded (with the corpus's) by the tokenizer and data phases; they are the demos
    phase's now, and a run recorded then stays done. (The demos phase's own record keeps
    them: it is where they belong.)"""
    world = settings.get("world")
    if phase not in ("tokenizer", "data") or not isinstance(world, dict) or \
            not any(k in world for k in World.DEMO_FIELDS):
        return settings
    rest = {k: v for k, v in settings.items() if k != "world"}
    return {**rest, **_unless_default({k: v for k, v in world.items()
                                       if k not in World.DEMO_FIELDS})}


def _samples_phase(run: PipelineRun) -> None:
    samples = run.root / "pretrain" / "samples.txt"
    run.phase("samples", samples.exists(),
              lambda: write_samples(run.root / "pretrain", samples))
    print(samples.read_text())


def sft_phases(run: PipelineRun) -> None:
    """demos (built-in demonstrations, unless --demos gives a file) and sft."""
    cfg, root = run.cfg, run.root
    demos = root / "sft_data"
    if cfg.demos == "default":
        run.phase("demos", (demos / "questions.jsonl").exists(),
                  lambda: write_default_demos(cfg.world, demos), _demos_settings(cfg))
        cfg.sft.data, cfg.sft.val_data = str(demos / "train.jsonl"), str(demos / "val.jsonl")
    else:
        cfg.sft.data = cfg.demos
    cfg.sft.base, cfg.sft.out = str(root / "pretrain"), str(root / "sft")
    if cfg.rl_from == "base":
        print("== sft: not run (--rl-from base: RL starts from the base model)")
        return
    run.trainer("sft", cfg.sft, sft)


def check_rl_from(cfg: PipelineConfig) -> None:
    """``--rl`` names known methods, and with ``--rl-from base`` only those that need no
    comparisons (the labeler ranks the SFT model's samples, and the reward model starts
    from it)."""
    methods = rl_methods(cfg.rl)
    if cfg.rl_from not in ("sft", "base"):
        raise GptsmithError(f"--rl-from {cfg.rl_from!r}: give sft or base")
    need_sft = [m for m in methods if m in ("ppo", "dpo")]
    if cfg.rl_from == "base" and need_sft:
        raise GptsmithError(f"--rl-from base with --rl {cfg.rl}: {' and '.join(need_sft)} "
                            "learn from comparisons of the SFT model's replies; from the base "
                            "model give --rl grpo, rft or grpo,rft (the truth reward)")


def rlhf_inputs(cfg: PipelineConfig, root: Path) -> tuple[str, str, str]:
    """The eval questions, RM comparisons and PPO prompts: the given files, else (with the
    built-in demonstrations) the built-in ones and the labeler's rankings, else ''."""
    default, demos = cfg.demos == "default", root / "sft_data"
    questions = cfg.questions or (str(demos / "questions.jsonl") if default else "")
    comparisons = cfg.comparisons or (str(root / "rankings.jsonl") if default else "")
    rl_prompts = cfg.rl_prompts or (str(demos / "prompts.jsonl") if default else "")
    return questions, comparisons, rl_prompts


def rl_methods(rl: str) -> list[str]:
    """The RL methods ``--rl`` names, in pipeline order."""
    names = RL_METHODS if rl == "all" else [m.strip() for m in rl.split(",") if m.strip()]
    unknown = [m for m in names if m not in RL_METHODS]
    if unknown or not names:
        raise GptsmithError(f"--rl {rl!r}: give ppo, grpo, rft, dpo, a comma-separated list of "
                            "them, or all")
    return [m for m in RL_METHODS if m in names]


def rlhf_phases(run: PipelineRun) -> list[Path]:
    """label (unless --comparisons gives them), then each method of --rl from the SFT model
    (or the base model, ``--rl-from base``): rm and ppo, grpo and rft (the truth reward), dpo
    (on the comparisons); the run directories made (none without comparisons and prompts)."""
    cfg, root = run.cfg, run.root
    methods = rl_methods(cfg.rl)
    questions, comparisons, rl_prompts = rlhf_inputs(cfg, root)
    needs_comparisons = "ppo" in methods or "dpo" in methods
    if needs_comparisons and cfg.demos == "default" and not cfg.comparisons:
        def rank_samples() -> dict:
            s = Sampling(max_tokens=cfg.label_max_tokens, temperature=1.0)
            return {**label(str(root / "sft"), rl_prompts, comparisons, k=cfg.label_k, s=s,
                            limit=cfg.label_prompts), "k": cfg.label_k}

        longer = {"max_tokens": cfg.label_max_tokens} if cfg.label_max_tokens != 32 else {}
        run.phase("label", Path(comparisons).exists(), rank_samples,
                  {"k": cfg.label_k, "prompts": cfg.label_prompts, "rl_prompts": rl_prompts,
                   **longer})
    start = str(root / ("sft" if cfg.rl_from == "sft" else "pretrain"))  # where RL starts
    missing = {"ppo": not (comparisons and rl_prompts), "grpo": not rl_prompts,
               "rft": not rl_prompts, "dpo": not comparisons}
    for method in [m for m in methods if missing[m]]:
        print(f"== {method}: skipped (give --comparisons and --rl-prompts for your own data)")
    jobs = []  # each method from the same model: side by side where the cores allow
    if "ppo" in methods and not missing["ppo"]:
        cfg.rm.base, cfg.rm.data, cfg.rm.out = start, comparisons, str(root / "rm")
        run.trainer("rm", cfg.rm, train_reward_model)
        cfg.ppo.policy, cfg.ppo.reward = start, str(root / "rm")
        cfg.ppo.prompts, cfg.ppo.out = rl_prompts, str(root / "ppo")
        cfg.ppo.eval_questions = cfg.ppo.eval_questions or questions
        jobs.append(("ppo", cfg.ppo, ppo, {"rollouts": cfg.ppo.train.batch_size}))
    cfg.rft.sft_data = cfg.sft.data  # what RFT's mixed-in SFT loss (sft_batch) reads
    for name, train in (("grpo", grpo), ("rft", rft)):  # sampled groups, a reward program
        if name in methods and not missing[name]:
            c = getattr(cfg, name)
            c.policy, c.prompts, c.out = start, rl_prompts, str(root / name)
            c.eval_questions = c.eval_questions or questions
            if name == "rft" and c.talk_batch and not _has_talk(rl_prompts):
                print(f"== rft: {rl_prompts} has no conversational prompts (\"kind\": "
                      f"\"talk\"): no KL penalty on conversation (--rft.talk-batch 0)")
                c.talk_batch = 0
            jobs.append((name, c, train, {"rollouts": c.train.batch_size * c.group_size}))
    if "dpo" in methods and not missing["dpo"]:
        cfg.dpo.policy, cfg.dpo.data, cfg.dpo.out = start, comparisons, str(root / "dpo")
        jobs.append(("dpo", cfg.dpo, dpo, None))
    run.trainers(jobs)
    return [root / job[0] for job in jobs]


def _has_talk(prompts: str) -> bool:
    return any(q.get("kind") == "talk" for q in load_questions(prompts, require_answer=False))


def eval_phase(run: PipelineRun, runs: list[Path]) -> None:
    """eval (when there are questions): every model on the held-out questions, printed."""
    cfg, root = run.cfg, run.root
    questions = rlhf_inputs(cfg, root)[0]
    if not questions:
        return
    done = all((root / name).exists() for name in ("eval.json", "eval.txt", "answers.json"))
    longer = {"max_tokens": cfg.eval_max_tokens} if cfg.eval_max_tokens != 48 else {}
    run.phase("eval", done, lambda: evaluate_phases(runs, questions, cfg.eval_limit,
                                                    cfg.eval_samples, root,
                                                    cfg.eval_max_tokens),
              {"questions": questions, "limit": cfg.eval_limit, "samples": cfg.eval_samples,
               "models": [str(r) for r in runs], **longer}, derived=True)
    print((root / "eval.txt").read_text())


def _data_numbers(meta: dict) -> dict:
    return {"train_tokens": meta["train"]["tokens"], "val_tokens": meta["val"]["tokens"],
            "train_bytes": meta["train"]["bytes"], "val_bytes": meta["val"]["bytes"],
            "unigram_bpb": meta["unigram_bpb"]}


def evaluate_phases(runs: list[Path], questions: str, limit: int, samples: int,
                    root: Path, max_tokens: int = 48) -> dict:
    """Each phase's model answering the same held-out questions (greedy, and ``samples``
    sampled replies per question), scored: eval.txt, eval.json, eval.png, and answers.json
    (for the report: the questions where the models differ most, and every model's reply to
    ordinary conversation, with how often it answers that with a number, ends its turn
    and loops there, and the share of its replies that differ from one another)."""
    qs = load_questions(questions, limit)
    s = Sampling(max_tokens=max_tokens, temperature=0)
    results = [score_model(str(r), qs, s, samples) for r in runs]
    two_digit = [i for i, q in enumerate(qs) if question_kind(q) == "two-digit"]
    extra = [SEED_QUESTION[0]] if two_digit else []  # System 2: the seed's 17 x 24 too
    replies = [answer_prompts(r, TALK_PROMPTS + extra, s) for r in runs]
    open_replies = [rs[:len(TALK_PROMPTS)] for rs in replies]
    scored = [{**r.row(), "talk_number_rate": round(number_rate(replies), 4),
               "talk_end_rate": round(sum(x.ended for x in replies) / len(replies), 4),
               "talk_distinct": round(len({x.text for x in replies}) / len(replies), 4),
               "talk_loop_rate": round(sum(loops(x.text) for x in replies) / len(replies), 4)}
              for r, replies in zip(results, open_replies, strict=True)]
    atomic_write_text(root / "eval.txt", report(results, qs, show=SHOWN_QUESTIONS) + "\n")
    atomic_write_text(root / "eval.json", json.dumps(scored, indent=2) + "\n")
    rows = {Path(row["model"]).name: row for row in scored}
    plot_eval({NAMES.get(name, name): row for name, row in rows.items()}, root / "eval.png")
    shown = [{"prompt": qs[i]["messages"][-1]["content"], "answer": qs[i]["answer"],
              "replies": [_reply_row(r.replies[i], qs[i]["answer"]) for r in results]}
             for i in most_different(results, qs, SHOWN_QUESTIONS)]
    opened = [{"prompt": p, "replies": [{"text": rs[i].text, "ended": rs[i].ended}
                                         for rs in open_replies]}
              for i, p in enumerate(TALK_PROMPTS)]
    answers = {"models": [Path(r).name for r in runs], "questions": shown, "open": opened}
    if two_digit:  # the seed's 17 x 24, then held-out two-digit sums and differences
        answers["two_digit"] = [
            {"prompt": SEED_QUESTION[0], "answer": SEED_QUESTION[1],
             "replies": [_reply_row(rs[-1], SEED_QUESTION[1]) for rs in replies]},
            *({"prompt": qs[i]["messages"][-1]["content"], "answer": qs[i]["answer"],
               "replies": [_reply_row(r.replies[i], qs[i]["answer"]) for r in results]}
              for i in two_digit[:TWO_DIGIT_SHOWN])]
    atomic_write_text(root / "answers.json", json.dumps(answers, indent=2) + "\n")
    return {"questions": len(qs), "samples": samples, "models": rows,
            "open_prompts": len(TALK_PROMPTS)}


def _reply_row(r: Reply, answer: str) -> dict:
    return {"text": r.text, "ended": r.ended, "right": is_correct(r.text, answer)}


def number_rate(replies: list[Reply]) -> float:
    """Share of replies to ordinary conversation that contain a number: the RL prompts are
    arithmetic, and a model that learned "every question is a sum" answers them with one."""
    return sum(has_number(r.text) for r in replies) / max(1, len(replies))


def most_different(results: list, qs: list[dict], n: int) -> list[int]:
    """Indices of ``n`` questions to show, those where the models disagree first: some right
    and some wrong, then different replies, then the rest (in question order)."""
    def disagreement(i: int) -> int:
        right = {is_correct(r.replies[i].text, qs[i]["answer"]) for r in results}
        texts = {r.replies[i].text for r in results}
        return 2 * (len(right) > 1) + (len(texts) > 1)

    return sorted(sorted(range(len(qs)), key=lambda i: -disagreement(i))[:n])


def answer_prompts(run_dir: Path, prompts: list[str], s: Sampling) -> list[Reply]:
    """The replies of the model in ``run_dir`` to one-turn conversations."""
    model, tokenizer = load_model(run_dir)
    return complete(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts], s)


def write_samples(run_dir: Path, out: Path, prompts: list[str] = SAMPLE_PROMPTS) -> dict:
    model, tokenizer = load_model(run_dir)
    ids = [tokenizer.encode_document(p) for p in prompts]
    stops = (tokenizer.bos_id,) if tokenizer.bos_ids else tokenizer.stop_ids
    outs = generate(model, ids, Sampling(max_tokens=60, temperature=0.8, top_k=50, seed=0,
                                         stop_ids=stops))
    text = "".join(f"--- {p!r}\n{p}{tokenizer.decode(o, skip_special=True)}\n\n"
                   for p, o in zip(prompts, outs, strict=True))
    atomic_write_text(out, text)
    return {"prompts": len(prompts)}
