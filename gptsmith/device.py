"""Where and how numbers are crunched: device, threads, and bf16 autocast when it pays."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads(threads: int) -> None:
    """``threads`` > 0 pins the CPU thread count; 0 keeps PyTorch's choice."""
    if threads > 0:
        torch.set_num_threads(threads)


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX). Read from the CPU
    flags, so the choice is the same every run (a timed probe could flip under load and
    break exact resume)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# On a CPU with native bf16, the width from which bf16 paid even where batch shapes change
CPU_BF16_WIDTH = 512


def matmul_width(model: torch.nn.Module) -> int:
    """The model's width: the widest of its matrices' shorter sides (n_embd for a GPT)."""
    return max((min(p.shape) for p in model.parameters() if p.dim() == 2), default=0)


def resolve_precision(precision: str, device: torch.device, fixed_shapes: bool = False,
                      width: int = 0) -> str:
    """``auto`` becomes ``bf16`` on GPUs that support it; on a CPU that multiplies bf16
    natively, for work whose batches keep one shape (pre-training) and for models at least
    ``CPU_BF16_WIDTH`` wide (``width``, see ``matmul_width``).

    On such a CPU (AMD EPYC Zen 4, AVX-512 BF16) a pre-training step of the default 2M model
    (width 192) ran 1.6x faster in bf16 than in fp32, but its SFT, reward model and PPO,
    whose batches change shape every step, ran no faster (1.0-1.1x) and took twice the
    memory (1.5 GB instead of 0.6 for SFT): oneDNN, which multiplies bf16 there, builds and
    keeps a kernel for every new shape. Wider models gain more from each matmul: SFT ran
    1.08x faster in bf16 at width 384, 1.2x at width 576 (a 45M model, and SmolLM2-135M).
    Measured again on 2026-11-30 (README "Benchmarks"): the default run's PPO on 1 thread,
    as it runs beside RFT, 1.34x faster in bf16 but at 1.34 GB against 0.68 (1.08-1.10x on
    2 threads); its RFT and SFT no faster. Its RFT sets the run's time, so fp32 stays.
    """
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    pays = fixed_shapes or width >= CPU_BF16_WIDTH
    return "bf16" if pays and cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
