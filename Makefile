# kmemgdb: `make demo` runs the main job, `make test` the whole test suite (what CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup build demo test unit integration bench clean

setup:
	@scripts/install-deps.sh

build: setup
	@$(VENV)/bin/kmemgdb build

demo: build
	@$(VENV)/bin/kmemgdb demo

# The kernel build comes first so its progress is visible instead of hidden in a test fixture.
test: build
	$(PY) -m pytest -ra tests

unit: setup
	$(PY) -m pytest -ra tests/unit

integration: build
	$(PY) -m pytest -ra tests/integration
