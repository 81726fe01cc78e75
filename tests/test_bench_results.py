"""bench/results.py: the JSON line every bench writes, read back and summarised."""

import argparse
import json
import sys
from pathlib import Path

import pytest

from gptsmith import device

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import results  # noqa: E402


def _args(tmp_path: Path, *argv: str, fixed_shapes: bool = False) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    results.add_run_flags(p, rounds=3, fixed_shapes=fixed_shapes)
    return p.parse_args(["--results", str(tmp_path / "bench.jsonl"), *argv])


def test_a_record_round_trips_with_its_ratios_and_machine(tmp_path):
    args = _args(tmp_path, "--precision", "fp32")
    results.record("ppo_iteration", args, {"ours": [2.0, 1.0, 4.0], "TRL": [3.0, 6.0, 9.0]},
                   "s/iteration", ["TRL/ours"], lower_is_better=True, rollouts=32)
    results.record("generate_throughput", args, {"ours": [300.0, 100.0], "HF": [100.0]},
                   "tokens/s", ["ours/HF"], batch=16)
    first, second = results.read(tmp_path / "bench.jsonl")
    assert first["bench"] == "ppo_iteration" and first["settings"] == {"rollouts": 32}
    assert first["precision"] == "fp32" and first["rounds"] == 3 and not first["quick"]
    assert first["cpu"] and first["threads"] >= 1 and first["torch"]
    # medians 6 / 2 = 3x; bests (the fewest seconds) 3 / 1
    assert first["ratios"] == [{"of": "TRL/ours", "median": 3.0, "best": 3.0}]
    # rates: medians 200 / 100, bests (the most tokens/s) 300 / 100
    assert second["ratios"] == [{"of": "ours/HF", "median": 2.0, "best": 3.0}]
    table = results.summary([first, second])
    assert "ppo_iteration: TRL/ours 3.00x (best 3.00x)" in table
    assert "generate_throughput batch 16: ours/HF 2.00x" in table


def test_auto_precision_is_what_the_pipeline_would_pick(tmp_path, monkeypatch):
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)  # a CPU with native bf16
    assert _args(tmp_path).precision == "fp32"  # RL, RM and SFT batches change shape
    assert _args(tmp_path, fixed_shapes=True).precision == "bf16"  # pre-training's do not
    assert _args(tmp_path, "--precision", "bf16").precision == "bf16"
    assert _args(tmp_path, "--precision", "fp32", fixed_shapes=True).precision == "fp32"
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    assert _args(tmp_path, fixed_shapes=True).precision == "fp32"
    with pytest.raises(SystemExit):
        _args(tmp_path, "--precision", "fp8")


def test_a_line_that_is_not_a_result_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "bench.jsonl"
    path.write_text(json.dumps({"bench": "x"}) + "\n")
    assert results.main([str(path)]) == 1
    assert f"{path}:1: not a bench result (no time" in capsys.readouterr().err
    path.write_text("\n{oops\n")
    assert results.main([str(path)]) == 1
    assert f"{path}:2: not a JSON line" in capsys.readouterr().err
    assert results.main([str(tmp_path / "none.jsonl")]) == 1
    assert "no bench results yet" in capsys.readouterr().err
