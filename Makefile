# Two commands matter: `make run` and `make test`. Everything else is a convenience.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-postgres faults demo validate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install whenever the dependency list changes (the extras named below are part of it).
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,postgres]'
	touch $(STAMP)

# The OpenID Connect provider tests/test_oidc.py signs in against (Node's oidc-provider, pinned by
# tests/oidc/package-lock.json). Without Node that one test is skipped; with it, this installs it.
OIDC_PROVIDER := $(if $(shell command -v npm 2>/dev/null),tests/oidc/node_modules/.installed)
tests/oidc/node_modules/.installed: tests/oidc/package.json tests/oidc/package-lock.json
	npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error
	touch $@

# Other ports, e.g. beside a second checkout: make run HTTP_PORT=8100 ADMIN_PORT=8101 TEMPORAL_PORT=7300 UI_PORT=8300
# (UI_PORT=0: no web UI). Unset, `keepflow dev` keeps its defaults.
DEV_PORTS = $(if $(HTTP_PORT),--http-port $(HTTP_PORT)) $(if $(ADMIN_PORT),--admin-port $(ADMIN_PORT)) \
	$(if $(TEMPORAL_PORT),--temporal-port $(TEMPORAL_PORT)) $(if $(UI_PORT),--ui-port $(UI_PORT))
run: $(STAMP)
	$(BIN)/keepflow dev $(strip $(DEV_PORTS))

# Two checks before any test runs: the import contract (pyproject's [tool.importlinter]), so a
# module that imports upward or in a circle fails the build; then the type checker ([tool.mypy]),
# so a `match step:` that misses a step kind (AnyStep in keepflow/language/dsl.py) fails it too.
test: $(STAMP) $(OIDC_PROVIDER)
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/pytest -q -rs $(PYTEST_ARGS)

# The tests that exercise the store's SQL (webhooks, consent, cap, reports, RFM, dashboard, unknown outcomes) run
# again on a throwaway PostgreSQL server, so SQL only SQLite accepts cannot slip in. CI runs it too.
PG_TESTS := tests/test_compliance.py tests/test_webhooks.py tests/test_routing_crashes.py tests/test_sendgrid_webhook.py \
	tests/test_twilio_webhooks.py tests/test_unsubscribe.py tests/test_report.py tests/test_rfm.py \
	tests/test_winback.py tests/test_dashboard.py tests/test_impact.py tests/test_admin.py tests/test_unknown_outcomes.py \
	tests/test_history_size.py tests/test_line_webhook.py tests/test_store_inserts.py
test-postgres: $(STAMP)
	bash .ci/postgres $(BIN)/pytest -q -p no:cacheprovider $(PG_TESTS) $(PYTEST_ARGS)

# Fault injection on the real stack in separate processes (tests/faults): kill -9 of the worker
# mid-send, a rolling restart, the Temporal server restarted or killed mid-run, events posted to
# the public app while the worker, Temporal and the app are killed. Minutes, so not in `make test`.
# Each test file has its own stack and spends most of its time waiting for processes to die and
# come back (a quarter of a core on average), so four files run side by side, each runner taking
# the next file when it is done, longest first (tests/faults/conftest.py): seven minutes become
# about two and a half.
faults: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider -n 4 --dist loadfile tests/faults $(PYTEST_ARGS)

# One order's whole journey on Temporal's time-skipping server, every rule on, every message printed.
demo: $(STAMP)
	$(BIN)/keepflow demo

validate: $(STAMP)
	$(BIN)/keepflow validate

clean:
	rm -rf $(VENV) var .pytest_cache tests/oidc/node_modules
