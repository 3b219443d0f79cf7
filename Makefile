# The two Quick-start commands of the README. Each installs first: torch as the
# CPU build on disk (torch==2.13.0), so that no CUDA wheels are pulled, then uvlm.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install install-test demo test

install:
	$(PIP) install torch==2.13.0
	$(PIP) install -e .

install-test:
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]"
	command -v chromium || (command -v apt-get && (apt-get install -y --no-install-recommends chromium || (apt-get update && apt-get install -y --no-install-recommends chromium))) || echo "chromium not installed: the report's browser test will be skipped"

# The main job on the embedded default store: the four studies at CPU scale, reported (about 27
# minutes on 2 cores). Run it again after an interruption: finished trials are not redone.
# DEMO_ARGS=--smoke runs it at toy size (the fresh-machine check).
demo: install
	uvlm demo $(DEMO_ARGS)

# The test suite, then the main job at toy size in a throw-away working folder (CI runs this, then the
# fresh-machine check: .ci/run).
# pytest's exit code 5 ("no tests collected") is not a failure.
test: install-test
	$(PYTHON) -m pytest; code=$$?; [ $$code -eq 0 ] || [ $$code -eq 5 ]
	workdir=$$(mktemp -d); uvlm demo --smoke --workdir $$workdir; code=$$?; rm -rf $$workdir; exit $$code
