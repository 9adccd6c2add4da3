# fleetloop: the two commands are `make demo` (the main job) and `make test` (the tests).
# Each installs what it needs into a project-local virtual environment (.venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1

.PHONY: setup test demo services-up services-down bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[train,test,lint]'
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/pytest

demo: setup
	$(BIN)/fleetloop demo

services-up: setup
	$(BIN)/fleetloop services up

services-down: setup
	$(BIN)/fleetloop services down

clean:
	rm -rf $(VENV) .fleetloop .pytest_cache
