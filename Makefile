# vigil: `make train` and `make test` work on a fresh machine; they install what is missing first.
UV ?= $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := $(HOME)/.local/bin/uv
endif
RUN := $(UV) run --frozen
ARGS ?=

.PHONY: install train test test-all lint format bench clean

$(UV):
	python3 -m pip install --user --quiet uv

.venv/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode
	touch $@

install: .venv/.installed ## Create .venv from uv.lock

train: install ## Train the default experiment on the embedded data (ARGS="task=... loss=..." to override)
	$(RUN) vigil-train $(ARGS)

# Both cores: most tests are single-threaded runs of the command line.
PYTEST := $(RUN) pytest -q -n 2

test: install ## The test suite (excludes tests marked slow)
	$(PYTEST) $(ARGS)

test-all: install ## Every test, the slow ones too
	$(PYTEST) -m "" $(ARGS)

lint: install ## ruff lint and format check
	$(RUN) ruff check src tests benchmarks
	$(RUN) ruff format --check src tests benchmarks

format: install ## Apply ruff fixes and formatting
	$(RUN) ruff check --fix src tests benchmarks
	$(RUN) ruff format src tests benchmarks

bench: install ## Performance ratios measured in one run
	$(RUN) python -m benchmarks.run $(ARGS)

clean: ## Remove run outputs, generated data and caches (keeps .venv)
	rm -rf outputs/runs outputs/multiruns outputs/cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
