# Cairn: `make run` starts a standalone node, `make test` runs the whole suite.
# Both install what they need on a fresh Debian 12 machine (as root, or with sudo).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
CONFIG ?=
# Wheels of the dependencies PyPI ships only as source, built once per machine
# (llama-cpp-python alone takes minutes), so a fresh clone does not rebuild them.
# They are built for this CPU (-march=native), so the cache is keyed by its instruction flags.
CPU_KEY := $(shell grep -m1 '^flags' /proc/cpuinfo | md5sum | cut -c1-12)
WHEELS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/cairn/wheels/$(CPU_KEY)
SDISTS := llama-cpp-python pygobject pycairo systemd-python pydbus
PIP := $(BIN)/pip install -qq --constraint constraints.txt --find-links $(WHEELS)
# The legacy node's build (Core 2 Duo: no SSE4.1, no AVX) of what PyPI ships only for newer CPUs:
# llama-cpp-python and numpy from source with the flags of modules/packages/build-flags.json,
# the file the Nix package reads too. No -march=native here, so the cache is keyed by that file,
# the two pins and the Python version, not by this CPU. tests/legacy runs .venv-legacy under
# qemu-x86_64 -cpu core2duo.
LEGACY_FLAGS := modules/packages/build-flags.json
LEGACY_KEY := $(shell { cat $(LEGACY_FLAGS); grep -E '^(numpy|llama_cpp_python)==' constraints.txt; \
  $(PYTHON) -V; } | md5sum | cut -c1-12)
LEGACY_WHEELS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/cairn/legacy-wheels/$(LEGACY_KEY)
LEGACY_VENV ?= .venv-legacy

RUN_APT := python3 python3-venv python3-dev build-essential cmake pkg-config \
  libsystemd-dev libcairo2-dev libgirepository1.0-dev gir1.2-glib-2.0
TEST_APT := chromium systemd-container debootstrap iproute2 nftables dbus \
  nix-bin qemu-system-x86 ipxe-qemu busybox-static cpio dnsmasq-base qemu-user

# Install the Debian packages in $(1) that are missing; apt-get runs only when needed.
define apt_ensure
	@missing=$$(for p in $(1); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  if [ -n "$(SUDO)" ] && ! command -v sudo >/dev/null; then \
	    echo "error: not root and no sudo; install these as root first: $$missing" >&2; exit 1; \
	  fi; \
	  $(SUDO) apt-get update -qq; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

.PHONY: run test lint imports typecheck unit integration bench-footprint bench-inference bench-gossip bench-wake apt-run apt-test clean \
  options-doc legacy nix-lib-checks

run: $(VENV)/.run-installed
	@echo "Starting a Cairn node; it logs its URL (default http://127.0.0.1:8470/). Ctrl-C stops it."
	$(BIN)/cairn run $(if $(CONFIG),--config $(CONFIG))

test: $(VENV)/.test-installed $(LEGACY_VENV)/.installed apt-test lint imports typecheck
	$(BIN)/pytest

# The legacy venv alone; `$(BIN)/pytest tests/legacy` then runs it as a Core 2 Duo.
legacy: $(LEGACY_VENV)/.installed

lint: $(VENV)/.test-installed
	$(BIN)/ruff check supervisor tests
	$(BIN)/ruff format --check supervisor tests

# The layers contract in pyproject.toml ([tool.importlinter]; docs/architecture.md "Layers").
imports: $(VENV)/.test-installed
	$(BIN)/lint-imports

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

unit: $(VENV)/.test-installed
	$(BIN)/pytest tests/unit

integration: $(VENV)/.test-installed apt-test
	$(BIN)/pytest tests/integration

bench-footprint: $(VENV)/.run-installed
	$(BIN)/python -m tests.bench.footprint

# The gossip protocol on the simulator (virtual time) beside memberlist's suspicion bound.
# BENCH_ARGS=--quick for a smoke run; a full run takes a long while at N = 1000.
bench-gossip: $(VENV)/.run-installed
	$(BIN)/python -m tests.bench.gossip $(BENCH_ARGS)

# Wake latency of a sleeping service beside systemd-socket-proxyd, in a throwaway systemd node
# (root). BENCH_ARGS="--wakes 10" for a shorter run.
bench-wake: $(VENV)/.test-installed apt-test
	$(BIN)/python -m tests.bench.wake $(BENCH_ARGS)

# Tokens/s and time to first token beside llama-server and llama-cpp-python's server: plain
# requests, the agent workloads (a growing conversation, a shared system prompt, JSON schema) and
# the legacy node's pinned shape, in one run; builds llama-server once (minutes) into
# ~/.cache/cairn/bench. BENCH_ARGS=--quick for a smoke run, --phases/--models to select.
bench-inference: $(VENV)/.run-installed
	$(PIP) --editable '.[bench]'
	$(BIN)/python -m tests.bench.inference $(BENCH_ARGS)

# docs/options.md from the modules' option declarations, evaluated with nixpkgs' module system
# from a lib checkout (NIXPKGS_LIB: a nixpkgs or nix-community/nixpkgs.lib tree); the flake's
# `nix build .#options-md` renders the same file.
options-doc:
	@[ -n "$(NIXPKGS_LIB)" ] && [ -f "$(NIXPKGS_LIB)/lib/default.nix" ] || \
	  { echo "usage: make options-doc NIXPKGS_LIB=<checkout of nixpkgs or nix-community/nixpkgs.lib>" >&2; exit 2; }
	$(call apt_ensure,nix-bin)
	nix-instantiate --eval --strict --json --argstr nixpkgsLib "$(abspath $(NIXPKGS_LIB))" \
	  tests/nix/options-doc.nix | $(PYTHON) -c 'import json, sys; sys.stdout.write(json.load(sys.stdin))' \
	  > docs/options.md.tmp || { rm -f docs/options.md.tmp; exit 1; }
	mv docs/options.md.tmp docs/options.md

# The checks that evaluate modules under nixpkgs' real module system, from a lib checkout
# (NIXPKGS_LIB, as for options-doc); CI cannot fetch one, so `make test` does not run them.
nix-lib-checks: $(VENV)/.test-installed
	@[ -n "$(NIXPKGS_LIB)" ] && [ -f "$(NIXPKGS_LIB)/lib/default.nix" ] || \
	  { echo "usage: make nix-lib-checks NIXPKGS_LIB=<checkout of nixpkgs or nix-community/nixpkgs.lib>" >&2; exit 2; }
	NIXPKGS_LIB="$(abspath $(NIXPKGS_LIB))" $(BIN)/pytest tests/nix/check_settings_mirrors.py

apt-run:
	$(call apt_ensure,$(RUN_APT))

apt-test:
	$(call apt_ensure,$(TEST_APT))

$(VENV)/bin/python: | apt-run
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Cairn needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)

$(WHEELS)/.built: constraints.txt | $(VENV)/bin/python
	mkdir -p $(WHEELS)
	$(BIN)/pip wheel -qq --no-deps --constraint constraints.txt --find-links $(WHEELS) \
	  --wheel-dir $(WHEELS) $(SDISTS)
	touch $@

# Built in a scratch folder and moved into place, so an interrupted build leaves no half cache.
# --no-cache-dir: pip's wheel cache is keyed by the sdist alone and would hand back a build made
# with other flags. Two pip runs, since numpy's setup-args would be refused by llama's backend.
$(LEGACY_WHEELS)/.built: | $(VENV)/bin/python
	rm -rf $(LEGACY_WHEELS).part && mkdir -p $(LEGACY_WHEELS).part
	CMAKE_ARGS="$$($(PYTHON) -m tests.legacy.build_flags cmake portable)" \
	  $(BIN)/pip wheel -qq --no-deps --no-cache-dir --no-binary llama-cpp-python \
	  --constraint constraints.txt --wheel-dir $(LEGACY_WHEELS).part llama-cpp-python
	$(BIN)/pip wheel -qq --no-deps --no-cache-dir --no-binary numpy --constraint constraints.txt \
	  $$($(PYTHON) -m tests.legacy.build_flags numpy portable) --wheel-dir $(LEGACY_WHEELS).part numpy
	touch $(LEGACY_WHEELS).part/.built
	rm -rf $(LEGACY_WHEELS) && mv $(LEGACY_WHEELS).part $(LEGACY_WHEELS)

# The runtime dependencies only; the legacy wheels go in first, so the project's install finds
# numpy and llama-cpp-python satisfied and takes the rest from PyPI and $(WHEELS).
$(LEGACY_VENV)/.installed: pyproject.toml constraints.txt $(LEGACY_WHEELS)/.built $(WHEELS)/.built | apt-run
	rm -rf $(LEGACY_VENV)
	$(PYTHON) -m venv $(LEGACY_VENV)
	$(LEGACY_VENV)/bin/pip install -qq --no-deps $(LEGACY_WHEELS)/*.whl
	$(LEGACY_VENV)/bin/pip install -qq --constraint constraints.txt --find-links $(WHEELS) --editable .
	touch $@

$(VENV)/.run-installed: pyproject.toml constraints.txt $(WHEELS)/.built | apt-run
	$(PIP) --editable .
	touch $@

$(VENV)/.test-installed: $(VENV)/.run-installed
	$(PIP) --editable '.[test]'
	touch $@

clean:
	rm -rf $(VENV) $(LEGACY_VENV) build .mypy_cache .ruff_cache .pytest_cache
