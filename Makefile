# reprolab: `make repro` runs the pipeline, `make test` runs the tests; both set up first.
# Reuse an existing environment with VENV=/path/to/venv (it is installed into if needed).

VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.reprolab-installed
RUN := PATH="$(BIN):$$PATH"
UI_PORT ?= 5000
DASHBOARD_PORT ?= 8080
# `make team-stack`: where both servers listen (TEAM_HOST=0.0.0.0 for the team's machines).
TEAM_HOST ?= 127.0.0.1
TEAM_PORT ?= 5000
TEAM_PG_PORT ?= 5432

.DEFAULT_GOAL := help
.PHONY: help install repro test test-fast test-cpus lint format exps exps-changed ui dashboard team-stack clean-stores

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) \
	  | sed -e 's|$$(VENV)|$(VENV)|g' -e 's|$$(UI_PORT)|$(UI_PORT)|g' \
	        -e 's|$$(DASHBOARD_PORT)|$(DASHBOARD_PORT)|g' \
	  | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

install: $(STAMP) ## create $(VENV) and install reprolab with pinned dependencies (pip)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

repro: install ## check params.yaml, then run the DVC pipeline (default: embedded digits data)
	$(RUN) reprolab check
	$(RUN) dvc repro

# Test processes (pytest-xdist): the end-to-end cases spend much of their time starting
# Python and DVC, so 2 processes keep 2 cores busy; TEST_WORKERS=0 runs them in this one.
TEST_WORKERS ?= 2
test: install ## run the whole test suite (slow end-to-end cases included), in TEST_WORKERS processes
	$(RUN) python -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: install ## run the tests without the slow end-to-end cases
	$(RUN) python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

test-cpus: install ## rerun the computing stages on emulated Intel and AMD CPUs (QEMU), vs tests/golden
	@command -v qemu-x86_64 >/dev/null || { echo "qemu-x86_64 missing: apt-get install qemu-user"; exit 1; }
	$(RUN) REPROLAB_TEST_CPUS=1 python -m pytest tests/test_cpus.py

lint: install ## ruff check and format check
	$(RUN) ruff check . && $(RUN) ruff format --check .

format: install ## ruff fix and format
	$(RUN) ruff check --fix . && $(RUN) ruff format .

exps: install ## dvc exp show with the headline test metrics only (every column of it fits)
	$(RUN) dvc exp show --drop '^(?!Experiment$$|Created$$|[^.]+\.test_(acc|rmsle|rmse|fid)$$)'

# Dependency columns: paths, and the folders and lock file the report and every stage read.
DEP_COLUMNS := ^(.*/.*|requirements\.lock|metrics|models|plots)$$
exps-changed: install ## dvc exp show --only-changed without the dependency md5 columns
	$(RUN) dvc exp show --only-changed --drop '$(DEP_COLUMNS)'

ui: install ## open the MLflow UI on the repo's tracking store (http://127.0.0.1:$(UI_PORT))
	@$(RUN) python -m reprolab.tracking.pages $(CURDIR)/mlflow.db http://127.0.0.1:$(UI_PORT)
	$(RUN) mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(UI_PORT)

dashboard: install ## open optuna-dashboard on the study storage (http://127.0.0.1:$(DASHBOARD_PORT))
	$(RUN) optuna-dashboard sqlite:///$(CURDIR)/.optuna/studies.db --host 127.0.0.1 --port $(DASHBOARD_PORT)

team-stack: install ## a team's stack for a trial: PostgreSQL + MLflow server in .team-stack/ (Ctrl-C stops)
	$(RUN) python -m reprolab.teamstack --folder .team-stack --host $(TEAM_HOST) \
	  --port $(TEAM_PORT) --pg-port $(TEAM_PG_PORT)

clean-stores: ## delete the local MLflow store and Optuna studies (DVC outputs stay)
	rm -rf mlflow.db mlflow.db.lock mlartifacts .optuna
