"""Hostile input at the command line (issue 18): the short form of checks/fuzz_cli.py.

About a hundred malformed invocations drawn the same way every run from every input path
(flags, YAML configs, data files of each kind, run directories and model files, outputs):
each must exit 2 with one message, no traceback, and nothing written. The full form,
over a thousand cases, runs from the command line: ``python checks/fuzz_cli.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "checks"))

import fuzz_cli  # noqa: E402


def test_the_full_fuzz_holds_at_least_150_cases_across_every_input_path():
    cases = fuzz_cli.all_cases()
    assert len(cases) >= 150
    assert {len(make()) >= 20 for make in fuzz_cli.GROUPS.values()} == {True}


def test_malformed_input_gives_one_message_exit_2_and_writes_nothing():
    cases = fuzz_cli.short_sample()
    assert len(cases) >= 90
    figures = fuzz_cli.run(cases)
    report = "\n".join(f"{o.name}: {'; '.join(p)} ({o.stderr.strip()[-200:]})"
                       for o, p in figures["failures"])
    assert figures["failures"] == [], report
    assert figures["tracebacks"] == 0 and figures["partial_outputs"] == 0
