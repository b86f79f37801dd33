# The two commands of the README:
#   make demo   set up, then `idmm run` on FMNIST-2040: IDMM pre-training, kNN and linear probe,
#               fine-tuning, and the supervised-from-scratch baseline, side by side
#   make test   set up, then the test suite
VENV ?= .venv
IDMM := $(VENV)/bin/idmm
RUN ?= runs/fmnist2040

.PHONY: setup demo test lint clean

setup:
	bash scripts/setup.sh

demo: setup
	$(IDMM) run --config configs/cpu/fmnist2040.yaml out=$(RUN) baseline=true overwrite=true

test: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/python -m pytest -q

lint:
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
