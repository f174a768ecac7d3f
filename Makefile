# aiaas-torch: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

# Reinstall when the project metadata or the pinned constraints change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,plots,oip]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/aiaas demo

test: install
	$(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -ra -m "not serving and not slow"

bench: install
	$(PY) benchmarks/serve.py --out-dir build/bench

clean:
	rm -rf $(VENV) .aiaas build *.egg-info
