# urbansense: `make demo`, `make test`. `make setup` is idempotent and quiet once done.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

VENV    := .venv
PY      := $(VENV)/bin/python
STAMPS  := build/.stamps
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=
# System packages: the test broker, its certificates, the browser for the status-page test,
# PyPy for the simulator's shard workers (bench/bench_sim.py; tests/test_sim_pypy.py),
# the city tier's NATS JetStream cluster and PostgreSQL (tests start private ones: docs/CITY.md),
# gcc for the power-cut layer the outbox tests run on (tests/support/powercut.c, LD_PRELOAD).
APT_PKGS := mosquitto openssl chromium pypy3 pypy3-venv nats-server postgresql gcc
PYPY_VENV := .venv-pypy

# First python3.11+ found (override: make PYTHON=python3.12 setup).
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
	  command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	  && { command -v $$p; break; }; done)

.PHONY: setup sysdeps test lint typecheck pytest soak mutate demo bench clean

setup: sysdeps $(STAMPS)/venv $(STAMPS)/npm $(STAMPS)/typeshed $(STAMPS)/pypy

# Debian packages: installed only when missing, and only as root (else a hint).
sysdeps:
	@missing=""; \
	for pkg in $(APT_PKGS); do \
	  case $$pkg in \
	    mosquitto) test -x /usr/sbin/mosquitto || command -v mosquitto >/dev/null || missing="$$missing $$pkg" ;; \
	    chromium)  command -v chromium >/dev/null || missing="$$missing $$pkg" ;; \
	    pypy3-venv) pypy3 -c 'import ensurepip' 2>/dev/null || missing="$$missing $$pkg" ;; \
	    nats-server) test -x /usr/sbin/nats-server || command -v nats-server >/dev/null || missing="$$missing $$pkg" ;; \
	    postgresql) ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing $$pkg" ;; \
	    *)         command -v $$pkg >/dev/null || missing="$$missing $$pkg" ;; \
	  esac; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "setup: apt-get install$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq$$missing >/dev/null; \
	  else \
	    echo "setup: missing system packages:$$missing (run as root: apt-get install$$missing); skipping"; \
	  fi; \
	fi; \
	command -v node >/dev/null || { echo "setup: node (v20+) is required for the MicroPython VM tests"; exit 1; }

$(STAMPS)/venv: pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  [ -n "$(PYTHON)" ] || { echo "setup: need python3.11+"; exit 1; }; \
	  echo "setup: creating $(VENV) with $(PYTHON)"; \
	  $(PYTHON) -m venv $(VENV); \
	fi
	@echo "setup: pip install -e '.[dev]'"
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/npm: package.json package-lock.json
	@echo "setup: npm ci"
	@npm ci --no-audit --no-fund --loglevel=error >/dev/null
	@mkdir -p $(STAMPS) && touch $@

# The simulator's shard workers on PyPy (Debian's pypy3, Python 3.9): numpy, cbor2,
# cryptography and tomli as binary wheels. The package itself is not installed there (it
# needs 3.11); the shards run from the tree (simulator.parallel._run_shards_in sets PYTHONPATH).
$(STAMPS)/pypy: tools/pypy-requirements.txt
	@if command -v pypy3 >/dev/null; then \
	  echo "setup: $(PYPY_VENV) (pypy3) for the simulator's shards"; \
	  [ -x $(PYPY_VENV)/bin/python ] || pypy3 -m venv $(PYPY_VENV); \
	  $(PYPY_VENV)/bin/python -m pip install -q --disable-pip-version-check --only-binary=:all: \
	    -r tools/pypy-requirements.txt; \
	else \
	  echo "setup: no pypy3: simulator shards run on CPython (bench/bench_sim.py is ~2x slower)"; \
	fi
	@mkdir -p $(STAMPS) && touch $@

# MicroPython/ESP32 typeshed for tools/mypy-firmware.ini (rebuilt when the stubs change).
$(STAMPS)/typeshed: $(STAMPS)/venv tools/mpy_typeshed.py
	@$(PY) tools/mpy_typeshed.py >/dev/null
	@touch $@

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --config-file tools/mypy-firmware.ini firmware

pytest: setup
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# Soaks and long fuzz runs (minutes): SIGKILL loops, 20,000-example properties.
soak: setup
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) -m slow $(PYTEST_ARGS)

# Mutation testing (tools/mutate.py, mutmut 3; not part of `make test`): each module listed in
# tools/mutation/modules.py, its mutants against the tests that cover it (each mutant's fastest
# first: tests/support/mutate_order.py), kill rate per module; fails under 90 % of the
# non-equivalent ones (bench/mutation-equivalents.md). MUTATE_MODULES="outbox batcher" runs some.
MUTATE_MODULES ?=
mutate: setup
	$(PY) tools/mutate.py $(MUTATE_MODULES)

demo: setup
	$(VENV)/bin/urbansense demo

bench: setup
	$(VENV)/bin/urbansense bench

clean:
	rm -rf build $(STAMPS) $(PYPY_VENV) .mypy_cache .ruff_cache .pytest_cache
