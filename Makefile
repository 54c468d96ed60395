# Two commands for a newcomer; each builds its own environment in .venv on first use.
#   make demo              harmonize the demo composite (downloads Stable Diffusion 2 base on first use)
#   make demo MODEL=tiny   the same on tiny random weights: checks the machinery, no GPU (about 35 s of CPU)
#   make test              the test suite (offline, CPU)
PYTHON ?= python3
VENV   ?= .venv
MODEL  ?= stabilityai/stable-diffusion-2-base
OUT    ?= demo_harmonized.png
BIN     = $(VENV)/bin

.PHONY: demo test env clean
env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test,notebooks]"
	# open-clip ships CLIP's BPE vocabulary: the offline tokenizer of the tiny model reads it (its own deps are not needed).
	$(BIN)/pip install -q --no-deps -c constraints.txt open_clip_torch
	touch $@

# The demo's first description from data/demo/caption.txt; drop --source/--target to ask the VLM instead.
# MODEL=tiny needs no network once PiDiNet's weights are cached (fetched on first use, 0.4 MB) or named by
# ZSHARM_PIDINET_WEIGHTS; without either it stops at once, before any model work, and says so
# (ARGS=--no-edges runs it without the edge loss).
demo: env
	$(BIN)/zsharm harmonize data/demo/composite.png --mask data/demo/mask.png --model $(MODEL) --out $(OUT) \
		--source "astronaut bright warm indoor" --target "astronaut dim blue twilight" $(ARGS)

test: env
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV)
