"""DPO and its variants: the losses against hand-computed values, ln 2 at the start, and a
margin that rises on a toy preference."""

import json
import math

import pytest
import torch

from gptsmith.train.dpo import DPOConfig, preference_loss


def test_losses_against_hand_computed_values():
    # chosen, rejected: log π = (-2, -5), log π_ref = (-3, -4), lengths (2, 5)
    logp, ref, lengths = torch.tensor([-2.0, -5.0]), torch.tensor([-3.0, -4.0]), \
        torch.tensor([2, 5])
    h = (-2 + 3) - (-5 + 4)  # = 2
    loss, margin = preference_loss(logp, ref, lengths, DPOConfig(beta=0.5))
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * h))))
    assert margin.item() == pytest.approx(1.0)
    smooth, _ = preference_loss(logp, ref, lengths, DPOConfig(beta=0.5, label_smoothing=0.1))
    sig = 1 / (1 + math.exp(-1.0))
    assert smooth.item() == pytest.approx(-0.9 * math.log(sig) - 0.1 * math.log(1 - sig))
    ipo, _ = preference_loss(logp, ref, lengths, DPOConfig(loss="ipo", beta=0.5))
    assert ipo.item() == pytest.approx((h - 1 / (2 * 0.5)) ** 2)
    simpo, m = preference_loss(logp, ref, lengths, DPOConfig(loss="simpo", beta=2.0,
                                                              simpo_gamma=0.5))
    assert m.item() == pytest.approx(2.0 * (-2 / 2 - (-5 / 5)))  # 0: same mean log-prob
    assert simpo.item() == pytest.approx(-math.log(1 / (1 + math.exp(0.5))))


def test_ipo_stops_pushing_at_its_margin():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-1.0, -1.0])  # h = 1 = 1 / (2 β) at β = 0.5
    loss, _ = preference_loss(logp, ref, torch.tensor([1, 1]), DPOConfig(loss="ipo", beta=0.5))
    loss.backward()
    assert logp.grad.abs().max().item() == 0.0


@pytest.fixture(scope="module")
def digit_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    records = [{"prompt": "Pick a digit.", "responses": ["7", str(d)], "ranking": [0, 1]}
               for d in (0, 1, 2, 3, 4, 5, 6) for _ in range(6)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    val = [{"prompt": "Pick a digit.", "responses": ["7", str(d)], "ranking": [0, 1]}
           for d in (8, 9)]
    (root / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    return root


@pytest.mark.parametrize("lora", [0, 4])
def test_dpo_starts_at_ln2_and_raises_the_margin(tiny_run, digit_pairs, tmp_path, lora):
    from gptsmith.train.dpo import dpo
    from gptsmith.train.loop import TrainConfig
    from gptsmith.train.lora import LoRAConfig

    summary = dpo(DPOConfig(
        policy=str(tiny_run), data=str(digit_pairs / "train.jsonl"),
        val_data=str(digit_pairs / "val.jsonl"), beta=0.5, out=str(tmp_path / "dpo"),
        lora=LoRAConfig(rank=lora, targets="all-linear"),
        train=TrainConfig(steps=15, batch_size=8, lr=3e-3 if lora else 1e-3, warmup_steps=1,
                          eval_every=15, precision="fp32", progress=False)))
    rows = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert rows[0]["val_margin"] == pytest.approx(0.0, abs=1e-5)
    assert summary["val_margin"] > 0.3 and summary["val_accuracy"] == 1.0  # unseen digits
    assert (tmp_path / "dpo" / "adapter_model.safetensors").exists() == bool(lora)


def test_bad_settings_are_named(tiny_run, digit_pairs, tmp_path):
    from gptsmith.errors import GptsmithError
    from gptsmith.train.dpo import dpo

    with pytest.raises(GptsmithError, match="--loss must be one of"):
        dpo(DPOConfig(policy=str(tiny_run), data=str(digit_pairs / "train.jsonl"), loss="kto"))
    with pytest.raises(GptsmithError, match="--beta must be > 0"):
        dpo(DPOConfig(policy=str(tiny_run), data=str(digit_pairs / "train.jsonl"), beta=0))
