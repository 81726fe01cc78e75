"""Kill -9 and resume: every training phase, killed at random points, must end exactly where
an uninterrupted run ends (the same metrics.jsonl, summary and weights, bit for bit).

Each phase (pretrain, sft, rm, ppo, grpo, rft, dpo) runs the real command line in a
subprocess on tiny settings, first once uninterrupted (the reference, and the input of the
later phases), then once per point: SIGKILLed at a random point, then run again with the same
command until it finishes. Half the points kill at a random step, by the loop's fault hook
(right after the step, or in the middle of writing a checkpoint); the other half at a random
time: a quarter of those while the process starts, the rest at a random time after it began
to train (so also while it evaluates, saves the model, plots or writes the summary).

    python checks/kill.py --points 20                 # every phase, 20 points each
    python checks/kill.py --points 2 --phases sft,ppo
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PHASES = ("pretrain", "sft", "rm", "ppo", "grpo", "rft", "dpo")
# metrics of the machine, not of the run: they differ between any two runs
TIMING_KEYS = {"tok_per_s", "train_seconds"}
COMMON = ["--train.precision", "fp32", "--train.threads", "1", "--train.device", "cpu",
          "--no-train.progress"]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def build_world(root: Path) -> dict[str, Path]:
    """A tokenizer, token shards and every data file the phases read, all tiny."""
    from gptsmith.data.corpus import Document
    from gptsmith.data.shards import prepare_shards
    from gptsmith.data.world import World
    from gptsmith.tokenizer import train_tokenizer

    rng, world = random.Random(0), World()
    prose = ("Now is the winter of our discontent made glorious summer by this sun of York; "
             "and all the clouds that lour'd upon our house in the deep bosom of the ocean "
             "buried. Friends, Romans, countrymen, lend me your ears. ")
    texts = [world.paragraph(rng) if i % 2 else prose[rng.randint(0, 80):] for i in range(400)]
    tok = train_tokenizer(texts, vocab_size=400, show_progress=False)
    tok.save(root / "tokenizer.json")
    prepare_shards([Document(t, f"doc{i}") for i, t in enumerate(texts)], tok,
                   root / "shards", val_fraction=0.1, overwrite=True)
    files = {"shards": root / "shards"}
    files["demos"] = write_jsonl(root / "demos.jsonl", [
        {"prompt": f"What is {i} plus 2?", "response": f"It is {i + 2}."} for i in range(40)])
    files["questions"] = write_jsonl(root / "questions.jsonl", [
        {"prompt": f"What is {i} plus 3?", "answer": str(i + 3)} for i in range(8)])
    files["comparisons"] = write_jsonl(root / "cmp.jsonl", [
        {"prompt": f"What is {i} plus 2?", "chosen": f"It is {i + 2}.",
         "rejected": f"It is {i + 3}."} for i in range(30)])
    return files


def phase_args(phase: str, files: dict[str, Path], ref: Path) -> list[str]:
    """The command line of ``phase`` (without --out) on tiny settings, several checkpoints
    per run; later phases start from the reference runs of earlier ones."""
    q = str(files["questions"])
    return {
        "pretrain": ["--data", str(files["shards"]), "--model.depth", "1",
                     "--model.seq-len", "32", "--eval-tokens", "256", "--train.steps", "12",
                     "--train.batch-size", "4", "--train.warmup-steps", "2",
                     "--train.eval-every", "6", "--train.log-every", "2",
                     "--train.checkpoint-every", "3"],
        "sft": ["--base", str(ref / "pretrain"), "--data", str(files["demos"]),
                "--val-fraction", "0.2", "--train.steps", "10", "--train.batch-size", "4",
                "--train.warmup-steps", "2", "--train.eval-every", "5", "--train.log-every", "1",
                "--train.checkpoint-every", "3"],
        "rm": ["--base", str(ref / "sft"), "--data", str(files["comparisons"]),
               "--val-fraction", "0.2", "--train.steps", "8", "--train.batch-size", "4",
               "--train.warmup-steps", "2", "--train.eval-every", "4", "--train.log-every", "1",
               "--train.checkpoint-every", "3"],
        "ppo": ["--policy", str(ref / "sft"), "--reward", str(ref / "rm"), "--prompts", q,
                "--eval-questions", q, "--eval-limit", "4", "--max-tokens", "4",
                "--minibatches", "2", "--train.steps", "6", "--train.batch-size", "4",
                "--train.eval-every", "3", "--train.checkpoint-every", "2"],
        "grpo": ["--policy", str(ref / "sft"), "--prompts", q, "--reward", "truth",
                 "--eval-questions", q, "--eval-limit", "4", "--group-size", "2",
                 "--max-tokens", "4", "--train.steps", "6", "--train.batch-size", "2",
                 "--train.eval-every", "3", "--train.checkpoint-every", "2"],
        "rft": ["--policy", str(ref / "sft"), "--prompts", q, "--reward", "truth",
                "--eval-questions", q, "--eval-limit", "4", "--group-size", "2",
                "--max-tokens", "4", "--min-reward=-1e9", "--sft-data", str(files["demos"]),
                "--sft-batch", "2", "--train.steps", "6", "--train.batch-size", "2",
                "--train.eval-every", "3", "--train.checkpoint-every", "2"],
        "dpo": ["--policy", str(ref / "sft"), "--data", str(files["comparisons"]),
                "--val-fraction", "0.2", "--train.steps", "8", "--train.batch-size", "4",
                "--train.warmup-steps", "2", "--train.eval-every", "4", "--train.log-every", "1",
                "--train.checkpoint-every", "3"],
    }[phase] + COMMON


def steps_of(args: list[str]) -> int:
    return int(args[args.index("--train.steps") + 1])


def command(phase: str, args: list[str], out: Path) -> list[str]:
    return [sys.executable, "-m", "gptsmith", phase, *args, "--out", str(out)]


def run(cmd: list[str], env: dict | None = None, kill_after: float | None = None,
        watch: Path | None = None, from_watch: bool = False,
        timeout: float = 900) -> tuple[int, str, float | None]:
    """Run ``cmd``; SIGKILL it after ``kill_after`` seconds (counted from when ``watch``
    first exists if ``from_watch``) if it is still running. Returns the exit code (-9 when
    killed), what it printed, and when ``watch`` first existed."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        start, seen = time.perf_counter(), None
        while proc.poll() is None:
            elapsed = time.perf_counter() - start
            if watch is not None and seen is None and watch.exists():
                seen = elapsed
            due = kill_after is not None and (not from_watch or seen is not None) and \
                elapsed - (seen if from_watch else 0.0) >= kill_after
            if due or elapsed > timeout:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.02)
        log.seek(0)
        return proc.returncode, log.read(), seen


def outcome(run_dir: Path) -> dict:
    """What a finished run is judged by: its metrics, summary and weights, less timings."""
    from safetensors.torch import load_file

    rows = [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = {k: v for k, v in json.loads((run_dir / "summary.json").read_text()).items()
               if k not in TIMING_KEYS and k != "config"}
    weights = {}
    for name in ("model.safetensors", "adapter_model.safetensors"):
        if (run_dir / name).exists():
            weights.update({f"{name}:{k}": v for k, v in load_file(run_dir / name).items()})
    files = sorted(str(f.relative_to(run_dir)) for f in run_dir.rglob("*") if f.is_file())
    broken = [f.name for f in run_dir.glob("*.png")  # a plot cut short, or empty
              if not f.read_bytes().endswith(b"IEND\xaeB`\x82")]
    return {"metrics": rows, "summary": summary, "weights": weights, "files": files,
            "broken": broken}


def differences(a: dict, b: dict) -> list[str]:
    """How outcome ``b`` differs from ``a`` (empty when equal, weights bit for bit)."""
    import torch

    out = []
    if a["metrics"] != b["metrics"]:
        n = len(a["metrics"]), len(b["metrics"])
        first = next((i for i, (x, y) in enumerate(zip(*[o["metrics"] for o in (a, b)],
                                                       strict=False)) if x != y), min(n))
        out.append(f"metrics differ ({n[0]} vs {n[1]} rows; first at row {first})")
    if a["summary"] != b["summary"]:
        keys = sorted(k for k in set(a["summary"]) | set(b["summary"])
                      if a["summary"].get(k) != b["summary"].get(k))
        out.append(f"summary differs in {', '.join(keys)}")
    if a["files"] != b["files"]:
        extra, missing = set(b["files"]) - set(a["files"]), set(a["files"]) - set(b["files"])
        out.append(f"files: {', '.join(sorted(missing))} missing; {', '.join(sorted(extra))} "
                   "more than in the uninterrupted run")
    if b["broken"]:
        out.append(f"broken plots: {', '.join(b['broken'])}")
    if a["weights"].keys() != b["weights"].keys():
        out.append("weights hold other tensors")
    else:
        bad = [k for k in a["weights"] if not torch.equal(a["weights"][k], b["weights"][k])]
        if bad:
            out.append(f"{len(bad)} weight tensors differ (e.g. {bad[0]})")
    return out


@dataclass
class Point:
    phase: str
    how: str             # "step N" (fault hook) or "time T s"
    killed: bool         # the kill landed (the process had not finished)
    reruns: int          # runs after the kill until it finished
    resumed_from: str    # what the first rerun printed about resuming
    problems: list[str] = field(default_factory=list)


def kill_point(phase: str, args: list[str], out: Path, ref_times: tuple[float, float],
               reference: dict, rng: random.Random, by_step: bool, max_reruns: int = 4) -> Point:
    """Kill one run of ``phase`` (at a random step, or at a random time: a quarter of them
    while it starts, before the reference run's training start ``ref_times[0]``, the rest
    that long after its own metrics.jsonl appears, up to the reference run's training time
    and a little past: while it trains, saves and plots), run it again until it finishes,
    compare it with ``reference``."""
    cmd = command(phase, args, out)
    shutil.rmtree(out, ignore_errors=True)
    steps = steps_of(args)
    if by_step:
        if rng.random() < 0.5:
            every = int(args[args.index("--train.checkpoint-every") + 1])
            how = f"checkpoint-write:{rng.choice([*range(every, steps, every), steps])}"
        else:
            how = f"after-step:{rng.randint(1, steps)}"
        code, err, _ = run(cmd, env={"GPTSMITH_FAULT": how})
    else:
        trained, end = ref_times
        if rng.random() < 0.25:
            after = rng.uniform(0.1, max(0.2, trained))
            how = f"at {after:.1f}s"
            code, err, _ = run(cmd, kill_after=after)
        else:
            after = rng.uniform(0.0, 1.2 * (end - trained))
            how = f"training +{after:.1f}s"
            code, err, _ = run(cmd, kill_after=after, watch=out / "metrics.jsonl",
                               from_watch=True)
    point = Point(phase, how, code == -signal.SIGKILL, 0, "")
    if code not in (0, -signal.SIGKILL):
        point.problems.append(f"the killed run exited {code}: {err.strip()[-300:]}")
        return point
    while code != 0 and point.reruns < max_reruns:
        code, err, _ = run(cmd)
        point.reruns += 1
        if point.reruns == 1:
            said = [ln for ln in err.splitlines() if ln.startswith("resuming ")]
            point.resumed_from = said[0].rsplit(" ", 1)[-1] if said else \
                "done" if "already trained" in err else "start"
    if code != 0:
        point.problems.append(f"the rerun exited {code}: {err.strip()[-500:]}")
        return point
    point.problems += differences(reference, outcome(out))
    return point


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=20, help="kills per phase (default: 20)")
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"comma-separated, of {', '.join(PHASES)} (default: all)")
    p.add_argument("--seed", type=int, default=0, help="of the kill points (default: 0)")
    p.add_argument("--dir", help="work here and keep it (default: a temporary directory)")
    a = p.parse_args(argv)
    phases = [x for x in a.phases.split(",") if x]
    unknown = set(phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory(prefix="gptsmith-kill-") as tmp:
        root = Path(a.dir) if a.dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        files = build_world(root)
        ref = root / "ref"
        needed = {"sft": ["pretrain"], "rm": ["pretrain", "sft"], "dpo": ["pretrain", "sft"],
                  "grpo": ["pretrain", "sft"], "rft": ["pretrain", "sft"],
                  "ppo": ["pretrain", "sft", "rm"]}
        todo = [ph for ph in PHASES if ph in phases or
                any(ph in needed.get(x, []) for x in phases)]
        refs = {}  # phase -> (args, outcome, (training start, end) in seconds)
        for phase in todo:
            args = phase_args(phase, files, ref)
            shutil.rmtree(ref / phase, ignore_errors=True)
            start = time.perf_counter()
            code, err, trained = run(command(phase, args, ref / phase),
                                     watch=ref / phase / "metrics.jsonl")
            if code != 0:
                print(f"{phase}: the uninterrupted run failed ({code}): {err[-2000:]}")
                return 1
            refs[phase] = args, outcome(ref / phase), (trained or 0.0,
                                                       time.perf_counter() - start)
        points: dict[str, list[Point]] = {phase: [] for phase in phases}
        for i in range(a.points):  # round by round: every phase gets its share early
            for phase in phases:
                args, reference, times = refs[phase]
                pt = kill_point(phase, args, root / phase / f"point{i}", times, reference, rng,
                                by_step=i % 2 == 0)
                points[phase].append(pt)
                state = "equal" if not pt.problems else "; ".join(pt.problems)
                print(f"  {phase:>8} {pt.how:>20}  "
                      f"{'killed' if pt.killed else 'finished first':>14}  "
                      f"resumed from {pt.resumed_from or '-':>5}  {state}", flush=True)
        failed = 0
        for phase, pts in points.items():
            bad = sum(bool(pt.problems) for pt in pts)
            failed += bad
            trained, seconds = refs[phase][2]
            print(f"{phase}: {len(pts)} points ({sum(pt.killed for pt in pts)} kills landed; "
                  f"reference run {seconds:.1f}s, training from {trained:.1f}s), "
                  f"{len(pts) - bad} ended equal to the uninterrupted run, {bad} did not")
        print(f"kill: {failed} of the points ended differently" if failed else
              "kill: every point ended equal to the uninterrupted run")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
