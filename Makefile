# `make demo`: set up .venv on a fresh machine and run the main job (training) on the bundled default.
# `make test`: set up .venv if needed and run the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The main job on the bundled default: generate the synthetic dataset once, then train config/tiny-heatmap.yaml
# on it (about 4 minutes on 2 CPU cores). The detector and VGG-19 are random (nothing can be downloaded here,
# and no detector is trained yet); the run says so.
data/synthetic/train: $(STAMP)
	$(BIN)/python scripts/synthetic_dataset.py --out data/synthetic --force

demo: $(STAMP) data/synthetic/train
	$(BIN)/kpmask --config config/tiny-heatmap.yaml --mode train

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
