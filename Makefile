# `make demo`: set up .venv on a fresh machine and run the main job (the demo animation) with the shipped model.
# `make test`: set up .venv if needed and run the test suite (its browser tests need Debian's chromium; without it
# they are skipped with one loud line, unless KPMASK_REQUIRE_BROWSER is set, as .ci/run does).
# `make app`: serve the web page on http://127.0.0.1:7860 (the shipped models; Ctrl-C stops it).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo train test bench install clean app

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The main job: animate a synthetic test identity with another identity's motion using the shipped model
# (models/tiny-heatmap.pth.tar) and write demo/ (result video, side-by-side, contact sheet, metrics); the
# synthetic dataset is generated once (about 10 s). Then a real portrait animated by another person's video with
# the face model (models/faces-heatmap.pth.tar) into demo-faces/. `make train` trains the bundled default config.
data/synthetic/test-pairs.csv: | $(STAMP)
	$(BIN)/python scripts/synthetic_dataset.py --out data/synthetic --force

demo: $(STAMP) data/synthetic/test-pairs.csv
	$(BIN)/python scripts/demo.py --model models/tiny-heatmap.pth.tar --data data/synthetic --out demo
	$(BIN)/python scripts/demo_faces.py --model models/faces-heatmap.pth.tar --photo examples/faces/lp-s12.jpg \
		--video examples/faces/lp-d18.mp4 --out demo-faces

train: $(STAMP) data/synthetic/test-pairs.csv
	$(BIN)/kpmask --config config/tiny-heatmap.yaml --mode train --checkpoint_with_kp models/tiny-detector.pth.tar

app: $(STAMP)
	$(BIN)/kpmask --mode app

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# Every speed table of docs/speed.md (training and animation; tiny and 256 configs; fp32 and bf16), ~10 min.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py
