"""SFT: only assistant tokens are learned, the loss goes down, bad data is named."""

import json

import pytest
import torch

from gptsmith import device
from gptsmith.chat import render
from gptsmith.errors import GptsmithError
from gptsmith.model import GPT, GPTConfig
from gptsmith.train.loop import TrainConfig
from gptsmith.train.pretrain import PretrainConfig, pretrain
from gptsmith.train.sft import SFTConfig, pack_batch, pad_batch, sft


def test_targets_are_the_assistant_tokens_only(tokenizer):
    a = render(tokenizer, [{"role": "user", "content": "2 plus 2?"},
                           {"role": "assistant", "content": "4"}])
    b = render(tokenizer, [{"role": "user", "content": "Say hello to everybody please"},
                           {"role": "assistant", "content": "Hello, everybody!"}])
    x, y = pad_batch([a, b], tokenizer.pad_id)
    assert x.shape == y.shape == (2, len(b[0]) - 1)
    assert y[0][y[0] >= 0].tolist() == [*tokenizer.encode("4"), tokenizer.end_id]
    assert y[1][y[1] >= 0].tolist() == [*tokenizer.encode("Hello, everybody!"), tokenizer.end_id]
    assert (x[0, len(a[0]) - 1:] == tokenizer.pad_id).all()


def test_packed_batch_learns_exactly_what_the_padded_one_does():
    from gptsmith.model import GPT, GPTConfig

    gen = torch.Generator().manual_seed(0)
    examples = [(torch.randint(0, 64, (n,), generator=gen).tolist(),
                 [i % 3 != 0 for i in range(n)]) for n in (5, 30, 12, 7, 40, 3, 22, 9)]
    x, y, docs = pack_batch(examples, pad_id=0, rows_multiple=1)
    assert x.shape == (4, 39)  # 8 conversations of 2..39 inputs in 4 rows of the longest
    assert int((y >= 0).sum()) == int((pad_batch(examples, 0)[1] >= 0).sum())
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, depth=2, seq_len=64))

    def loss_and_grads(*batch):
        model.zero_grad()
        x, y, *docs = batch
        loss = model(x, y, reduction="sum", documents=docs[0] if docs else None)
        loss.backward()
        return loss, [p.grad.clone() for p in model.parameters()]

    padded, packed = loss_and_grads(*pad_batch(examples, 0)), loss_and_grads(x, y, docs)
    torch.testing.assert_close(packed[0], padded[0])
    for a, b in zip(packed[1], padded[1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # shared by 3 ranks: a multiple of 3 rows, the extra ones learn nothing
    x3, y3, _ = pack_batch(examples, pad_id=0, rows_multiple=3)
    assert x3.shape == (6, 39) and (y3[4:] == -1).all()
    with pytest.raises(ValueError, match="KV cache"):
        from gptsmith.model import KVCache
        model(x, documents=docs, cache=KVCache(model.cfg, 4, 64, None))


def demos_file(path, n=200):
    rows = [{"prompt": f"What is {i % 10} plus {i % 7}?", "response": f"It is {i % 10 + i % 7}."}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_learns_the_demonstrations(tiny_run, tmp_path):
    cfg = SFTConfig(base=str(tiny_run), data=str(demos_file(tmp_path / "d.jsonl")),
                    out=str(tmp_path / "sft"), val_fraction=0.2,
                    train=TrainConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=4,
                                      eval_every=20, progress=False))
    summary = sft(cfg)
    rows = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_loss"] < 0.5 * rows[0]["loss"]
    assert summary["train_examples"] + summary["val_examples"] == 200
    assert (tmp_path / "sft" / "model.safetensors").exists()
    again = sft(cfg)  # finished: recognised, not retrained
    assert again["train_seconds"] == summary["train_seconds"]
    cfg.pack = False  # packing changes how, not what: the run is still done
    assert sft(cfg)["train_seconds"] == summary["train_seconds"]


def test_auto_precision_on_a_bf16_cpu_is_bf16_for_fixed_shapes_or_wide_models(
        tiny_run, data_dir, tmp_path, monkeypatch):
    """On a CPU that multiplies bf16 natively, pre-training's fixed-shape batches gain from
    it; a small model's SFT batches change shape every step (oneDNN keeps a kernel per
    shape) and stay fp32, unless the model is wide enough for its matmuls to pay."""
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    train = TrainConfig(steps=2, batch_size=4, warmup_steps=1, device="cpu", progress=False)
    base = pretrain(PretrainConfig(data=str(data_dir), out=str(tmp_path / "pre"),
                                   eval_tokens=256, model=GPTConfig(depth=1, seq_len=32),
                                   train=train))
    tuned = sft(SFTConfig(base=str(tiny_run), data=str(demos_file(tmp_path / "d.jsonl", 20)),
                          out=str(tmp_path / "sft"), train=train))
    assert (base["precision"], tuned["precision"]) == ("bf16", "fp32")
    # a model as wide as SmolLM2 gains from bf16 in every phase
    wide = GPT(GPTConfig(vocab_size=64, depth=1, n_embd=576, seq_len=32))
    assert device.matmul_width(wide) == 576
    assert device.resolve_precision("auto", torch.device("cpu"), width=576) == "bf16"
    assert device.resolve_precision("auto", torch.device("cpu"), width=384) == "fp32"


def test_conversation_longer_than_the_context_is_named(tiny_run, tmp_path):
    path = demos_file(tmp_path / "d.jsonl", 20)
    with open(path, "a") as f:
        f.write(json.dumps({"prompt": "word " * 400, "response": "ok"}) + "\n")
    cfg = SFTConfig(base=str(tiny_run), data=str(path), out=str(tmp_path / "sft"),
                    train=TrainConfig(steps=1, progress=False))
    with pytest.raises(GptsmithError, match=r"d.jsonl:21: field 'messages' renders to \d+ tok"):
        sft(cfg)
    cfg.skip_bad = True
    cfg.val_fraction = 0.3
    assert sft(cfg)["skipped"] == 1


def test_sft_starts_from_the_base_weights(tiny_run, tmp_path):
    from gptsmith.runs import load_model

    cfg = SFTConfig(base=str(tiny_run), data=str(demos_file(tmp_path / "d.jsonl", 40)),
                    out=str(tmp_path / "sft"), val_fraction=0.3,
                    train=TrainConfig(steps=1, lr=1e-9, warmup_steps=1, progress=False))
    sft(cfg)
    base, _ = load_model(tiny_run)
    tuned, _ = load_model(tmp_path / "sft")
    for (name, p), q in zip(base.named_parameters(), tuned.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)


def test_two_demonstrations_say_how_to_proceed(tiny_run, tmp_path, capsys):
    from gptsmith.cli import main

    data = demos_file(tmp_path / "two.jsonl", 2)
    out = tmp_path / "sft"
    assert main(["sft", "--base", str(tiny_run), "--data", str(data), "--out", str(out),
                 "--no-train.progress"]) == 2
    err = capsys.readouterr().err
    assert "2 demonstrations and none held out" in err
    assert "--val-data FILE" in err and "--val-fraction 0" in err
    assert not out.exists()
    # the advice works: all of them trained on, no validation loss
    assert main(["sft", "--base", str(tiny_run), "--data", str(data), "--out", str(out),
                 "--val-fraction", "0", "--train.steps", "2", "--no-train.progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_examples"] == 2 and summary["val_examples"] == 0
    assert "val_loss" not in summary
    assert "no validation loss (--val-fraction 0)" in capsys.readouterr().out
