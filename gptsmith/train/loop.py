"""The one training loop every phase runs on.

AdamW (weight decay on matrices only), linear warmup then cosine decay, gradient
accumulation, clipping, bf16 autocast, optional torch.compile, periodic evaluation,
``metrics.jsonl``, a progress bar, and checkpoints written atomically that resume exactly:
model, optimizer, step, RNG states and the data position all travel in one file.
Under torchrun the same loop runs on every rank (``distributed.py``): the batch setting is
the global batch, each rank trains on its share, gradients are summed over ranks and divided
by the global count, only rank 0 writes the run's files, and checkpoints go through DCP so
that one saved on N ranks resumes on M (one process still writes ``latest.pt``).

A phase supplies a model, a batch source (``next()``, ``state_dict()``,
``load_state_dict()``), a ``loss_fn(model, batch) -> LossSum`` and optionally an
``evaluate(model) -> dict`` of metrics. Losses are summed, not averaged, per micro-batch, and
the step divides by what they were summed over in all its micro-batches: with padding,
``grad_accum`` k micro-batches of n are exactly one batch of k·n.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from tqdm import tqdm

import gptsmith.train.distributed as ranks
from gptsmith.device import (
    autocast,
    matmul_width,
    pick_device,
    resolve_precision,
    set_threads,
)
from gptsmith.errors import GptsmithError
from gptsmith.plots import plot_metrics
from gptsmith.runs import (
    atomic_path,
    atomic_write_text,
    data_changes,
    data_fingerprints,
    save_model,
    write_config,
)
from gptsmith.tokenizer import Tokenizer
from gptsmith.tracking import Trackers
from gptsmith.train.batches import RankShare
from gptsmith.train.distributed import DistConfig
from gptsmith.train.lora import LoRAConfig, lora_layers, merged_state_dict, save_adapter
from gptsmith.train.muon import MuonAdamW, is_muon_matrix

# Fields that may change between a run and its resumption without changing its result
# (beyond rounding: packing SFT batches computes the same loss from fewer positions).
# How the work is spread over ranks is one of them: a DCP checkpoint loads on any.
RESUMABLE_CHANGES = {"log_every", "eval_every", "checkpoint_every", "threads", "compile",
                     "progress", "log", "dist", "strategy", "pack"}


@dataclass
class TrainConfig:
    steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={
        "help": "sequences per micro-batch, over all processes under torchrun"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final lr as a share of peak"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warmup steps"})
    optimizer: str = field(default="adamw", metadata={
        "help": "adamw | muon: Muon for the transformer blocks' matrices, AdamW for the "
                "embeddings, head and norms, the same lr and decay (pre-training from scratch)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW decay (matrices only)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW β1 (momentum)"})
    beta2: float = field(default=0.95, metadata={"help": "AdamW β2 (second-moment decay)"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm; 0 disables"})
    precision: str = field(default="auto", metadata={"help": "auto | bf16 | fp32"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    threads: int = field(default=0, metadata={"help": "CPU threads; 0 keeps PyTorch's choice"})
    seed: int = field(default=1337, metadata={"help": "seed of the initialisation, data "
                                                      "order and sampling"})
    log_every: int = field(default=10, metadata={"help": "write metrics every N steps"})
    eval_every: int = field(default=250, metadata={
        "help": "evaluate every N steps and after the last; 0: only after the last"})
    checkpoint_every: int = field(default=100, metadata={"help": "checkpoint every N steps"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    log: str = field(default="", metadata={
        "help": "also log metrics to tensorboard and/or wandb (comma-separated)"})

    def __post_init__(self):
        from gptsmith.tracking import parse

        parse(self.log)  # an unknown writer or a missing package, before any work
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"train.optimizer must be adamw or muon, got {self.optimizer!r}")


class LossSum(NamedTuple):
    """A micro-batch's loss summed over its units, how many units (target tokens; prompts
    for the reward model) and how many tokens it processed (for the throughput)."""

    total: torch.Tensor
    count: int
    tokens: int


class Batches(Protocol):
    def next(self) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def steps_for_epochs(cfg: TrainConfig, items: int, epochs: float) -> TrainConfig:
    """``cfg`` with ``steps`` = ``epochs`` passes over ``items`` when it is 0 (by epochs)."""
    if cfg.steps:
        return cfg
    per_step = cfg.batch_size * cfg.grad_accum
    return dataclasses.replace(cfg, steps=max(1, math.ceil(epochs * items / per_step)))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig,
                   parts: dict[str, tuple[torch.nn.Module, float]] | None = None,
                   ) -> torch.optim.Optimizer:
    """AdamW with decay on matrices only (or, with ``optimizer: muon``, Muon on the blocks'
    matrices: ``gptsmith.train.muon``). ``parts`` (name -> (module, lr scale)) gives parts
    of the model their own learning rate and gradient clipping (PPO's policy and value)."""
    muon = cfg.optimizer == "muon"
    groups = []
    for name, (module, scale) in (parts or {"": (model, 1.0)}).items():
        blocks, matrices, vectors = [], [], []
        for n, p in module.named_parameters():
            if p.requires_grad:
                kind = blocks if muon and is_muon_matrix(n, p) else \
                    matrices if p.dim() >= 2 else vectors
                kind.append(p)
        for decay, chosen, in_muon in ((cfg.weight_decay, blocks, True),
                                       (cfg.weight_decay, matrices, False), (0.0, vectors, False)):
            if chosen:
                groups.append({"params": chosen, "weight_decay": decay, "part": name,
                               "lr_scale": scale, **({"muon": in_muon} if muon else {})})
    if muon:
        return MuonAdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def fault(point: str, step: int | str) -> None:
    """Test hook: GPTSMITH_FAULT=point:step kills this process there, as a crash would;
    ``PHASE/point:step`` only while the pipeline runs phase PHASE ($GPTSMITH_PHASE)."""
    wanted = os.environ.get("GPTSMITH_FAULT")
    if wanted and wanted in (f"{point}:{step}",
                             f"{os.environ.get('GPTSMITH_PHASE')}/{point}:{step}"):
        os.kill(os.getpid(), signal.SIGKILL)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Trainer:
    """Runs ``cfg.steps`` optimizer steps in ``run_dir``, resuming from its checkpoint."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, run_dir: Path,
                 batches: Batches, loss_fn: Callable, evaluate: Callable | None = None,
                 phase_config: dict | None = None, tokenizer: Tokenizer | None = None,
                 parts: dict[str, tuple[torch.nn.Module, float]] | None = None,
                 dist: DistConfig | None = None, fixed_shapes: bool = False):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        set_threads(cfg.threads)
        ranks.init(cfg.device)
        torch.manual_seed(ranks.rank_seed(cfg.seed))
        if cfg.batch_size % ranks.world():
            raise GptsmithError(f"--train.batch-size {cfg.batch_size}: the global batch must "
                                f"split evenly over the {ranks.world()} processes")
        self.device = ranks.rank_device(pick_device(cfg.device))
        # fixed_shapes: every batch has one shape (pre-training), where CPU bf16 pays
        self.precision = resolve_precision(cfg.precision, self.device, fixed_shapes,
                                           matmul_width(model))
        self.strategy = (dist or DistConfig()).strategy
        if ranks.world() > 1 and self.strategy == "fsdp" and cfg.optimizer == "muon":
            raise GptsmithError("--train.optimizer muon with --dist.strategy fsdp: Muon needs "
                                "each matrix whole on a rank; use --dist.strategy ddp or adamw")
        self.model = model.to(self.device)
        self.wrap()
        self.optimizer = make_optimizer(self.model, cfg, parts)
        self.loss_fn, self.evaluate_fn = loss_fn, evaluate
        # each rank trains on its share of every global batch
        self.batches = batches if ranks.world() == 1 else RankShare(batches)
        self.phase_config = phase_config or {}
        self.tokenizer = tokenizer
        self.export = model  # what train_and_save writes as model.safetensors
        self.eval_at_start = False  # also evaluate before the first step (a baseline)
        self.lora, self.lora_base = LoRAConfig(), ""  # with adapters: how and on what
        self.ckpt_path = self.run_dir / "checkpoints" / "latest.pt"  # one process: one file
        # many processes: a DCP directory (checkpoints/step-N), named by this file
        self.sharded_pointer = self.run_dir / "checkpoints" / "latest.txt"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.step = 0
        self._data_fingerprints: dict | None = None  # of the data the settings name, once
        # metrics shown on the progress bar beside the loss when a step logs them: key -> label
        self.progress_keys: dict[str, str] = {}
        self.trackers = None  # TensorBoard / W&B writers (gptsmith/tracking.py), from run()

    # -- model wrapping ---------------------------------------------------------------
    def wrap(self) -> None:
        """Make the trained model data-parallel under torchrun (DDP or FSDP2; nothing in one
        process) and compile it if asked: ``forward_model`` is what the loss is taken through."""
        if ranks.world() > 1 and self.strategy == "fsdp" and lora_layers(self.model):
            raise GptsmithError("--dist.strategy fsdp with --lora.rank: LoRA trains few "
                                "weights; use --dist.strategy ddp")
        self.parallel_model = ranks.parallel(self.model, self.strategy, self.precision == "bf16")
        self.forward_model = torch.compile(self.parallel_model) if self.cfg.compile \
            else self.parallel_model

    # -- checkpoints ------------------------------------------------------------------
    def _remove_stale(self) -> None:
        """What a kill mid-write left: a checkpoint's (or the model's, a plot's, the
        summary's) temporary file, a DCP directory that no pointer names yet."""
        for stale in [*self.ckpt_path.parent.glob(".*.tmp"), *self.run_dir.glob(".*.tmp")]:
            if stale.is_file():
                stale.unlink()
        named = self.sharded_pointer.read_text().strip() if self.sharded_pointer.exists() \
            else None
        for d in self.ckpt_path.parent.glob("step-*"):
            if d.name != named:
                shutil.rmtree(d, ignore_errors=True)

    def _latest_checkpoint(self) -> Path | None:
        """The newest checkpoint: ``latest.pt`` or the DCP directory ``latest.txt`` names
        (both exist only if a kill came between writing one and removing the other)."""
        found = {}
        if self.ckpt_path.exists():
            found[self.ckpt_path] = self.ckpt_path.stat().st_mtime
        if self.sharded_pointer.exists():
            named = self.ckpt_path.parent / self.sharded_pointer.read_text().strip()
            found[named] = self.sharded_pointer.stat().st_mtime
        return max(found, key=found.get) if found else None

    def _resume(self) -> None:
        if ranks.is_main():
            self._remove_stale()
        ranks.barrier()
        path = self._latest_checkpoint()
        if path is None:
            if ranks.is_main():
                self.metrics_path.unlink(missing_ok=True)
            return
        sharded = path.is_dir()
        # on the CPU: RNG and generator states must be CPU tensors; weights move on loading
        ckpt = torch.load(path / "trainer.pt" if sharded else path, map_location="cpu",
                          weights_only=False)
        old, new = ckpt["phase_config"], self.phase_config
        changed = config_differences(old, new)
        if changed:
            raise GptsmithError(
                f"{path}: this checkpoint was made with different settings "
                f"({'; '.join(changed)}); rerun with the same settings to resume, or start over "
                "with --overwrite"
            )
        changed = data_changes(ckpt.get("data_files", {}), self.data_fingerprints())
        if changed:
            raise GptsmithError(
                f"{path}: this checkpoint was made on other data ({'; '.join(changed)})"
                "; put the original data back to resume, or start over with --overwrite")
        self._load_weights(path, ckpt if not sharded else None)
        self.batches.load_state_dict(ckpt["data"])
        self.load_extra_state(ckpt["extra"])
        states = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
        if ranks.rank() < len(states):
            _set_rng_state(states[ranks.rank()])
        else:  # a rank the saving run did not have
            torch.manual_seed(ranks.rank_seed(self.cfg.seed, ckpt["step"]))
        self.step = ckpt["step"]
        # drop metrics logged after the checkpoint: those steps run again
        if ranks.is_main() and self.metrics_path.exists():
            kept = [ln for ln in self.metrics_path.read_text().splitlines()
                    if ln and json.loads(ln)["step"] <= self.step]
            self.metrics_path.write_text("".join(ln + "\n" for ln in kept))
        print(f"resuming {self.run_dir} from step {self.step}", flush=True)

    def _load_weights(self, path: Path, whole: dict | None) -> None:
        """Model and optimizer state from a one-process checkpoint (``whole``) or from the
        DCP directory ``path``, onto however many ranks run now."""
        refused = GptsmithError(f"{path}: the checkpoint does not hold this model's trained "
                                "weights; start over with --overwrite")
        if whole is None:
            try:
                ranks.load_sharded(path, self.model, self.optimizer)
            except (RuntimeError, KeyError, ValueError) as e:
                raise refused from e
            return
        saved, trained = set(whole["model"]), set(self._trained_state())
        if saved - set(self.model.state_dict()) or trained - saved:
            raise refused
        if ranks.world() == 1:
            self.model.load_state_dict(whole["model"], strict=False)
            self.optimizer.load_state_dict(whole["optimizer"])
        else:
            ranks.load_whole(whole, self.model, self.optimizer)

    def _trained_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the model: the weights that train (all of them, or
        only the LoRA adapters and a new head), not a frozen base."""
        trained = {n for n, p in self.model.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.model.state_dict().items() if k in trained}

    def data_fingerprints(self) -> dict:
        """Size and SHA-256 of the data files the settings name, computed once a process."""
        if self._data_fingerprints is None:
            self._data_fingerprints = data_fingerprints(self.phase_config)
        return self._data_fingerprints

    def save_checkpoint(self) -> None:
        """One process: ``latest.pt``, written atomically. Many: a DCP directory each rank
        writes its shard into, then ``latest.txt`` pointed at it (atomically)."""
        if ranks.world() > 1:
            return self._save_sharded()
        state = {
            "step": self.step, "model": self._trained_state(),
            "optimizer": self.optimizer.state_dict(), "data": self.batches.state_dict(),
            "rng": _rng_state(), "phase_config": self.phase_config, "extra": self.extra_state(),
            "data_files": self.data_fingerprints(),
        }
        with atomic_path(self.ckpt_path) as tmp:
            torch.save(state, tmp)
            fault("checkpoint-write", self.step)
        if self.sharded_pointer.exists():  # a run of many processes resumed on one
            self.sharded_pointer.unlink()
            self._remove_stale()

    def _save_sharded(self) -> None:
        rng = ranks.gather_objects(_rng_state())  # every rank's own
        directory = self.ckpt_path.parent / f"step-{self.step}"
        ranks.save_sharded(directory, self.model, self.optimizer)
        if ranks.is_main():
            torch.save({"step": self.step, "data": self.batches.state_dict(), "rng": rng,
                        "phase_config": self.phase_config, "extra": self.extra_state(),
                        "data_files": self.data_fingerprints()}, directory / "trainer.pt")
            fault("checkpoint-write", self.step)
            atomic_write_text(self.sharded_pointer, directory.name)
            self.ckpt_path.unlink(missing_ok=True)
            self._remove_stale()
        ranks.barrier()

    # -- the loop ---------------------------------------------------------------------
    def log(self, record: dict) -> None:
        if not ranks.is_main():
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.write(record)

    def evaluate(self) -> dict:
        if self.evaluate_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.precision):
            out = self.evaluate_fn(self.model)
        self.model.train()
        return out

    def set_lr(self) -> float:
        lr = lr_at(self.step, self.cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        return lr

    def apply_gradients(self, scale: float = 1.0) -> dict[str, float]:
        """Scale the accumulated gradients, clip each part's on its own, take an optimizer
        step, clear them. Returns each part's norm before clipping (``grad_norm`` or
        ``grad_norm_<part>``)."""
        parts: dict[str, list[torch.Tensor]] = {}
        for g in self.optimizer.param_groups:
            parts.setdefault(g["part"], []).extend(p for p in g["params"] if p.grad is not None)
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norms = {}
        for name, params in parts.items():
            if scale != 1.0 and params:
                torch._foreach_mul_([p.grad for p in params], scale)
            norm = torch.nn.utils.clip_grad_norm_(params, clip) if params else torch.zeros(())
            norms[f"grad_norm_{name}" if name else "grad_norm"] = ranks.full_norm(norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norms

    def train_step(self) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches (on every rank), each loss
        weighted by its share of the step's units (target tokens) on all ranks together:
        metrics with loss and tokens. Gradients are reduced over ranks on the last
        micro-batch only; the loss is summed on the device and read once a step."""
        self.set_lr()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = tokens = 0
        for i in range(self.cfg.grad_accum):
            batch = self.batches.next()
            with ranks.gradient_sync(self.parallel_model, i == self.cfg.grad_accum - 1):
                with autocast(self.device, self.precision):
                    part = self.loss_fn(self.forward_model, batch)
                part.total.backward()
            total += part.total.detach()
            count, tokens = count + part.count, tokens + part.tokens
        total, count, tokens = ranks.global_sums(total, count, tokens, device=self.device)
        count, tokens = int(count), int(tokens)
        if count == 0:
            raise GptsmithError(f"step {self.step + 1}: its batches hold nothing to learn from")
        return {"loss": total / count, "tokens": tokens, **self.apply_gradients(1.0 / count)}

    def extra_state(self) -> dict:
        """More state for the checkpoint (a phase's own, e.g. PPO's KL coefficient)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def run(self) -> dict:
        """Train to ``cfg.steps``; returns the last evaluation's metrics."""
        cfg, main = self.cfg, ranks.is_main()
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.run_dir, self.phase_config)
            if self.tokenizer is not None:
                self.tokenizer.save(self.run_dir / "tokenizer.json")
        self._resume()
        if main:
            self.trackers = Trackers(cfg.log, self.run_dir, self.phase_config, self.step)
        self.model.train()
        last_eval: dict = {}
        shown: dict[str, str] = {}
        bar = tqdm(total=cfg.steps, initial=self.step,
                   disable=None if cfg.progress and main else True, unit="step",
                   dynamic_ncols=True)
        if self.step == 0 and self.eval_at_start:
            self.log({"step": 0, **self.evaluate()})
        tokens_seen, train_time = 0, 0.0
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            metrics = self.train_step()
            train_time += time.perf_counter() - t0
            self.step += 1
            tokens_seen += metrics.pop("tokens")
            fault("after-step", self.step)
            loss = metrics["loss"]
            if not math.isfinite(loss):
                raise GptsmithError(f"loss became {loss} at step {self.step}; lower --train.lr")
            record = {"step": self.step, "lr": lr_at(self.step - 1, cfg),
                      **{k: round(v, 6) if isinstance(v, float) else v
                         for k, v in metrics.items()},
                      "tok_per_s": round(tokens_seen / train_time)}
            evaluating = (cfg.eval_every and self.step % cfg.eval_every == 0) or \
                self.step == cfg.steps
            if evaluating:
                last_eval = self.evaluate()
                record.update(last_eval)
                bar.write(f"step {self.step}: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in last_eval.items()))
            if evaluating or self.step % cfg.log_every == 0:
                self.log(record)
            shown.update({label: f"{record[k]:.3f}" for k, label in self.progress_keys.items()
                          if k in record})
            bar.set_postfix(loss=f"{loss:.3f}", **shown, tok_s=f"{record['tok_per_s']:,}")
            bar.update(1)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
        bar.close()
        if self.trackers is not None:
            self.trackers.close()
        return last_eval

    def train_and_save(self, title: str, extra: dict | None = None,
                       finalize: Callable[[torch.nn.Module], dict] | None = None) -> dict:
        """Run to the end, then write model, loss plot and ``summary.json``; return the summary.

        ``finalize(model)``, if given, runs before the model is saved (on every rank) and
        returns more summary fields. The summary holds the last evaluation, the training time
        of this process, ``extra`` and the config, by which ``finished_summary`` recognises
        the run later. Rank 0 writes the files, the model whole whatever the strategy.
        """
        start = time.perf_counter()
        result = self.run() or self.evaluate()  # a run resumed at its very end still reports
        if finalize is not None:
            self.model.eval()
            with torch.no_grad():
                result.update(finalize(self.model))
        seconds = time.perf_counter() - start
        gathered = ranks.full_state_dict(self.model)  # FSDP2's shards, whole on rank 0
        summary = {"steps": self.cfg.steps, "train_seconds": round(seconds, 1),
                   "precision": self.precision, **result,
                   **(extra or {}), "config": self.phase_config}
        if ranks.is_main():
            self._save_model(gathered)
            plot_metrics(self.metrics_path, self.run_dir / "loss.png", title=title)
            atomic_write_text(self.run_dir / "summary.json",
                              json.dumps(summary, indent=2) + "\n")
        ranks.barrier()
        return summary

    def _save_model(self, gathered: dict | None) -> None:
        """model.safetensors (and a LoRA adapter): ``gathered`` is the whole state of a
        sharded model, None when the model holds its weights whole."""
        if gathered is not None:
            save_model(self.run_dir, self.export, gathered)
            return
        model = self.export.cpu()
        if lora_layers(model):  # the merged model for every command, the adapter for PEFT
            save_model(self.run_dir, model, merged_state_dict(model))
            save_adapter(model, self.lora, self.run_dir, self.lora_base)
        else:
            save_model(self.run_dir, model)


def finished_summary(run_dir: Path, config: dict) -> dict | None:
    """The summary of the finished run in ``run_dir`` if it was made with ``config``; None if
    there is no finished run there; an error if it was made with other settings."""
    path = Path(run_dir) / "summary.json"
    if not (path.exists() and (Path(run_dir) / "model.safetensors").exists()):
        return None
    summary = json.loads(path.read_text())
    changed = config_differences(summary["config"], config)
    if changed:
        raise GptsmithError(f"{run_dir} holds a finished run with other settings "
                            f"({'; '.join(changed)}); use another --out or --overwrite")
    return summary


# Settings added since runs were first recorded, with the value that behaves as before: a
# run recorded without one ran with that value.
AS_BEFORE = {"length_window": 1, "prompt_variety": 0.0}


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, AS_BEFORE.get(key)), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b and key not in RESUMABLE_CHANGES:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out

