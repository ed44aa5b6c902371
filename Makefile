# Both targets work first on a fresh machine: they create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install browser bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,parquet,ray,serve,fleet,tails]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/swarmguard simulate

# The browser tests draw the report in headless Chromium (Debian's package);
# under `make test` a missing browser is a failure, not a skip. The suite runs on
# every core (pytest-xdist), one test file per worker at a time: a file's module
# fixtures (a Ray cluster, a node) stay in one process. Many tests wait on
# subprocesses and sockets, so two workers overlap those waits even on 2 cores.
#
# compileall first: with PYTHONDONTWRITEBYTECODE set (as in this project's shells) Python
# writes no .pyc for the editable install, so every process (each Ray actor, each node or
# CLI a test starts) compiled swarmguard's sources again: about half of an actor's import
# of its shard (297 -> 140 ms CPU). Python still reads .pyc files that exist. Where they
# cannot be written (a read-only checkout) the tests still run, compiling as before.
test: $(STAMP) browser
	@$(PY) -m compileall -q src >/dev/null 2>&1 || echo "make test: no .pyc written under src (read-only?); the tests' processes compile swarmguard each time"
	SWARMGUARD_REQUIRE_BROWSER=1 $(PY) -m pytest -n auto --dist loadfile

browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) benchmarks/bench_tree.py
	$(PY) benchmarks/bench_consensus.py
	$(PY) benchmarks/bench_cap.py
	$(PY) benchmarks/bench_startup.py
	$(PY) benchmarks/bench_detection.py

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
