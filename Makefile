# Two commands for a newcomer; each builds its own environment in .venv on first use.
#   make demo              harmonize the demo composite (downloads Stable Diffusion 2 base on first use)
#   make demo MODEL=tiny   the same on tiny random weights at a 256-px work size: checks the machinery, no GPU
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
# Random weights make a meaningless picture at any size, so the tiny demo works at 256 px: every stage runs,
# in a fraction of the time 512 px takes. It needs no network once PiDiNet's weights are cached (fetched on
# first use) or named by ZSHARM_PIDINET_WEIGHTS; without either it stops at once and says so
# (ARGS=--no-edges runs it without the edge loss).
TINY_ARGS = $(if $(filter tiny tiny-tamed,$(MODEL)),--size 256,)
demo: env
	$(BIN)/zsharm harmonize data/demo/composite.png --mask data/demo/mask.png --model $(MODEL) --out $(OUT) \
		--source "astronaut bright warm indoor" --target "astronaut dim blue twilight" $(TINY_ARGS) $(ARGS)

test: env
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV)
