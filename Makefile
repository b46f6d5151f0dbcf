# loramill — the two commands that set up everything on a fresh machine:
#   make demo   train a LoRA on the reference world over the HTTP API, generate with it, end to end
#   make test   the whole test suite, real services included
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU machines take the local CPU wheel; any other torch request would download a multi-GB CUDA
# build. GPU users: `make TORCH_SPEC=torch ...` (or install their CUDA torch into .venv first).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# Two pytest processes (tests/conftest.py keeps every module that touches a real service in one of them):
# the service tests mostly wait, and the second core sat idle beside them. PYTEST_PARALLEL= runs one process.
PYTEST_PARALLEL ?= -n 2 --dist loadscope
# Intra-op threads for torch in the demo and the tests. The tiny models run thousands of small ops a
# step; when the two cores are shared (worker subprocesses beside the test process, services), OpenMP's
# spinning threads made a 20-step run take 11–27 s instead of 1.4 s with one thread (measured here).
# Real models on a GPU are unaffected; `make test TORCH_THREADS=2` restores torch's default here.
TORCH_THREADS ?= 1

.PHONY: demo test services lint bench soak clean reference-models

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "[1/3] PyTorch ($(TORCH_SPEC)) into $(VENV): the longest step on a fresh machine"
	$(PY) -m pip install --disable-pip-version-check --progress-bar on "$(TORCH_SPEC)" 2>&1 | grep --line-buffered -v "is ignored" || true
	@echo "[2/3] loramill and its dependencies (diffusers, transformers, peft, the service and test libraries)"
	$(PY) -m pip install --disable-pip-version-check --progress-bar on -e ".[test]" 2>&1 | grep --line-buffered -v "is ignored" || true
	@echo "[3/3] checking that everything imports"
	@$(PY) -c "import torch, diffusers, peft, loramill" || (echo "install failed" && exit 1)
	@echo "installed: activate with 'source $(VENV)/bin/activate' to put loramill on PATH"
	@touch $(STAMP)

services:
	bash scripts/install-services.sh

demo: $(STAMP)
	OMP_NUM_THREADS=$(TORCH_THREADS) $(PY) scripts/demo.py

test: $(STAMP) services
	OMP_NUM_THREADS=$(TORCH_THREADS) LORAMILL_REQUIRE_SERVICES=1 $(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# long fault, soak and load runs of tests/reliability (issue 7); figures land in docs/reliability.md
soak: $(STAMP) services
	OMP_NUM_THREADS=$(TORCH_THREADS) LORAMILL_REQUIRE_SERVICES=1 LORAMILL_SOAK=1 LORAMILL_RECORD_FIGURES=1 $(PY) -m pytest tests/reliability -m soak $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy src/loramill

# make bench [REFERENCE_SCRIPT=/path/to/train_dreambooth_lora.py] [BENCH=training,loras,...] [BENCH_ARGS=--quick]
# Not part of `make test`. The training comparisons need diffusers' example script, which is never
# committed here; it imports torchvision, which does not load beside the local torch 2.13 wheel, so both
# sides of those comparisons run in bench/.venv-ref (torch 2.14.1 + torchvision 0.29.1 from this disk's
# wheels, ~6 GB, git-ignored). One intra-op thread per process: the cores are shared, and OpenMP's
# spinning barriers made two-thread runs 10-20x slower and erratic whenever anything else ran.
REFERENCE_SCRIPT ?=
BENCH ?= all
BENCH_ARGS ?=
BENCH_THREADS ?= 1
REF_VENV := bench/.venv-ref
bench: $(STAMP)
	@if [ -n "$(REFERENCE_SCRIPT)" ]; then \
	  test -f "$(REFERENCE_SCRIPT)" || { echo "REFERENCE_SCRIPT=$(REFERENCE_SCRIPT): no such file"; exit 1; }; \
	  if [ ! -f $(REF_VENV)/.installed ] || [ pyproject.toml -nt $(REF_VENV)/.installed ]; then \
	    echo "building $(REF_VENV) (torch 2.14.1 + torchvision 0.29.1, ~6 GB, once)"; \
	    test -x $(REF_VENV)/bin/python || python3 -m venv $(REF_VENV); \
	    $(REF_VENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "is ignored" || true; \
	    $(REF_VENV)/bin/python -m pip install -q --disable-pip-version-check -e . accelerate ftfy tensorboard Jinja2 2>&1 | grep -v "is ignored" || true; \
	    $(REF_VENV)/bin/python -c "import torch, torchvision, diffusers, accelerate, loramill" || { echo "$(REF_VENV) install failed"; exit 1; }; \
	    touch $(REF_VENV)/.installed; \
	  fi; \
	else \
	  echo "REFERENCE_SCRIPT not given: the training comparisons are skipped (make bench REFERENCE_SCRIPT=/path/to/examples/dreambooth/train_dreambooth_lora.py)"; \
	fi
	OMP_NUM_THREADS=$(BENCH_THREADS) MKL_NUM_THREADS=$(BENCH_THREADS) HF_HUB_OFFLINE=1 $(PY) -m bench.run --only $(BENCH) $(BENCH_ARGS) \
	  $(if $(REFERENCE_SCRIPT),--reference-script "$(abspath $(REFERENCE_SCRIPT))" --reference-python $(REF_VENV)/bin/python)

# The reference world (issue 12): trains the VAE, the CLIP model and the SD 1.5 and FLUX.1 models on the
# coloured-shapes domain into src/loramill/engine/reference/weights/ (committed; figures in docs/quality.md).
# Deterministic for a seed; stop it any time, the next run resumes from .cache/reference (git-ignored).
# REFERENCE_ARGS="--stage sd15" runs one stage.
REFERENCE_ARGS ?=
reference-models: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 5 $(PY) scripts/train_reference.py $(REFERENCE_ARGS)

clean:
	rm -rf $(VENV) demo-output .pytest_cache
