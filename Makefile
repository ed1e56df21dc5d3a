# Two commands on a fresh machine: `make demo` and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
BIN      = $(VENV)/bin
# Bytecode is compiled at install: a process started with PYTHONDONTWRITEBYTECODE set
# would otherwise compile every module it imports, every time (prefect + dbt: 7.8 s -> 3.4 s).
INSTALL  = $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python

.PHONY: demo dashboards test lint typecheck format bench clean

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv

$(VENV)/.installed: pyproject.toml | $(BIN)/uv
	$(INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/uv
	$(INSTALL) -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed          ## install, then run the demo pipeline (one simulated day per run)
	$(BIN)/mdstack run
	$(BIN)/mdstack status

dashboards: $(VENV)/.installed    ## after `make demo`: Superset on the demo's marts, dashboard imported
	$(BIN)/mdstack dashboards

test: $(VENV)/.installed-dev      ## install dev extras, lint, type-check, run the whole suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n 2 --dist loadfile

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed-dev ## mypy over connectors/, stack/ and flows/ (settings in pyproject.toml)
	$(BIN)/mypy

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(VENV)/.installed-dev     ## benchmarks side by side with the peers
	$(BIN)/python -m bench

clean:                            ## remove the local warehouse and dbt build output
	rm -rf warehouse dbt_project/target dbt_project/logs
