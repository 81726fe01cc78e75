"""PNG plots of a run's metrics (matplotlib, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gptsmith.runs import atomic_path  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def plot_metrics(metrics: Path, out: Path, title: str = "") -> None:
    """Training loss per step, and validation bits per byte where it was measured."""
    rows = read_metrics(metrics)
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss (nats/token)")
    val = [r for r in rows if "val_bpb" in r]
    if val:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], [r["val_bpb"] for r in val], "o-", color="C1",
                 label="validation bits/byte")
        ax2.set_ylabel("validation bits/byte")
        ax2.legend(loc="upper center")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
