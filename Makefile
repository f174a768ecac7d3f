# aiaas-torch: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
, := ,

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

# Reinstall when the project metadata or the pinned constraints change. A first install downloads torch and TorchServe
# (minutes): it says so and lets pip show its progress; a reinstall over an installed environment stays quiet.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || { echo "aiaas: creating the virtual environment $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "aiaas: $(if $(wildcard $(STAMP)),updating the packages in $(VENV) (pyproject.toml or constraints.txt changed),installing aiaas-torch and its dependencies (torch$(,) TorchServe) into $(VENV): about 3 minutes on a first install; pip shows its progress)"
	$(PY) -m pip install $(if $(wildcard $(STAMP)),--quiet --quiet,--progress-bar on) --disable-pip-version-check -c constraints.txt -e '.[dev,plots,oip,hf]'
	@touch $(STAMP)
	@echo "aiaas: installed into $(VENV)"

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
