"""PNG plots of a run's metrics (matplotlib, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

from gptsmith.runs import atomic_path


def _pyplot():
    """matplotlib, imported on first use (a second of start-up that serving never needs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def plot_metrics(metrics: Path, out: Path, title: str = "") -> None:
    """Training loss per step, and the validation metric where it was measured."""
    rows = read_metrics(metrics)
    if not rows:
        return
    fig, ax = _pyplot().subplots(figsize=(7, 4))
    trained = [r for r in rows if "loss" in r]
    ax.plot([r["step"] for r in trained], [r["loss"] for r in trained], label="train loss")
    for key, label in (("val_bpb", "validation bits/byte"), ("val_accuracy",
                       "held-out pairwise accuracy"), ("val_loss", "validation loss")):
        val = [r for r in rows if key in r]
        if val:
            ax2 = ax.twinx()
            ax2.plot([r["step"] for r in val], [r[key] for r in val], "o-", color="C1",
                     label=label)
            ax2.set_ylabel(label)
            ax2.legend(loc="upper center")
            break
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.legend(loc="upper right")
    ax.set_title(title)
    _save(fig, out)


def plot_ppo(metrics: Path, out_dir: Path) -> None:
    """ppo.png: RM and true reward and KL per iteration; overoptimization.png: the true
    reward against sqrt(KL) to the reference (Gao et al., 2022)."""
    all_rows = read_metrics(metrics)
    rows = [r for r in all_rows if "rm_score" in r]  # iterations (not the step-0 baseline)
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, (a, b) = _pyplot().subplots(2, 1, figsize=(7, 6), sharex=True)
    a.plot(steps, [r["rm_score"] for r in rows], label="RM score (rollouts)")
    evals = [r for r in all_rows if "true_reward" in r]
    if evals:
        a.plot([r["step"] for r in evals], [r["eval_rm_score"] for r in evals], "o-",
               label="RM score (held-out, greedy)")
        a.plot([r["step"] for r in evals], [r["true_reward"] for r in evals], "s-",
               label="true reward (held-out, greedy)")
        a.plot([r["step"] for r in evals], [r["true_accuracy"] for r in evals], "^-",
               label="exact accuracy (held-out)")
    a.legend(fontsize=8)
    a.set_ylabel("reward")
    b.plot(steps, [r["kl"] for r in rows], color="C3", label="KL to reference (nats/reply)")
    b.set_xlabel("PPO iteration")
    b.set_ylabel("KL")
    b.legend(fontsize=8)
    _save(fig, out_dir / "ppo.png")
    if evals:
        kl_at = {0: 0.0, **{r["step"]: r["kl"] for r in rows}}
        fig, ax = _pyplot().subplots(figsize=(6, 4))
        x = [max(0.0, kl_at[r["step"]]) ** 0.5 for r in evals]
        ax.plot(x, [r["true_reward"] for r in evals], "s-", label="true reward")
        ax.plot(x, [r["eval_rm_score"] for r in evals], "o-", label="RM score")
        ax.set_xlabel("sqrt(KL to reference)")
        ax.set_ylabel("reward (held-out)")
        ax.legend()
        _save(fig, out_dir / "overoptimization.png")


def plot_eval(rows: dict[str, dict], out: Path) -> None:
    """eval.png: for each model (base, SFT, RLHF), the share of held-out questions answered
    exactly right (greedy and sampled), stating the corpus's myth, and ending the turn."""
    bars = [("accuracy", "right (greedy)"), ("sampled_accuracy", "right (sampled, T=1)"),
            ("myth_rate", "states the myth (greedy)"), ("end_rate", "ends its turn")]
    bars = [(k, label) for k, label in bars if any(r.get(k) is not None for r in rows.values())]
    if not rows or not bars:
        return
    fig, ax = _pyplot().subplots(figsize=(7, 3.6))
    width = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        values = [100 * (r.get(key) or 0.0) for r in rows.values()]
        ax.bar([m + (i - (len(bars) - 1) / 2) * width for m in range(len(rows))], values,
               width, label=label)
    ax.set_xticks(range(len(rows)), list(rows))
    ax.set_ylabel("% of held-out questions")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    _save(fig, out)


def _save(fig, out: Path) -> None:
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)
