"""Many processes, one run: on 2 CPU processes (gloo, started by PyTorch's torchrun) every
phase computes what one process computes with the same global batch (PPO and GRPO under
FSDP2 too), a run resumes on another number of processes, FSDP2's gradients are one
process's, and PPO's statistics are global. Tiny models and one thread a process: the
multi-GPU path kept honest on a CPU."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from gptsmith.model import GPT, GPTConfig

TOL = 1e-3  # the bound on the difference of the loss curves
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "GPTSMITH_FAULT": ""}
PHASES = ("pretrain", "sft", "rm", "dpo", "ppo")  # on 2 processes with DDP, the default
SHARDED = ("ppo-fsdp", "grpo-fsdp")  # RL on 2 processes with FSDP2, ranks decoding unequally


def torchrun(*args: str, nproc: int = 2, fault: str = "") -> subprocess.CompletedProcess:
    """``python ARGS`` on ``nproc`` processes started by PyTorch's torchrun (one process:
    plain python), one thread each."""
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] \
        if nproc > 1 else []
    return subprocess.run([sys.executable, *launch, *args], capture_output=True, text=True,
                          env={**ONE_THREAD, "GPTSMITH_FAULT": fault}, timeout=240,
                          cwd=Path(__file__).parent.parent)


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def largest_difference(a: Path, b: Path) -> float:
    """The largest difference between two runs' logged numbers (throughput aside; relative
    where a number exceeds 1, as a gradient norm may), after checking that they logged the
    same steps and metrics."""
    ra, rb = metrics(a), metrics(b)
    assert [sorted(r) for r in ra] == [sorted(r) for r in rb]
    return max(abs(x[k] - y[k]) / max(1.0, abs(x[k])) for x, y in zip(ra, rb, strict=True)
               for k in x if k != "tok_per_s" and isinstance(x[k], int | float))


def write_jsonl(path: Path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


# -- every phase, in one process (in the test's) and on 2 (one torchrun for them all) -------
@pytest.fixture(scope="module")
def inputs(data_dir, tokenizer, tmp_path_factory) -> dict[str, str]:
    """Token shards, a tiny base model and its reward model, demonstrations whose replies
    differ in length (padding), comparisons with 1 and 3 pairs a prompt, prompts, and
    prompts most of which leave room for 1 or 2 reply tokens (ranks decode unequal steps)."""
    from gptsmith.runs import save_model
    from gptsmith.train.reward import reward_model_from

    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, depth=1, n_embd=32, n_head=2,
                         seq_len=64))
    for name, model in (("base", base), ("rm", reward_model_from(base))):
        (root / name).mkdir()
        save_model(root / name, model)
        tokenizer.save(root / name / "tokenizer.json")
    demos = [{"prompt": f"What is {i} plus 2?", "response": "It is " + "so " * (i % 5) + str(i)}
             for i in range(48)]
    comparisons = [{"prompt": f"What is {i} plus 3?", "responses": [f"{i + 3}.", f"{i + 4}.",
                                                                     "I do not know."],
                    "ranking": [0, 1, 2]} if i % 2 else
                   {"prompt": f"What is {i} plus 3?", "chosen": f"It is {i + 3}.",
                    "rejected": f"It is {i + 5}."} for i in range(40)]
    prompts = [{"prompt": f"What is {i} plus {i % 7}?", "answer": str(i + i % 7)}
               for i in range(24)]
    long_prompts = [{**p, "prompt": "so " * 23 * (i % 4 > 0) + p["prompt"]}  # of ~62 tokens
                    for i, p in enumerate(prompts)]
    inp = {"data": str(data_dir), "base": str(root / "base"), "rm": str(root / "rm"),
           "demos": write_jsonl(root / "demos.jsonl", demos),
           "comparisons": write_jsonl(root / "cmp.jsonl", comparisons),
           "prompts": write_jsonl(root / "prompts.jsonl", prompts),
           "long_prompts": write_jsonl(root / "long.jsonl", long_prompts)}
    (root / "inputs.json").write_text(json.dumps(inp))
    return inp


def phase_configs(inp: dict, out: Path, nproc: int) -> dict:
    """Each phase's settings, fp32, 1 process or 2: the same global batch (SFT's as 2
    micro-batches of 2 a process on 2, one batch of 8 in one process)."""
    from gptsmith.train.dpo import DPOConfig
    from gptsmith.train.loop import TrainConfig
    from gptsmith.train.ppo import PPOConfig
    from gptsmith.train.pretrain import PretrainConfig
    from gptsmith.train.reward import RMConfig
    from gptsmith.train.sft import SFTConfig

    def train(steps: int, batch_size: int, **kw) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=batch_size, warmup_steps=2, log_every=1,
                           eval_every=steps // 2, checkpoint_every=steps // 2,
                           precision="fp32", progress=False, **kw)

    split = {"batch_size": 4, "grad_accum": 2} if nproc == 2 else {"batch_size": 8}
    return {
        "pretrain": PretrainConfig(data=inp["data"], out=str(out / "pretrain"), eval_tokens=512,
                                   model=GPTConfig(depth=1, n_embd=32, n_head=2, seq_len=32),
                                   train=train(20, 8)),
        "sft": SFTConfig(base=inp["base"], data=inp["demos"], val_fraction=0.1,
                         out=str(out / "sft"), train=train(20, **split)),
        "rm": RMConfig(base=inp["base"], data=inp["comparisons"], out=str(out / "rm"),
                       train=train(20, 4, lr=3e-4)),
        "dpo": DPOConfig(policy=inp["base"], data=inp["comparisons"], out=str(out / "dpo"),
                         train=train(10, 4, lr=1e-3)),
        "ppo": PPOConfig(policy=inp["base"], reward=inp["rm"], prompts=inp["prompts"],
                         out=str(out / "ppo"), max_tokens=4, minibatches=2, ppo_epochs=2,
                         train=train(4, 8, lr=1e-3)),
    }


def sharded_configs(inp: dict, out: Path) -> dict:
    """PPO, and GRPO (a reward model among its rewards), on the long prompts under FSDP2
    (in one process: the same run, nothing to shard)."""
    from gptsmith.train.distributed import DistConfig
    from gptsmith.train.grpo import GRPOConfig

    fsdp, ppo = DistConfig("fsdp"), phase_configs(inp, out, 1)["ppo"]
    return {
        "ppo-fsdp": dataclasses.replace(ppo, prompts=inp["long_prompts"], dist=fsdp,
                                        out=str(out / "ppo-fsdp")),
        "grpo-fsdp": GRPOConfig(policy=inp["base"], prompts=inp["long_prompts"],
                                reward=f"truth,{inp['rm']}", out=str(out / "grpo-fsdp"),
                                group_size=2, max_tokens=4, minibatches=2, dist=fsdp,
                                train=dataclasses.replace(ppo.train, batch_size=4)),
    }


def run_phase(name: str, cfg) -> dict:
    from gptsmith.train.dpo import dpo
    from gptsmith.train.grpo import grpo
    from gptsmith.train.ppo import ppo
    from gptsmith.train.pretrain import pretrain
    from gptsmith.train.reward import train_reward_model
    from gptsmith.train.sft import sft

    return {"pretrain": pretrain, "sft": sft, "rm": train_reward_model, "dpo": dpo,
            "ppo": ppo, "grpo": grpo}[name.removesuffix("-fsdp")](cfg)


@pytest.fixture(scope="module")
def one_process(inputs, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one")
    for name, cfg in {**phase_configs(inputs, root, 1), **sharded_configs(inputs, root)}.items():
        run_phase(name, cfg)
    return root


@pytest.fixture(scope="module")
def two_processes(inputs, tmp_path_factory) -> Path:
    """Every phase on 2 gloo ranks, and the pieces ``main`` below computes there."""
    root = tmp_path_factory.mktemp("two")
    done = torchrun(__file__, str(Path(inputs["base"]).parent / "inputs.json"), str(root))
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.mark.parametrize("phase", PHASES)
def test_every_phase_on_2_processes_gives_the_curves_of_one(phase, one_process,
                                                            two_processes):
    assert largest_difference(one_process / phase, two_processes / phase) <= TOL
    assert (two_processes / phase / "model.safetensors").exists()
    assert (two_processes / phase / "checkpoints" / "latest.txt").exists()  # DCP


@pytest.mark.parametrize("phase", SHARDED)
def test_rl_under_fsdp_on_2_processes_gives_the_curves_of_one(phase, one_process,
                                                              two_processes):
    """The ranks' rollouts decode different numbers of steps: the policy decodes with its
    weights gathered once; reference, reward and value models are sharded too."""
    from safetensors.torch import load_file

    steps = json.loads((two_processes / "decode_steps.json").read_text())  # rank: rollouts
    assert len(steps[0]) == len(steps[1]) and steps[0] != steps[1]
    assert largest_difference(one_process / phase, two_processes / phase) <= TOL
    assert (two_processes / phase / "checkpoints" / "latest.txt").exists()  # DCP of shards
    want = load_file(one_process / phase / "model.safetensors")
    got = load_file(two_processes / phase / "model.safetensors")  # the policy alone, whole
    assert got.keys() == want.keys()
    assert max(float((got[k] - want[k]).abs().max()) for k in want) <= TOL


def test_ppo_on_2_processes_steers_by_the_global_kl(two_processes):
    rows = metrics(two_processes / "ppo")
    assert rows[-1]["kl"] > 0 and rows[-1]["beta"] != rows[0]["beta"]


# -- resuming on another number of processes (the command line under torchrun) -------------
@pytest.mark.slow
@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_a_killed_run_resumes_on_another_number_of_processes(first, then, inputs, one_process,
                                                             tmp_path, capfd, monkeypatch):
    """Killed after step 13 (last checkpoint: 10), then the same command on the other
    number of processes; on 2, as the pipeline starts it (``--nproc 2``)."""
    from gptsmith import pipeline
    from gptsmith.side_by_side import write_settings

    cfg = phase_configs(inputs, tmp_path, 1)["pretrain"]
    settings = write_settings(cfg, tmp_path / "pretrain.yaml")
    args = ["-m", "gptsmith", "pretrain", "--config", str(settings)]
    killed = torchrun(*args, nproc=first, fault="after-step:13")
    assert killed.returncode != 0
    if then == 1:
        resumed = torchrun(*args, nproc=1)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "from step 10" in resumed.stdout
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        pipeline.torchrun("pretrain", cfg, nproc=2)
        assert "from step 10" in capfd.readouterr().out
    run = tmp_path / "pretrain"
    assert largest_difference(one_process / "pretrain", run) <= TOL
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == (
        ["latest.pt"] if then == 1 else ["latest.txt", "step-20"])  # one checkpoint left


# -- the pieces, on 2 ranks started by torchrun running this file ---------------------------
@pytest.fixture(scope="module")
def two_rank_pieces(two_processes) -> dict:
    """What ``main`` below computed on 2 gloo ranks (FSDP2 and DDP gradients, whitening)."""
    return torch.load(two_processes / "pieces.pt")


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, depth=2, n_embd=32, n_head=2, seq_len=16))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 64, (4, 16), generator=g), torch.randint(0, 64, (4, 16), generator=g)


def ranks_data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Different advantages on each rank, and different shares of them masked."""
    g = torch.Generator().manual_seed(10 + rank)
    x = torch.randn(3 + rank, 5, generator=g) * (1 + 4 * rank)
    mask = (torch.rand(3 + rank, 5, generator=g) > 0.3 * (1 + rank)).float()
    return x, mask


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_gradients_after_one_step_are_the_one_process_gradients(two_rank_pieces, strategy):
    model = tiny_gpt()
    x, y = batch()
    model(x, y, reduction="sum").backward()
    want = {n: p.grad for n, p in model.named_parameters()}
    got = two_rank_pieces[strategy]
    assert got.keys() == want.keys()
    difference = max(float((got[n] - want[n]).abs().max()) for n in want)
    assert difference < 1e-5, difference  # summed over ranks, never averaged (gloo's AVG)


def test_ppo_whitens_over_the_rollouts_of_every_rank(two_rank_pieces):
    from gptsmith.train.ppo import whiten

    parts = [ranks_data(r) for r in (0, 1)]
    x = torch.cat([p[0] for p in parts])
    mask = torch.cat([p[1] for p in parts])
    together = whiten(x, mask)
    got = torch.cat(two_rank_pieces["whiten"])
    torch.testing.assert_close(got, together)
    alone = torch.cat([whiten(*p) for p in parts])  # what per-rank statistics would give
    assert not torch.allclose(got, alone, atol=1e-3)


def main(inputs: str, out: str) -> None:
    """Run by torchrun on 2 ranks for ``two_processes``: the pieces (each rank takes its
    half of a batch, or its own data, through the wrappers and statistics the trainers
    use), then every phase, then PPO and GRPO under FSDP2 counting each rank's decoding
    steps."""
    from gptsmith.train import distributed as ranks
    from gptsmith.train import rollout

    ranks.init("cpu")
    torch.set_num_threads(1)
    pieces(Path(out) / "pieces.pt")
    inp, root = json.loads(Path(inputs).read_text()), Path(out)
    for name, cfg in phase_configs(inp, root, 2).items():
        run_phase(name, cfg)
    steps, generate = [], rollout.generate  # the decoding steps of each rollout on this rank

    def counted(*args):
        replies = generate(*args)
        steps.append(max(len(r) for r in replies))
        return replies

    with mock.patch.object(rollout, "generate", counted):
        for name, cfg in sharded_configs(inp, root).items():
            run_phase(name, cfg)
    steps = ranks.gather_objects(steps)
    if ranks.is_main():
        (root / "decode_steps.json").write_text(json.dumps(steps))
    ranks.close()
    ranks.exit_rank(0)  # as the CLI does: gloo may abort in the interpreter's teardown


def pieces(out: Path) -> None:
    from gptsmith.train import distributed as ranks
    from gptsmith.train.ppo import whiten

    rank = ranks.rank()
    x, y = batch()
    results = {}
    for strategy in ("fsdp", "ddp"):
        model = tiny_gpt()
        wrapped = ranks.parallel(model, strategy, bf16=False)
        wrapped(x[2 * rank:2 * rank + 2], y[2 * rank:2 * rank + 2], reduction="sum").backward()
        results[strategy] = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor")
                                 else p.grad) for n, p in model.named_parameters()}
    results["whiten"] = ranks.gather_objects(whiten(*ranks_data(rank)))
    if rank == 0:
        torch.save(results, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
