# Every target sets up what it needs: a fresh clone runs `make demo` or `make test` directly.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q -c constraints.txt

.PHONY: demo test bench lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[dev,ray,tensorboard,video,sb3,torchrl,minigrid]'
	touch $@

$(VENV)/.bench: $(VENV)/.installed
	$(PIP) -e '.[dev,ray,tensorboard,video,bench,minigrid]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/syllabus-eval demo $(ARGS)

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(ARGS)

bench: $(VENV)/.bench
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info
