# loramill — the two commands that set up everything on a fresh machine:
#   make demo   train a LoRA on sample images and generate with it, end to end
#   make test   the whole test suite, real services included
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU machines take the local CPU wheel; any other torch request would download a multi-GB CUDA
# build. GPU users: `make TORCH_SPEC=torch ...` (or install their CUDA torch into .venv first).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# Intra-op threads for torch in the demo and the tests. The tiny models run thousands of small ops a
# step; when the two cores are shared (worker subprocesses beside the test process, services), OpenMP's
# spinning threads made a 20-step run take 11–27 s instead of 1.4 s with one thread (measured here).
# Real models on a GPU are unaffected; `make test TORCH_THREADS=2` restores torch's default here.
TORCH_THREADS ?= 1

.PHONY: demo test services lint bench soak clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)" 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "is ignored" || true
	@$(PY) -c "import torch, diffusers, peft, loramill" || (echo "install failed" && exit 1)
	@touch $(STAMP)

services:
	bash scripts/install-services.sh

demo: $(STAMP)
	OMP_NUM_THREADS=$(TORCH_THREADS) $(PY) scripts/demo.py

test: $(STAMP) services
	OMP_NUM_THREADS=$(TORCH_THREADS) LORAMILL_REQUIRE_SERVICES=1 $(PY) -m pytest $(PYTEST_ARGS)

# long fault, soak and load runs of tests/reliability (issue 7); figures land in docs/reliability.md
soak: $(STAMP) services
	OMP_NUM_THREADS=$(TORCH_THREADS) LORAMILL_REQUIRE_SERVICES=1 LORAMILL_SOAK=1 $(PY) -m pytest tests/reliability -m soak $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy src/loramill

clean:
	rm -rf $(VENV) demo-output .pytest_cache
