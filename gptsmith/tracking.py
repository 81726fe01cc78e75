"""Experiment tracking: the metrics of every training phase, also sent to TensorBoard or
Weights & Biases (``--train.log tensorboard,wandb``, or ``--log``).

``metrics.jsonl`` in the run directory stays the source of truth; these writers only copy
each logged record, at its step. Both are optional extras: ``pip install
'gptsmith[tensorboard]'`` or ``'gptsmith[wandb]'``. A missing package is refused when the
config is built, before any work.

- TensorBoard: event files in ``RUN_DIR/tensorboard`` (``tensorboard --logdir runs``). A
  resumed run purges the events logged after its checkpoint, so no step appears twice.
- Weights & Biases: one W&B run per run directory (its id kept in ``RUN_DIR/wandb_id``, so a
  resumed run continues it), the phase's config attached. W&B's own variables apply
  (``WANDB_MODE=offline`` needs no network or account, ``WANDB_PROJECT`` (default
  gptsmith), ``WANDB_ENTITY``, ``WANDB_DIR`` (default the run directory), ...).
"""

from __future__ import annotations

import importlib.util
import math
import os
import secrets
from pathlib import Path

# writer name -> (the module it needs, the pip extra that installs it)
WRITERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def parse(spec: str) -> list[str]:
    """The writers named in ``spec`` ("", "none", or names comma-separated); ValueError for an
    unknown name or a package that is not installed, saying what to install."""
    names = [n.strip().lower() for n in spec.split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    for name in names:
        if name not in WRITERS:
            raise ValueError(f"log: unknown writer {name!r} (known: none, "
                             f"{', '.join(WRITERS)}; metrics.jsonl is always written)")
        module, extra = WRITERS[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"log {name} needs the {module} package: "
                             f"pip install 'gptsmith[{extra}]'")
    return list(dict.fromkeys(names))


def scalars(record: dict) -> dict[str, float]:
    """The record's finite numbers (step excluded), as floats."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and math.isfinite(v)}


class TensorBoardWriter:
    def __init__(self, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events a killed process logged after the checkpoint are dropped
        self.writer = SummaryWriter(str(run_dir / "tensorboard"),
                                    purge_step=start_step + 1 if start_step else 0)

    def write(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a killed run keeps what it logged

    def close(self) -> None:
        self.writer.close()


class WandbWriter:
    def __init__(self, run_dir: Path, start_step: int, config: dict):
        import wandb

        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if start_step and id_file.exists() else None
        run_id = run_id or secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "gptsmith",
                                  name=run_dir.name, id=run_id, resume="allow",
                                  dir=os.environ.get("WANDB_DIR") or str(run_dir),
                                  config=config)
        except wandb.errors.UsageError as e:  # no account, and WANDB_MODE not offline
            from gptsmith.errors import GptsmithError

            raise GptsmithError(f"--train.log wandb: {e}; or set WANDB_MODE=offline to log "
                                "into the run directory and `wandb sync` it later") from None
        self.next_step = self.run.step  # a resumed run's steps up to here are already there

    def write(self, step: int, values: dict[str, float]) -> None:
        if step >= self.next_step:  # W&B refuses a step twice; resumed steps are equal anyway
            self.run.log(values, step=step)
            self.next_step = step + 1

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The writers a run logs to besides ``metrics.jsonl``; none: every call does nothing."""

    def __init__(self, spec: str, run_dir: Path, config: dict, start_step: int):
        self.writers: list = []
        for name in parse(spec):
            if name == "tensorboard":
                self.writers.append(TensorBoardWriter(Path(run_dir), start_step))
            else:
                self.writers.append(WandbWriter(Path(run_dir), start_step, config))

    def write(self, record: dict) -> None:
        values = scalars(record)
        for w in self.writers:
            w.write(record["step"], values)

    def close(self) -> None:
        for w in self.writers:
            w.close()
        self.writers = []
