"""Experiment tracking: TensorBoard and W&B get what metrics.jsonl gets, at the same steps;
an unknown writer or a missing package is refused before any work."""

import importlib.util
import json

import pytest

from gptsmith.cli import main
from gptsmith.model import GPTConfig
from gptsmith.tracking import Trackers
from gptsmith.train.loop import TrainConfig
from gptsmith.train.pretrain import PretrainConfig, pretrain


def tiny_pretrain(data_dir, out, log, steps=6):
    return pretrain(PretrainConfig(
        data=str(data_dir), out=str(out), eval_tokens=256, model=GPTConfig(depth=1, seq_len=32),
        train=TrainConfig(steps=steps, batch_size=4, warmup_steps=1, eval_every=3, log_every=2,
                          precision="fp32", progress=False, log=log)))


def read_tensorboard(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_holds_every_logged_metric(data_dir, tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'gptsmith[tensorboard]'")
    tiny_pretrain(data_dir, tmp_path / "run", "tensorboard")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    want: dict[str, list] = {}
    for r in rows:
        for k, v in r.items():
            if k != "step":
                want.setdefault(k, []).append((r["step"], pytest.approx(v, rel=1e-6)))
    assert {"loss", "lr", "val_loss", "grad_norm"} <= set(want)
    assert read_tensorboard(tmp_path / "run") == want


def test_a_resumed_run_shows_each_step_once_in_tensorboard(tmp_path):
    """A killed process logged steps 5 and 6 after its checkpoint at 4; the resumed process
    logs them again: TensorBoard keeps only the second copy."""
    pytest.importorskip("tensorboard", reason="pip install 'gptsmith[tensorboard]'")
    first = Trackers("tensorboard", tmp_path, {}, start_step=0)
    for step in range(1, 7):
        first.write({"step": step, "loss": float(step)})
    first.close()
    resumed = Trackers("tensorboard", tmp_path, {}, start_step=4)
    for step in (5, 6):
        resumed.write({"step": step, "loss": 10.0 * step})
    resumed.close()
    assert read_tensorboard(tmp_path)["loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0),
                                                  (5, 50.0), (6, 60.0)]


@pytest.mark.parametrize("log,message", [
    ("mlflow", "unknown writer 'mlflow' (known: none, tensorboard, wandb"),
    ("wandb", "log wandb needs the wandb package: pip install 'gptsmith[wandb]'"),
    ("tensorboard", "log tensorboard needs the tensorboard package: "
                    "pip install 'gptsmith[tensorboard]'"),
])
def test_unknown_or_missing_writers_are_refused_before_any_work(data_dir, tmp_path, capsys,
                                                                monkeypatch, log, message):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("wandb", "tensorboard") else
                        real(name, *a))
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(data_dir), "--out", str(out), "--log", log]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_log_flag_and_train_log_are_one_setting(data_dir, tmp_path):
    """--log is --train.log: a run resumes or is recognised as done whatever it logs to."""
    pytest.importorskip("tensorboard")
    args = ["pretrain", "--data", str(data_dir), "--out", str(tmp_path / "run"),
            "--model.depth", "1", "--model.seq-len", "32", "--train.steps", "2",
            "--train.batch-size", "2", "--eval-tokens", "128", "--no-train.progress"]
    assert main([*args, "--log", "tensorboard"]) == 0
    assert (tmp_path / "run" / "tensorboard").is_dir()
    assert main([*args, "--train.log", "none"]) == 0  # done: not refused as other settings


@pytest.mark.slow  # W&B starts a service of its own: seconds
def test_wandb_offline_needs_no_network_or_account(data_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install 'gptsmith[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no settings of the user's
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    tiny_pretrain(data_dir, tmp_path / "run", "wandb")
    run_id = (tmp_path / "run" / "wandb_id").read_text().strip()
    (log,) = (tmp_path / "run" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    data = log.read_bytes()
    assert all(f'"{key}"'.encode() in data or key.encode() in data
               for key in ("loss", "val_loss", "grad_norm"))


def test_wandb_without_an_account_says_what_to_do(data_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install 'gptsmith[wandb]'")
    import wandb

    from gptsmith.errors import GptsmithError

    wandb.teardown()  # W&B keeps the settings of an earlier run in this process
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(GptsmithError, match="WANDB_MODE=offline"):
        tiny_pretrain(data_dir, tmp_path / "run", "wandb")
