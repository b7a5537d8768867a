# Two entry points: `make demo` and `make test`. Each bootstraps its own venv on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test venv clean

venv: $(VENV)/.installed

# torch first, pinned: on CPU hosts 2.13.0 is the CPU wheel; a bare `torch` would pull CUDA (GBs).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[export,serve,test,bench]"
	touch $@

test: venv
	$(PY) -m pytest

demo: venv
	$(VENV)/bin/brogue demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
