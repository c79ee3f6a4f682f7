# Two entry points (README "Quick start"): `make demo` and `make test`.
# Both create .venv when missing and install the package into it; the stamp file is written
# only after a complete install, so an interrupted install is simply redone on the next run.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints/ci.txt | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test venv clean-venv bench

venv: $(STAMP)

$(STAMP): pyproject.toml constraints/ci.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints/ci.txt -e ".[test]"
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(BIN)/bottlenecks fit --config configs/cbm_shapes.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

bench: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints/ci.txt -e ".[test,bench]"
	$(BIN)/python benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
