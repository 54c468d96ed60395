# Two commands for a newcomer; each builds its own environment in .venv on first use.
#   make demo              harmonize the demo composite (downloads Stable Diffusion 2 base on first use)
#   make demo MODEL=toy    all three stages offline on a CPU, with zsharm's trained toy prior
#   make demo MODEL=tiny   tiny random weights: checks the machinery, no GPU (about 35 s of CPU)
#   make test              the test suite (offline, CPU)
#   make env TORCH=cu128   the environment with a CUDA build of torch (default: cu128 if nvidia-smi runs, else cpu)
PYTHON ?= python3
VENV   ?= .venv
# Which PyTorch build (PyTorch's own index; pip cannot tell whether there is a GPU): cpu, or a CUDA build such as
# cu126, cu128, cu130 (at most the CUDA version nvidia-smi shows). Default: cu128 where nvidia-smi runs, else cpu.
TORCH  ?= $(shell nvidia-smi >/dev/null 2>&1 && echo cu128 || echo cpu)
# Where that build comes from; empty: only the indexes pip is configured with (a machine with its own mirror).
TORCH_INDEX ?= https://download.pytorch.org/whl/$(TORCH)
MODEL  ?= stabilityai/stable-diffusion-2-base
OUT    ?= demo_harmonized.png
BIN     = $(VENV)/bin

.PHONY: demo test test-quick mutants planted env clean
env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -c constraints.txt torch
	$(BIN)/python -c "import sys, torch; cuda = torch.version.cuda; want = '$(TORCH)'; \
		print('torch', torch.__version__, 'CUDA', cuda); \
		sys.exit(0 if (cuda is None) == (want == 'cpu') else f'asked for {want}, got CUDA {cuda}: see TORCH in the Makefile')"
	$(BIN)/pip install -q -c constraints.txt -e ".[test,notebooks]"
	$(BIN)/pip check
	touch $@

# The whole method, stage 1 included: the VLM describes the demo composite, Stable Diffusion edits it, the authors'
# evaluator decides (downloads on first use: SD 2 base ~5 GB, SmolVLM ~4.5 GB, the evaluator ~94 MB, PiDiNet 0.4 MB).
# MODEL=toy runs all three stages offline on a CPU with zsharm's trained toy prior, its describer and evaluator, on
# a held-out toy composite (data/toy). MODEL=tiny: random weights, the edit's code paths only (no stage 1 or 3).
TOY_INPUT = data/toy/composite_images/t1000000_1_1.png --mask data/toy/masks/t1000000_1.png
DEMO_INPUT = data/demo/composite.png --mask data/demo/mask.png
demo: env
	$(BIN)/zsharm harmonize $(if $(filter toy,$(MODEL)),$(TOY_INPUT),$(DEMO_INPUT)) --model $(MODEL) --out $(OUT) \
		$(if $(filter tiny tiny-tamed,$(MODEL)),--no-evaluator --source "astronaut bright warm indoor" \
		--target "astronaut dim blue twilight") $(ARGS)

# The suite in JOBS pytest-xdist workers (one torch thread each: two threads beside another worker stall in OpenMP
# barriers), a module's tests on one worker (--dist loadscope: module fixtures are built once); then the reference
# runs (marked slow) alone, with the two threads their fixture was computed with (tests/test_reference.py).
# `make test-quick`: neither the slow nor the end-to-end (e2e) tests, what the mutation runs use.
JOBS ?= auto
PYTEST = OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -q
test: env
	$(PYTEST) -n $(JOBS) --dist loadscope -m "not slow"
	OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 $(BIN)/python -m pytest -q -m slow

test-quick: env
	$(PYTEST) -n $(JOBS) --dist loadscope -m "not slow and not e2e"

# Maintainers, not CI: mutation testing (mutmut, [tool.mutmut] in pyproject.toml; benchmarks/mutation.md has the
# scores and how long each module took on 2 cores). MUTANTS picks mutants by name, e.g.
# MUTANTS='zsharm.decide.rule*' or 'zsharm.cache*' (default: every configured module: hours on 2 cores).
# The mutants/ folder keeps what was run: a second `make mutants` only runs what changed.
MUTANTS ?=
CHILDREN ?= 2
mutants: env
	$(BIN)/pip install -q -c constraints.txt -e ".[mutation]"
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/mutmut run --max-children $(CHILDREN) $(MUTANTS)
	$(BIN)/mutmut results

# The planted bugs written by hand (scripts/mutants.py): the authors'-reference ones, which need the fixture and
# the slow tests (ARGS=--slow), and the compositions of correct units the end-to-end tests guard (ARGS=--composition).
planted: env
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python scripts/mutants.py $(ARGS)

clean:
	rm -rf $(VENV)
