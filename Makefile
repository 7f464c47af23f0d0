# `make demo`: set up .venv on a fresh machine and run the main job on the bundled default config.
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

# Until training lands, the main job is the smoke run: the paper's taichi-256 networks, one forward and one
# forward+backward with the perceptual loss on generated images (random detector and VGG weights: none can
# be downloaded here, and the output says so).
demo: $(STAMP)
	$(BIN)/kpmask --config config/taichi-256-heatmap.yaml --mode inspect --vgg_weights random

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
