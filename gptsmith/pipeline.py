"""All phases in order, each in its own directory under one pipeline directory.

A phase whose output exists is skipped; an interrupted one resumes from its checkpoint.
Phases: tokenizer, data, pretrain, samples, demos, sft, label, rm, ppo, eval.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from gptsmith.data.build import prepare_data, train_tokenizer_from
from gptsmith.data.default_demos import write_default_demos
from gptsmith.data.world import World
from gptsmith.engine import Sampling, generate
from gptsmith.evaluate import load_questions, report, score_model
from gptsmith.label import label
from gptsmith.runs import atomic_write_text, load_model, write_config
from gptsmith.train.ppo import PPOConfig, ppo
from gptsmith.train.pretrain import PretrainConfig, pretrain
from gptsmith.train.reward import RMConfig, train_reward_model
from gptsmith.train.sft import SFTConfig, sft

SAMPLE_PROMPTS = ["ROMEO.\n", "The king said", "What is 3 plus 4?", "12 + 5 ="]


def _cpu_pretrain() -> PretrainConfig:
    cfg = PretrainConfig()
    cfg.train = dataclasses.replace(cfg.train, steps=750, batch_size=16, lr=3e-3,
                                    warmup_steps=30, eval_every=250, checkpoint_every=50)
    return cfg


@dataclass
class PipelineConfig:
    out: str = field(default="runs/default", metadata={"help": "pipeline directory"})
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
        "help": "PPO prompts (default: the built-in arithmetic questions)"})
    label_prompts: int = field(default=1000, metadata={"help": "prompts the labeler ranks"})
    label_k: int = field(default=4, metadata={"help": "replies sampled per labeled prompt"})
    pretrain: PretrainConfig = field(default_factory=_cpu_pretrain)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)


def run_pipeline(cfg: PipelineConfig) -> dict:
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    write_config(root, dataclasses.asdict(cfg))
    timings = {}

    def phase(name: str, done: bool, fn):
        if done:
            print(f"== {name}: done already, skipped")
            return
        print(f"== {name}")
        t = time.perf_counter()
        fn()
        timings[name] = round(time.perf_counter() - t, 1)

    tok = root / "tokenizer.json"
    phase("tokenizer", tok.exists(),
          lambda: train_tokenizer_from(cfg.corpus, cfg.vocab_size, tok))
    data = root / "data"
    phase("data", (data / "meta.json").exists(),
          lambda: prepare_data(cfg.corpus, tok, data, cfg.val_fraction))
    cfg.pretrain.data, cfg.pretrain.out = str(data), str(root / "pretrain")
    summary: dict = {}
    phase("pretrain", False, lambda: summary.update(pretrain=pretrain(cfg.pretrain)))
    samples = root / "pretrain" / "samples.txt"
    phase("samples", samples.exists(), lambda: write_samples(root / "pretrain", samples))
    print(samples.read_text())

    demos = root / "sft_data"
    if cfg.demos == "default":
        world = World.load(data / "world.json") if (data / "world.json").exists() else World()
        phase("demos", (demos / "questions.jsonl").exists(),
              lambda: write_default_demos(world, demos))
        cfg.sft.data, cfg.sft.val_data = str(demos / "train.jsonl"), str(demos / "val.jsonl")
    else:
        cfg.sft.data = cfg.demos
    cfg.sft.base, cfg.sft.out = str(root / "pretrain"), str(root / "sft")
    phase("sft", False, lambda: summary.update(sft=sft(cfg.sft)))

    default = cfg.demos == "default"
    questions = cfg.questions or (str(demos / "questions.jsonl") if default else "")
    comparisons = cfg.comparisons or (str(root / "rankings.jsonl") if default else "")
    rl_prompts = cfg.rl_prompts or (str(demos / "prompts.jsonl") if default else "")
    if default and not cfg.comparisons:
        phase("label", Path(comparisons).exists(), lambda: label(
            str(root / "sft"), rl_prompts, comparisons, k=cfg.label_k, limit=cfg.label_prompts))
    runs = [root / "pretrain", root / "sft"]
    if comparisons and rl_prompts:
        cfg.rm.base, cfg.rm.data, cfg.rm.out = str(root / "sft"), comparisons, str(root / "rm")
        phase("rm", False, lambda: summary.update(rm=train_reward_model(cfg.rm)))
        cfg.ppo.policy, cfg.ppo.reward = str(root / "sft"), str(root / "rm")
        cfg.ppo.prompts, cfg.ppo.out = rl_prompts, str(root / "ppo")
        cfg.ppo.eval_questions = cfg.ppo.eval_questions or questions
        phase("ppo", False, lambda: summary.update(ppo=ppo(cfg.ppo)))
        runs.append(root / "ppo")
    else:
        print("== rm, ppo: skipped (give --comparisons and --rl-prompts for your own data)")
    scores = root / "eval.json"
    if questions:
        done = scores.exists() and [r["model"] for r in json.loads(scores.read_text())] == [
            str(r) for r in runs]
        phase("eval", done, lambda: evaluate_phases(runs, questions, cfg.eval_limit,
                                                    cfg.eval_samples, root / "eval.txt", scores))
        print((root / "eval.txt").read_text())
    print_timings(timings, summary)
    return {"timings": timings, **summary}


def print_timings(timings: dict, summary: dict) -> None:
    """Seconds per phase run now, with each training phase's headline number."""
    headline = {
        "pretrain": lambda s: f"val {s['val_bpb']:.3f} bits/byte (unigram {s['unigram_bpb']:.3f})",
        "sft": lambda s: f"val loss {s['val_loss']:.3f}",
        "rm": lambda s: f"held-out pairwise accuracy {s['val_accuracy']:.1%}",
        "ppo": lambda s: f"true accuracy {s.get('true_accuracy', float('nan')):.1%}, "
                         f"RM score {s.get('rm_score', float('nan')):.2f}, "
                         f"KL {s.get('kl', float('nan')):.2f}",
    }
    print("== phases run now")
    for name, seconds in timings.items():
        note = headline[name](summary[name]) if name in headline and name in summary else ""
        print(f"  {name:<10} {seconds:>7.1f}s  {note}")


def evaluate_phases(runs: list[Path], questions: str, limit: int, samples: int,
                    text_out: Path, json_out: Path) -> None:
    """Each phase's model answering the same held-out questions (greedy, and ``samples``
    sampled replies per question), scored."""
    qs = load_questions(questions, limit)
    s = Sampling(max_tokens=48, temperature=0)
    results = [score_model(str(r), qs, s, samples) for r in runs]
    atomic_write_text(text_out, report(results, qs, show=6) + "\n")
    atomic_write_text(json_out, json.dumps([r.row() for r in results], indent=2) + "\n")


def write_samples(run_dir: Path, out: Path, prompts: list[str] = SAMPLE_PROMPTS) -> None:
    model, tokenizer = load_model(run_dir)
    ids = [[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts]
    outs = generate(model, ids, Sampling(max_tokens=60, temperature=0.8, top_k=50, seed=0,
                                         stop_ids=(tokenizer.bos_id,)))
    text = "".join(f"--- {p!r}\n{p}{tokenizer.decode(o, skip_special=True)}\n\n"
                   for p, o in zip(prompts, outs, strict=True))
    atomic_write_text(out, text)
