# nbbridge: `make test` and `make demo` work on a fresh Debian machine with Python 3.11, git and make.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: all install test test-lowest lint typecheck trial demo cluster-demo datalab-demo bench fuzz faults clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# A plain (non-editable) install, so the twistd plug-ins are found exactly as users get them.
$(STAMP): $(BIN)/python setup.cfg pyproject.toml $(shell find src systemd deploy/launchd -type f -not -name '*.pyc')
	$(BIN)/pip install -q '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench fuzz
	PYTHONPATH=src $(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --strict --untyped-calls-exclude twisted -p nbbridge.wire -p nbbridge.mux -p nbbridge.crypto -p nbbridge.store

# Faults at scale kill each daemon FAULTS_KILLS times in `make test` (minutes per 50 kills;
# `make faults` runs the full 50 and is where bench/RESULTS.md's figures come from).
FAULTS_KILLS ?= 8

trial: $(STAMP)
	FAULTS_KILLS=$(FAULTS_KILLS) PYTHONPATH=. $(BIN)/trial $(TRIAL_ARGS) tests

faults: $(STAMP)
	FAULTS_KILLS=50 PYTHONPATH=. $(BIN)/trial tests.tunnel.test_faults_at_scale

test: lint typecheck trial

# The suite again on the lowest Twisted and Autobahn setup.cfg allows (.ci/constraints-lowest.txt),
# in a venv of its own. Lint and typecheck run once, on the newest, in `make test`.
LOWEST       = .venv-lowest
LOWEST_STAMP = $(LOWEST)/.installed

$(LOWEST)/bin/python:
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/pip install -q --upgrade pip

$(LOWEST_STAMP): $(LOWEST)/bin/python setup.cfg pyproject.toml .ci/constraints-lowest.txt $(shell find src -name '*.py')
	$(LOWEST)/bin/pip install -q -c .ci/constraints-lowest.txt '.[test]'
	touch $(LOWEST_STAMP)

# The suite on the lowest Twisted and Autobahn, less what exercises nbbridge's own logic at
# length rather than its use of those libraries: the fuzzer (nbbridge's parsers), faults at
# scale (tests.tunnel.test_faults covers each kill), and the suites whose minutes go to
# starting Jupyter servers, Chromium and three-relay clusters (datalab, mixer, cluster,
# Jupyter through the tunnel, the demo), and resume across relay restarts (the mux's own
# state machine; its Jupyter kernel test starts Jupyter); cut streams run 4 rounds per
# fault, not 10.
# Jupyter through nbbridge.web (tests.web), the daemons end to end (tests.tunnel), TLS,
# nginx, redis and the gateway's VNC still run.
# That keeps CI well under 20 minutes; `make test-lowest LOWEST_TESTS=tests` runs it all.
LOWEST_SKIP  = tests/datalab/ tests/mixer/ tests/cluster/ tests/test_fuzz.py tests/test_demo.py \
               tests/tunnel/test_faults_at_scale.py tests/tunnel/test_jupyter.py \
               tests/tunnel/test_resume.py
LOWEST_TESTS = $(sort $(subst /,.,$(basename $(filter-out $(addsuffix %,$(LOWEST_SKIP)),\
               $(shell find tests -name 'test_*.py')))))
test-lowest: $(LOWEST_STAMP)
	FAULTS_KILLS=3 CUT_ROUNDS=4 PYTHONPATH=. $(LOWEST)/bin/trial $(TRIAL_ARGS) $(LOWEST_TESTS)

demo: $(STAMP)
	$(BIN)/python -m nbbridge.demo $(DEMO_ARGS)

# Three relays sharing a redis-server behind haproxy (apt-get install redis-server haproxy).
cluster-demo: $(STAMP)
	$(BIN)/python -m nbbridge.demo_cluster $(DEMO_ARGS)

# A datalab daemon on loopback, a signed CSV upload, and the URL that opens it (README "Datalab").
datalab-demo: $(STAMP)
	$(BIN)/python -m nbbridge.datalab.demo $(DEMO_ARGS)

# Benchmarks measure time, so they stay out of `make test`; see bench/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python bench/mux_pipe.py
	$(BIN)/python bench/tunnel.py --json bench/results.json --markdown bench/RESULTS.md

# Every fuzz target for FUZZ_RUNS inputs (the bounded run is part of `make test`, in
# tests/test_fuzz.py; bench/fuzz_long.py is the long one).
FUZZ_RUNS ?= 1000000
fuzz: $(STAMP)
	$(BIN)/python -m fuzz.run --runs $(FUZZ_RUNS) --artifacts build/fuzz-artifacts

clean:
	rm -rf $(VENV) $(LOWEST) build _trial_temp* .mypy_cache .ruff_cache .hypothesis
