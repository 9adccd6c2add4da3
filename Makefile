# fleetloop: the two commands are `make demo` (the main job) and `make test` (the tests).
# Each installs what it needs into a project-local virtual environment (.venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1

.PHONY: setup test test-unit test-integration test-production lint demo services-up services-down bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[train,test,lint]'
	touch $@

setup: $(VENV)/.installed

lint: setup        ## ruff, mypy and the import-linter layer contracts
	$(BIN)/ruff check fleetloop tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test-unit: setup   ## the fast tier: no services, no servers
	$(BIN)/pytest tests/unit

test-integration: setup   ## real Prefect, Label Studio, S3 (moto), git + DVC
	$(BIN)/pytest tests/integration tests/e2e

test-production: setup   ## the compose file's services without Docker: PostgreSQL, Prefect server, Label Studio, S3
	$(BIN)/pytest tests/production

test: lint         ## everything (CI runs exactly this through .ci/run); the e2e tier last
	$(BIN)/pytest tests/unit tests/integration tests/production tests/e2e

demo: setup
	$(BIN)/fleetloop demo

services-up: setup
	$(BIN)/fleetloop services up

services-down: setup
	$(BIN)/fleetloop services down

bench: setup       ## every benchmark (minutes; figures in the README)
	for b in benchmarks/*.py; do case $$b in */common.py|*/naive_mining.py|*/kitti_truth.py|*/sim_loop.py) continue;; esac; \
	  echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .fleetloop .pytest_cache .ruff_cache .mypy_cache
