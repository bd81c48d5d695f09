# Two commands matter: `make run` starts the server on the embedded SQLite
# database (and installs grpcurl beside it, for the README's examples),
# `make test` runs every check. Both build their own virtualenv.
# `make check` is the quick loop while editing: lint, types and every test
# outside tests/process (none of them starts a server process).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-installed
DEV_STAMP := $(VENV)/.dev-installed
BUF_DIR := $(VENV)/buf
BUF := $(BUF_DIR)/node_modules/.bin/buf
BUF_VERSION := 1.75.0
PROTOS := $(sort $(wildcard protos/incident_manager/v1/*.proto))
# Where `make generate` writes; the staleness test points it elsewhere.
GENERATED_DIR ?= generated

.PHONY: run test check bench lint typecheck buf-lint generate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[run]'
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/python -m incident_manager $(ARGS)

test: $(DEV_STAMP)
	$(MAKE) --no-print-directory lint typecheck buf-lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The tiers that start no server process: unit, integration, api and docs.
# The directory decides, not a marker: a test that starts the server as a
# process, or runs grpcurl, Node or make, belongs in tests/process, which only
# `make test` runs.
check: $(DEV_STAMP)
	$(MAKE) --no-print-directory lint typecheck
	$(BIN)/python -m pytest --ignore=tests/process $(PYTEST_ARGS)

# Our server against a bare grpc.aio server, side by side; BENCH_ARGS=--quick
# for small sizes. h2load comes from Debian's nghttp2-client.
bench: $(DEV_STAMP)
	@command -v h2load >/dev/null || echo "h2load not found: apt-get install nghttp2-client (unary h2load rows are skipped)"
	$(BIN)/python -m tests.benchmark.run $(BENCH_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check incident_manager tests examples
	$(BIN)/ruff format --check incident_manager tests examples

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

# buf comes from npm; without Node we say so instead of failing. `buf
# breaking` compares protos/ with the last commit on main, so a change that
# would break existing clients fails before it is committed.
buf-lint:
	@if command -v npx >/dev/null 2>&1; then \
	  test -x $(BUF) || npm install --silent --no-audit --no-fund --prefix $(BUF_DIR) @bufbuild/buf@$(BUF_VERSION); \
	  $(BUF) lint && $(BUF) format -d --exit-code && echo "buf lint: passed" || exit 1; \
	  if git rev-parse --verify --quiet main >/dev/null; then \
	    $(BUF) breaking --against '.git#branch=main' && echo "buf breaking (against main): passed" || exit 1; \
	  else \
	    echo "buf breaking: SKIPPED (no local main branch to compare with)"; \
	  fi; \
	else \
	  echo "buf lint: SKIPPED (Node's npx is not installed)"; \
	fi

# Regenerate the Python stubs. protoc writes `from incident_manager.v1 import`,
# which would resolve to our own package; the stubs live in `generated`, so
# the imports are rewritten to point there.
generate: $(DEV_STAMP)
	rm -rf $(GENERATED_DIR).tmp && mkdir -p $(GENERATED_DIR).tmp
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iprotos \
	  --python_out=$(GENERATED_DIR).tmp --grpc_python_out=$(GENERATED_DIR).tmp \
	  --mypy_out=quiet:$(GENERATED_DIR).tmp --mypy_grpc_out=quiet:$(GENERATED_DIR).tmp $(PROTOS)
	# The _pb2 descriptors carry no comments; reflection serves this set instead,
	# so `grpcurl describe` shows the documentation.
	$(BIN)/python -m grpc_tools.protoc -Iprotos --include_source_info \
	  --descriptor_set_out=$(GENERATED_DIR).tmp/incident_manager/v1/descriptor_set.binpb $(PROTOS)
	sed -i -E 's/^from incident_manager\.v1 import /from generated.incident_manager.v1 import /' \
	  $(GENERATED_DIR).tmp/incident_manager/v1/*.py $(GENERATED_DIR).tmp/incident_manager/v1/*.pyi
	echo '"""Generated gRPC stubs. Never edit by hand: change protos/ and run `make generate`."""' \
	  > $(GENERATED_DIR).tmp/__init__.py
	touch $(GENERATED_DIR).tmp/py.typed $(GENERATED_DIR).tmp/incident_manager/__init__.py \
	  $(GENERATED_DIR).tmp/incident_manager/v1/__init__.py
	rm -rf $(GENERATED_DIR) && mv $(GENERATED_DIR).tmp $(GENERATED_DIR)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
