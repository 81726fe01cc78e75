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


def smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    """An exponential moving average with the start-up bias removed (so the first points are
    not pulled towards zero): what the eye wants from a noisy per-step curve."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def _curve(ax, rows: list[dict], key: str, label: str, color: str, smooth: bool = True):
    """``key`` per step: faint as measured, bold smoothed (points where there are few)."""
    rows = [r for r in rows if r.get(key) is not None]
    if not rows:
        return False
    x, y = [r["step"] for r in rows], [r[key] for r in rows]
    if smooth and len(rows) > 10:
        ax.plot(x, y, color=color, alpha=0.25, lw=0.8)
        ax.plot(x, smoothed(y), color=color, lw=1.8, label=f"{label} (smoothed)")
    else:
        ax.plot(x, y, "o-", color=color, lw=1.2, ms=4, label=label)
    return True


def _legend(ax) -> None:
    """A legend below the axes, never over the curves."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=8, frameon=False, loc="upper center",
                  bbox_to_anchor=(0.5, -0.2), ncol=3)


VALIDATION = (("val_bpb", "validation bits/byte"), ("val_loss", "validation loss"))
ACCURACY = (("accuracy", "training pairwise accuracy"),
            ("val_accuracy", "held-out pairwise accuracy"))


def plot_metrics(metrics: Path, out: Path, title: str = "") -> None:
    """loss.png: the training loss (as measured and smoothed) next to the validation metric
    on its own axes; for a reward model, a third panel with its pairwise accuracies."""
    rows = read_metrics(metrics)
    if not rows:
        return
    accuracy = any(k in r for r in rows for k, _ in ACCURACY)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3 if accuracy else 2, figsize=(11 if accuracy else 9, 3.8))
    loss_ax, val_ax = axes[0], axes[1]
    _curve(loss_ax, rows, "loss", "train loss", "C0")
    loss_ax.set_title("training loss")
    for key, label in VALIDATION:
        if _curve(val_ax, rows, key, label, "C1", smooth=False):
            val_ax.set_title(label)
            break
    else:
        val_ax.set_visible(False)
    if accuracy:
        acc = axes[2]
        _curve(acc, rows, "accuracy", "training batches", "C0")
        _curve(acc, rows, "val_accuracy", "held-out prompts", "C1", smooth=False)
        acc.set_ylim(0, 1.02)
        acc.axhline(0.5, color="grey", lw=0.8, ls=":")
        acc.set_title("pairwise accuracy (0.5: chance)")
    last = max(r["step"] for r in rows)
    for ax in axes:
        ax.set_xlim(0, last * 1.04 + 1)  # one scale of steps: few points are not stretched
        ax.margins(y=0.1)
        ax.set_title(f"{ax.get_title()}, by step", fontsize=10)
        _legend(ax)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, out)


RL_PANELS = (  # (title, [(key, label)], y from 0 to 1)
    ("reward model's score", [("rm_score", "sampled replies"),
                              ("eval_rm_score", "held-out, greedy")], False),
    ("reward of the sampled replies", [("reward", "reward")], False),
    ("held-out questions, greedy", [("true_accuracy", "share exactly right"),
                                    ("true_reward", "true reward")], False),
    ("KL to the SFT model (nats per reply)", [("kl", "KL")], False),
    ("groups whose best reply is learned (RFT)", [("kept", "kept")], True),
    ("entropy of the policy (nats per token)", [("entropy", "entropy")], False),
    ("reply length (tokens)", [("reply_tokens", "reply length")], False),
    ("share of replies that end their turn", [("end_rate", "sampled"),
                                              ("eval_end_rate", "held-out, greedy")], True),
)


def plot_rl(metrics: Path, out: Path, title: str = "") -> None:
    """One figure of an RL run (PPO, GRPO or RFT), one quantity per panel: the reward of the
    sampled replies, the held-out greedy scores, KL, entropy, reply length, end rate."""
    rows = read_metrics(metrics)
    panels = [(t, [(k, lbl) for k, lbl in keys if any(k in r for r in rows)], unit)
              for t, keys, unit in RL_PANELS]
    panels = [p for p in panels if p[1]]
    if not panels:
        return
    last = max(r["step"] for r in rows)
    plt = _pyplot()
    cols = 2
    fig, axes = plt.subplots((len(panels) + 1) // cols, cols, figsize=(10, 3.1 * (
        (len(panels) + 1) // cols)), squeeze=False)
    for ax, (name, keys, unit) in zip(axes.flat, panels, strict=False):
        for i, (key, label) in enumerate(keys):
            iterations = [r for r in rows if key in r and (r["step"] > 0 or key.startswith(
                ("true", "eval")))]
            _curve(ax, iterations, key, label, f"C{i}",
                   smooth=not key.startswith(("true", "eval")))
        if unit:
            ax.set_ylim(0, 1.02)
        ax.set_title(f"{name}, by iteration", fontsize=10)
        ax.set_xlim(0, last * 1.03 + 1)
        _legend(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, out)


def plot_overoptimization(metrics: Path, out: Path) -> None:
    """overoptimization.png: held-out true reward and RM score against sqrt(KL) to the
    reference (Gao et al., 2022), one point per evaluation."""
    rows = read_metrics(metrics)
    evals = [r for r in rows if "true_reward" in r and "eval_rm_score" in r]
    kl_at = {0: 0.0, **{r["step"]: r["kl"] for r in rows if "kl" in r and r["step"] > 0}}
    points = sorted(((max(0.0, kl_at[r["step"]]) ** 0.5, r) for r in evals
                     if r["step"] in kl_at), key=lambda p: p[0])
    if len(points) < 2:
        return
    fig, ax = _pyplot().subplots(figsize=(6.5, 4))
    x = [p[0] for p in points]
    for key, label, mark in (("true_reward", "true reward", "s"),
                             ("eval_rm_score", "RM score", "o")):
        ax.plot(x, [p[1][key] for p in points], mark, ms=5, alpha=0.8, label=label)
    ax.set_xlabel("sqrt(KL to the SFT model), one point per evaluation")
    ax.set_ylabel("reward of held-out greedy replies")
    ax.margins(0.08)
    _legend(ax)
    _save(fig, out)


def plot_ppo(metrics: Path, out_dir: Path) -> None:
    """ppo.png (``plot_rl``) and overoptimization.png of a PPO run."""
    plot_rl(metrics, out_dir / "ppo.png", "PPO")
    plot_overoptimization(metrics, out_dir / "overoptimization.png")


def plot_eval(rows: dict[str, dict], out: Path) -> None:
    """eval.png: for each model (base, SFT, RLHF), the share of held-out questions answered
    exactly right (greedy and sampled), stating the corpus's myth, and ending the turn."""
    bars = [("accuracy", "right (greedy)"), ("sampled_accuracy", "right (sampled, T=1)"),
            ("myth_rate", "states the myth (greedy)"), ("end_rate", "ends its turn")]
    bars = [(k, label) for k, label in bars if any(r.get(k) is not None for r in rows.values())]
    if not rows or not bars:
        return
    fig, ax = _pyplot().subplots(figsize=(8.5, 3.6))
    width = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        values = [100 * (r.get(key) or 0.0) for r in rows.values()]
        ax.bar([m + (i - (len(bars) - 1) / 2) * width for m in range(len(rows))], values,
               width, label=label)
    ax.set_xticks(range(len(rows)), list(rows))
    ax.set_ylabel("% of held-out questions")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, out)


def _save(fig, out: Path) -> None:
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)
