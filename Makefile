# All set-up lives here: `make demo` and `make test` work on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DS_ACCELERATOR ?= $(shell $(PY) -c "import shutil;print('' if shutil.which('nvidia-smi') else 'cpu')")
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test lint audit bench docs clean

$(STAMP): pyproject.toml examples/plugin/pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: a CPU build lies on these machines; an open range would pull CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# the example model plugin (README "Bring your own model"); the tests train it from YAML
	$(BIN)/pip install -q --no-deps -e examples/plugin
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/full_loop.py examples/digits.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# the import contracts in pyproject.toml ([tool.importlinter])
	$(BIN)/lint-imports --no-cache
	# security lint, medium severity and up; an accepted finding says why inline (# nosec)
	$(BIN)/bandit -q -ll -r orchestrator jobs serve tuning cluster

# Known vulnerabilities in the installed environment (pip-audit). Its vulnerability service
# is on the internet: where it cannot be reached (CI reaches only package registries) the
# target says so in one line and passes.
audit: $(STAMP)
	@$(BIN)/python tools/pip_audit.py

test: $(STAMP) lint
	$(BIN)/pytest -q --durations=25 -n 2 --dist loadgroup --no-loadscope-reorder

bench: $(STAMP)
	$(BIN)/python -m bench

# The documentation site (docs/, mkdocs.yml) into site/; strict: a broken link or reference
# fails. make test builds it too (tests/test_docs.py), with its reference checked.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf .orch
