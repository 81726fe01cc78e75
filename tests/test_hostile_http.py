"""Issue 18, the figures to hold for the server, in their short forms: the HTTP fuzz
(checks/fuzz_http.py) and the soak (checks/soak.py), each against a real `gptsmith serve`
process on the tiny run. The full forms run from the command line."""

from __future__ import annotations

import argparse

import pytest

from checks import fuzz_http, soak


@pytest.fixture(scope="module")
def live(tiny_run, tmp_path_factory):
    """One server for both (its start is most of the time): the fuzz first, then the soak,
    which stops it with SIGTERM."""
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with fuzz_http.LiveServer(tiny_run, log, max_batch=8) as server:
        yield server


def test_malformed_http_gets_no_5xx_and_no_traceback(live):
    cases = fuzz_http.all_cases(examples=30, stride=6)
    assert len(cases) >= 150
    result = fuzz_http.run_fuzz(live, cases, log=lambda line: None)
    assert result["failures"] == []
    assert not any(s.startswith("5") for s in result["statuses"])


def test_soak_mixed_clients_no_5xx_no_mix_ups_memory_flat(live):
    args = argparse.Namespace(clients=12, seconds=8, warmup=3, requests=12, seq_len=128,
                              seed=0)
    result = soak.run_soak(args, live, log=lambda line: None)
    assert result["failures"] == []
    assert result["five"] == result["mixed_up"] == result["differs"] == 0
    assert result["requests"] > 50
    assert live.proc.returncode is not None  # SIGTERM stopped it (within 15 s, or a failure)
