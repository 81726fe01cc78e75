"""The Hugging Face Llama mapping: names both ways, config fields, what has no place there."""

import pytest
import torch

from gptsmith.interop.hf import from_hf, llama_config, to_hf
from gptsmith.model import GPT, GPTConfig


@pytest.mark.parametrize("tied", [True, False])
def test_weights_round_trip_under_hf_names(tied):
    model = GPT(GPTConfig(vocab_size=300, depth=2, seq_len=32, tie_embeddings=tied))
    hf = to_hf(model.state_dict())
    assert "model.layers.1.self_attn.q_proj.weight" in hf and "model.norm.weight" in hf
    assert ("lm_head.weight" in hf) is not tied
    back = from_hf({**hf, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)})
    assert back.keys() == model.state_dict().keys()
    fresh = GPT(GPTConfig(vocab_size=300, depth=2, seq_len=32, tie_embeddings=tied))
    fresh.load_state_dict(back)
    x = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(fresh(x), model(x))


def test_config_fields_describe_the_shape():
    c = llama_config(GPTConfig(vocab_size=300, depth=2, seq_len=32, n_embd=64, n_head=4,
                               n_kv_head=2))
    assert (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"],
            c["head_dim"], c["num_hidden_layers"], c["max_position_embeddings"]) == \
        (64, 4, 2, 16, 2, 32)
    with pytest.raises(ValueError, match="scalar"):
        llama_config(GPTConfig(head="scalar"))
    with pytest.raises(ValueError, match="scalar-head"):
        to_hf(GPT(GPTConfig(vocab_size=300, depth=1, seq_len=16, head="scalar")).state_dict())
