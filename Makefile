# Every target installs into .venv first (created if missing), always with the pins in
# constraints.txt so pip takes the CPU torch wheel and never a CUDA build.
PYTHON_SYSTEM ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-unit bench lint format proto clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: install
	$(PY) -m recsys.pipeline

test: install
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest -m "not integration"

bench: install
	$(PY) experiments/bench/run_all.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# regenerate serving/proto/recsys/v1/*_pb2*.py(i) from the .proto files (a test checks they match)
proto: install
	$(PY) -m serving.proto.generate

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
