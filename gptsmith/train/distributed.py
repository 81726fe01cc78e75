"""Many processes, one run: torchrun's process group, DDP and FSDP2, global statistics and
distributed checkpoints (DCP), all PyTorch's own.

A run on N ranks computes what one process computes with the same global batch:

- every rank draws the same global batch and keeps its share (``batches.RankShare``), so
  the data position is one state whatever the world size;
- gradients are **summed** across ranks, never averaged (DDP through a summing comm hook,
  FSDP2 with sum-only reductions and no divide factor, which also sidesteps gloo's wrong
  AVG, PyTorch issue 162338); the loop then divides by the global count of what the losses
  were summed over, as one process divides by its own;
- statistics that steer training (PPO's whitening and KL, GRPO's batch baseline) are
  reduced over every rank (``global_mean``), and a loss that is a mean over the global
  batch is each rank's ``mean_share`` of it.

Under FSDP2 a forward all-gathers each layer's weights, a collective every rank must join;
decoding runs a different number of steps on each rank, so the RL phases decode inside
``gathered(model)``: whole weights fetched once, decoded with no collective, sharded again.

Without torchrun (or with one process) nothing here communicates, and every helper returns
exactly what the one-process code computed before there were ranks.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

STRATEGIES = ("ddp", "fsdp")


@dataclass
class DistConfig:
    strategy: str = field(default="ddp", metadata={
        "help": "under torchrun: ddp (a full copy per rank) | fsdp (FSDP2: weights, gradients "
                "and optimizer state sharded; bf16 compute with --train.precision bf16)"})

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, "
                             f"got {self.strategy!r}")


# -- who am I ---------------------------------------------------------------------------------
def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0, the one process that writes the run's files."""
    return rank() == 0


def init(device: str = "auto") -> None:
    """Join the process group torchrun describes (nothing without torchrun, or once joined):
    NCCL with each rank on GPU ``LOCAL_RANK``, or gloo on the CPU. Ranks other than 0 print
    nothing on stdout (their errors still reach stderr)."""
    if not launched() or dist.is_initialized():
        return
    cuda = device != "cpu" and torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo",
                            device_id=torch.device("cuda", local) if cuda else None)
    if rank() > 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_rank(code: int) -> NoReturn:
    """End this torchrun rank now, its output flushed, skipping the interpreter's teardown:
    there, after a run that succeeded and closed its process group, gloo on the CPU aborts
    the process now and then ("terminate called without an active exception", SIGABRT;
    about one run in ten of the two-process test, torch 2.13), which fails the launch."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: its own GPU (``LOCAL_RANK``) when training on CUDA."""
    if world() > 1 and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def rank_seed(seed: int, step: int = 0) -> int:
    """The seed of this rank's random numbers: the run's seed on rank 0 (so rank 0 draws
    what one process draws), others apart; ``step`` for a rank that joins a resumed run."""
    return seed + 1_000_003 * rank() + step * (rank() > 0)


# -- collectives ------------------------------------------------------------------------------
def barrier() -> None:
    if world() > 1:
        dist.barrier()


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over ranks (a new tensor; ``x`` itself without ranks)."""
    if world() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def global_sums(*values: float | torch.Tensor, device: torch.device | str = "cpu"
                ) -> list[float]:
    """Numbers (or 0-d tensors) summed over ranks in one all-reduce, read back with one
    synchronisation; in double precision, as Python would add them."""
    parts = [v.detach().reshape(1).to(device, torch.float64) if torch.is_tensor(v)
             else torch.tensor([float(v)], dtype=torch.float64, device=device) for v in values]
    return all_sum(torch.cat(parts)).tolist()


def global_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of ``x`` (where ``mask`` is 1) over every rank's ``x``: what one process
    holding all of them computes. Not differentiable across ranks: for statistics."""
    if world() == 1:
        return x.mean() if mask is None else (x * mask).sum() / mask.sum().clamp(min=1)
    mask = torch.ones_like(x) if mask is None else mask
    total, count = all_sum(torch.stack([(x * mask).sum().float(), mask.sum().float()]))
    return total / count.clamp(min=1)


def global_std(x: torch.Tensor) -> torch.Tensor:
    """The (unbiased) standard deviation of every rank's ``x`` together."""
    if world() == 1:
        return x.std()
    mean = global_mean(x)
    n = all_sum(torch.tensor(float(x.numel()), device=x.device))
    return (all_sum(((x - mean) ** 2).sum()) / (n - 1)).sqrt()


def mean_share(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's share of the mean of ``x`` over every rank: its own sum over the global
    count. Summed over ranks (as gradients are) the shares make the global mean; in one
    process it is the mean."""
    if world() == 1:
        return x.mean() if mask is None else (x * mask).sum() / mask.sum().clamp(min=1)
    count = x.new_tensor(float(x.numel())) if mask is None else mask.sum().float()
    masked = x if mask is None else x * mask
    return masked.sum() / all_sum(count).clamp(min=1)


def global_count(n: int) -> int:
    return n if world() == 1 else int(global_sums(n)[0])


def rows_of_minibatches(rows: int, minibatches: int) -> list[torch.Tensor]:
    """This rank's rows (``rows`` of them, the rank's contiguous share of the global batch)
    in each of ``minibatches`` random minibatches of the global batch, drawn as one process
    draws them (``torch.randperm(global).chunk(minibatches)``, from rank 0's generator).
    A rank may hold few or none of a minibatch's rows."""
    perm = torch.randperm(rows * world())
    if world() == 1:
        return list(perm.chunk(minibatches))
    dist.broadcast(perm, src=0)
    first = rank() * rows
    return [c[(c >= first) & (c < first + rows)] - first for c in perm.chunk(minibatches)]


def gather_objects(obj) -> list:
    """``obj`` of every rank, in rank order."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


# -- models -----------------------------------------------------------------------------------
def _sum_hook(_state, bucket):
    """DDP's gradient all-reduce without its division by the world size."""
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(
        lambda f: f.value()[0])


def parallel(module: torch.nn.Module, strategy: str, bf16: bool) -> torch.nn.Module:
    """``module`` made data-parallel, its gradients summed over ranks: wrapped in DDP, or
    sharded in place with FSDP2 (each transformer layer, then the rest; bf16 weights in
    compute and fp32 gradient reductions with ``bf16``). Unchanged in one process, and under
    DDP when frozen (a reference or reward model: whole on every rank, nothing to reduce)."""
    if world() == 1:
        return module
    if strategy == "fsdp":
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if bf16 else MixedPrecisionPolicy()
        for layer in getattr(module, "layers", []):
            fully_shard(layer, mp_policy=mp)
        fully_shard(module, mp_policy=mp)
        for m in module.modules():
            if isinstance(m, FSDPModule):
                m.set_force_sum_reduction_for_comms(True)
                m.set_gradient_divide_factor(1.0)
        return module
    if not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    ddp = DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                  forward_sync_buffers=False)
    ddp.register_comm_hook(None, _sum_hook)
    return ddp


@contextlib.contextmanager
def gathered(*models: torch.nn.Module):
    """Within: the FSDP2-sharded ``models`` (as ``parallel`` shards them) hold their whole
    weights on every rank, all-gathered once on entry, which every rank reaches together; their
    forwards then need no collective, so each rank may decode its own number of steps. Sharded
    again on exit. Nothing happens to models that are not sharded (one process, DDP)."""
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for model in models for m in model.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in sharded:  # FSDP2's defaults again: layers reshard after forward, roots not
            m.set_reshard_after_forward(all(m is not model for model in models), recurse=False)
            m.reshard()


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, sync: bool):
    """Within: backward passes reduce gradients over ranks only if ``sync`` (the last
    micro-batch of a step); the others accumulate locally."""
    if sync or world() == 1:
        yield
        return
    if hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
        return
    model.set_requires_gradient_sync(False)  # FSDP2
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_norm(norm: torch.Tensor) -> float:
    """A gradient norm as a number (FSDP2's is a distributed tensor)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on rank 0 (None elsewhere), gathered from FSDP2's shards
    (of the model, or of its parts: PPO's policy and value); None without sharding."""
    from torch.distributed.fsdp import FSDPModule

    if not any(isinstance(m, FSDPModule) for m in model.modules()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    return state if is_main() else None


# -- distributed checkpoints ------------------------------------------------------------------
def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, **kw)


def save_sharded(directory: Path, model: torch.nn.Module, optimizer) -> None:
    """The trained weights and optimizer state through DCP: each rank writes its shard
    (replicated tensors once), into ``directory``, loadable on any number of ranks."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer, options=_options())
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(directory))


def load_sharded(directory: Path, model: torch.nn.Module, optimizer) -> None:
    """Weights and optimizer state from a DCP checkpoint of any world size, resharded to
    this one (one process included)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optimizer, options=_options())
    state = {"model": msd, "optimizer": osd}
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"], options=_options(strict=False))


def load_whole(state: dict, model: torch.nn.Module, optimizer) -> None:
    """A one-process checkpoint (``torch.save``: whole weights, optimizer state keyed by
    position) loaded on many ranks, sharded where the model is."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    optim = state["optimizer"]
    by_name = {"state": {order[i]: s for i, s in optim["state"].items()},
               "param_groups": [{**g, "params": [order[i] for i in g["params"]]}
                                for g in optim["param_groups"]]}
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=by_name,
                   options=_options(full_state_dict=True, strict=False))
