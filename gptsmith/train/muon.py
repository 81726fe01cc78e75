"""Muon for the transformer blocks' matrices, AdamW for everything else, as one optimizer.

Muon (K. Jordan et al., 2024) steps each weight matrix along its momentum made orthogonal:
the momentum M = U·S·Vᵀ is replaced by about U·Vᵀ, computed with a few Newton–Schulz
iterations. Every direction of the matrix then moves by the same amount, where AdamW's
step is dominated by a few large ones; pre-training from scratch reaches a given loss in
fewer steps. The embeddings, the output head and the norms keep AdamW. The step of a
``rows x cols`` matrix is scaled by 0.2·sqrt(max(rows, cols)), which gives it the RMS of
an AdamW step (J. Liu et al., 2025, "Muon is Scalable for LLM Training"), so the AdamW
learning rate, its schedule and its weight decay carry over unchanged.

One optimizer (not two side by side) so that the training loop, its checkpoints and exact
resume treat it like AdamW: the same ``param_groups`` (a group with ``"muon": True`` is
Muon's), one ``state_dict``.
"""

from __future__ import annotations

import math

import torch

from gptsmith.device import cpu_has_bf16

# The quintic iteration's coefficients (a, b, c) from Jordan et al.: chosen to push small
# singular values up fast; they end between about 0.5 and 1.5, which trains as well as 1.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalize(m: torch.Tensor, steps: int = 5,
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """About U·Vᵀ of ``m`` = U·S·Vᵀ (a matrix, or each of a stack of them: (..., rows,
    cols)), computed in ``dtype``: X ← a·X + (b·XXᵀ + c·(XXᵀ)²)·X, on the wide orientation
    (the Gram matrix is the smaller one), from X = m / ‖m‖ (so that every singular value
    starts at most 1)."""
    a, b, c = NEWTON_SCHULZ
    x = m.to(dtype).reshape(-1, *m.shape[-2:])
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.mT if tall else x).reshape(m.shape).to(m.dtype)


def is_muon_matrix(name: str, p: torch.nn.Parameter) -> bool:
    """A matrix inside the transformer blocks (not the embeddings, head or norms)."""
    return p.dim() == 2 and (name.startswith("layers.") or ".layers." in name)


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bf16 where matrices multiply in bf16 natively (a GPU; a CPU with AVX-512 BF16 or
    AMX: there 34 ms a step for the default model's 28 matrices, against 53 ms in fp32),
    else fp32."""
    return torch.bfloat16 if device.type == "cuda" or cpu_has_bf16() else torch.float32


class MuonAdamW(torch.optim.Optimizer):
    """Groups with ``"muon": True`` step with Muon (Nesterov momentum ``momentum``, then
    orthogonalised in ``ns_dtype``, by default ``newton_schulz_dtype``), the others with
    AdamW (``betas``, ``eps``); ``lr`` and ``weight_decay`` (decoupled: θ ← θ·(1 − lr·λ))
    mean the same in both."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, momentum: float = 0.95, ns_dtype: torch.dtype | None = None):
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps, "momentum": momentum,
                                  "weight_decay": 0.0, "muon": False})
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MuonAdamW takes no closure")
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon if group["muon"] else self._adamw)(group, params)

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        """Matrices of one shape are orthogonalised together, as one stack: the default
        model's 28 took 23 ms a step so, against 46 ms one by one (bf16, 2 threads)."""
        lr, mu = group["lr"], group["momentum"]
        shapes: dict[torch.Size, list[torch.Tensor]] = {}
        for p in params:
            shapes.setdefault(p.shape, []).append(p)
        for same in shapes.values():
            ahead = []
            for p in same:
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)
                ahead.append(p.grad.lerp(buf, mu))  # Nesterov: a step ahead
            dtype = self.ns_dtype or newton_schulz_dtype(same[0].device)
            for p, step in zip(same, orthogonalize(torch.stack(ahead), dtype=dtype),
                               strict=True):
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(step, alpha=-lr * 0.2 * math.sqrt(max(p.shape)))

    def _adamw(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = float(state["step"])
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (v / (1 - beta2 ** t)).sqrt_().add_(eps)
            p.mul_(1 - lr * group["weight_decay"])
            p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** t))
