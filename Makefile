# The two commands of the README:
#   make demo   set up, then IDMM pre-training on FMNIST-2040 and its kNN evaluation
#   make test   set up, then the test suite
VENV ?= .venv
IDMM := $(VENV)/bin/idmm
RUN ?= runs/fmnist2040

.PHONY: setup demo test lint clean

setup:
	bash scripts/setup.sh

demo: setup
	$(IDMM) pretrain --config configs/cpu/fmnist2040.yaml out=$(RUN) overwrite=true
	$(IDMM) eval knn checkpoint=$(RUN)

test: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/python -m pytest -q

lint:
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
