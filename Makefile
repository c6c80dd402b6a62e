# contrastkit: two commands on a fresh machine.
#   make demo   the main job on the embedded default model
#   make test   the test suite (what CI runs)
# torch is installed first, pinned (TORCH_SPEC); every later install is constrained to the installed
# torch, so pip can never swap it for a multi-gigabyte CUDA build.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.contrastkit-installed
TORCH_CONSTRAINT := $(VENV)/torch-constraint.txt

.PHONY: setup browser demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(TORCH_CONSTRAINT)
	$(PIP) install --quiet --constraint $(TORCH_CONSTRAINT) -e '.[test,report]'
	$(PY) -c "import torch; assert torch.__version__ == open('$(TORCH_CONSTRAINT)').read().strip()[7:], 'torch changed'"
	touch $@

demo: setup
	$(VENV)/bin/contrastkit demo

# Debian's chromium for the report's browser test (tests/report/test_browser.py); installed once.
# Where it cannot be installed the test skips, except in CI (CI set), where this step fails instead.
browser:
	@command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium) \
		|| (test -z "$$CI" && echo "warning: chromium not installed; the browser test will be skipped")

test: setup browser
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
