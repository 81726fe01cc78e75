import dataclasses

import pytest
import torch

from gptsmith.model import GPT, GPTConfig, KVCache


def test_depth_is_the_one_knob():
    cfg = GPTConfig(depth=4).resolved()
    assert (cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.mlp_hidden) == (192, 4, 2, 512)
    wide = GPTConfig(depth=8).resolved()
    assert wide.n_embd == 384 and wide.n_head == 8 and wide.n_kv_head == 4


def test_bad_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="n_head"):
        GPT(GPTConfig(depth=2, n_embd=100, n_head=3))


def test_cached_decoding_equals_full_recomputation(tiny_model):
    torch.manual_seed(1)
    idx = torch.randint(0, tiny_model.cfg.vocab_size, (3, 20))
    full = tiny_model(idx)
    cache = KVCache(tiny_model.cfg, 3, 20, pad=None)
    parts = [tiny_model(idx[:, :7], cache=cache), tiny_model(idx[:, 7:12], cache=cache)]
    parts += [tiny_model(idx[:, t:t + 1], cache=cache) for t in range(12, 20)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_left_padded_rows_match_unpadded(tiny_model):
    torch.manual_seed(2)
    short = torch.randint(0, tiny_model.cfg.vocab_size, (1, 5))
    long = torch.randint(0, tiny_model.cfg.vocab_size, (1, 9))
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    cache = KVCache(tiny_model.cfg, 2, 12, pad=torch.tensor([4, 0]))
    out = tiny_model(batch, cache=cache)
    step = tiny_model(torch.tensor([[7], [7]]), cache=cache)
    alone = tiny_model(torch.cat([short, torch.tensor([[7]])], 1))
    torch.testing.assert_close(out[0, 4:], alone[0, :5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step[0, 0], alone[0, 5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], tiny_model(long)[0], atol=1e-5, rtol=1e-5)


def test_kept_positions_equal_the_full_outputs_at_them(tiny_model):
    """``positions`` computes the last block only where asked; every way a forward can be
    masked (causal, packed documents, left-padded prefill, a cache continued) gives the
    full forward's outputs at those positions, for the LM head and the scalar head."""
    torch.manual_seed(4)
    V = tiny_model.cfg.vocab_size
    idx = torch.randint(0, V, (3, 20))
    pos = torch.tensor([[0, 5, 19], [3, 3, 7], [19, 18, 1]])

    def at(out):
        return out.gather(1, pos[..., None].expand(-1, -1, out.size(-1)))

    torch.testing.assert_close(tiny_model(idx, positions=pos), at(tiny_model(idx)))
    docs = torch.tensor([[0] * 8 + [1] * 12, [0] * 20, [0] * 3 + [1] * 17])
    torch.testing.assert_close(tiny_model(idx, positions=pos, documents=docs),
                               at(tiny_model(idx, documents=docs)))
    pad = torch.tensor([4, 0, 2])
    full = tiny_model(idx, cache=KVCache(tiny_model.cfg, 3, 24, pad))
    torch.testing.assert_close(
        tiny_model(idx, cache=KVCache(tiny_model.cfg, 3, 24, pad), positions=pos), at(full))
    cache = KVCache(tiny_model.cfg, 3, 24, None)
    tiny_model(idx[:, :6], cache=cache)
    tail = torch.tensor([[0, 13], [2, 2], [13, 7]])
    expect = tiny_model(idx)[:, 6:].gather(1, tail[..., None].expand(-1, -1, V))
    torch.testing.assert_close(tiny_model(idx[:, 6:], cache=cache, positions=tail), expect,
                               atol=1e-5, rtol=1e-5)
    scalar = GPT(dataclasses.replace(tiny_model.cfg, head="scalar"))
    torch.testing.assert_close(scalar(idx, positions=pos), scalar(idx).gather(1, pos))


def test_a_single_query_under_bf16_on_cpu_attends_in_fp32(tiny_model):
    """A decoding step or a last position read (one query a row) runs attention in fp32 on
    the CPU, where the bf16 kernel is slow: it gives the full bf16 forward's outputs there
    to bf16's precision, through a left-padded cache and grouped queries alike."""
    torch.manual_seed(5)
    idx = torch.randint(0, tiny_model.cfg.vocab_size, (3, 12))
    pad = torch.tensor([3, 0, 1])
    last = torch.full((3, 1), 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = tiny_model(idx, cache=KVCache(tiny_model.cfg, 3, 16, pad))[:, 11]
        one = tiny_model(idx, cache=KVCache(tiny_model.cfg, 3, 16, pad), positions=last)[:, 0]
    assert tiny_model.cfg.n_kv_head < tiny_model.cfg.n_head
    torch.testing.assert_close(one.float(), full.float(), atol=0.05, rtol=0.02)


def test_grouped_causal_attention_equals_the_flash_kernel():
    """Q·Kᵀ, softmax, P·V with the key/value heads shared by their query groups: PyTorch's
    attention's outputs and gradients (fp32, 4 query heads on 2 key/value heads)."""
    import torch.nn.functional as F

    from gptsmith.model import grouped_causal_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, h, 9, 8, requires_grad=True) for h in (4, 2, 2))
    ours = grouped_causal_attention(q, k, v)
    grads = torch.autograd.grad(ours.square().sum(), (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    for a, b in zip(grads, torch.autograd.grad(ref.square().sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)  # fp32 rounding, any kernel


def test_bf16_training_on_cpu_attends_by_grouped_products(tiny_model, monkeypatch):
    """A whole causal batch in bf16 on the CPU (pre-training) takes the grouped products,
    not the flash kernel, with the same loss and gradients to bf16's precision; above
    the scores budget it takes the flash kernel."""
    import gptsmith.model as model

    calls = []
    real = model.grouped_causal_attention
    monkeypatch.setattr(model, "grouped_causal_attention",
                        lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(6)
    idx = torch.randint(0, tiny_model.cfg.vocab_size, (4, 33))

    def loss_and_grads():
        tiny_model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = tiny_model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in tiny_model.parameters()]

    grouped = loss_and_grads()
    assert len(calls) == tiny_model.cfg.depth
    monkeypatch.setattr(model, "GROUPED_ATTENTION_MAX_SCORES", 4 * tiny_model.cfg.n_head * 31**2)
    flash = loss_and_grads()
    assert len(calls) == tiny_model.cfg.depth  # 32 positions: over the budget
    tiny_model.zero_grad()
    torch.testing.assert_close(grouped[0], flash[0], atol=0.01, rtol=0.01)
    for a, b in zip(grouped[1], flash[1], strict=True):
        assert (a - b).norm() < 0.05 * b.norm()  # 0.2-0.8% here


def test_scalar_head_gives_one_value_per_position(tokenizer):
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, depth=1, seq_len=16, head="scalar"))
    assert model(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5)


def test_context_overflow_is_refused(tiny_model):
    with pytest.raises(ValueError, match="exceeds the model context"):
        tiny_model(torch.zeros(1, tiny_model.cfg.seq_len + 1, dtype=torch.long))


def test_the_context_limit_is_per_row_not_per_cache_slot(tiny_model):
    """Padded rows may fill more slots than the context: each row's own length is what the
    RoPE tables limit, so the rows decode as they would alone."""
    ctx = tiny_model.cfg.seq_len
    torch.manual_seed(3)
    a = torch.randint(0, tiny_model.cfg.vocab_size, (1, ctx - 1))
    b = torch.randint(0, tiny_model.cfg.vocab_size, (1, ctx - 3))
    pads = torch.tensor([2, 4])
    batch = torch.cat([torch.cat([torch.zeros(1, int(p), dtype=torch.long), x], 1)
                       for p, x in zip(pads, (a, b), strict=True)])
    cache = KVCache(tiny_model.cfg, 2, ctx + 2, pad=pads)
    tiny_model(batch, cache=cache)
    step = tiny_model(torch.tensor([[7], [7]]), cache=cache)[:, 0]
    assert cache.pos == ctx + 2  # more slots than the context; row a holds ctx tokens
    for row, x in enumerate((a, b)):
        alone = tiny_model(torch.cat([x, torch.tensor([[7]])], 1))[0, -1]
        torch.testing.assert_close(step[row], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exceeds the model context"):
        tiny_model(torch.tensor([[7], [7]]), cache=cache)  # row a would hold ctx + 1 tokens


def test_a_full_cache_is_a_clear_error(tiny_model):
    cache = KVCache(tiny_model.cfg, 1, 8, pad=None)
    tiny_model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="KV cache has 8 slots"):
        tiny_model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


def test_loading_a_run_builds_no_random_weights_and_imports_no_compiler(tiny_run, tiny_model):
    """``load_model`` builds the model's skeleton on the meta device and assigns the saved
    weights: no random initialisation, and no op on that device, whose first one imports
    torch._dynamo (a second at the start of every chat, serve or eval; it runs apart, as
    this process has imported it already)."""
    import subprocess
    import sys

    code = ("import sys; from gptsmith.runs import load_model; m, _ = load_model(sys.argv[1], "
            "'cpu'); print(int('torch._dynamo' in sys.modules), m.rope_cos.shape[0])")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_run)], capture_output=True,
                         text=True, check=True).stdout.split()
    from gptsmith.runs import load_model

    model, _ = load_model(tiny_run, "cpu")
    assert out == ["0", str(model.cfg.seq_len)]
    torch.manual_seed(0)  # off the meta device a new model is still initialised, seeded
    a = GPT(tiny_model.cfg)
    torch.manual_seed(0)
    b = GPT(tiny_model.cfg)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert float(a.embed_tokens.weight.detach().std()) == pytest.approx(0.02, rel=0.1)
