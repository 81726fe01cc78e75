import torch

from gptsmith.engine import Sampling, filter_logits, generate


def test_batched_sampling_equals_each_prompt_alone(tiny_model):
    prompts = [[1, 5, 9], [2, 3, 4, 5, 6, 7, 8], [11]]
    s = Sampling(max_tokens=12, temperature=1.0, top_k=40, top_p=0.9, seed=3)
    batched = generate(tiny_model, prompts, s)
    for i, p in enumerate(prompts):
        alone = generate(tiny_model, [p], Sampling(**{**s.__dict__, "seed": s.seed + i}))
        assert batched[i] == alone[0]


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
