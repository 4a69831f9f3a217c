PY ?= python3

.PHONY: install demo test test-all lint bench notebooks docs

install:
	$(PY) -m pip install -e ".[dev]"

demo:
	$(PY) -m pip install -e .
	$(PY) examples/planar_alignment.py --quick --out out/planar --resume

test: install
	$(PY) -m pytest -m "not slow" -q --doctest-modules lkstn tests

test-all: install
	$(PY) -m pytest -q --doctest-modules lkstn tests

lint:
	ruff check . && ruff format --check .

bench:
	$(PY) benchmarks/run_all.py

notebooks:
	$(PY) docs/make_notebooks.py

docs:
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
