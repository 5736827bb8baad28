# Every target installs into .venv first (created if missing), always with the pins in
# constraints.txt so pip takes the CPU torch wheel and never a CUDA build.
PYTHON_SYSTEM ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test-deps demo test test-unit test-stress bench lint format proto clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: install
	$(PY) -m recsys.pipeline

# extra pytest arguments for the test targets, e.g. PYTEST_ARGS="-k redis -x"
PYTEST_ARGS ?=

test: install test-deps
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

# the integration tier with two CPU-bound busy processes beside it, as on a loaded CI machine:
# timing-dependent tests show their flakes here (about 10+ minutes on 2 cores)
test-stress: install test-deps
	PY=$(PY) .ci/stress $(PYTEST_ARGS)

# System packages the tests need beyond the venv. The Redis feature store's integration tests
# start their own redis-server (Debian package redis-server) on a free port. When it is
# missing, apt-get installs it (as root, or through sudo when that needs no password), and the
# system-wide service the package starts is stopped and disabled: the tests never use it, and
# it would hold port 6379. With neither root nor sudo, say what to run and fail.
REDIS_PACKAGE := redis-server

test-deps:
	@command -v redis-server >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else \
	  echo "error: the tests need redis-server, which is not installed, and installing it needs root." >&2; \
	  echo "Run: sudo apt-get install $(REDIS_PACKAGE)   (the Debian/Ubuntu package), then make test again." >&2; \
	  exit 1; \
	fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "error: the tests need redis-server and there is no apt-get here: install the" \
	    "$(REDIS_PACKAGE) package with this system's package manager, then make test again." >&2; \
	  exit 1; \
	fi; \
	echo "installing the Debian package $(REDIS_PACKAGE) for the Redis feature store's tests (apt-get)"; \
	$$SUDO apt-get update -qq -o DPkg::Lock::Timeout=300 && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  -o DPkg::Lock::Timeout=300 --no-install-recommends $(REDIS_PACKAGE) >/dev/null || exit 1; \
	if [ -d /run/systemd/system ]; then \
	  $$SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true; \
	else \
	  $$SUDO invoke-rc.d redis-server stop >/dev/null 2>&1 || true; \
	  $$SUDO update-rc.d redis-server disable >/dev/null 2>&1 || true; \
	fi; \
	command -v redis-server >/dev/null 2>&1 || { \
	  echo "error: apt-get installed $(REDIS_PACKAGE) but redis-server is not on PATH" >&2; exit 1; }

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
