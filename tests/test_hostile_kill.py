"""Kill -9 and resume (checks/kill.py): a killed phase, run again until done, ends with the
metrics, summary, files and weights of an uninterrupted run. The short form runs here; the
full one is `python checks/kill.py --points 20`."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kill():
    spec = importlib.util.spec_from_file_location("kill_check", ROOT / "checks" / "kill.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_comparison_sees_every_kind_of_difference(kill, tiny_run, tmp_path):
    """The check can fail: other metrics, summary, weights, a missing file, a cut plot."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "tok_per_s": 10}\n')
    (run / "summary.json").write_text('{"val_loss": 1.0, "train_seconds": 3}')
    (run / "loss.png").write_bytes(b"\x89PNG....IEND\xaeB`\x82")
    reference = kill.outcome(run)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "tok_per_s": 99}\n')
    (run / "summary.json").write_text('{"val_loss": 1.0, "train_seconds": 9}')
    assert kill.differences(reference, kill.outcome(run)) == []  # timings do not count
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n')
    (run / "summary.json").write_text('{"val_loss": 1.5}')
    (run / "loss.png").write_bytes(b"\x89PNG..")
    (run / ".model.safetensors.x.tmp").write_bytes(b"")
    from safetensors.torch import load_file, save_file

    weights = load_file(run / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-6
    save_file(weights, run / "model.safetensors")
    found = " | ".join(kill.differences(reference, kill.outcome(run)))
    for problem in ("metrics differ", "summary differs in val_loss", ".model.safetensors.x.tmp",
                    "broken plots: loss.png", "1 weight tensors differ"):
        assert problem in found


def test_killed_sft_and_grpo_end_as_if_never_killed(kill, tmp_path, capsys):
    assert kill.main(["--points", "1", "--phases", "sft,grpo", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sft: 1 points (1 kills landed" in out and "grpo: 1 points (1 kills landed" in out
    assert "every point ended equal" in out
    assert json.loads((tmp_path / "grpo" / "point0" / "summary.json").read_text())


@pytest.mark.slow
def test_every_other_phase_killed_at_random_steps_and_times(kill, tmp_path, capsys):
    """One point a phase (a kill at a random step) keeps CI short, for the phases the test
    above leaves out; `make checks` runs twenty a phase, half of them kills at random times."""
    others = [p for p in kill.PHASES if p not in ("sft", "grpo")]
    assert kill.main(["--points", "1", "--dir", str(tmp_path), "--seed", "1",
                      "--phases", ",".join(others)]) == 0
    out = capsys.readouterr().out
    assert all(f"{phase}: 1 points" in out for phase in others)


def test_a_rerun_clears_what_a_kill_left_half_written(data_dir, tmp_path):
    """Found by the kill check: killed while writing loss.png (after the last checkpoint,
    before summary.json), the run finished on the rerun with .loss.png.*.tmp left for good."""
    from gptsmith.model import GPTConfig
    from gptsmith.train.loop import TrainConfig
    from gptsmith.train.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(data=str(data_dir), out=str(tmp_path / "run"), eval_tokens=128,
                         model=GPTConfig(depth=1, seq_len=32),
                         train=TrainConfig(steps=2, batch_size=2, precision="fp32",
                                           progress=False))
    pretrain(cfg)
    run = tmp_path / "run"
    (run / "summary.json").unlink()  # the state such a kill leaves
    (run / ".loss.png.cj1ln3ro.tmp").write_bytes(b"\x89PNG")
    pretrain(cfg)
    assert (run / "summary.json").exists() and not list(run.glob(".*.tmp"))
