# Set-up is two commands: `make demo` and `make test`. Both create .venv first.
# `make docs` builds the docs site (docs/, mkdocs.yml) into build/site, offline.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint docs demo bench clean

setup: $(VENV)/.installed

# Exact versions from constraints.txt (see its header to refresh them).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==26.3
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	# PyTorch (CPU) is an optional test dependency: the ResNet-20 import is compared with it.
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0 || echo "PyTorch not installable here: its comparison tests will be skipped"
	$(PY) -m jaxdissect.precompile
	touch $@

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup lint docs
	$(PY) -m pytest -q --durations=20

# Warnings are errors (--strict): a broken link, a missing page or an API name that does not
# resolve fails the build.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

demo: setup
	$(PY) -m experiments.training_dynamics

bench: setup
	$(PY) -m bench.tally_cpu
	$(PY) -m bench.whole_process

clean:
	rm -rf $(VENV) runs build *.egg-info
