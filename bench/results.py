"""What every bench here shares: its run flags, the machine in words, and its result as one
JSON line, printed and appended to ``--results`` (``runs/bench.jsonl`` by default).

A line holds the bench's name, when and where it ran (CPU model, threads, torch and peer
versions), the precision, its settings, each side's median and best of the timed rounds, and
the ratios the bench is about (ours against the peer, above 1 = ours faster). ``make bench``
appends one line per bench (two for the two batch sizes of generation); the summary of the
latest line of each bench, as the README's table shows it:

    .venv/bin/python bench/results.py                    # runs/bench.jsonl
    .venv/bin/python bench/results.py other/bench.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from importlib import metadata
from pathlib import Path

import torch

from gptsmith.device import resolve_precision

DEFAULT_RESULTS = "runs/bench.jsonl"


def _precision(fixed_shapes: bool):
    """``auto`` is what the pipeline runs on this CPU: bf16 where it multiplies bf16
    natively (AVX-512 BF16, AMX) for pre-training, whose batches keep one shape; fp32 for
    the phases whose batches change shape (SFT, reward model, RL) at the benches' default
    widths (below ``CPU_BF16_WIDTH``) and on other CPUs."""
    def parse(value: str) -> str:
        try:
            return resolve_precision(value, torch.device("cpu"), fixed_shapes)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def add_run_flags(p: argparse.ArgumentParser, rounds: int, precision: str = "auto",
                  fixed_shapes: bool = False) -> None:
    """The flags every benchmark here has: rounds, precision (``auto``: the pipeline's
    training precision here for the phase the bench times, ``fixed_shapes`` for
    pre-training), threads, seed, --quick and --results."""
    p.add_argument("--rounds", type=int, default=rounds, help="alternating rounds per side")
    p.add_argument("--precision", type=_precision(fixed_shapes), default=precision,
                   help=f"auto (the pipeline's training precision here), bf16 or fp32 "
                        f"(default {precision})")
    p.add_argument("--threads", type=int, default=0, help="0 keeps PyTorch's choice")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--quick", action="store_true", help="a tiny run that checks the script")
    add_results_flag(p)


def add_results_flag(p: argparse.ArgumentParser) -> None:
    """--results: where ``record`` appends the line (every bench has it)."""
    p.add_argument("--results", default=DEFAULT_RESULTS,
                   help="JSON-lines file the result is appended to ('' = print only)")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def record(bench: str, args, samples: dict[str, list[float]], unit: str,
           ratios: list[str], lower_is_better: bool = False, **settings) -> dict:
    """Write the result line of ``bench``: ``samples`` maps each side to its timed rounds in
    ``unit`` (seconds: ``lower_is_better``); ``ratios`` names the ratios of medians (and of
    bests) to report, such as ``"ours/HF"`` for rates or ``"TRL/ours"`` for seconds, so that
    above 1 means ours is faster. Prints the line and appends it to ``args.results``."""
    med = {name: statistics.median(v) for name, v in samples.items()}
    best = {name: (min if lower_is_better else max)(v) for name, v in samples.items()}

    def ratio(of: str) -> dict:
        top, bottom = of.split("/")
        return {"of": of, "median": med[top] / med[bottom], "best": best[top] / best[bottom]}

    line = {
        "bench": bench,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": _version("transformers"),
        "trl": _version("trl"), "precision": getattr(args, "precision", None),
        "rounds": getattr(args, "rounds", None), "quick": bool(getattr(args, "quick", False)),
        "settings": settings, "unit": unit,
        "sides": {name: {"median": med[name], "best": best[name], "n": len(samples[name])}
                  for name in samples},
        "ratios": [ratio(of) for of in ratios],
    }
    print(json.dumps(line))
    if args.results:
        path = Path(args.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")
    return line


def summary(lines: list[dict]) -> str:
    """The latest line of each bench (and batch size), one row each: its ratios, each
    side's median, and where it ran."""
    latest: dict[str, dict] = {}
    for line in lines:
        batch = line["settings"].get("batch")
        latest[line["bench"] + (f" batch {batch}" if batch is not None else "")] = line
    rows = []
    for key, line in latest.items():
        ratios = ", ".join(f"{r['of']} {r['median']:.2f}x (best {r['best']:.2f}x)"
                           for r in line["ratios"])
        sides = ", ".join(f"{name} {s['median']:.4g}" for name, s in line["sides"].items())
        threads = f"{line['threads']} thread" + ("s" if line["threads"] != 1 else "")
        where = [line["cpu"], threads, line["precision"], line["time"],
                 "quick" if line["quick"] else None]
        rows.append(f"{key}: {ratios}; {sides} {line['unit']}  "
                    f"[{', '.join(w for w in where if w)}]")
    return "\n".join(rows)


FIELDS = ("bench", "time", "cpu", "threads", "precision", "quick", "settings", "unit",
          "sides", "ratios")


def read(path: Path) -> list[dict]:
    """The result lines of ``path``; a line that is not one names the file and line."""
    lines = []
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON line ({e.msg})") from None
        missing = [k for k in FIELDS if not isinstance(line, dict) or k not in line]
        if missing:
            raise ValueError(f"{path}:{n}: not a bench result (no {', '.join(missing)})")
        lines.append(line)
    return lines


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else DEFAULT_RESULTS)
    if not path.exists():
        print(f"{path}: no bench results yet (run `make bench`)", file=sys.stderr)
        return 1
    try:
        print(summary(read(path)))
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
