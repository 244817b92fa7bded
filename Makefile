# The README's two commands: `make run` and `make test`. Both set up what they
# need on a fresh Debian machine (a venv for Python; Debian packages via apt-get
# when root and missing).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
TOPOLOGY ?= examples/cluster.yaml
OUT ?= out
PYTEST_ARGS ?=

.PHONY: run test check bench system-deps venv clean driver

run: $(STAMP)
	$(PY) -m compiler compile $(TOPOLOGY) -o $(OUT)

test: $(STAMP) system-deps driver
	$(PY) -m pytest $(PYTEST_ARGS)

# fails when out/ is stale
check: $(STAMP)
	$(PY) -m compiler compile $(TOPOLOGY) -o $(OUT) --check

bench: $(STAMP) system-deps
	$(PY) bench/run_all.py

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { sh tools/setup-venv-deps.sh && $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

system-deps:
	@sh tools/setup-system.sh

# The libcni driver the peer tests use (tests/go/cnidriver): built offline in
# GOPATH mode from Debian's golang-github-appc-cni-dev; all Go state stays under
# tests/.build. Without Go or libcni it says so and the libcni tests skip.
DRIVER := tests/.build/cnidriver
GOCODE := /usr/share/gocode
driver: $(DRIVER)

$(DRIVER): tests/go/cnidriver/main.go | system-deps
	@if command -v go >/dev/null 2>&1 && [ -d $(GOCODE)/src/github.com/containernetworking/cni/libcni ]; then \
		mkdir -p tests/.build/gopath tests/.build/gocache && \
		GO111MODULE=off GOPATH="$(CURDIR)/tests/.build/gopath:$(GOCODE)" GOFLAGS= \
		GOCACHE="$(CURDIR)/tests/.build/gocache" go build -o $@ ./tests/go/cnidriver; \
	else \
		echo "driver: go or libcni ($(GOCODE)) missing; the libcni tests will skip" >&2; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache tests/.build bench/.build
