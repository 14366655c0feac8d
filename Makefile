# Axon developer tasks. `make test` builds .venv from nothing and runs the whole gate.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint typecheck pytest bench clean sandbox verifiers mcp1

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The shell adapter sandboxes commands with bubblewrap (Debian package `bubblewrap`).
# Installed when we can (root with apt-get); otherwise say so: sandboxed shell
# tasks are then refused and their tests skip, with that reason.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap for the shell adapter's sandbox"; \
	    apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1; } || \
	      echo "note: could not install bubblewrap; sandboxed shell tasks will be refused"; \
	  else \
	    echo "note: bubblewrap (bwrap) is missing; install it for sandboxed shell tasks"; \
	  fi; }

# Independent receipt verifiers for the tests: Go and the Go team's sumdb/note and
# sumdb/tlog packages from Debian (golang-go, golang-golang-x-mod-dev; no network
# beyond apt). Without them that one test skips, saying why.
verifiers:
	@{ command -v go >/dev/null 2>&1 && [ -d /usr/share/gocode/src/golang.org/x/mod/sumdb ]; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Go and golang.org/x/mod (Debian) for the independent receipt verifier"; \
	    apt-get install -y -qq golang-go golang-golang-x-mod-dev >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && \
	        apt-get install -y -qq golang-go golang-golang-x-mod-dev >/dev/null 2>&1; } || \
	      echo "note: could not install Go; the Go receipt verifier test will skip"; \
	  else \
	    echo "note: Go and golang-golang-x-mod-dev are missing; the Go receipt verifier test will skip"; \
	  fi; }

# An agent on the MCP Python SDK 1.x (protocol 2025-11-25) for the compatibility test
# (tests/mcp1/client.py), in a virtualenv of its own: the SDK's 1.x and 2.x cannot
# share one. Without it that test skips, saying why.
MCP1 := .venv-mcp1
$(MCP1)/.installed:
	@test -x $(MCP1)/bin/python || $(PYTHON) -m venv $(MCP1)
	@$(MCP1)/bin/python -m pip install --quiet 'mcp>=1.25,<2' 2>/dev/null && touch $@ || \
	  echo "note: could not install the MCP SDK 1.x; its compatibility test will skip"

mcp1: $(MCP1)/.installed

dev: $(STAMP) sandbox
	@$(BIN)/axon dev

lint: $(STAMP)
	$(BIN)/ruff check axon tests bench deploy
	$(BIN)/ruff format --check axon tests bench deploy

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) sandbox verifiers mcp1
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python bench/append.py

clean:
	rm -rf $(VENV) $(MCP1) .mypy_cache .pytest_cache .ruff_cache
