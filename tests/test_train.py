"""The shared loop: loss goes down, a killed run resumes exactly, checkpoints are atomic."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from gptsmith.model import GPTConfig
from gptsmith.train.loop import TrainConfig, lr_at
from gptsmith.train.pretrain import PretrainConfig, pretrain

TINY = ["--model.depth", "1", "--model.seq-len", "32", "--train.steps", "24",
        "--train.batch-size", "4", "--train.checkpoint-every", "8", "--train.eval-every", "12",
        "--train.warmup-steps", "4", "--train.precision", "fp32", "--train.threads", "1",
        "--no-train.progress", "--eval-tokens", "512"]


def run_pretrain(data_dir, out, fault=None):
    env = {**os.environ, "GPTSMITH_FAULT": fault or ""}
    cmd = [sys.executable, "-m", "gptsmith", "pretrain", "--data", str(data_dir),
           "--out", str(out), *TINY]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_goes_down(data_dir, tmp_path):
    cfg = PretrainConfig(data=str(data_dir), out=str(tmp_path / "run"), eval_tokens=1024,
                         model=GPTConfig(depth=2, seq_len=64),
                         train=TrainConfig(steps=60, batch_size=8, lr=3e-3, warmup_steps=5,
                                           eval_every=30, log_every=5, progress=False))
    summary = pretrain(cfg)
    rows = metrics(tmp_path / "run")
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    assert summary["val_bpb"] < summary["unigram_bpb"]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(data_dir, tmp_path):
    whole = tmp_path / "whole"
    assert run_pretrain(data_dir, whole).returncode == 0

    broken = tmp_path / "broken"
    crashed = run_pretrain(data_dir, broken, fault="after-step:13")  # last checkpoint: step 8
    assert crashed.returncode == -9
    assert not (broken / "model.safetensors").exists()
    assert torch.load(broken / "checkpoints" / "latest.pt", weights_only=False)["step"] == 8

    resumed = run_pretrain(data_dir, broken)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "from step 8" in resumed.stdout
    def without_speed(rows):
        return [{k: v for k, v in r.items() if k != "tok_per_s"} for r in rows]

    assert without_speed(metrics(broken)) == without_speed(metrics(whole))
    a, b = load_file(whole / "model.safetensors"), load_file(broken / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(data_dir, tmp_path):
    run = tmp_path / "run"
    crashed = run_pretrain(data_dir, run, fault="checkpoint-write:16")
    assert crashed.returncode == -9
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["step"] == 8  # the half-written step-16 file never replaced it
    resumed = run_pretrain(data_dir, run)
    assert resumed.returncode == 0, resumed.stderr
    assert list((run / "checkpoints").iterdir()) == [run / "checkpoints" / "latest.pt"]
    assert metrics(run)[-1]["step"] == 24


def test_resume_with_other_settings_is_refused(data_dir, tmp_path):
    run = tmp_path / "run"
    assert run_pretrain(data_dir, run, fault="after-step:9").returncode == -9
    cmd = [sys.executable, "-m", "gptsmith", "pretrain", "--data", str(data_dir),
           "--out", str(run), *TINY, "--train.lr", "0.01"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "different settings" in out.stderr and "lr: 0.003 -> 0.01" in out.stderr
