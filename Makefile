# Two entry points: `make demo` and `make test`. Each bootstraps what it needs on a fresh Debian machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test venv system-packages clean

venv: $(VENV)/.installed

# torch first, pinned: on CPU hosts 2.13.0 is the CPU wheel; a bare `torch` would pull CUDA (GBs).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[export,serve,test,bench]"
	touch $@

# The Debian packages the tests use: chromium (tests/test_browser.py drives it; Playwright cannot
# download one), espeak-ng and sox (tests/test_corpus.py synthesises accent clips), wordnet-base (the
# LM text and the medical glosses), hunspell-en-med (medical names: tests/test_corpus_heldout.py).
# Installs the missing ones as root (or with sudo); otherwise stops with the command to run.
system-packages:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null || missing="$$missing sox"; \
	[ -f /usr/share/wordnet/data.noun ] || missing="$$missing wordnet-base"; \
	[ -f /usr/share/hunspell/en_med_glut.dic ] || missing="$$missing hunspell-en-med"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; \
	  else echo "missing Debian packages:$$missing; run: sudo apt-get install -y$$missing" >&2; exit 1; fi; \
	  echo "installing Debian packages:$$missing"; \
	  $$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

test: system-packages venv
	$(PY) -m pytest

demo: venv
	$(VENV)/bin/brogue demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
