PY ?= python3

.PHONY: install demo test test-all lint bench

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
