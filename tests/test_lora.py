"""LoRA: only adapters train, the base is untouched and recoverable, PEFT reads our adapters,
and a run with adapters resumes exactly."""

import copy
import json

import pytest
import torch

from gptsmith.errors import GptsmithError
from gptsmith.model import GPT, GPTConfig
from gptsmith.train.lora import (
    LoRAConfig,
    adapters_off,
    apply_lora,
    folded,
    lora_layers,
    merged_state_dict,
    save_adapter,
)

X = torch.tensor([[1, 2, 3, 4, 5, 6]])


def lora_model(targets="all-linear", head="lm"):
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=300, depth=2, seq_len=32, head=head)).eval()
    model = apply_lora(copy.deepcopy(base), LoRAConfig(rank=4, alpha=8, targets=targets))
    for layer in lora_layers(model).values():  # as if trained: B no longer zero
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    return base, model


def test_adapters_start_as_the_identity_and_switch_off_to_the_base():
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=300, depth=2, seq_len=32)).eval()
    fresh = apply_lora(copy.deepcopy(base), LoRAConfig(rank=4))
    assert torch.equal(fresh(X), base(X))  # B starts at zero
    _, model = lora_model()
    assert not torch.allclose(model(X), base(X))
    with adapters_off(model):
        assert torch.equal(model(X), base(X))
    assert not torch.allclose(model(X), base(X))  # back on after the block


def test_only_adapters_train():
    _, model = lora_model(targets="q_proj,v_proj")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".")[3] for n in trainable} == {"q_proj", "v_proj"}
    _, rm = lora_model(head="scalar")
    assert {"score.weight", "score.bias"} <= {n for n, p in rm.named_parameters()
                                              if p.requires_grad}


def test_merge_then_unmerge_is_the_identity_and_merged_equals_adapted():
    base, model = lora_model()
    merged = GPT.from_state_dict(base.cfg, merged_state_dict(model))
    torch.testing.assert_close(merged(X), model(X), atol=1e-5, rtol=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for layer in lora_layers(model).values():
        layer.merge()
        layer.merge(sign=-1)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)


def test_folded_adapters_give_the_adapted_model_and_leave_the_base_as_it_was():
    """Sampling folds each adapter into a copy of its weight: the same logits, in the
    autocast dtype under bf16; after the block the layers run apart again, weights untouched."""
    _, model = lora_model()
    adapted = model(X)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with folded(model):
        torch.testing.assert_close(model(X), adapted, atol=1e-5, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16), folded(model, torch.bfloat16):
        assert all(layer.folded.dtype == torch.bfloat16 for layer in lora_layers(model).values())
        torch.testing.assert_close(model(X).float(), adapted, atol=0.1, rtol=0.05)
    assert all(layer.folded is None for layer in lora_layers(model).values())
    assert torch.equal(model(X), adapted)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with adapters_off(model), folded(model):  # adapters switched off stay off
        torch.testing.assert_close(model(X), lora_model()[0](X), atol=1e-6, rtol=0)


def test_peft_loads_our_adapter_with_equal_logits(tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from gptsmith.interop.hf import hf_config, to_hf

    base, model = lora_model()
    save_adapter(model, LoRAConfig(rank=4, alpha=8, targets="all-linear"), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config(base.cfg)))
    hf.load_state_dict(to_hf(base.state_dict()), strict=False)
    hf.tie_weights()
    adapted = peft.PeftModel.from_pretrained(hf.eval(), str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(X).logits, model(X), atol=1e-5, rtol=0)


def test_bad_lora_settings_are_named():
    model = GPT(GPTConfig(vocab_size=300, depth=1, seq_len=16))
    with pytest.raises(GptsmithError, match="unknown layers"):
        apply_lora(model, LoRAConfig(rank=2, targets="qproj"))
    with pytest.raises(GptsmithError, match="rank must be >= 1"):
        apply_lora(model, LoRAConfig(rank=0))


def sft_with_lora(tiny_run, data, out, fault=""):
    import os
    import subprocess
    import sys

    flags = ["sft", "--base", str(tiny_run), "--data", str(data), "--out", str(out),
             "--val-fraction", "0.2", "--lora.rank", "4", "--lora.targets", "all-linear",
             "--train.steps", "10", "--train.batch-size", "8", "--train.checkpoint-every", "4",
             "--train.eval-every", "5", "--train.log-every", "1", "--train.precision", "fp32",
             "--train.threads", "1", "--no-train.progress"]
    return subprocess.run([sys.executable, "-m", "gptsmith", *flags], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "GPTSMITH_FAULT": fault})


@pytest.mark.slow
def test_sft_with_lora_saves_adapters_only_and_resumes_exactly(tiny_run, tmp_path):
    from safetensors.torch import load_file

    from gptsmith.runs import load_model

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} plus 2?",
                                        "response": f"It is {i + 2}."}) + "\n"
                            for i in range(80)))
    whole = sft_with_lora(tiny_run, data, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    assert "parameters train" in whole.stdout
    broken = sft_with_lora(tiny_run, data, tmp_path / "broken", fault="after-step:6")
    assert broken.returncode == -9
    ckpt = torch.load(tmp_path / "broken" / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["model"] and all(".lora_" in k for k in ckpt["model"])  # adapters only
    resumed = sft_with_lora(tiny_run, data, tmp_path / "broken")
    assert resumed.returncode == 0 and "from step 4" in resumed.stdout, resumed.stderr

    def rows(run):
        return [{k: v for k, v in json.loads(x).items() if k != "tok_per_s"}
                for x in (run / "metrics.jsonl").read_text().splitlines()]

    assert rows(tmp_path / "broken") == rows(tmp_path / "whole")
    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(tmp_path / "broken" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(k.startswith("base_model.model.model.layers.") for k in a)
    # model.safetensors holds the merged model: every command works on the run unchanged
    merged, _ = load_model(tmp_path / "whole", "cpu")
    base, _ = load_model(tiny_run, "cpu")
    assert not torch.allclose(merged(X), base(X))


def test_ppo_under_lora_uses_the_policy_without_adapters_as_reference(tiny_run, tmp_path):
    from gptsmith.runs import load_model, save_model
    from gptsmith.train.loop import TrainConfig
    from gptsmith.train.ppo import PPOConfig, build_trainer
    from gptsmith.train.reward import reward_model_from

    policy, tok = load_model(tiny_run, "cpu")
    (tmp_path / "rm").mkdir()
    save_model(tmp_path / "rm", reward_model_from(policy))
    tok.save(tmp_path / "rm" / "tokenizer.json")
    prompts = [{"messages": [{"role": "user", "content": f"What is {i} plus 1?"}]}
               for i in range(4)]
    cfg = PPOConfig(policy=str(tiny_run), reward=str(tmp_path / "rm"), prompts="-",
                    out=str(tmp_path / "ppo"), max_tokens=4, minibatches=2,
                    lora=LoRAConfig(rank=2), train=TrainConfig(
                        steps=2, batch_size=4, lr=1e-2, precision="fp32", device="cpu",
                        progress=False))
    trainer = build_trainer(cfg, prompts)
    assert trainer.ref is None  # no second copy of the policy
    first = trainer.train_step()
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)  # adapters start at zero
    second = trainer.train_step()
    assert second["kl"] != pytest.approx(0.0, abs=1e-6)  # the adapters moved, the reference not
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or n.startswith("value.score.") for n in trained)
