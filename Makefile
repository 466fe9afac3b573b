# Two commands do all the set-up: `make demo` and `make test`.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.minitrain-installed
export MPLBACKEND := Agg

.PHONY: install demo test pytest nbtest check-export export outputs bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,dask,accelerate]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/minitrain demo --out report

test: $(STAMP) check-export pytest nbtest

pytest: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

# the lessons run as tests too, and must leave the tree as they found it (no stray lr_find.png in nbs/)
nbtest: $(STAMP)
	@before=$$(git status --porcelain 2>/dev/null); $(BIN)/nbdev-test --n-workers 2 && \
	  after=$$(git status --porcelain 2>/dev/null) && if [ "$$before" != "$$after" ]; then \
	  echo "the notebooks changed the tree:"; diff <(echo "$$before") <(echo "$$after"); exit 1; fi

# minitrain/ must be exactly what nbdev-export makes of nbs/ (exported in a scratch copy, then compared).
check-export: $(STAMP)
	@tmp=$$(mktemp -d) && cp -r nbs minitrain pyproject.toml $$tmp/ && \
	  (cd $$tmp && $(CURDIR)/$(BIN)/nbdev-export) && \
	  if diff -r -x __pycache__ -x '*.egg-info' minitrain $$tmp/minitrain; then echo "minitrain/ matches nbs/"; rm -rf $$tmp; \
	  else echo "minitrain/ is out of step with nbs/: run 'make export' and commit the result."; rm -rf $$tmp; exit 1; fi

export: $(STAMP)
	$(BIN)/nbdev-export

# re-run the notebooks and save their outputs (figures, tables) so they read as lessons
outputs: $(STAMP)
	$(BIN)/nbdev-test --n-workers 2 --save --flags slow

bench: $(STAMP)
	@for b in benchmarks/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) report _docs .pytest_cache
