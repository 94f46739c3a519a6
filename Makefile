# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Real data: $DYNAFUSE_DATA, else ../shared/datasets beside this clone.
DYNAFUSE_DATA ?= $(abspath ../shared/datasets)
export DYNAFUSE_DATA

.PHONY: demo test test-heavy install clean

install: $(VENV)/.installed

# torch==2.13.0 goes first and pinned: it is the CPU wheel; any other spec pulls GBs of CUDA packages.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

demo: install
	$(VENV)/bin/dynafuse demo

test: install
	$(PY) -m pytest -q

test-heavy: install
	DYNAFUSE_HEAVY=1 $(PY) -m pytest -q -m "slow or heavy"

clean:
	rm -rf $(VENV) .cache runs
