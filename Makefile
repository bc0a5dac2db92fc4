# Thin aliases. `make sweep` and `make test` create the virtual environment themselves.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SWEEP  ?= sweeps/default.yaml

.PHONY: install test lint sweep study bench report

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the local CPU build when it is there, else whatever satisfies torch>=2.5
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0 || $(PY) -m pip install -q "torch>=2.5"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

sweep: $(STAMP)
	$(PY) -m ablate.cli sweep $(SWEEP) --workers 2

# an Optuna study: a sweep file with a search: section (make study STUDY=sweeps/meta_tokens.yaml)
STUDY   ?= sweeps/head_ratio.yaml
WORKERS ?= 1
study: $(STAMP)
	$(PY) -m ablate.cli sweep $(STUDY) --workers $(WORKERS)

lint: $(STAMP)
	$(VENV)/bin/ruff check ablate tests benchmarks

# GPU only: timings appended to benchmarks/RESULTS.md with the command and the GPU
bench: $(STAMP)
	$(PY) -m benchmarks.bench

# the report notebooks executed on a results directory: RESULTS/report/{report,maps}.{ipynb,html}, figures as files
# (ARGS: more `ablate report` options, e.g. ARGS="--compare RUN_A,RUN_B")
RESULTS ?= results/default
report: $(STAMP)
	$(PY) -m ablate.cli report $(RESULTS) $(ARGS)
