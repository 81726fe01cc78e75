import pytest
import torch

from gptsmith.engine import MAX_ROWS, Sampling, batch_rows, filter_logits, generate, stream
from gptsmith.model import GPTConfig
from tests.conftest import needs_cxx


def test_batched_sampling_equals_each_prompt_alone(tiny_model):
    prompts = [[1, 5, 9], [2, 3, 4, 5, 6, 7, 8], [11]]
    s = Sampling(max_tokens=12, temperature=1.0, top_k=40, top_p=0.9, seed=3)
    batched = generate(tiny_model, prompts, s)
    for i, p in enumerate(prompts):
        alone = generate(tiny_model, [p], Sampling(**{**s.__dict__, "seed": s.seed + i}))
        assert batched[i] == alone[0]


def test_a_repeated_prompt_is_run_once_and_samples_as_if_alone(tiny_model):
    """A group of replies to one prompt (GRPO, RFT) prefills the prompt once; every row still
    samples what it would alone with its own seed."""
    prompts = [[1, 5, 9], [2, 3, 4, 5], [1, 5, 9], [2, 3, 4, 5], [1, 5, 9]]
    s = Sampling(max_tokens=10, temperature=1.0, seed=7)
    widths = []
    hook = tiny_model.embed_tokens.register_forward_hook(
        lambda module, args, out: widths.append(tuple(args[0].shape)))
    try:
        batched = generate(tiny_model, prompts, s)
    finally:
        hook.remove()
    assert widths[0] == (2, 4)  # the prefill: two distinct prompts, padded to the longer
    assert len({tuple(b) for b in batched}) > 2  # the copies did not sample alike
    for i, p in enumerate(prompts):
        alone = generate(tiny_model, [p], Sampling(**{**s.__dict__, "seed": s.seed + i}))
        assert batched[i] == alone[0]


def test_greedy_rows_decode_greedily_beside_sampled_ones(tiny_model):
    """RFT's greedy baseline: the rows listed as greedy take the argmax in the same batch,
    and the other rows sample what they would alone."""
    prompts = [[1, 5, 9], [1, 5, 9], [2, 3, 4, 5], [1, 5, 9]]
    s = Sampling(max_tokens=10, temperature=1.5, seed=4)
    mixed = generate(tiny_model, prompts, s, greedy=[1])
    greedy = generate(tiny_model, [[1, 5, 9]], Sampling(max_tokens=10, temperature=0))[0]
    assert mixed[1] == greedy
    for i in (0, 2, 3):
        alone = generate(tiny_model, [prompts[i]], Sampling(**{**s.__dict__, "seed": s.seed + i}))
        assert mixed[i] == alone[0]
    assert mixed[0] != greedy or mixed[3] != greedy  # the others did sample


def test_greedy_matches_argmax_of_full_forward(tiny_model):
    prompt = [1, 2, 3]
    out = generate(tiny_model, [prompt], Sampling(max_tokens=6, temperature=0))[0]
    seq = list(prompt)
    for _ in range(6):
        seq.append(int(tiny_model(torch.tensor([seq]))[0, -1].argmax()))
    assert out == seq[3:]


def test_stop_token_ends_a_row_and_is_kept(tiny_model):
    first = generate(tiny_model, [[4, 4]], Sampling(max_tokens=1, temperature=0))[0][0]
    out = generate(tiny_model, [[4, 4]], Sampling(max_tokens=10, temperature=0,
                                                  stop_ids=(first,)))[0]
    assert out == [first]


def test_generation_stops_at_the_context_end(tiny_model):
    ctx = tiny_model.cfg.seq_len
    out = generate(tiny_model, [[1] * (ctx - 3)], Sampling(max_tokens=50))[0]
    assert len(out) == 3


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [[False, False, True, True]]
    kept = ~torch.isinf(filter_logits(logits, 0, 0.7))
    assert kept.tolist() == [[True, True, False, False]]


def test_a_long_prompt_does_not_shorten_the_other_rows(tiny_model):
    """Each row's budget is its own: max_tokens, or what is left of the context after its own
    prompt; a prompt near the end of the context ends early without cutting the others."""
    ctx = tiny_model.cfg.seq_len
    long, short = [1] * (ctx - 3), [5, 6, 7]
    s = Sampling(max_tokens=20, temperature=1.0, seed=4)
    steps = list(stream(tiny_model, [long, short], s))
    assert [t is None for t, _ in steps] == [False] * 3 + [True] * 17
    assert all(t is not None for _, t in steps)
    out = generate(tiny_model, [long, short], s)
    assert out[0] == generate(tiny_model, [long], s)[0]
    assert out[1] == generate(tiny_model, [short], Sampling(**{**s.__dict__, "seed": 5}))[0]
    assert [len(o) for o in out] == [3, 20]


def test_rows_that_stop_early_leave_the_others_unchanged(tiny_model):
    """Rows that hit a stop id leave the batch; the rest go on sampling what they would alone."""
    prompts = [[3, 1, 4], [1, 5, 9, 2, 6], [5, 3], [5, 8, 9, 7, 9, 3, 2]]
    free = generate(tiny_model, prompts, Sampling(max_tokens=15, seed=8))
    s = Sampling(max_tokens=15, seed=8, stop_ids=(free[0][2], free[2][5]))
    batched = generate(tiny_model, prompts, s)
    for i, p in enumerate(prompts):
        assert batched[i] == generate(tiny_model, [p], Sampling(**{**s.__dict__, "seed": 8 + i}))[0]
    assert len(batched[0]) <= 3 and len(batched[2]) <= 6
    assert max(len(b) for b in batched) == 15


@pytest.mark.parametrize("bad", [{"temperature": float("nan")}, {"temperature": float("inf")},
                                 {"temperature": -0.1}, {"top_p": float("nan")}])
def test_sampling_refuses_what_is_not_a_number_it_can_use(bad):
    with pytest.raises(ValueError, match="temperature|top_p"):
        Sampling(**bad)


def test_batch_rows_keeps_the_cache_within_its_budget():
    small, wide = GPTConfig(depth=4).resolved(), GPTConfig(depth=30, n_embd=576, n_head=9,
                                                            n_kv_head=3).resolved()
    assert batch_rows(small, 80) == MAX_ROWS  # the default model: the cap, not memory
    rows = batch_rows(wide, 128)  # SmolLM2-135M's shape: memory decides
    per_row = 2 * 30 * 3 * 64 * 128 * 4
    assert rows * per_row <= 256 << 20 < (rows + 1) * per_row and 1 < rows < MAX_ROWS
    assert batch_rows(wide, 128, budget=1) == 1  # never fewer than one row
    assert batch_rows(wide, 256) < rows  # longer rows, fewer of them


@pytest.mark.slow
@needs_cxx
def test_compiled_steps_decode_what_the_eager_steps_do(tiny_model):
    """``compile=True``: torch.compile'd steps over fixed cache slots. Rows of different
    lengths, a stop id, a row that ends at the context while the others go on (it stays in
    the batch, decoded past the context and ignored), a repeated prompt and a greedy row all
    give the eager steps' tokens; and after the weights change, the compiled step uses the
    new ones (an RL policy between rollouts), without compiling again."""
    import copy

    model = copy.deepcopy(tiny_model)
    ctx = model.cfg.seq_len
    prompts = [[3, 1, 4], [1] * (ctx - 4), [5, 8, 9, 7, 9, 3, 2], [3, 1, 4], [11]]
    free = generate(model, prompts, Sampling(max_tokens=30, seed=2))
    s = Sampling(max_tokens=30, temperature=0.9, top_k=50, seed=2, stop_ids=(free[2][4],))
    eager = generate(model, prompts, s, greedy=[4])
    assert generate(model, prompts, s, greedy=[4], compile=True) == eager
    assert len(eager[1]) == 4  # the context's end
    assert any(len(r) < 30 and r[-1] == s.stop_ids[0] for r in eager)
    assert max(len(r) for r in eager) == 30

    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    changed = generate(model, prompts, s, greedy=[4])
    assert changed != eager
    from torch._dynamo.utils import counters
    frames = counters["stats"]["unique_graphs"]
    assert frames > 0  # the compiled calls above did compile
    assert generate(model, prompts, s, greedy=[4], compile=True) == changed
    assert counters["stats"]["unique_graphs"] == frames

