"""Training phases side by side: independent phases in processes of their own, the CPU's
cores shared out among them.

The pipeline's RL methods each start from the SFT model and need nothing from one another.
On a CPU the small default model's RL gains almost nothing from a second core (a PPO phase
took 165 s on 2 threads and 194 s on 1, RFT 159 s and 157 s), so two of them side by side,
a core each, take little more than the longer one instead of the sum. The first runs in the
pipeline's own process; each other one is ``gptsmith METHOD --config FILE`` with its output
in ``METHOD.log`` beside the pipeline's records. A side process dies with the pipeline
(Linux), so a killed pipeline leaves none behind to write into a run its rerun resumes.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from gptsmith.device import pick_device
from gptsmith.errors import GptsmithError
from gptsmith.runs import atomic_write_text


def cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_each(cfgs: list, enabled: bool) -> int:
    """Threads for each of these training phases run side by side, or 0 where they run one
    after another: when not ``enabled``, fewer than two, on a GPU, or fewer cores than
    phases."""
    if not enabled or len(cfgs) < 2 or len(cfgs) > cores():
        return 0
    if any(pick_device(c.train.device).type != "cpu" for c in cfgs):
        return 0
    return cores() // len(cfgs)


def with_threads(cfg, threads: int):
    """A copy of ``cfg`` on ``threads`` threads (its own, where it pins a count)."""
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, threads=cfg.train.threads or threads))


def changed_settings(values: dict, defaults: dict) -> dict:
    """The settings in ``values`` that differ from ``defaults`` (nested as they are)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            if inner := changed_settings(value, defaults[key]):
                out[key] = inner
        elif value != defaults[key]:
            out[key] = value
    return out


def write_settings(cfg, path: Path) -> Path:
    """``cfg`` as a YAML file of what differs from its command's defaults: ``--config``."""
    atomic_write_text(path, yaml.safe_dump(changed_settings(dataclasses.asdict(cfg),
                                                            dataclasses.asdict(type(cfg)()))))
    return path


def _death_signal():
    """Linux's prctl(PR_SET_PDEATHSIG, SIGKILL), looked up here, before any fork: the child
    calls it between fork and exec, so it dies when the pipeline does."""
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL)


class SideRun:
    """One training command in a process of its own, beside the phase ``beside``; ``wait``
    gives its summary, and ``measured`` its own time and peak memory once it has ended."""

    def __init__(self, name: str, cfg, threads: int, root: Path, beside: str) -> None:
        self.name, self.out, self.log = name, Path(cfg.out), root / f"{name}.log"
        cfg = with_threads(cfg, threads)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False))
        self.settings = write_settings(cfg, root / f".{name}.side.yaml")
        env = {**os.environ, "GPTSMITH_PHASE": name, "PYTHONUNBUFFERED": "1"}  # a live log
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gptsmith", name, "--config", str(self.settings)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
                preexec_fn=_death_signal())
        self.started, self.measured = time.perf_counter(), {"beside": beside}
        self.reaper = threading.Thread(target=self._reap, daemon=True)
        self.reaper.start()

    def _reap(self) -> None:
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        kib = usage.ru_maxrss / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS
        self.measured.update(seconds=round(time.perf_counter() - self.started, 1),
                             peak_rss_mb=round(kib / 1024), peak_memory="phase")

    def wait(self) -> dict:
        """Its summary once it has ended, its last lines printed; a clear error if it failed."""
        self.reaper.join()
        self.settings.unlink(missing_ok=True)
        lines = self.log.read_text(errors="replace").splitlines()
        print("\n".join(lines[-3:]))
        if self.proc.returncode != 0:
            raise GptsmithError(f"{self.name}, run beside the other RL phases, failed (exit code "
                                f"{self.proc.returncode}; its output: {self.log}); run the "
                                "pipeline again to resume it from its last checkpoint")
        return json.loads((self.out / "summary.json").read_text())

    def stop(self) -> None:
        """End it if it is still running (the pipeline stopped first)."""
        if self.reaper.is_alive():
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.reaper.join()
        self.settings.unlink(missing_ok=True)
