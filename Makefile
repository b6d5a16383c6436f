# The two commands of this book (see README.md):
#   make book   build the HTML book into _build/html, its Chinese edition into _build/html/zh
#               (installs what it needs first)
#   make test   run the unit tests and re-run every notebook of the book with nbval
#   (make unit  only the fast unit tests, under two minutes)
# Both are idempotent: a second run reinstalls nothing.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEPS := requirements/lock.txt requirements/assets.txt pyproject.toml
NBVAL_FLAGS := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
JB_FLAGS := --all -W -n --keep-going
# EXECUTE=1 re-runs every notebook (saving fresh outputs) before building.
EXECUTE ?= 0

.PHONY: book test unit notebooks results env apt-book apt-test widgets lab lock clean

book: env apt-book widgets
ifeq ($(EXECUTE),1)
	$(PY) scripts/execute_notebooks.py
endif
	$(VENV)/bin/jupyter-book build $(JB_FLAGS) .
	@echo "Book built: open _build/html/index.html"
	$(PY) scripts/build_editions.py zh

# The browser tests open the built book, so the book is built first.
test: book apt-test
	$(PY) -m pytest tests $$($(PY) scripts/toc_notebooks.py) $(NBVAL_FLAGS) $(PYTEST_ARGS)

# The fast unit tests only (no notebooks, no browser): a quick check while changing the package.
unit: env
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

# Re-execute the notebooks in the test environment and store their outputs (what nbval compares).
notebooks: env apt-book
	$(PY) scripts/execute_notebooks.py $(NOTEBOOKS)

# The chapters that render book/results/*.jsonl: their stored tables change with every new
# record, so re-execute them (and commit) after committing records.
RESULT_NOTEBOOKS = $(shell grep -l 'results\.\(show\|rows\|compare\|plot\|status\)' book/*.ipynb)
results: env apt-book
	$(PY) scripts/execute_notebooks.py $(RESULT_NOTEBOOKS)

env: $(STAMP)

$(STAMP): $(DEPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/lock.txt
	$(PY) -m pip install -q --no-deps -r requirements/assets.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

apt-book:
	@bash scripts/apt_deps.sh requirements/apt.txt

apt-test: apt-book
	@bash scripts/apt_deps.sh requirements/apt-test.txt

widgets:
	@bash scripts/fetch_web_assets.sh

# Optional: JupyterLab to run the notebooks yourself, with this environment as the kernel.
lab: env
	$(PY) -m pip install -q jupyterlab==4.6.6
	$(VENV)/bin/jupyter lab book/

# Regenerate the full transitive lock from pyproject.toml's pins (maintainers only).
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install -q -e '.[book,test]'
	.lockvenv/bin/pip freeze --exclude-editable | grep -v '^finetune-helpers' > requirements/lock.txt
	rm -rf .lockvenv

clean:
	rm -rf _build
