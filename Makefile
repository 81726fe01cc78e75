# The two commands of the quick start: `make demo` and `make test`.
# Both create .venv and install gptsmith into it first (once; again when pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Without a CUDA GPU, pin the CPU build of torch (an unpinned torch pulls a multi-GB CUDA build).
TORCH ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo torch || echo torch==2.13.0)

.PHONY: demo test setup bench bench-trl116 checks clean

# `make demo` installs only what the pipeline needs; `make test` adds the test extra
# (transformers, peft, playwright, ... : the references the tests compare against).
# --no-compile: Python compiles what it imports when it first imports it, not torch's
# thousands of files at install (torch then installs in 7 s instead of 18). The build backend
# comes with torch, so gptsmith's own install needs no isolated build environment.
PIP := $(BIN)/python -m pip install -q --no-compile
# ... which needs Python allowed to write that bytecode: where the environment forbids it
# (PYTHONDONTWRITEBYTECODE=1, as on this project's CI machines), every process of a run or
# of the tests compiled torch, matplotlib and the rest again, 4.3 s a training process
# (7.4 s to import what one needs against 3.1 s), and the suite took 10:23 instead of
# 6:00. So make's commands write it, into .venv (and __pycache__/, ignored by git).
export PYTHONDONTWRITEBYTECODE :=

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)" "setuptools>=77"
	$(PIP) --no-build-isolation -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) --no-build-isolation -e ".[test]"
	touch $@

setup: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/gptsmith pipeline

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: setup
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/generate_throughput.py
	$(BIN)/python bench/ppo_iteration.py
	$(BIN)/python bench/reward_step.py
	$(BIN)/python bench/serve_load.py
	$(BIN)/python bench/results.py

# GRPO and DPO against TRL 1.16, which has no PPOTrainer: its own environment.
BENCH116 ?= .venv-trl116
bench-trl116:
	$(PYTHON) -m venv $(BENCH116)
	$(BENCH116)/bin/python -m pip install -q "$(TORCH)"
	$(BENCH116)/bin/python -m pip install -q -e ".[bench-trl116]"
	$(BENCH116)/bin/python bench/grpo_step.py --threads 1
	$(BENCH116)/bin/python bench/dpo_step.py --threads 1
	$(BENCH116)/bin/python bench/results.py

checks: setup
	$(BIN)/python checks/fuzz_cli.py
	$(BIN)/python checks/fuzz_http.py
	$(BIN)/python checks/fuzz_studio.py --server
	$(BIN)/python checks/soak.py --clients 64 --seconds 60
	$(BIN)/python checks/kill.py --points 20

clean:
	rm -rf $(VENV) runs
