import copy
import io

import pytest
import torch

from gptsmith.model import GPT, GPTConfig
from gptsmith.train.loop import TrainConfig, make_optimizer
from gptsmith.train.muon import MuonAdamW, is_muon_matrix, orthogonalize


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, depth=2, seq_len=16))


def _step(model: GPT, optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_orthogonalize_evens_out_the_singular_values():
    m = torch.randn(96, 32) @ torch.diag(torch.logspace(-2, 1, 32))  # condition number 1000
    s = torch.linalg.svdvals(orthogonalize(m).float())
    assert s.max() < 1.6 and s.max() / s.min() < 6  # was 0.01..10: condition number 1000
    assert torch.linalg.svdvals(orthogonalize(m.T).float()).allclose(s, atol=0.05)


def test_muon_on_the_blocks_and_adamw_elsewhere_step_as_torchs_own():
    """The one optimizer moves every weight as torch.optim.Muon (RMS matched to AdamW's)
    does the blocks' matrices and torch.optim.AdamW the embeddings and norms."""
    cfg = TrainConfig(optimizer="muon", lr=0.02, weight_decay=0.1)
    ours_model, theirs_model = _model(), _model()
    ours = make_optimizer(ours_model, cfg)
    assert isinstance(ours, MuonAdamW)
    ours.ns_dtype = torch.bfloat16  # torch's Muon orthogonalises in bf16 on every machine
    named = list(theirs_model.named_parameters())
    blocks = [p for n, p in named if is_muon_matrix(n, p)]
    assert len(blocks) == 2 * 7 and "embed_tokens.weight" not in \
        {n for n, p in named if is_muon_matrix(n, p)}
    muon = torch.optim.Muon(blocks, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.95,
                            nesterov=True, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([
        {"params": [p for n, p in named if not is_muon_matrix(n, p) and p.dim() == 2],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    for seed in range(3):
        _step(ours_model, ours, seed)
        _step(theirs_model, muon, seed)  # each sets all grads the same; steps its own
        g = torch.Generator().manual_seed(seed)
        for p in theirs_model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        adamw.step()
        adamw.zero_grad(set_to_none=True)
    for (name, a), b in zip(ours_model.named_parameters(), theirs_model.parameters(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_muon_state_round_trips_so_a_resumed_run_steps_the_same():
    model = _model()
    opt = make_optimizer(model, TrainConfig(optimizer="muon"))
    for seed in range(2):
        _step(model, opt, seed)
    saved, buffer = copy.deepcopy(model), io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    for seed in (2, 3):
        _step(model, opt, seed)
    again = make_optimizer(saved, TrainConfig(optimizer="muon"))
    buffer.seek(0)
    again.load_state_dict(torch.load(buffer))
    for seed in (2, 3):
        _step(saved, again, seed)
    for a, b in zip(model.parameters(), saved.parameters(), strict=True):
        assert torch.equal(a, b)


def test_an_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="adamw or muon"):
        TrainConfig(optimizer="sgd")
