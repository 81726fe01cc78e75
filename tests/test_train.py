"""The shared loop: loss goes down, a killed run resumes exactly, checkpoints are atomic."""

import json
import os
import platform
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
        "--no-train.progress", "--eval-tokens", "512",
        "--train.optimizer", "muon"]  # the default pre-training's (the other phases: AdamW)


def run_pretrain(data_dir, out, fault=None):
    env = {**os.environ, "GPTSMITH_FAULT": fault or ""}
    cmd = [sys.executable, "-m", "gptsmith", "pretrain", "--data", str(data_dir),
           "--out", str(out), *TINY]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_loss_goes_down(data_dir, tmp_path, optimizer):
    cfg = PretrainConfig(data=str(data_dir), out=str(tmp_path / "run"), eval_tokens=1024,
                         model=GPTConfig(depth=2, seq_len=64),
                         train=TrainConfig(steps=60, batch_size=8, lr=3e-3, warmup_steps=5,
                                           eval_every=30, log_every=5, progress=False,
                                           optimizer=optimizer))
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


def _captured_gradients(trainer) -> list[list[torch.Tensor]]:
    """Make ``trainer`` record the gradients its optimizer steps with."""
    seen = []
    trainer.optimizer.step = lambda: seen.append([p.grad.clone() for p in
                                                  trainer.model.parameters()])
    return seen


def test_grad_accumulation_weights_tokens_not_micro_batches(tokenizer, tiny_model, tmp_path):
    """SFT with padding: 2 micro-batches of 4 make exactly the gradient of one batch of 8,
    the mean over all the step's target tokens (not the mean of the two means)."""
    import copy
    import functools

    from gptsmith.train.batches import EpochBatches
    from gptsmith.train.loop import LossSum, Trainer
    from gptsmith.train.sft import pad_batch

    # very different lengths, so the two micro-batches hold very different token counts
    examples = [([3] * n + [7] * m, [0] * n + [1] * m) for n, m in
                [(2, 30), (3, 25), (2, 40), (4, 28), (2, 2), (3, 1), (2, 3), (5, 2)]]
    collate = functools.partial(pad_batch, pad_id=tokenizer.pad_id)

    def loss_fn(m, batch):
        x, y = batch
        n = int((y >= 0).sum())
        return LossSum(m(x, y, reduction="sum"), n, n)

    grads = {}
    for batch_size, accum in ((8, 1), (4, 2)):
        cfg = TrainConfig(steps=1, batch_size=batch_size, grad_accum=accum, grad_clip=0,
                          precision="fp32", device="cpu", seed=3, progress=False)
        trainer = Trainer(copy.deepcopy(tiny_model), cfg, tmp_path / str(accum),
                          EpochBatches(examples, batch_size, seed=3, collate=collate), loss_fn)
        seen = _captured_gradients(trainer)
        trainer.train_step()
        grads[accum] = seen[0]
    # the reference: the plain mean over every target token of the 8 examples
    model = copy.deepcopy(tiny_model)
    x, y = collate(examples)
    model(x, y).backward()
    for ref, one, two in zip(model.parameters(), grads[1], grads[2], strict=True):
        torch.testing.assert_close(one, ref.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(two, ref.grad, rtol=1e-4, atol=1e-6)


def test_each_part_is_clipped_on_its_own(tiny_model, tmp_path):
    """A huge gradient in one part (PPO's value model) does not shrink the other's."""
    import copy

    from gptsmith.train.loop import Trainer

    parts = torch.nn.ModuleDict({"policy": copy.deepcopy(tiny_model),
                                 "value": copy.deepcopy(tiny_model)})
    cfg = TrainConfig(steps=1, grad_clip=1.0, device="cpu", precision="fp32", progress=False)
    trainer = Trainer(parts, cfg, tmp_path, None, None,
                      parts={"policy": (parts["policy"], 1.0), "value": (parts["value"], 0.5)})
    trainer.set_lr()
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx(
        [lr_at(0, cfg)] * 2 + [0.5 * lr_at(0, cfg)] * 2)
    for p in parts["policy"].parameters():
        p.grad = torch.full_like(p, 1e-4)
    for p in parts["value"].parameters():
        p.grad = torch.full_like(p, 100.0)
    seen = _captured_gradients(trainer)
    norms = trainer.apply_gradients()
    n_policy = sum(p.numel() for p in parts["policy"].parameters())
    assert norms["grad_norm_policy"] == pytest.approx(1e-4 * n_policy ** 0.5, rel=1e-4)
    assert norms["grad_norm_value"] > 1000
    policy_grads = seen[0][:len(list(parts["policy"].parameters()))]
    assert all(torch.allclose(g, torch.full_like(g, 1e-4)) for g in policy_grads)  # untouched
    value_grads = seen[0][len(policy_grads):]
    value_norm = float(torch.cat([g.flatten() for g in value_grads]).norm())
    assert value_norm == pytest.approx(1.0, rel=1e-3)


def _sft_interrupted_at_step_3(tiny_run, tmp_path, monkeypatch):
    """An SFT run stopped after step 3 (checkpoint at 2), as a kill would; its data file."""
    import gptsmith.train.loop as loop
    from gptsmith.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} plus 2?",
                                        "response": f"It is {i + 2}."}) + "\n"
                            for i in range(30)))
    argv = ["sft", "--base", str(tiny_run), "--data", str(data), "--out", str(tmp_path / "sft"),
            "--val-fraction", "0.2", "--train.steps", "6", "--train.batch-size", "2",
            "--train.checkpoint-every", "2", "--no-train.progress"]

    def fault(point, step):
        if (point, step) == ("after-step", 3):
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "fault", fault)
    assert main(argv) == 130
    monkeypatch.undo()
    return argv, data


@pytest.mark.parametrize("change", ["shrunk", "same length"])
def test_resume_on_changed_data_is_refused_naming_the_file(change, tiny_run, tmp_path,
                                                           monkeypatch, capsys):
    from gptsmith.cli import main

    argv, data = _sft_interrupted_at_step_3(tiny_run, tmp_path, monkeypatch)
    text = data.read_text()
    if change == "shrunk":  # resumed before: IndexError in the batches
        data.write_text("".join(text.splitlines(keepends=True)[:10]))
    else:  # resumed before: silently trained on old data first, new data after
        data.write_text(text.replace("plus 2?", "plus 3?"))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "this checkpoint was made on other data" in err
    detail = "bytes, was" if change == "shrunk" else "has other contents (same size"
    assert f"{data} {'is ' if change == 'shrunk' else ''}" in err and detail in err
    assert "--overwrite" in err
    assert main([*argv, "--overwrite"]) == 0  # starting over is the way out


def test_resume_on_the_same_data_goes_on(tiny_run, tmp_path, monkeypatch, capsys):
    from gptsmith.cli import main
    from gptsmith.runs import fingerprint

    argv, data = _sft_interrupted_at_step_3(tiny_run, tmp_path, monkeypatch)
    ckpt = torch.load(tmp_path / "sft" / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["data_files"]["data"]["files"] == fingerprint(data)
    data.touch()  # a new mtime alone is no change
    assert main(argv) == 0
    assert "resuming" in capsys.readouterr().out


def test_eval_every_0_evaluates_only_after_the_last_step(tiny_run, tmp_path):
    from gptsmith.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "response": "a"}) + "\n"
                            for i in range(30)))
    out = tmp_path / "sft"
    assert main(["sft", "--base", str(tiny_run), "--data", str(data), "--out", str(out),
                 "--val-fraction", "0.3", "--train.steps", "4", "--train.batch-size", "2",
                 "--train.eval-every", "0", "--train.log-every", "1",
                 "--no-train.progress"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [4]


def test_batches_grouped_by_length_waste_less_padding_and_resume_exactly():
    from gptsmith.train.batches import EpochBatches

    items = [[0] * (1 + (i * 37) % 50) for i in range(96)]  # lengths 1..50, mixed

    def passes(batches, n):
        return [batches.next() for _ in range(n)]

    def padded(batch_list):
        return sum(max(map(len, b)) * len(b) for b in batch_list)

    plain = passes(EpochBatches(items, 8, seed=0), 12)
    grouped_sampler = EpochBatches(items, 8, seed=0, length=len, window=4)
    grouped = passes(grouped_sampler, 12)
    # one pass: every item once, far less padding than the plain shuffle
    assert sorted(map(id, sum(grouped, []))) == sorted(map(id, items))
    assert padded(grouped) < 0.75 * padded(plain)
    assert passes(EpochBatches(items, 8, seed=0, length=len, window=1), 12) == plain
    # the state carries over: a copy resumed mid-pass draws what the original draws
    state = grouped_sampler.state_dict()
    resumed = EpochBatches(items, 8, seed=99, length=len, window=4)
    resumed.load_state_dict(state)
    assert passes(resumed, 20) == passes(grouped_sampler, 20)


FAULTS = """
import resource, torch, gptsmith
print(gptsmith.MALLOC_TUNED)
for i in range(12):  # big activations and their gradients, made and freed as in every step
    if i == 6:  # the first rounds grow the heap to its high-water mark
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(4096, 2048) * 2
    b = a * 3
    del a, b
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_big_tensors_freed_each_step_are_not_faulted_in_again():
    """gptsmith keeps glibc from giving 32 MB blocks back to the kernel on every free:
    the same big tensors made again and again cost no page faults after the first."""
    def faults(env):
        out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True,
                             check=True, env={**os.environ, **env}).stdout.split()
        return out[0], int(out[1])

    tuned, glibc = faults({}), faults({"GPTSMITH_MALLOC": "default"})
    assert tuned[0] == "True" and glibc[0] == "False"
    pages = 6 * 3 * 4096 * 2048 * 4 // 4096  # 6 rounds of three 32 MB tensors
    assert glibc[1] > pages // 2  # glibc maps them anew each time
    assert tuned[1] < pages // 8  # at most some heap still untouched; glibc: every page
