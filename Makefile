# Two commands for a fresh clone: `make demo` and `make test`. Everything else they need is set up here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF := node_modules/.bin/buf
NODE_CLIENT := clients/node/node_modules/.installed

.PHONY: demo test unit check lint gen gen-check lint-protos breaking bench up clean test-tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(BUF): package.json
	npm install --no-audit --no-fund --silent
	touch $(BUF)

# The Node.js client's dependencies (@grpc/grpc-js, @grpc/proto-loader, OpenTelemetry for its tests).
$(NODE_CLIENT): clients/node/package.json clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund --silent
	touch $(NODE_CLIENT)

demo: $(STAMP)
	$(VENV)/bin/ostinato demo

up: $(STAMP)
	$(VENV)/bin/ostinato up

# The tests make OpenPGP keys with the real gpg and certificates with openssl, scrape the services
# with a real Prometheus server, drive JOC's web view in Debian's chromium (playwright cannot
# download a browser here), and the scripts' test needs jq: Debian packages.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
test-tools:
	@command -v gpg >/dev/null && command -v openssl >/dev/null && command -v prometheus >/dev/null \
		&& command -v jq >/dev/null && test -x /usr/bin/chromium || { \
		echo "installing gpg, openssl, prometheus, jq and chromium for the tests"; \
		$(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends gpg openssl prometheus jq chromium fonts-liberation; }

# pytest (the Python services, the buf curl scripts, traces from the Node client), then the Node
# client's own tests against a topology they start.
test: $(STAMP) $(BUF) $(NODE_CLIENT) test-tools
	$(VENV)/bin/pytest -q
	cd clients/node && OSTINATO_PYTHON=$(CURDIR)/$(PY) node --test test/

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

gen: $(STAMP)
	$(PY) scripts/gen_protos.py

# Regenerates gen/ and fails when it differs from what is committed.
gen-check: gen
	@git diff --exit-code --stat -- gen || (echo "gen/ is stale: run 'make gen' and commit" && exit 1)
	@test -z "$$(git status --porcelain -- gen)" || (git status --porcelain -- gen; echo "gen/ has untracked files: run 'make gen' and commit"; exit 1)

lint-protos: $(BUF)
	$(BUF) lint
	$(BUF) format --diff --exit-code

# Compares the protos with the previous commit's (the main this change builds on).
breaking: $(BUF)
	@if git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then \
		$(BUF) breaking --against '.git#ref=HEAD~1'; \
	else echo "buf breaking: no earlier commit with protos, nothing to compare"; fi

check: lint-protos gen-check breaking

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy ostinato controller_svc director_svc subagent_svc joc_svc bench scripts

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) node_modules clients/node/node_modules
