# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench bench-gpu schemas compose-check clean screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py demo

# Tests talk to the machine's PostgreSQL and Redis (override with the same variables).
TEST_ENV = PYTHONDONTWRITEBYTECODE= DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/controlplane} \
	CELERY_BROKER_URL=$${CELERY_BROKER_URL:-redis://127.0.0.1:6379/15} \
	CONTROLPLANE_DATA_DIR=$(CURDIR)/var/test

test: $(STAMP)
	rm -rf var/test && mkdir -p var/test
	$(TEST_ENV) $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The edit loop: everything but the tests marked slow (real worker processes, torchrun,
# the demo, fault injection), on both cores (pytest-xdist; each worker its own test
# database, data directory and Redis database: tests/xdist_worker_env.py). The test
# databases are kept between runs (--reuse-db: only new migrations run, not all of them);
# PYTEST_ARGS=--create-db builds them afresh (after switching to a branch whose
# migrations differ).
test-fast: $(STAMP)
	rm -rf var/test && mkdir -p var/test
	$(TEST_ENV) $(PY) -m pytest -q -p no:cacheprovider -p tests.xdist_worker_env -n 2 -m "not slow" --reuse-db $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The GPU path in one command, on a machine with CUDA (make install there first; the
# .venv's torch must be a CUDA build: `pip install torch==2.13.0` from PyPI on Linux):
# GPT-2 124M tokens/s and MFU on one GPU, then FSDP2 on every GPU, then the gpu-marked
# tests (bf16 numerics, checkpoints and generation on cuda). Results: var/bench/gpu.txt.
bench-gpu: SHELL := /bin/bash
bench-gpu: .SHELLFLAGS := -o pipefail -c
bench-gpu: $(STAMP)
	mkdir -p var/bench
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench-gpu: torch sees no CUDA device (torch ' + torch.__version__ + ')')"
	$(PY) bench/bench_train_gpu.py 2>&1 | tee var/bench/gpu.txt
	$(PY) bench/bench_train_gpu.py --fsdp 2>&1 | tee -a var/bench/gpu.txt
	$(PY) -m pytest -q -p no:cacheprovider -m gpu tests/engine 2>&1 | tee -a var/bench/gpu.txt

# A PNG of each page the browser tests open, as the demo's roles (alice the owner, carol
# a viewer, mallory an outsider) see it, under var/test/screenshots/ (needs Chromium).
screenshots: $(STAMP)
	rm -rf var/test/screenshots && mkdir -p var/test/screenshots
	$(TEST_ENV) SCREENSHOTS_DIR=$(CURDIR)/var/test/screenshots \
		$(PY) -m pytest -q -p no:cacheprovider tests/browser
	@ls var/test/screenshots

# The job-parameter schemas the platform validates with, made from the engine's configs
# (run after changing a default, range or preset; a test fails while the file is stale).
schemas: $(STAMP)
	$(PY) -m engine.jobparams > platform/controlplane/jobs/param_schemas.json

compose-check:
	docker-compose -f compose.yaml config -q

clean:
	rm -rf $(VENV) var
