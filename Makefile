# Two commands on a fresh machine: `make demo` (the corpus job on the demo corpus) and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1

$(STAMP): pyproject.toml .ci/install
	bash .ci/install
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) jobs/make_demo_corpus.py --output demo
	$(PY) jobs/prepare_corpus.py --input demo --output out/demo-corpus --valid-fraction 0.2

test: $(STAMP)
	$(PY) -m pytest -q

.PHONY: install demo test
